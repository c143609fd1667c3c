package routes

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeTable models one kernel routing table: our routes, routes of other protocols, and the kernel's replace
// semantics (replace takes over whatever route is at the destination, whatever its protocol). It records every
// call. It has no Add method; addTable adds one.
type fakeTable struct {
	mu      sync.Mutex
	ours    map[netip.Prefix][]netip.Addr
	foreign map[netip.Prefix]string // destination -> description of another protocol's route
	reject  map[netip.Addr]bool     // next hops the "kernel" refuses (unreachable gateways)
	calls   []string                // "replace <route>", "add <route>", "delete <dst>", "list"
	failDel map[netip.Prefix]bool   // deletes that fail
}

func newFakeTable() *fakeTable {
	return &fakeTable{
		ours:    map[netip.Prefix][]netip.Addr{},
		foreign: map[netip.Prefix]string{},
		reject:  map[netip.Addr]bool{},
		failDel: map[netip.Prefix]bool{},
	}
}

func (f *fakeTable) check(r Route) error {
	for _, h := range r.NextHops {
		if f.reject[h] {
			return fmt.Errorf("nexthop has invalid gateway %s", h)
		}
	}
	return nil
}

func (f *fakeTable) Replace(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "replace "+r.String())
	if err := f.check(r); err != nil {
		return err
	}
	delete(f.foreign, r.Dst) // what the kernel does: replace does not look at the protocol
	f.ours[r.Dst] = slices.Clone(r.NextHops)
	return nil
}

func (f *fakeTable) Delete(dst netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "delete "+dst.String())
	if f.failDel[dst] {
		return errors.New("delete failed")
	}
	delete(f.ours, dst)
	return nil
}

func (f *fakeTable) List() ([]Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "list")
	var out []Route
	for dst, hops := range f.ours {
		out = append(out, Route{Dst: dst, NextHops: slices.Clone(hops)})
	}
	return out, nil
}

// takeCalls returns the calls since the last takeCalls.
func (f *fakeTable) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeTable) kernel(dst netip.Prefix) ([]netip.Addr, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.ours[dst]
	return h, ok
}

// addTable is a fakeTable with the kernel's exclusive create.
type addTable struct{ *fakeTable }

func (f addTable) Add(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "add "+r.String())
	if _, ok := f.foreign[r.Dst]; ok {
		return fmt.Errorf("%w: file exists", ErrRouteExists)
	}
	if _, ok := f.ours[r.Dst]; ok {
		return fmt.Errorf("%w: file exists", ErrRouteExists)
	}
	if err := f.check(r); err != nil {
		return err
	}
	f.ours[r.Dst] = slices.Clone(r.NextHops)
	return nil
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func wantCalls(t *testing.T, f *fakeTable, want ...string) {
	t.Helper()
	got := f.takeCalls()
	if !slices.Equal(got, want) {
		t.Fatalf("table calls:\n got  %q\n want %q", got, want)
	}
}

func wantKernel(t *testing.T, f *fakeTable, dst string, hops ...string) {
	t.Helper()
	got, ok := f.kernel(pfx(dst))
	if len(hops) == 0 {
		if ok {
			t.Fatalf("kernel has %s via %v, want no route", dst, got)
		}
		return
	}
	if !ok || !slices.Equal(got, addrs(hops...)) {
		t.Fatalf("kernel has %s via %v (present %v), want via %v", dst, got, ok, hops)
	}
}

func startedManager(t *testing.T, tbl Table) *Manager {
	t.Helper()
	m := NewManager(tbl, nil)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSetSameNextHopsIssuesNoCall(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, f)
	f.takeCalls()

	if err := m.Set(pfx("10.1.0.0/24"), addrs("192.0.2.1", "192.0.2.2")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "replace 10.1.0.0/24 via [192.0.2.1 192.0.2.2]")

	// Same next hops, also unsorted, duplicated, and with host bits in the prefix: nothing to do.
	for _, hops := range [][]netip.Addr{
		addrs("192.0.2.1", "192.0.2.2"),
		addrs("192.0.2.2", "192.0.2.1"),
		addrs("192.0.2.2", "192.0.2.1", "192.0.2.2"),
	} {
		if err := m.Set(pfx("10.1.0.0/24"), hops); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Set(pfx("10.1.0.7/24"), addrs("192.0.2.1", "192.0.2.2")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f)
}

func TestSetChangeIssuesOneReplace(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, f)
	dst := pfx("10.1.0.0/24")
	if err := m.Set(dst, addrs("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	f.takeCalls()

	if err := m.Set(dst, addrs("192.0.2.1", "192.0.2.3")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "replace 10.1.0.0/24 via [192.0.2.1 192.0.2.3]")
	wantKernel(t, f, "10.1.0.0/24", "192.0.2.1", "192.0.2.3")

	if err := m.Set(dst, addrs("192.0.2.3")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "replace 10.1.0.0/24 via [192.0.2.3]")
	wantKernel(t, f, "10.1.0.0/24", "192.0.2.3")
}

func TestAddForNewRoutesReplaceForOurs(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, addTable{f})
	f.takeCalls()
	dst := pfx("10.1.0.0/24")
	if err := m.Set(dst, addrs("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "add 10.1.0.0/24 via [192.0.2.1]")
	if err := m.Set(dst, addrs("192.0.2.2")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "replace 10.1.0.0/24 via [192.0.2.2]")
}

func TestRemove(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, f)
	a, b := pfx("10.1.0.0/24"), pfx("10.2.0.0/24")
	for _, dst := range []netip.Prefix{a, b} {
		if err := m.Set(dst, addrs("192.0.2.1")); err != nil {
			t.Fatal(err)
		}
	}
	f.takeCalls()

	if err := m.Remove(a); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "delete 10.1.0.0/24")
	wantKernel(t, f, "10.1.0.0/24")
	wantKernel(t, f, "10.2.0.0/24", "192.0.2.1")

	// Removing again, or something never set, costs nothing.
	if err := m.Remove(a); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(pfx("10.9.0.0/24")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f)

	// Set with no next hops is Remove.
	if err := m.Set(b, nil); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "delete 10.2.0.0/24")
	if got := m.Routes(); len(got) != 0 {
		t.Fatalf("Routes() = %v, want none", got)
	}

	// A failed delete is retried by Resync.
	if err := m.Set(a, addrs("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	f.failDel[a] = true
	if err := m.Remove(a); err == nil {
		t.Fatal("Remove: want error from the table")
	}
	f.failDel[a] = false
	f.takeCalls()
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "list", "delete 10.1.0.0/24")
	wantKernel(t, f, "10.1.0.0/24")
}

func TestStartSweepDeletesOnlyUnconfirmedStale(t *testing.T) {
	f := newFakeTable()
	// Left by an earlier run.
	f.ours[pfx("10.1.0.0/24")] = addrs("192.0.2.1")
	f.ours[pfx("10.2.0.0/24")] = addrs("192.0.2.1", "192.0.2.2")
	f.ours[pfx("10.3.0.0/24")] = addrs("192.0.2.1")
	f.ours[pfx("10.4.0.0/24")] = addrs("192.0.2.9")
	f.foreign[pfx("10.5.0.0/24")] = "proto static"
	staleBefore := testutil.ToFloat64(staleRemovedTotal)

	m := NewManager(f, nil)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "list") // Start changes nothing

	// Confirmed with the same next hops: no call. Confirmed with other next hops: one replace.
	if err := m.Set(pfx("10.1.0.0/24"), addrs("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(pfx("10.2.0.0/24"), addrs("192.0.2.2", "192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(pfx("10.3.0.0/24"), addrs("192.0.2.3")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "replace 10.3.0.0/24 via [192.0.2.3]")

	// Before Sweep, Resync keeps stale candidates.
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "list")
	wantKernel(t, f, "10.4.0.0/24", "192.0.2.9")

	removed, err := m.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if removed != 1 {
		t.Fatalf("Sweep removed %d, want 1", removed)
	}
	wantCalls(t, f, "delete 10.4.0.0/24")
	wantKernel(t, f, "10.1.0.0/24", "192.0.2.1")
	wantKernel(t, f, "10.2.0.0/24", "192.0.2.1", "192.0.2.2")
	wantKernel(t, f, "10.3.0.0/24", "192.0.2.3")
	wantKernel(t, f, "10.4.0.0/24")
	if _, ok := f.foreign[pfx("10.5.0.0/24")]; !ok {
		t.Fatal("foreign route gone")
	}
	if d := testutil.ToFloat64(staleRemovedTotal) - staleBefore; d != 1 {
		t.Fatalf("stale removed counter grew by %v, want 1", d)
	}

	// A second Sweep has nothing to do.
	if removed, err := m.Sweep(); err != nil || removed != 0 {
		t.Fatalf("second Sweep = %d, %v", removed, err)
	}
	wantCalls(t, f)
}

func TestStaleRemovedByRemove(t *testing.T) {
	f := newFakeTable()
	f.ours[pfx("10.1.0.0/24")] = addrs("192.0.2.1")
	m := startedManager(t, f)
	f.takeCalls()
	if err := m.Remove(pfx("10.1.0.0/24")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "delete 10.1.0.0/24")
}

func TestResyncRepairsDrift(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, addTable{f})
	for i, hops := range [][]netip.Addr{addrs("192.0.2.1"), addrs("192.0.2.1", "192.0.2.2"), addrs("192.0.2.3")} {
		if err := m.Set(pfx(fmt.Sprintf("10.%d.0.0/24", i+1)), hops); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Sweep(); err != nil {
		t.Fatal(err)
	}
	f.foreign[pfx("10.50.0.0/24")] = "proto static"
	f.foreign[pfx("10.51.0.0/24")] = "proto kernel"
	f.takeCalls()

	// Behind our back: one route deleted, one changed, one of ours added that nobody wants.
	f.mu.Lock()
	delete(f.ours, pfx("10.1.0.0/24"))
	f.ours[pfx("10.2.0.0/24")] = addrs("192.0.2.9")
	f.ours[pfx("10.9.0.0/24")] = addrs("192.0.2.1")
	f.mu.Unlock()

	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	calls := f.takeCalls()
	slices.Sort(calls[1:]) // map order
	want := []string{"list", "add 10.1.0.0/24 via [192.0.2.1]", "delete 10.9.0.0/24", "replace 10.2.0.0/24 via [192.0.2.1 192.0.2.2]"}
	if !slices.Equal(calls, want) {
		t.Fatalf("resync calls:\n got  %q\n want %q", calls, want)
	}
	wantKernel(t, f, "10.1.0.0/24", "192.0.2.1")
	wantKernel(t, f, "10.2.0.0/24", "192.0.2.1", "192.0.2.2")
	wantKernel(t, f, "10.3.0.0/24", "192.0.2.3")
	wantKernel(t, f, "10.9.0.0/24")
	if len(f.foreign) != 2 {
		t.Fatalf("foreign routes touched: %v", f.foreign)
	}

	// In line now: the next Resync only lists.
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f, "list")
}

func TestForeignRouteIsNeverReplaced(t *testing.T) {
	f := newFakeTable()
	f.foreign[pfx("10.50.0.0/24")] = "proto static"
	m := startedManager(t, addTable{f})
	if _, err := m.Sweep(); err != nil {
		t.Fatal(err)
	}
	errsBefore := testutil.ToFloat64(installErrors)

	err := m.Set(pfx("10.50.0.0/24"), addrs("192.0.2.1"))
	if !errors.Is(err, ErrRouteExists) {
		t.Fatalf("Set over a foreign route: err = %v, want ErrRouteExists", err)
	}
	if d := testutil.ToFloat64(installErrors) - errsBefore; d != 1 {
		t.Fatalf("install errors grew by %v, want 1", d)
	}
	// Resync retries with Add, never Replace, never Delete.
	f.takeCalls()
	if err := m.Resync(); !errors.Is(err, ErrRouteExists) {
		t.Fatalf("Resync: err = %v, want ErrRouteExists", err)
	}
	for _, c := range f.takeCalls() {
		if strings.HasPrefix(c, "replace") || strings.HasPrefix(c, "delete") {
			t.Fatalf("Resync issued %q", c)
		}
	}
	if f.foreign[pfx("10.50.0.0/24")] != "proto static" {
		t.Fatal("foreign route replaced")
	}
	// Withdrawing it deletes nothing: it was never ours.
	if err := m.Remove(pfx("10.50.0.0/24")); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, f)
	if f.foreign[pfx("10.50.0.0/24")] != "proto static" {
		t.Fatal("foreign route deleted")
	}
}

func TestRejectedNextHopDoesNotDisturbOthers(t *testing.T) {
	f := newFakeTable()
	f.reject[netip.MustParseAddr("198.51.100.1")] = true
	m := startedManager(t, addTable{f})
	errsBefore := testutil.ToFloat64(installErrors)

	if err := m.Set(pfx("10.1.0.0/24"), addrs("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(pfx("10.2.0.0/24"), addrs("198.51.100.1")); err == nil {
		t.Fatal("Set with a rejected next hop: want error")
	}
	// ECMP with one bad next hop: refused, the route applied before stays.
	if err := m.Set(pfx("10.1.0.0/24"), addrs("192.0.2.1", "198.51.100.1")); err == nil {
		t.Fatal("Set ECMP with a rejected next hop: want error")
	}
	if d := testutil.ToFloat64(installErrors) - errsBefore; d != 2 {
		t.Fatalf("install errors grew by %v, want 2", d)
	}
	wantKernel(t, f, "10.1.0.0/24", "192.0.2.1")
	wantKernel(t, f, "10.2.0.0/24")
	if err := m.Set(pfx("10.3.0.0/24"), addrs("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	wantKernel(t, f, "10.3.0.0/24", "192.0.2.1")

	// The failed routes are still desired and retried by the same Set (no false no-op).
	f.takeCalls()
	if err := m.Set(pfx("10.2.0.0/24"), addrs("198.51.100.1")); err == nil {
		t.Fatal("want error again")
	}
	wantCalls(t, f, "add 10.2.0.0/24 via [198.51.100.1]")
	delete(f.reject, netip.MustParseAddr("198.51.100.1"))
	if err := m.Set(pfx("10.2.0.0/24"), addrs("198.51.100.1")); err != nil {
		t.Fatal(err)
	}
	wantKernel(t, f, "10.2.0.0/24", "198.51.100.1")
}

func TestInvalidInput(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, f)
	f.takeCalls()
	for _, tc := range []struct {
		dst  netip.Prefix
		hops []netip.Addr
	}{
		{netip.Prefix{}, addrs("192.0.2.1")},
		{pfx("10.1.0.0/24"), addrs("2001:db8::1")},
		{pfx("2001:db8:1::/64"), addrs("192.0.2.1")},
		{pfx("10.1.0.0/24"), []netip.Addr{{}}},
		{pfx("10.1.0.0/24"), addrs("0.0.0.0")},
		{pfx("2001:db8:1::/64"), addrs("fe80::1%eth0")},
	} {
		if err := m.Set(tc.dst, tc.hops); err == nil {
			t.Errorf("Set(%v, %v): want error", tc.dst, tc.hops)
		}
	}
	wantCalls(t, f)
	// A 4-in-6 next hop for an IPv4 destination is its IPv4 address.
	if err := m.Set(pfx("10.1.0.0/24"), addrs("::ffff:192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	wantKernel(t, f, "10.1.0.0/24", "192.0.2.1")
}

func TestRoutesSortedAndCopied(t *testing.T) {
	f := newFakeTable()
	f.ours[pfx("10.200.0.0/24")] = addrs("192.0.2.1") // stale, not desired: not listed
	m := startedManager(t, f)
	for _, d := range []string{"10.3.0.0/24", "10.1.0.0/16", "10.1.0.0/24", "2001:db8::/64", "0.0.0.0/0"} {
		hops := addrs("192.0.2.2", "192.0.2.1")
		if netip.MustParsePrefix(d).Addr().Is6() {
			hops = addrs("2001:db8:ff::1")
		}
		if err := m.Set(pfx(d), hops); err != nil {
			t.Fatal(err)
		}
	}
	got := m.Routes()
	var dsts []string
	for _, r := range got {
		dsts = append(dsts, r.Dst.String())
	}
	want := []string{"0.0.0.0/0", "10.1.0.0/16", "10.1.0.0/24", "10.3.0.0/24", "2001:db8::/64"}
	if !slices.Equal(dsts, want) {
		t.Fatalf("Routes() dsts = %v, want %v", dsts, want)
	}
	if !slices.Equal(got[0].NextHops, addrs("192.0.2.1", "192.0.2.2")) {
		t.Fatalf("next hops %v not sorted", got[0].NextHops)
	}
	got[0].NextHops[0] = netip.MustParseAddr("203.0.113.1") // must not reach the Manager
	if again := m.Routes(); again[0].NextHops[0] != netip.MustParseAddr("192.0.2.1") {
		t.Fatal("Routes() shares next hops with the Manager")
	}
}

func TestHopSetsShared(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, f)
	for i := range 1000 {
		dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		if err := m.Set(dst, addrs("192.0.2.1", "192.0.2.2")); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.sets) != 1 {
		t.Fatalf("%d next-hop sets for one distinct set", len(m.sets))
	}
	// Churn through many distinct sets, then back: the old ones are released.
	for i := range 1000 {
		dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		if err := m.Set(dst, addrs(fmt.Sprintf("192.0.2.%d", 3+i%200))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1000 {
		dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		if i%2 == 0 {
			if err := m.Remove(dst); err != nil {
				t.Fatal(err)
			}
		} else if err := m.Set(dst, addrs("192.0.2.1")); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.sets) != 1 || m.routes.len() != 500 {
		t.Fatalf("%d next-hop sets, %d routes; want 1, 500", len(m.sets), m.routes.len())
	}
	for _, id := range m.sets {
		if hs := m.hops[id]; hs.refs != 1000 { // desired and applied of 500 routes
			t.Fatalf("refs = %d, want 1000", hs.refs)
		}
	}
}

func TestInstalledGauge(t *testing.T) {
	f := newFakeTable()
	f.ours[pfx("10.100.0.0/24")] = addrs("192.0.2.1")
	before := testutil.ToFloat64(installedRoutes)
	m := startedManager(t, f)
	delta := func() float64 { return testutil.ToFloat64(installedRoutes) - before }
	if d := delta(); d != 1 {
		t.Fatalf("after Start: gauge delta %v, want 1 (the stale route)", d)
	}
	_ = m.Set(pfx("10.1.0.0/24"), addrs("192.0.2.1"))
	_ = m.Set(pfx("10.2.0.0/24"), addrs("192.0.2.1"))
	_ = m.Set(pfx("10.2.0.0/24"), addrs("192.0.2.2"))
	if d := delta(); d != 3 {
		t.Fatalf("gauge delta %v, want 3", d)
	}
	_ = m.Remove(pfx("10.1.0.0/24"))
	if _, err := m.Sweep(); err != nil {
		t.Fatal(err)
	}
	if d := delta(); d != 1 {
		t.Fatalf("gauge delta %v, want 1", d)
	}
}

func TestMetricsLint(t *testing.T) {
	cs := Collectors()
	if len(cs) != 4 {
		t.Fatalf("%d collectors, want 4", len(cs))
	}
	for _, c := range cs {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("metric %s: %s", p.Metric, p.Text)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, addTable{f})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(g), byte(i >> 8), byte(i)}), 32)
				_ = m.Set(dst, addrs("192.0.2.1", fmt.Sprintf("192.0.2.%d", 2+i%3)))
				if i%3 == 0 {
					_ = m.Remove(dst)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 20 {
			if i == 10 {
				_, _ = m.Sweep()
			}
			_ = m.Resync()
			_ = m.Routes()
		}
	}()
	wg.Wait()
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	// The kernel matches the desired routes exactly.
	want := m.Routes()
	got, _ := f.List()
	slices.SortFunc(got, func(a, b Route) int { return a.Dst.Compare(b.Dst) })
	if len(got) != len(want) {
		t.Fatalf("kernel has %d routes, desired %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Dst != want[i].Dst || !slices.Equal(got[i].NextHops, want[i].NextHops) {
			t.Fatalf("kernel %v, desired %v", got[i], want[i])
		}
	}
}
