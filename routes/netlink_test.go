package routes

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
)

// Integration tests: the real kernel, inside a network namespace each test creates (see newTestNS).

const (
	protoBoot   = 3 // RTPROT_BOOT
	protoStatic = 4 // RTPROT_STATIC
	otherTable  = 100
)

// countingTable counts the calls that change the kernel, to check the Manager issues none when nothing changed.
type countingTable struct {
	*NetlinkTable
	changes atomic.Int64
}

func (c *countingTable) Add(r Route) error     { c.changes.Add(1); return c.NetlinkTable.Add(r) }
func (c *countingTable) Replace(r Route) error { c.changes.Add(1); return c.NetlinkTable.Replace(r) }
func (c *countingTable) Delete(dst netip.Prefix) error {
	c.changes.Add(1)
	return c.NetlinkTable.Delete(dst)
}
func (c *countingTable) Batch(ops []Op) []error {
	c.changes.Add(int64(len(ops)))
	return c.NetlinkTable.Batch(ops)
}

func gateways(r netlink.Route) []string {
	var out []string
	if r.Gw != nil {
		out = append(out, r.Gw.String())
	}
	for _, nh := range r.MultiPath {
		out = append(out, nh.Gw.String())
	}
	slices.Sort(out)
	return out
}

// wantRoute checks the kernel has exactly one route to dst in table, with protocol proto and these gateways
// (sorted). No gateways: no route to dst in table at all.
func wantRoute(t *testing.T, n *testNS, dst string, table, proto int, gws ...string) netlink.Route {
	t.Helper()
	rs := n.find(t, dst, table)
	if len(gws) == 0 {
		if len(rs) != 0 {
			t.Fatalf("table %d has %v, want no route to %s", table, rs, dst)
		}
		return netlink.Route{}
	}
	if len(rs) != 1 {
		t.Fatalf("table %d has %d routes to %s (%v), want 1", table, len(rs), dst, rs)
	}
	r := rs[0]
	if int(r.Protocol) != proto || !slices.Equal(gateways(r), gws) {
		t.Fatalf("table %d: route to %s is proto %d via %v, want proto %d via %v", table, dst, r.Protocol, gateways(r), proto, gws)
	}
	return r
}

func mustSet(t *testing.T, m *Manager, dst string, hops ...string) {
	t.Helper()
	if err := m.Set(pfx(dst), addrs(hops...)); err != nil {
		t.Fatalf("Set(%s, %v): %v", dst, hops, err)
	}
}

func TestNetlinkInstallReplaceWithdrawECMP(t *testing.T) {
	n := newTestNS(t)
	ct := &countingTable{NetlinkTable: NewNetlinkTable(n.H, DefaultProtocol, 0)}
	m := startedManager(t, ct)
	main := syscall.RT_TABLE_MAIN

	mustSet(t, m, "10.10.0.0/24", "10.99.0.2")
	r := wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.0.2")
	if link, err := n.H.LinkByName(testLinkA); err != nil || r.LinkIndex != link.Attrs().Index {
		t.Fatalf("route device %d, want %s (resolved by the kernel)", r.LinkIndex, testLinkA)
	}

	mustSet(t, m, "10.10.0.0/24", "10.99.0.3")
	wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.0.3")

	// ECMP over both links, then three next hops (given unsorted).
	mustSet(t, m, "10.10.0.0/24", "10.99.1.2", "10.99.0.2")
	r = wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.0.2", "10.99.1.2")
	if len(r.MultiPath) != 2 {
		t.Fatalf("want a multipath route, got %v", r)
	}
	mustSet(t, m, "10.10.0.0/24", "10.99.1.2", "10.99.0.4", "10.99.0.2")
	wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.0.2", "10.99.0.4", "10.99.1.2")

	// List parses the multipath route back, next hops sorted, so it diffs exactly against the desired route.
	got, err := ct.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{{Dst: pfx("10.10.0.0/24"), NextHops: addrs("10.99.0.2", "10.99.0.4", "10.99.1.2")}}
	if len(got) != 1 || got[0].Dst != want[0].Dst || !slices.Equal(got[0].NextHops, want[0].NextHops) {
		t.Fatalf("List() = %v, want %v", got, want)
	}

	// No churn: the same next hops in another order, and a Resync, change nothing.
	ct.changes.Store(0)
	mustSet(t, m, "10.10.0.0/24", "10.99.0.4", "10.99.1.2", "10.99.0.2")
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	if c := ct.changes.Load(); c != 0 {
		t.Fatalf("%d kernel changes for an unchanged route", c)
	}

	// Back to one next hop: a plain gateway route again.
	mustSet(t, m, "10.10.0.0/24", "10.99.1.3")
	r = wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.1.3")
	if len(r.MultiPath) != 0 {
		t.Fatalf("want a single-path route, got %v", r)
	}

	// A default route (the kernel dumps it without a destination attribute) round-trips too.
	mustSet(t, m, "0.0.0.0/0", "10.99.0.2", "10.99.1.2")
	wantRoute(t, n, "0.0.0.0/0", main, DefaultProtocol, "10.99.0.2", "10.99.1.2")
	ct.changes.Store(0)
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	if c := ct.changes.Load(); c != 0 {
		t.Fatalf("%d kernel changes on Resync with everything in place", c)
	}

	// Withdraw.
	for _, d := range []string{"10.10.0.0/24", "0.0.0.0/0"} {
		if err := m.Remove(pfx(d)); err != nil {
			t.Fatal(err)
		}
		wantRoute(t, n, d, main, DefaultProtocol)
	}
	if got, err := ct.List(); err != nil || len(got) != 0 {
		t.Fatalf("List() after withdrawing all = %v, %v", got, err)
	}
	// Deleting what is not there is not an error.
	if err := ct.Delete(pfx("10.10.0.0/24")); err != nil {
		t.Fatalf("Delete of a missing route: %v", err)
	}
}

func TestNetlinkStaleCleanupKeepsOthers(t *testing.T) {
	n := newTestNS(t)
	main := syscall.RT_TABLE_MAIN
	n.addForeign(t, "10.50.0.0/24", "10.99.0.5", protoStatic, main)
	n.addForeign(t, "10.51.0.0/24", "10.99.0.5", protoBoot, main)
	n.addForeign(t, "10.52.0.0/24", "10.99.0.5", DefaultProtocol, otherTable) // ours by protocol, another table
	localBefore := len(n.find(t, "10.99.0.1/32", syscall.RT_TABLE_LOCAL))

	// An earlier run left three routes.
	prev := NewNetlinkTable(n.H, DefaultProtocol, 0)
	for _, r := range []Route{
		{Dst: pfx("10.20.0.0/24"), NextHops: addrs("10.99.0.2")},
		{Dst: pfx("10.21.0.0/24"), NextHops: addrs("10.99.0.2", "10.99.1.2")},
		{Dst: pfx("10.22.0.0/24"), NextHops: addrs("10.99.0.2")},
	} {
		mustNL(t, "install "+r.String(), prev.Replace(r))
	}

	// And one multipath route written by someone else with the next hops in reverse order.
	_, d23, _ := net.ParseCIDR("10.23.0.0/24")
	mustNL(t, "add 10.23.0.0/24", n.H.RouteAdd(&netlink.Route{Dst: d23, Protocol: DefaultProtocol, MultiPath: []*netlink.NexthopInfo{
		{Gw: net.ParseIP("10.99.1.2")}, {Gw: net.ParseIP("10.99.0.2")},
	}}))
	listed, err := prev.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range listed {
		if r.Dst == pfx("10.23.0.0/24") && !slices.Equal(r.NextHops, addrs("10.99.0.2", "10.99.1.2")) {
			t.Fatalf("List() parsed %v, want next hops sorted", r)
		}
	}
	if len(listed) != 4 {
		t.Fatalf("List() = %v, want the 4 routes in main", listed)
	}

	ct := &countingTable{NetlinkTable: NewNetlinkTable(n.H, DefaultProtocol, 0)}
	m := startedManager(t, ct)
	// Start keeps them all.
	wantRoute(t, n, "10.22.0.0/24", main, DefaultProtocol, "10.99.0.2")
	mustSet(t, m, "10.20.0.0/24", "10.99.0.2")
	mustSet(t, m, "10.21.0.0/24", "10.99.1.2", "10.99.0.2")
	mustSet(t, m, "10.23.0.0/24", "10.99.0.2", "10.99.1.2")
	if c := ct.changes.Load(); c != 0 {
		t.Fatalf("confirming stale routes with their own next hops made %d kernel changes", c)
	}
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	wantRoute(t, n, "10.22.0.0/24", main, DefaultProtocol, "10.99.0.2") // not before Sweep

	staleBefore := testutil.ToFloat64(staleRemovedTotal)
	removed, err := m.Sweep()
	if err != nil || removed != 1 {
		t.Fatalf("Sweep() = %d, %v; want 1, nil", removed, err)
	}
	if d := testutil.ToFloat64(staleRemovedTotal) - staleBefore; d != 1 {
		t.Fatalf("stale removed counter grew by %v", d)
	}
	wantRoute(t, n, "10.22.0.0/24", main, DefaultProtocol)
	wantRoute(t, n, "10.20.0.0/24", main, DefaultProtocol, "10.99.0.2")
	wantRoute(t, n, "10.21.0.0/24", main, DefaultProtocol, "10.99.0.2", "10.99.1.2")

	// After Sweep, Resync deletes undesired routes of ours, but only ours, only in our table.
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	wantRoute(t, n, "10.50.0.0/24", main, protoStatic, "10.99.0.5")
	wantRoute(t, n, "10.51.0.0/24", main, protoBoot, "10.99.0.5")
	wantRoute(t, n, "10.52.0.0/24", otherTable, DefaultProtocol, "10.99.0.5")
	if rs := n.find(t, "10.99.0.0/24", main); len(rs) != 1 || rs[0].Protocol != syscall.RTPROT_KERNEL {
		t.Fatalf("connected route: %v", rs)
	}
	if after := len(n.find(t, "10.99.0.1/32", syscall.RT_TABLE_LOCAL)); after != localBefore || after == 0 {
		t.Fatalf("local table route for 10.99.0.1: %d before, %d after", localBefore, after)
	}
}

func TestNetlinkNeverReplacesForeignRoutes(t *testing.T) {
	n := newTestNS(t)
	main := syscall.RT_TABLE_MAIN
	n.addForeign(t, "10.60.0.0/24", "10.99.0.5", protoStatic, main)
	n.addForeign(t, "10.61.0.0/24", "10.99.0.5", DefaultProtocol, otherTable)
	m := startedManager(t, NewNetlinkTable(n.H, DefaultProtocol, 0))
	if _, err := m.Sweep(); err != nil {
		t.Fatal(err)
	}

	// BGP learns the node's own connected subnet and a prefix someone routed statically: neither is replaced.
	for _, dst := range []string{"10.99.0.0/24", "10.60.0.0/24"} {
		if err := m.Set(pfx(dst), addrs("10.99.1.2")); !errors.Is(err, ErrRouteExists) || !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("Set(%s) over a foreign route: err = %v, want ErrRouteExists", dst, err)
		}
	}
	if err := m.Resync(); !errors.Is(err, ErrRouteExists) {
		t.Fatalf("Resync: err = %v, want ErrRouteExists for the two conflicts", err)
	}
	for _, dst := range []string{"10.99.0.0/24", "10.60.0.0/24"} {
		if err := m.Remove(pfx(dst)); err != nil {
			t.Fatal(err)
		}
	}
	rs := n.find(t, "10.99.0.0/24", main)
	if len(rs) != 1 || rs[0].Protocol != syscall.RTPROT_KERNEL || rs[0].Gw != nil {
		t.Fatalf("connected route changed: %v", rs)
	}
	wantRoute(t, n, "10.60.0.0/24", main, protoStatic, "10.99.0.5")

	// Our protocol in another table is not ours: installing and withdrawing in main leaves it.
	mustSet(t, m, "10.61.0.0/24", "10.99.1.2")
	wantRoute(t, n, "10.61.0.0/24", main, DefaultProtocol, "10.99.1.2")
	if err := m.Remove(pfx("10.61.0.0/24")); err != nil {
		t.Fatal(err)
	}
	wantRoute(t, n, "10.61.0.0/24", main, DefaultProtocol)
	wantRoute(t, n, "10.61.0.0/24", otherTable, DefaultProtocol, "10.99.0.5")

	// Delete of a destination that only has a foreign route is a no-op.
	if err := NewNetlinkTable(n.H, DefaultProtocol, 0).Delete(pfx("10.60.0.0/24")); err != nil {
		t.Fatal(err)
	}
	wantRoute(t, n, "10.60.0.0/24", main, protoStatic, "10.99.0.5")
}

func TestNetlinkUnreachableGateway(t *testing.T) {
	n := newTestNS(t)
	main := syscall.RT_TABLE_MAIN
	m := startedManager(t, NewNetlinkTable(n.H, DefaultProtocol, 0))
	errsBefore := testutil.ToFloat64(installErrors)

	mustSet(t, m, "10.70.0.0/24", "10.99.0.2")
	err := m.Set(pfx("10.71.0.0/24"), addrs("10.200.0.1"))
	if err == nil {
		t.Fatal("Set via an unreachable gateway: want error")
	}
	t.Logf("kernel refused as expected: %v", err)
	if err := m.Set(pfx("10.70.0.0/24"), addrs("10.99.0.2", "10.200.0.1")); err == nil {
		t.Fatal("Set ECMP with an unreachable gateway: want error")
	}
	if d := testutil.ToFloat64(installErrors) - errsBefore; d != 2 {
		t.Fatalf("install errors grew by %v, want 2", d)
	}
	wantRoute(t, n, "10.70.0.0/24", main, DefaultProtocol, "10.99.0.2")
	wantRoute(t, n, "10.71.0.0/24", main, DefaultProtocol)
	mustSet(t, m, "10.72.0.0/24", "10.99.1.2")
	wantRoute(t, n, "10.72.0.0/24", main, DefaultProtocol, "10.99.1.2")
}

func TestNetlinkResyncRepairsDrift(t *testing.T) {
	n := newTestNS(t)
	main := syscall.RT_TABLE_MAIN
	m := startedManager(t, NewNetlinkTable(n.H, DefaultProtocol, 0))
	mustSet(t, m, "10.80.0.0/24", "10.99.0.2")
	mustSet(t, m, "10.81.0.0/24", "10.99.0.2", "10.99.1.2")
	mustSet(t, m, "10.82.0.0/24", "10.99.1.2")
	if _, err := m.Sweep(); err != nil {
		t.Fatal(err)
	}

	// Behind our back: one route deleted, one changed, one of ours added, and a foreign route.
	_, d80, _ := net.ParseCIDR("10.80.0.0/24")
	mustNL(t, "delete 10.80.0.0/24", n.H.RouteDel(&netlink.Route{Dst: d80, Protocol: DefaultProtocol}))
	_, d81, _ := net.ParseCIDR("10.81.0.0/24")
	mustNL(t, "replace 10.81.0.0/24", n.H.RouteReplace(&netlink.Route{Dst: d81, Gw: net.ParseIP("10.99.0.9"), Protocol: DefaultProtocol}))
	n.addForeign(t, "10.83.0.0/24", "10.99.0.2", DefaultProtocol, main)
	n.addForeign(t, "10.84.0.0/24", "10.99.0.2", protoStatic, main)

	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	wantRoute(t, n, "10.80.0.0/24", main, DefaultProtocol, "10.99.0.2")
	wantRoute(t, n, "10.81.0.0/24", main, DefaultProtocol, "10.99.0.2", "10.99.1.2")
	wantRoute(t, n, "10.82.0.0/24", main, DefaultProtocol, "10.99.1.2")
	wantRoute(t, n, "10.83.0.0/24", main, DefaultProtocol)
	wantRoute(t, n, "10.84.0.0/24", main, protoStatic, "10.99.0.2")

	// A foreign route took the place of one of ours: Resync does not replace it.
	_, d82, _ := net.ParseCIDR("10.82.0.0/24")
	mustNL(t, "delete 10.82.0.0/24", n.H.RouteDel(&netlink.Route{Dst: d82, Protocol: DefaultProtocol}))
	n.addForeign(t, "10.82.0.0/24", "10.99.0.7", protoStatic, main)
	if err := m.Resync(); !errors.Is(err, ErrRouteExists) {
		t.Fatalf("Resync: err = %v, want ErrRouteExists", err)
	}
	wantRoute(t, n, "10.82.0.0/24", main, protoStatic, "10.99.0.7")
}

func TestNetlinkOtherTableAndProtocol(t *testing.T) {
	n := newTestNS(t)
	main := syscall.RT_TABLE_MAIN
	const table, proto = 1000, 200 // a table id above 255 goes in RTA_TABLE
	n.addForeign(t, "10.90.0.0/24", "10.99.0.5", DefaultProtocol, main)
	n.addForeign(t, "10.91.0.0/24", "10.99.0.5", DefaultProtocol, table)

	tbl := NewNetlinkTable(n.H, proto, table)
	m := startedManager(t, tbl)
	mustSet(t, m, "10.90.0.0/24", "10.99.0.2", "10.99.1.2")
	wantRoute(t, n, "10.90.0.0/24", table, proto, "10.99.0.2", "10.99.1.2")
	got, err := tbl.List()
	if err != nil || len(got) != 1 || got[0].Dst != pfx("10.90.0.0/24") {
		t.Fatalf("List() = %v, %v", got, err)
	}
	if _, err := m.Sweep(); err != nil {
		t.Fatal(err)
	}
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(pfx("10.90.0.0/24")); err != nil {
		t.Fatal(err)
	}
	wantRoute(t, n, "10.90.0.0/24", table, proto)
	wantRoute(t, n, "10.90.0.0/24", main, DefaultProtocol, "10.99.0.5")
	wantRoute(t, n, "10.91.0.0/24", table, DefaultProtocol, "10.99.0.5")

	// Protocol 0 would match every route on delete: such a table refuses to work.
	bad := NewNetlinkTable(n.H, 0, 0)
	if err := bad.Delete(pfx("10.90.0.0/24")); err == nil {
		t.Fatal("protocol 0 table deleted")
	}
	if _, err := bad.List(); err == nil {
		t.Fatal("protocol 0 table listed")
	}
	wantRoute(t, n, "10.90.0.0/24", main, DefaultProtocol, "10.99.0.5")
}

func TestNetlinkIPv6(t *testing.T) {
	n := newTestNS(t)
	for _, l := range []struct{ name, addr string }{{testLinkA, "2001:db8:99::1/64"}, {testLinkB, "2001:db8:98::1/64"}} {
		link, err := n.H.LinkByName(l.name)
		if err != nil {
			t.Fatal(err)
		}
		a, err := netlink.ParseAddr(l.addr)
		if err != nil {
			t.Fatal(err)
		}
		a.Flags = syscall.IFA_F_NODAD
		mustNL(t, "add "+l.addr, n.H.AddrAdd(link, a))
	}
	ct := &countingTable{NetlinkTable: NewNetlinkTable(n.H, DefaultProtocol, 0)}
	m := startedManager(t, ct)
	mustSet(t, m, "2001:db8:50::/64", "2001:db8:99::2")
	mustSet(t, m, "2001:db8:51::/64", "2001:db8:98::2", "2001:db8:99::2")
	got, err := ct.List()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b Route) int { return a.Dst.Compare(b.Dst) })
	if len(got) != 2 || got[0].Dst != pfx("2001:db8:50::/64") || !slices.Equal(got[1].NextHops, addrs("2001:db8:98::2", "2001:db8:99::2")) {
		t.Fatalf("List() = %v", got)
	}
	ct.changes.Store(0)
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	if c := ct.changes.Load(); c != 0 {
		t.Fatalf("%d kernel changes on Resync with everything in place", c)
	}
	mustSet(t, m, "2001:db8:51::/64", "2001:db8:99::3")
	for _, d := range []string{"2001:db8:50::/64", "2001:db8:51::/64"} {
		if err := m.Remove(pfx(d)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := ct.List(); err != nil || len(got) != 0 {
		t.Fatalf("List() after withdrawing all = %v, %v", got, err)
	}
}
