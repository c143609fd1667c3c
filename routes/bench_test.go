package routes

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// BenchmarkInstall installs N /32 prefixes into a test namespace's kernel, through the Manager one route at a
// time (Set), through the Manager in batches (SetMany), and with `ip -batch` in a scratch namespace of its own
// (the same network, the same routes) as the baseline, all in the same run; then removes them (untimed for the
// baseline). One iteration = each of those once; ns/op is the time of one batched install of N (one SetMany with
// all N changes). Extra metrics:
//
//	batch-routes/s    installs per second through Manager.SetMany (NetlinkTable.Batch underneath)
//	batch-removes/s   withdrawals per second through Manager.SetMany
//	routes/s          installs per second through Manager.Set, one netlink request and answer per route
//	removes/s         deletes per second through Manager.Remove
//	ip-batch-routes/s installs per second of `ip -batch` (one "route add ... proto 186" line per route)
//	ip-batch-ratio    batch-routes/s ÷ ip-batch-routes/s (the goal: ≥ 0.5)
//	per-route-ratio   routes/s ÷ ip-batch-routes/s (the one-at-a-time path, for comparison)
//	raw-batch-routes/s  the same installs straight through NetlinkTable.Batch, no Manager
//	raw-routes/s      the same installs straight through netlink (RouteAdd), one at a time, no Manager
//	list-s            seconds for one List (what Start and Resync cost) with N routes in the table
//	B/route           Go heap held by the Manager per route (after Set of all N)
func BenchmarkInstall(b *testing.B) {
	one, ecmp := addrs("10.99.0.2"), addrs("10.99.0.2", "10.99.1.2")
	for _, bc := range []struct {
		n    int
		hops []netip.Addr
		name string
	}{
		{10_000, one, "N=10000"},
		{10_000, ecmp, "N=10000,ecmp=2"},
		{100_000, one, "N=100000"},
		{100_000, ecmp, "N=100000,ecmp=2"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ns := newTestNS(b)
			scratch := newTestNS(b)
			tbl := NewNetlinkTable(ns.H, DefaultProtocol, 0)
			b.Cleanup(func() { tbl.Close() })
			if err := tbl.BatchMode(); err != nil {
				b.Fatalf("no batching: %v", err)
			}
			dsts := make([]netip.Prefix, bc.n)
			base := netip.MustParseAddr("10.128.0.0").As4()
			for i := range dsts {
				v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(i)
				dsts[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 32)
			}
			script := ipBatchScript(b, dsts, bc.hops)

			var install, remove, binstall, bremove, list, ipb time.Duration
			var heapPerRoute float64
			b.ResetTimer()
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				// Baseline: ip -batch in the scratch namespace.
				ipb += ipBatchInstall(b, scratch, script, bc.n)

				// One at a time.
				m := NewManager(tbl, nil)
				if err := m.Start(); err != nil {
					b.Fatal(err)
				}
				var before runtime.MemStats
				if i == 0 {
					runtime.GC()
					runtime.ReadMemStats(&before)
				}
				t0 := time.Now()
				for _, dst := range dsts {
					if err := m.Set(dst, bc.hops); err != nil {
						b.Fatal(err)
					}
				}
				install += time.Since(t0)
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

				// Batched.
				m = NewManager(tbl, nil)
				if err := m.Start(); err != nil {
					b.Fatal(err)
				}
				changes := make([]Change, len(dsts))
				for i, dst := range dsts {
					changes[i] = Change{Dst: dst, NextHops: bc.hops}
				}
				b.StartTimer()
				t0 = time.Now()
				errs := m.SetMany(changes)
				binstall += time.Since(t0)
				b.StopTimer()
				if errs != nil {
					b.Fatalf("SetMany: %v", firstErr(errs))
				}
				if got, err := tbl.List(); err != nil || len(got) != bc.n {
					b.Fatalf("List() after SetMany of %d routes: %d routes, %v", bc.n, len(got), err)
				}
				for i := range changes {
					changes[i].NextHops = nil
				}
				t0 = time.Now()
				errs = m.SetMany(changes)
				bremove += time.Since(t0)
				if errs != nil {
					b.Fatalf("SetMany withdraw: %v", firstErr(errs))
				}
			}

			total := float64(bc.n * b.N)
			ipRate := total / ipb.Seconds()
			b.ReportMetric(total/binstall.Seconds(), "batch-routes/s")
			b.ReportMetric(total/bremove.Seconds(), "batch-removes/s")
			b.ReportMetric(total/install.Seconds(), "routes/s")
			b.ReportMetric(total/remove.Seconds(), "removes/s")
			b.ReportMetric(ipRate, "ip-batch-routes/s")
			b.ReportMetric(total/binstall.Seconds()/ipRate, "ip-batch-ratio")
			b.ReportMetric(total/install.Seconds()/ipRate, "per-route-ratio")
			b.ReportMetric(list.Seconds()/float64(b.N), "list-s")
			b.ReportMetric(heapPerRoute, "B/route")
			b.ReportMetric(rawBatchInstallRate(b, tbl, dsts, bc.hops), "raw-batch-routes/s")
			b.ReportMetric(rawInstallRate(b, ns.H, dsts, bc.hops), "raw-routes/s")
		})
	}
}

func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// ipBatchScript writes the `ip -batch` input that installs dsts via hops with our protocol, and returns its path.
func ipBatchScript(b *testing.B, dsts []netip.Prefix, hops []netip.Addr) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "routes.batch")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for _, dst := range dsts {
		if len(hops) == 1 {
			fmt.Fprintf(w, "route add %s via %s proto %d\n", dst, hops[0], DefaultProtocol)
			continue
		}
		fmt.Fprintf(w, "route add %s proto %d", dst, DefaultProtocol)
		for _, h := range hops {
			fmt.Fprintf(w, " nexthop via %s", h)
		}
		fmt.Fprintln(w)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// ipBatchInstall runs `ip -n <scratch> -batch script`, checks the n routes arrived, removes them (untimed) and
// returns how long ip took.
func ipBatchInstall(b *testing.B, scratch *testNS, script string, n int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "ip", "-n", scratch.Name, "-batch", script).CombinedOutput()
	d := time.Since(t0)
	if err != nil {
		b.Fatalf("ip -batch: %v: %s", err, out)
	}
	scratchTbl := NewNetlinkTable(scratch.H, DefaultProtocol, 0)
	if got, err := scratchTbl.List(); err != nil || len(got) != n {
		b.Fatalf("after ip -batch: %d routes, %v; want %d", len(got), err, n)
	}
	scratch.NS.MustRun(b, "ip", "route", "flush", "proto", fmt.Sprint(DefaultProtocol))
	return d
}

// rawBatchInstallRate installs dsts with NetlinkTable.Batch (what SetMany does at best), deletes them, and returns
// the installs per second.
func rawBatchInstallRate(b *testing.B, tbl *NetlinkTable, dsts []netip.Prefix, hops []netip.Addr) float64 {
	b.Helper()
	ops := make([]Op, len(dsts))
	for i, dst := range dsts {
		ops[i] = Op{Kind: OpAdd, Route: Route{Dst: dst, NextHops: hops}}
	}
	t0 := time.Now()
	if errs := tbl.Batch(ops); errs != nil {
		b.Fatalf("raw batch add: %v", firstErr(errs))
	}
	d := time.Since(t0)
	for i := range ops {
		ops[i].Kind = OpDelete
	}
	if errs := tbl.Batch(ops); errs != nil {
		b.Fatalf("raw batch delete: %v", firstErr(errs))
	}
	return float64(len(dsts)) / d.Seconds()
}

// rawInstallRate installs dsts with plain netlink calls (what the Manager does at best, one at a time), deletes
// them, and returns the installs per second.
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
