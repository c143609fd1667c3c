package nftables

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/proxy"
)

// benchService6 is benchService(i) made dual-stack: an IPv6 cluster IP and two IPv6 endpoints too.
func benchService6(i int) *model.ServicePort {
	sp := benchService(i)
	ip6 := func(prefix uint16) netip.Addr {
		return netip.AddrFrom16([16]byte{0xfd, 0, byte(prefix >> 8), byte(prefix), 14: byte(i >> 8), 15: byte(i)})
	}
	eps := []model.Endpoint{{IP: ip6(0x244), Port: 8080, Ready: true, Serving: true}, {IP: ip6(0x245), Port: 8080, Ready: true, Serving: true}}
	sp.IPv6 = &model.Family{ClusterIPs: []netip.Addr{ip6(0x96)}, ClusterEndpoints: eps, ExternalEndpoints: eps}
	return sp
}

// BenchmarkSyncDualStack programs 10,000 (CANOPY_BENCH_PORTS) dual-stack service ports (2 endpoints per family) through the
// dual-stack back end (tables ip and ip6 canopy) into a test namespace with the real nft binary: from empty,
// one more dual-stack port and one IPv6 endpoint change (each the median of 5), an IPv4-only change (the ip6
// table untouched), a full resync; and the same 10,000 IPv4-only through the IPv4 back end for comparison.
//
//	go test -run '^$' -bench BenchmarkSyncDualStack -benchtime 1x ./proxy/nftables/
func BenchmarkSyncDualStack(b *testing.B) {
	requireNft(b)
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("CANOPY_BENCH_PORTS")); err == nil && v > 0 {
		n = v // a quicker run
	}
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/14"), netip.MustParsePrefix("fd00::/16")}}
	metrics := map[string]time.Duration{}
	for b.Loop() {
		b.StopTimer()
		timed := func(name string, ns *testns.NS, f func() error) time.Duration {
			start := time.Now()
			if err := ns.Do(f); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			d := time.Since(start)
			metrics[name] += d
			return d
		}
		median := func(name string, ns *testns.NS, step func(i int) func() error) {
			var ts []time.Duration
			for i := range 5 {
				start := time.Now()
				if err := ns.Do(step(i)); err != nil {
					b.Fatal(err)
				}
				ts = append(ts, time.Since(start))
			}
			slices.Sort(ts)
			metrics[name] += ts[2]
		}

		ns := testns.New(b, "nft-bench6")
		var d *proxy.DualStack
		if err := ns.Do(func() (err error) { d, err = NewDualStack(cfg, nil); return err }); err != nil {
			b.Fatal(err)
		}
		desired := make(map[string]*model.ServicePort, n)
		var keys []string
		for i := range n {
			sp := benchService6(i)
			desired[sp.Key] = sp
			keys = append(keys, sp.Key)
		}
		timed("dual-10k-ms", ns, func() error { return d.Sync(desired, keys) })
		median("dual-add1-ms", ns, func(i int) func() error {
			sp := benchService6(n + i)
			desired[sp.Key] = sp
			keys = append(keys, sp.Key)
			return func() error { return d.Sync(desired, []string{sp.Key}) }
		})
		median("dual-ep6change-ms", ns, func(i int) func() error {
			sp := desired[keys[n/2+i]]
			f := *sp.IPv6
			f.ClusterEndpoints = []model.Endpoint{f.ClusterEndpoints[0], {IP: netip.MustParseAddr(fmt.Sprintf("fd00:250::%d", i+1)), Port: 8080, Ready: true}}
			f.ExternalEndpoints = f.ClusterEndpoints
			sp.IPv6 = &f
			return func() error { return d.Sync(desired, []string{sp.Key}) }
		})
		median("dual-add1-v4only-ms", ns, func(i int) func() error {
			sp := benchService(2*n + i)
			desired[sp.Key] = sp
			keys = append(keys, sp.Key)
			return func() error { return d.Sync(desired, []string{sp.Key}) }
		})
		timed("dual-fullresync-ms", ns, func() error { return d.Sync(desired, keys) })
		timed("dual-cleanup-ms", ns, d.Cleanup)

		ns4 := testns.New(b, "nft-bench4")
		var p *Proxier
		if err := ns4.Do(func() (err error) { p, err = NewHost(cfg, nil); return err }); err != nil {
			b.Fatal(err)
		}
		d4, keys4 := benchServices(n)
		timed("v4-10k-ms", ns4, func() error { return p.Sync(d4, keys4) })
		median("v4-add1-ms", ns4, func(i int) func() error {
			sp := benchService(n + i)
			d4[sp.Key] = sp
			keys4 = append(keys4, sp.Key)
			return func() error { return p.Sync(d4, []string{sp.Key}) }
		})
		timed("v4-fullresync-ms", ns4, func() error { return p.Sync(d4, keys4) })
		b.StartTimer()
	}
	nb := time.Duration(b.N)
	for name, d := range metrics {
		b.ReportMetric(float64(d/nb)/1e6, name)
	}
	b.Logf("%d dual-stack ports (2+2 endpoints), tables ip+ip6: from empty %v, +1 dual %v, IPv6 endpoint change %v, +1 IPv4-only %v, full resync %v, cleanup %v; IPv4 alone: from empty %v, +1 %v, full resync %v", n,
		metrics["dual-10k-ms"]/nb, metrics["dual-add1-ms"]/nb, metrics["dual-ep6change-ms"]/nb, metrics["dual-add1-v4only-ms"]/nb,
		metrics["dual-fullresync-ms"]/nb, metrics["dual-cleanup-ms"]/nb, metrics["v4-10k-ms"]/nb, metrics["v4-add1-ms"]/nb, metrics["v4-fullresync-ms"]/nb)
}
