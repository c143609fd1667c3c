package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
)

// timedRestorer measures the time spent in iptables-restore and the bytes written.
type timedRestorer struct {
	Restorer
	took  time.Duration
	bytes int
}

func (t *timedRestorer) MaxChains() int {
	if c, ok := t.Restorer.(interface{ MaxChains() int }); ok {
		return c.MaxChains()
	}
	return 0
}

func (t *timedRestorer) Restore(table string, data []byte) error {
	start := time.Now()
	err := t.Restorer.Restore(table, data)
	t.took += time.Since(start)
	t.bytes += len(data)
	return err
}

func benchServices(n int) (map[string]*model.ServicePort, []string) {
	desired := make(map[string]*model.ServicePort, n)
	keys := make([]string, 0, n)
	for i := range n {
		sp := benchService(i)
		desired[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	return desired, keys
}

func benchService(i int) *model.ServicePort {
	ep := func(net int) model.Endpoint {
		return model.Endpoint{IP: netip.AddrFrom4([4]byte{10, byte(244 + net), byte(i / 250), byte(i%250 + 1)}), Port: 8080, Ready: true, Serving: true}
	}
	eps := []model.Endpoint{ep(0), ep(1)}
	return &model.ServicePort{
		Key: fmt.Sprintf("ns%d/svc%d:http/TCP", i/100, i), Namespace: fmt.Sprintf("ns%d", i/100), Name: fmt.Sprintf("svc%d", i),
		PortName: "http", Protocol: model.TCP, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})},
		Port: 80, ClusterEndpoints: eps, ExternalEndpoints: eps,
	}
}

// BenchmarkSync programs 1,000 and 10,000 services x 2 endpoints from empty into a test namespace with the
// real iptables-restore, then one more service, one endpoint change and one removal on top of the 10,000,
// then a full resync of the 10,000 (every chain rewritten). Baseline: the same 10,000 services as one
// iptables-restore input from empty, as kube-proxy's full sync writes them. Per flavour: the detected one
// (nft in a fresh namespace) and legacy.
func BenchmarkSync(b *testing.B) {
	requireIptables(b)
	for _, f := range []ipt.Flavour{"", ipt.Legacy} {
		name := string(f)
		if f == "" {
			name = "detected"
		}
		b.Run(name, func(b *testing.B) { benchSync(b, f) })
	}
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func benchSync(b *testing.B, flavour ipt.Flavour) {
	metrics := map[string]time.Duration{}
	var memPerService float64 // what the proxier keeps per service port (2 endpoints), after syncing 10,000
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/14")}}
	for b.Loop() {
		b.StopTimer()
		newProxier := func(ns *testns.NS) (*Proxier, *timedRestorer) {
			var p *Proxier
			tr := &timedRestorer{}
			err := ns.Do(func() (err error) {
				if flavour == "" {
					flavour = ipt.Detect()
				}
				it, err := ipt.New(flavour)
				if err != nil {
					return err
				}
				tr.Restorer = NewRestorer(flavour)
				p = New(cfg, tr, it, netlinkConntrack{}, nil)
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			return p, tr
		}
		timed := func(name string, ns *testns.NS, p *Proxier, desired map[string]*model.ServicePort, keys []string) {
			start := time.Now()
			if err := ns.Do(func() error { return p.Sync(desired, keys) }); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			metrics[name] += time.Since(start)
		}

		small := testns.New(b, "ipt-bench1k")
		p, _ := newProxier(small)
		d1, k1 := benchServices(1000)
		timed("1k-ms", small, p, d1, k1)

		big := testns.New(b, "ipt-bench10k")
		p, _ = newProxier(big)
		d, keys := benchServices(10000)
		heapBefore := heapInUse()
		timed("10k-ms", big, p, d, keys)
		memPerService = float64(heapInUse()-heapBefore) / 10000

		add := benchService(10000)
		d[add.Key] = add
		timed("add1-ms", big, p, d, []string{add.Key})

		chg := d[keys[5000]]
		chg.ClusterEndpoints = []model.Endpoint{chg.ClusterEndpoints[0], {IP: netip.MustParseAddr("10.250.0.1"), Port: 8080, Ready: true}}
		chg.ExternalEndpoints = chg.ClusterEndpoints
		timed("epchange-ms", big, p, d, []string{chg.Key})

		delete(d, keys[42])
		timed("del1-ms", big, p, d, []string{keys[42]})

		timed("fullresync-ms", big, p, d, append(keys, add.Key))
		_ = testnsDelete(big)

		// Baseline: the 10,000 services' full restore input, in one iptables-restore, into a fresh namespace.
		rec := &recorder{}
		d, keys = benchServices(10000)
		if err := New(cfg, rec, nil, nil, nil).Sync(d, keys); err != nil {
			b.Fatal(err)
		}
		base := testns.New(b, "ipt-benchbase")
		start := time.Now()
		err := base.Do(func() error {
			r := NewRestorer(flavour)
			for _, c := range rec.calls {
				if err := r.Restore(c.table, []byte(c.data)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		metrics["baseline-onerestore-10k-ms"] += time.Since(start)
		_ = testnsDelete(base)
		b.StartTimer()
	}
	b.ReportMetric(memPerService, "proxier-heap-B/service")
	n := time.Duration(b.N)
	for name, d := range metrics {
		b.ReportMetric(float64(d/n)/1e6, name)
	}
	ratio := func(a, b string) float64 { return float64(metrics[a]) / float64(metrics[b]) }
	b.ReportMetric(ratio("baseline-onerestore-10k-ms", "add1-ms"), "baseline/add1")
	b.ReportMetric(ratio("baseline-onerestore-10k-ms", "epchange-ms"), "baseline/epchange")
	b.Logf("%s, 10,000 services x 2 endpoints: from empty %v (one-input baseline %v: %.1fx); +1 service %v, endpoint change %v, removal %v; "+
		"full resync %v; baseline/+1 = %.0fx, baseline/endpoint change = %.0fx, full resync/+1 = %.0fx",
		flavour, metrics["10k-ms"]/n, metrics["baseline-onerestore-10k-ms"]/n, ratio("baseline-onerestore-10k-ms", "10k-ms"),
		metrics["add1-ms"]/n, metrics["epchange-ms"]/n, metrics["del1-ms"]/n, metrics["fullresync-ms"]/n,
		ratio("baseline-onerestore-10k-ms", "add1-ms"), ratio("baseline-onerestore-10k-ms", "epchange-ms"), ratio("fullresync-ms", "add1-ms"))
}

// testnsDelete empties a namespace's tables early (the namespace itself goes at the end of the benchmark).
func testnsDelete(ns *testns.NS) error {
	_, err := ns.Run(context.Background(), "sh", "-c", "iptables-nft -t nat -F; iptables-nft -t nat -X; iptables-legacy -t nat -F; iptables-legacy -t nat -X")
	return err
}
