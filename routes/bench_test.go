package routes

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// BenchmarkInstall installs N /32 prefixes through Manager.Set into a test namespace's kernel, then removes them
// (untimed). One iteration = N installs; ns/op is the time of one iteration. Extra metrics:
//
//	routes/s    installs per second through Manager.Set
//	removes/s   deletes per second through Manager.Remove
//	raw-routes/s  the same installs straight through netlink (RouteAdd), no Manager: the bound
//	list-s      seconds for one List (what Start and Resync cost) with N routes in the table
//	B/route     Go heap held by the Manager per route
func BenchmarkInstall(b *testing.B) {
	for _, bc := range []struct {
		n    int
		hops []netip.Addr
		name string
	}{
		{10_000, addrs("10.99.0.2"), "N=10000"},
		{100_000, addrs("10.99.0.2"), "N=100000"},
		{100_000, addrs("10.99.0.2", "10.99.1.2"), "N=100000,ecmp=2"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ns := newTestNS(b)
			tbl := NewNetlinkTable(ns.H, DefaultProtocol, 0)
			dsts := make([]netip.Prefix, bc.n)
			base := netip.MustParseAddr("10.128.0.0").As4()
			for i := range dsts {
				v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(i)
				dsts[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 32)
			}

			var install, remove, list time.Duration
			var heapPerRoute float64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				m := NewManager(tbl, nil)
				if err := m.Start(); err != nil {
					b.Fatal(err)
				}
				var before runtime.MemStats
				if i == 0 {
					runtime.GC()
					runtime.ReadMemStats(&before)
				}
				b.StartTimer()

				t0 := time.Now()
				for _, dst := range dsts {
					if err := m.Set(dst, bc.hops); err != nil {
						b.Fatal(err)
					}
				}
				install += time.Since(t0)

				b.StopTimer()
				if i == 0 {
					var after runtime.MemStats
					runtime.GC()
					runtime.ReadMemStats(&after)
					heapPerRoute = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(bc.n)
				}
				t0 = time.Now()
				got, err := tbl.List()
				list += time.Since(t0)
				if err != nil || len(got) != bc.n {
					b.Fatalf("List() after installing %d routes: %d routes, %v", bc.n, len(got), err)
				}
				t0 = time.Now()
				for _, dst := range dsts {
					if err := m.Remove(dst); err != nil {
						b.Fatal(err)
					}
				}
				remove += time.Since(t0)
				runtime.KeepAlive(m)
				b.StartTimer()
			}
			b.StopTimer()

			total := float64(bc.n * b.N)
			b.ReportMetric(total/install.Seconds(), "routes/s")
			b.ReportMetric(total/remove.Seconds(), "removes/s")
			b.ReportMetric(list.Seconds()/float64(b.N), "list-s")
			b.ReportMetric(heapPerRoute, "B/route")
			b.ReportMetric(rawInstallRate(b, ns.H, dsts, bc.hops), "raw-routes/s")
		})
	}
}

// rawInstallRate installs dsts with plain netlink calls (what the Manager does at best), deletes them, and returns
// the installs per second.
func rawInstallRate(b *testing.B, h *netlink.Handle, dsts []netip.Prefix, hops []netip.Addr) float64 {
	b.Helper()
	mk := func(dst netip.Prefix) *netlink.Route {
		r := &netlink.Route{Dst: prefixToIPNet(dst), Protocol: DefaultProtocol}
		if len(hops) == 1 {
			r.Gw = net.IP(hops[0].AsSlice())
		} else {
			for _, hop := range hops {
				r.MultiPath = append(r.MultiPath, &netlink.NexthopInfo{Gw: hop.AsSlice()})
			}
		}
		return r
	}
	t0 := time.Now()
	for _, dst := range dsts {
		if err := h.RouteAdd(mk(dst)); err != nil {
			b.Fatalf("raw add %s: %v", dst, err)
		}
	}
	d := time.Since(t0)
	for _, dst := range dsts {
		if err := h.RouteDel(&netlink.Route{Dst: prefixToIPNet(dst), Protocol: DefaultProtocol}); err != nil {
			b.Fatalf("raw delete %s: %v", dst, err)
		}
	}
	return float64(len(dsts)) / d.Seconds()
}
