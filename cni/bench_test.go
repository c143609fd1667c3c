package cni

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkAddDel attaches 200 pods to one node and detaches them again, in a test-made node namespace. One
// iteration = 200 ADDs then 200 DELs; the pod namespaces are made beforehand (untimed). Sub-benchmarks:
//
//	inproc  the plugin's Add/Del called in the node namespace: the plugin's own cost
//	exec    the built binary run per command through `ip netns exec <node>`, as a runtime would (plus the cost of
//	        ip netns exec itself: a mount namespace and a /sys remount per call)
//
// Metrics: pods/s (ADD+DEL pairs per second), ms/add and ms/del (mean per command), max-ms/add (slowest ADD).
func BenchmarkAddDel(b *testing.B) {
	const pods = 200
	for _, mode := range []string{"inproc", "exec"} {
		b.Run(fmt.Sprintf("%s/pods=%d", mode, pods), func(b *testing.B) {
			n := newNode(b)
			conf := n.conf(b, nil)
			podNS := make([]*testNS, pods)
			for i := range podNS {
				podNS[i] = newTestNS(b, fmt.Sprintf("b%d", i))
			}
			if mode == "exec" {
				pluginBinary(b) // build outside the timer
			}
			var addTotal, delTotal, addMax time.Duration
			b.ResetTimer()
			for it := 0; it < b.N; it++ {
				for i, p := range podNS {
					cid := fmt.Sprintf("bench-%d-%d", it, i)
					t0 := time.Now()
					if mode == "inproc" {
						if _, err := n.add(cid, p, conf); err != nil {
							b.Fatalf("ADD %d: %v", i, err)
						}
					} else if r := n.execPlugin(b, "ADD", cid, p.Path, conf); r.Err != nil {
						b.Fatalf("ADD %d: %v %s", i, r.Err, r.Stdout)
					}
					d := time.Since(t0)
					addTotal += d
					addMax = max(addMax, d)
				}
				for i, p := range podNS {
					cid := fmt.Sprintf("bench-%d-%d", it, i)
					t0 := time.Now()
					if mode == "inproc" {
						if err := n.del(cid, p.Path, conf); err != nil {
							b.Fatalf("DEL %d: %v", i, err)
						}
					} else if r := n.execPlugin(b, "DEL", cid, p.Path, conf); r.Err != nil {
						b.Fatalf("DEL %d: %v %s", i, r.Err, r.Stdout)
					}
					delTotal += time.Since(t0)
				}
			}
			b.StopTimer()
			count := float64(b.N * pods)
			b.ReportMetric(count/(addTotal+delTotal).Seconds(), "pods/s")
			b.ReportMetric(float64(addTotal.Microseconds())/1000/count, "ms/add")
			b.ReportMetric(float64(delTotal.Microseconds())/1000/count, "ms/del")
			b.ReportMetric(float64(addMax.Microseconds())/1000, "max-ms/add")
			if recs := n.records(b); len(recs) != 0 {
				b.Errorf("%d records left after the DELs", len(recs))
			}
		})
	}
}
