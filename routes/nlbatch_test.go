package routes

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Kernel tests of NetlinkTable.Batch, in a test namespace (see newTestNS).

func batchTable(t *testing.T, n *testNS, protocol, table int) *NetlinkTable {
	t.Helper()
	tbl := NewNetlinkTable(n.H, protocol, table)
	t.Cleanup(func() { tbl.Close() })
	if err := tbl.BatchMode(); err != nil {
		t.Fatalf("BatchMode: %v", err)
	}
	if tbl.b.mode != batchSocket {
		t.Fatalf("batch mode %d, want a socket of its own", tbl.b.mode)
	}
	return tbl
}

func add(dst string, hops ...string) Op {
	return Op{Kind: OpAdd, Route: Route{Dst: pfx(dst), NextHops: addrs(hops...)}}
}

func replace(dst string, hops ...string) Op {
	return Op{Kind: OpReplace, Route: Route{Dst: pfx(dst), NextHops: addrs(hops...)}}
}

func del(dst string) Op { return Op{Kind: OpDelete, Route: Route{Dst: pfx(dst)}} }

// wantErrs checks errs against the indexes that must fail; it returns errs (never nil) for more checks.
func wantErrs(t *testing.T, errs []error, n int, failing ...int) []error {
	t.Helper()
	if len(failing) == 0 {
		if errs != nil {
			t.Fatalf("Batch errors %v, want none (nil slice)", errs)
		}
		return make([]error, n)
	}
	if len(errs) != n {
		t.Fatalf("Batch returned %d errors for %d ops", len(errs), n)
	}
	fail := map[int]bool{}
	for _, i := range failing {
		fail[i] = true
	}
	for i, err := range errs {
		if (err != nil) != fail[i] {
			t.Fatalf("op %d: err = %v, want failure %v", i, err, fail[i])
		}
	}
	return errs
}

func TestBatchPerRouteOutcomes(t *testing.T) {
	n := newTestNS(t)
	main := syscall.RT_TABLE_MAIN
	n.addForeign(t, "10.60.0.0/24", "10.99.0.5", protoStatic, main)
	tbl := batchTable(t, n, DefaultProtocol, 0)

	ops := []Op{
		add("10.10.0.0/24", "10.99.0.2"),                           // 0
		add("10.11.0.0/24", "10.200.0.1"),                          // 1: gateway unreachable
		add("10.12.0.0/24", "10.99.0.2", "10.99.1.2"),              // 2: ECMP
		add("10.13.0.0/24", "10.99.0.2", "10.200.0.1"),             // 3: ECMP with one unreachable gateway
		add("10.60.0.0/24", "10.99.1.2"),                           // 4: a static route is there
		add("10.99.0.0/24", "10.99.1.2"),                           // 5: the connected route is there
		add("10.14.0.0/24", "10.99.0.2", "10.99.0.4", "10.99.1.2"), // 6: three next hops
		del("10.15.0.0/24"),                                        // 7: missing: not an error
		del("10.60.0.0/24"),                                        // 8: only a static route: not ours, not an error
		replace("10.16.0.0/24", "10.99.1.3"),                       // 9: replace creates
		{Kind: OpAdd, Route: Route{Dst: pfx("10.17.0.0/24")}},      // 10: no next hop: refused before the kernel
		add("10.18.0.0/24", "10.99.0.2"),                           // 11
	}
	errs := wantErrs(t, tbl.Batch(ops), len(ops), 1, 3, 4, 5, 10)
	for _, i := range []int{4, 5} {
		if !errors.Is(errs[i], ErrRouteExists) || !errors.Is(errs[i], syscall.EEXIST) {
			t.Errorf("op %d over a foreign route: err = %v, want ErrRouteExists and EEXIST", i, errs[i])
		}
	}
	for _, i := range []int{1, 3} {
		if !errors.Is(errs[i], syscall.ENETUNREACH) || errors.Is(errs[i], ErrRouteExists) {
			t.Errorf("op %d via an unreachable gateway: err = %v, want ENETUNREACH", i, errs[i])
		}
	}
	t.Logf("kernel refused as expected: %v; %v", errs[1], errs[4])

	wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.0.2")
	wantRoute(t, n, "10.11.0.0/24", main, DefaultProtocol)
	wantRoute(t, n, "10.12.0.0/24", main, DefaultProtocol, "10.99.0.2", "10.99.1.2")
	wantRoute(t, n, "10.13.0.0/24", main, DefaultProtocol)
	wantRoute(t, n, "10.60.0.0/24", main, protoStatic, "10.99.0.5")
	if rs := n.find(t, "10.99.0.0/24", main); len(rs) != 1 || rs[0].Protocol != syscall.RTPROT_KERNEL {
		t.Fatalf("connected route: %v", rs)
	}
	wantRoute(t, n, "10.14.0.0/24", main, DefaultProtocol, "10.99.0.2", "10.99.0.4", "10.99.1.2")
	wantRoute(t, n, "10.16.0.0/24", main, DefaultProtocol, "10.99.1.3")
	wantRoute(t, n, "10.17.0.0/24", main, DefaultProtocol)
	wantRoute(t, n, "10.18.0.0/24", main, DefaultProtocol, "10.99.0.2")

	// Ops on one destination apply in order, in one write: add, add again (exists), replace, delete, add.
	errs = wantErrs(t, tbl.Batch([]Op{
		add("10.19.0.0/24", "10.99.0.2"),
		add("10.19.0.0/24", "10.99.0.3"),
		replace("10.19.0.0/24", "10.99.0.2", "10.99.1.2"),
		del("10.19.0.0/24"),
		add("10.19.0.0/24", "10.99.1.9"),
		replace("10.10.0.0/24", "10.99.1.2"),
		del("10.12.0.0/24"),
	}), 7, 1)
	if !errors.Is(errs[1], ErrRouteExists) {
		t.Fatalf("second add: %v", errs[1])
	}
	wantRoute(t, n, "10.19.0.0/24", main, DefaultProtocol, "10.99.1.9")
	wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.1.2")
	wantRoute(t, n, "10.12.0.0/24", main, DefaultProtocol)

	// List agrees, and deleting everything listed leaves the foreign routes.
	got, err := tbl.List()
	if err != nil {
		t.Fatal(err)
	}
	var dels []Op
	for _, r := range got {
		dels = append(dels, Op{Kind: OpDelete, Route: r})
	}
	if len(dels) != 5 {
		t.Fatalf("List() = %v, want 5 routes", got)
	}
	wantErrs(t, tbl.Batch(dels), len(dels))
	if got, err := tbl.List(); err != nil || len(got) != 0 {
		t.Fatalf("List() after deleting all = %v, %v", got, err)
	}
	wantRoute(t, n, "10.60.0.0/24", main, protoStatic, "10.99.0.5")
}

// TestBatchAcksMatchedAcrossWrites sends more ops than fit one write, with failures scattered among them: the
// errors land on exactly the failing ops.
func TestBatchAcksMatchedAcrossWrites(t *testing.T) {
	n := newTestNS(t)
	tbl := batchTable(t, n, DefaultProtocol, 0)
	const count = 5000
	if tbl.b.maxMsgs >= count {
		t.Fatalf("one write holds %d requests: the test needs several writes", tbl.b.maxMsgs)
	}
	var ops []Op
	var failing []int
	for i := range count {
		dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128, byte(i >> 8), byte(i)}), 32)
		hops := addrs("10.99.0.2")
		switch {
		case i%997 == 3:
			hops = addrs("10.200.0.1")
			failing = append(failing, i)
		case i%2 == 1:
			hops = addrs("10.99.0.2", "10.99.1.2")
		}
		ops = append(ops, Op{Kind: OpAdd, Route: Route{Dst: dst, NextHops: hops}})
	}
	// One op after the last write boundary fails too, and one invalid op is never sent.
	ops[count-1].Route.NextHops = addrs("10.200.0.2")
	ops[tbl.b.maxMsgs].Route.NextHops = nil
	failing = append(failing, tbl.b.maxMsgs, count-1)
	errs := wantErrs(t, tbl.Batch(ops), count, failing...)
	for _, i := range failing {
		if i != tbl.b.maxMsgs && !errors.Is(errs[i], syscall.ENETUNREACH) {
			t.Fatalf("op %d: %v", i, errs[i])
		}
	}
	got, err := tbl.List()
	if err != nil || len(got) != count-len(failing) {
		t.Fatalf("List() = %d routes, %v; want %d", len(got), err, count-len(failing))
	}
	for i := range ops {
		ops[i].Kind = OpDelete
	}
	wantErrs(t, tbl.Batch(ops), count)
	if got, err := tbl.List(); err != nil || len(got) != 0 {
		t.Fatalf("List() after delete = %d routes, %v", len(got), err)
	}
}

// TestBatchSkipsStaleAcks leaves the acknowledgement of an old sequence number in the socket (as a failed batch
// can): the next batch skips it and attributes only its own.
func TestBatchSkipsStaleAcks(t *testing.T) {
	n := newTestNS(t)
	tbl := batchTable(t, n, DefaultProtocol, 0)
	wantErrs(t, tbl.Batch([]Op{add("10.10.0.0/24", "10.99.0.2")}), 1)

	// A failing request under the last sequence number used, and a succeeding one under the next batch's first
	// number minus two, written straight to the socket and never read.
	fd := int(tbl.b.f.Fd())
	for _, s := range []struct {
		r   Route
		seq uint32
	}{
		{Route{Dst: pfx("10.10.0.0/24"), NextHops: addrs("10.99.0.2")}, tbl.b.seq},
		{Route{Dst: pfx("10.30.0.0/24"), NextHops: addrs("10.99.0.2")}, tbl.b.seq - 1},
	} {
		req, err := appendRouteRequest(nil, OpAdd, &s.r, s.seq, syscall.RT_TABLE_MAIN, DefaultProtocol)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeAll(fd, req); err != nil {
			t.Fatal(err)
		}
	}
	errs := wantErrs(t, tbl.Batch([]Op{add("10.20.0.0/24", "10.99.0.2"), add("10.10.0.0/24", "10.99.1.2"), add("10.21.0.0/24", "10.99.0.2")}), 3, 1)
	if !errors.Is(errs[1], ErrRouteExists) {
		t.Fatalf("add over our own route: %v", errs[1])
	}
	wantRoute(t, n, "10.20.0.0/24", syscall.RT_TABLE_MAIN, DefaultProtocol, "10.99.0.2")
	wantRoute(t, n, "10.21.0.0/24", syscall.RT_TABLE_MAIN, DefaultProtocol, "10.99.0.2")
	// Nothing is left to read.
	if got, err := tbl.b.recvmmsg(fd, 1, unix.MSG_DONTWAIT); err != unix.EAGAIN {
		t.Fatalf("socket still holds %d messages (err %v)", got, err)
	}
}

// TestBatchLostAcks makes the kernel drop acknowledgements (a receive buffer far too small for a write): the ops
// whose acknowledgement was lost fail with "outcome unknown", nothing hangs, and every op reported done is in
// the kernel.
func TestBatchLostAcks(t *testing.T) {
	n := newTestNS(t)
	tbl := batchTable(t, n, DefaultProtocol, 0)
	fd := int(tbl.b.f.Fd())
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4096); err != nil {
		t.Fatal(err)
	}
	var ops []Op
	for i := range 500 {
		ops = append(ops, Op{Kind: OpAdd, Route: Route{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128, byte(i >> 8), byte(i)}), 32), NextHops: addrs("10.99.0.2")}})
	}
	errs := tbl.Batch(ops)
	if errs == nil {
		t.Fatal("no acknowledgement lost: the receive buffer held them all")
	}
	lost := 0
	for i, err := range errs {
		if err == nil {
			wantRoute(t, n, ops[i].Route.Dst.String(), syscall.RT_TABLE_MAIN, DefaultProtocol, "10.99.0.2")
			continue
		}
		if !errors.Is(err, unix.ENOBUFS) || !strings.Contains(err.Error(), "outcome unknown") {
			t.Fatalf("op %d: %v", i, err)
		}
		lost++
	}
	t.Logf("%d of %d acknowledgements lost", lost, len(ops))

	// The socket works again with room for the acknowledgements.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, batchRcvBuf); err != nil {
		t.Fatal(err)
	}
	for i := range ops {
		ops[i].Kind = OpDelete
	}
	wantErrs(t, tbl.Batch(ops), len(ops))
	if got, err := tbl.List(); err != nil || len(got) != 0 {
		t.Fatalf("List() = %d routes, %v", len(got), err)
	}
}

// TestBatchSocketInHandleNamespace: the batch socket lives in the handle's namespace, never the test's own.
func TestBatchSocketInHandleNamespace(t *testing.T) {
	n := newTestNS(t)
	tbl := batchTable(t, n, DefaultProtocol, 0)
	ns, got, err := socketNetns(int(tbl.b.f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(ns)
	var want, root unix.Stat_t
	if err := unix.Stat(n.NS.Path(), &want); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/self/ns/net", &root); err != nil {
		t.Fatal(err)
	}
	if !sameFile(&got, &want) || sameFile(&got, &root) {
		t.Fatalf("batch socket in namespace %d, want %s (%d), not ours (%d)", got.Ino, n.Name, want.Ino, root.Ino)
	}
}

// TestBatchWithoutHandleSockets: a table over a nil handle batches through a socket per batch, opened where the
// calling thread is (here: inside the test namespace).
func TestBatchWithoutHandleSockets(t *testing.T) {
	n := newTestNS(t)
	err := n.NS.Do(func() error {
		tbl := NewNetlinkTable(nil, DefaultProtocol, 0)
		if err := tbl.BatchMode(); err != nil || tbl.b.mode != batchPerCall {
			return fmt.Errorf("BatchMode() = %v, mode %d", err, tbl.b.mode)
		}
		if errs := tbl.Batch([]Op{add("10.10.0.0/24", "10.99.0.2"), add("10.11.0.0/24", "10.99.0.2", "10.99.1.2")}); errs != nil {
			return fmt.Errorf("Batch: %v", errs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantRoute(t, n, "10.10.0.0/24", syscall.RT_TABLE_MAIN, DefaultProtocol, "10.99.0.2")
	wantRoute(t, n, "10.11.0.0/24", syscall.RT_TABLE_MAIN, DefaultProtocol, "10.99.0.2", "10.99.1.2")
}

func TestBatchOtherTableProtocolIPv6(t *testing.T) {
	n := newTestNS(t)
	for _, l := range []struct{ name, addr string }{{testLinkA, "2001:db8:99::1/64"}, {testLinkB, "2001:db8:98::1/64"}} {
		n.NS.MustRun(t, "ip", "addr", "add", l.addr, "dev", l.name, "nodad")
	}
	const table, proto = 1000, 200
	main := syscall.RT_TABLE_MAIN
	n.addForeign(t, "10.90.0.0/24", "10.99.0.5", DefaultProtocol, main)
	tbl := batchTable(t, n, proto, table)
	wantErrs(t, tbl.Batch([]Op{
		add("10.90.0.0/24", "10.99.0.2", "10.99.1.2"),
		add("2001:db8:50::/64", "2001:db8:99::2"),
		add("2001:db8:51::/64", "2001:db8:98::2", "2001:db8:99::2"),
		add("0.0.0.0/0", "10.99.0.2"),
	}), 4)
	wantRoute(t, n, "10.90.0.0/24", table, proto, "10.99.0.2", "10.99.1.2")
	wantRoute(t, n, "10.90.0.0/24", main, DefaultProtocol, "10.99.0.5")
	wantRoute(t, n, "0.0.0.0/0", table, proto, "10.99.0.2")
	got, err := tbl.List()
	if err != nil || len(got) != 4 {
		t.Fatalf("List() = %v, %v", got, err)
	}
	for _, r := range got {
		if r.Dst == pfx("2001:db8:51::/64") && fmt.Sprint(r.NextHops) != "[2001:db8:98::2 2001:db8:99::2]" {
			t.Fatalf("IPv6 multipath route listed as %v", r)
		}
	}
	// Deletes touch only our protocol in our table; a second add of an IPv6 route exists.
	errs := wantErrs(t, tbl.Batch([]Op{add("2001:db8:50::/64", "2001:db8:99::3"), del("10.90.0.0/24"), del("2001:db8:50::/64"), del("2001:db8:51::/64"), del("0.0.0.0/0")}), 5, 0)
	if !errors.Is(errs[0], ErrRouteExists) {
		t.Fatalf("IPv6 add over an existing route: %v", errs[0])
	}
	if got, err := tbl.List(); err != nil || len(got) != 0 {
		t.Fatalf("List() = %v, %v", got, err)
	}
	wantRoute(t, n, "10.90.0.0/24", main, DefaultProtocol, "10.99.0.5")
}

func TestBatchClosedTableFallsBack(t *testing.T) {
	n := newTestNS(t)
	tbl := batchTable(t, n, DefaultProtocol, 0)
	if err := tbl.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tbl.BatchMode(); err == nil {
		t.Fatal("closed table still batches")
	}
	errs := wantErrs(t, tbl.Batch([]Op{add("10.10.0.0/24", "10.99.0.2"), add("10.11.0.0/24", "10.200.0.1"), add("10.99.0.0/24", "10.99.1.2")}), 3, 1, 2)
	if !errors.Is(errs[2], ErrRouteExists) {
		t.Fatalf("one at a time: add over the connected route: %v", errs[2])
	}
	wantRoute(t, n, "10.10.0.0/24", syscall.RT_TABLE_MAIN, DefaultProtocol, "10.99.0.2")

	bad := NewNetlinkTable(n.H, 0, 0)
	if errs := bad.Batch([]Op{del("10.10.0.0/24")}); len(errs) != 1 || errs[0] == nil {
		t.Fatalf("protocol 0 table: Batch errors %v", errs)
	}
	wantRoute(t, n, "10.10.0.0/24", syscall.RT_TABLE_MAIN, DefaultProtocol, "10.99.0.2")
}

func TestBatchAllocations(t *testing.T) {
	n := newTestNS(t)
	tbl := batchTable(t, n, DefaultProtocol, 0)
	ops := make([]Op, 512)
	for i := range ops {
		ops[i] = Op{Kind: OpReplace, Route: Route{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128, byte(i >> 8), byte(i)}), 32), NextHops: addrs("10.99.0.2", "10.99.1.2")}}
	}
	tbl.Batch(ops) // buffers grow once
	allocs := testing.AllocsPerRun(5, func() {
		if errs := tbl.Batch(ops); errs != nil {
			t.Fatal(errs)
		}
	})
	t.Logf("%v allocations per batch of %d routes", allocs, len(ops))
	if allocs > 2 { // per batch, whatever its size (the race detector adds one)
		t.Fatalf("%v allocations per batch of %d routes, want none per route", allocs, len(ops))
	}
}

// TestNetlinkSetMany: the Manager's batched path against the kernel.
func TestNetlinkSetMany(t *testing.T) {
	n := newTestNS(t)
	main := syscall.RT_TABLE_MAIN
	n.addForeign(t, "10.60.0.0/24", "10.99.0.5", protoStatic, main)
	ct := &countingTable{NetlinkTable: NewNetlinkTable(n.H, DefaultProtocol, 0)}
	t.Cleanup(func() { ct.Close() })
	m := startedManager(t, ct)
	if _, err := m.Sweep(); err != nil {
		t.Fatal(err)
	}
	changes := []Change{
		ch("10.10.0.0/24", "10.99.0.2"),
		ch("10.11.0.0/24", "10.200.0.1"), // unreachable for now
		ch("10.12.0.0/24", "10.99.1.2", "10.99.0.2"),
		ch("10.60.0.0/24", "10.99.1.2"), // a static route is there
		ch("10.13.0.0/24", "10.99.0.2", "10.99.0.4", "10.99.1.2"),
		ch("2001:db8::/64", "10.99.0.2"), // wrong family
	}
	errs := m.SetMany(changes)
	wantChangeErrs(t, errs, len(changes), 1, 3, 5)
	if !errors.Is(errs[3], ErrRouteExists) || !errors.Is(errs[3], syscall.EEXIST) {
		t.Fatalf("over the static route: %v", errs[3])
	}
	if !errors.Is(errs[1], syscall.ENETUNREACH) {
		t.Fatalf("via an unreachable gateway: %v", errs[1])
	}
	wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.0.2")
	wantRoute(t, n, "10.11.0.0/24", main, DefaultProtocol)
	wantRoute(t, n, "10.12.0.0/24", main, DefaultProtocol, "10.99.0.2", "10.99.1.2")
	wantRoute(t, n, "10.60.0.0/24", main, protoStatic, "10.99.0.5")
	wantRoute(t, n, "10.13.0.0/24", main, DefaultProtocol, "10.99.0.2", "10.99.0.4", "10.99.1.2")

	// The gateway becomes reachable: Resync installs the route that failed (it stayed desired).
	n.NS.MustRun(t, "ip", "addr", "add", "10.200.0.254/24", "dev", testLinkB)
	if err := m.Resync(); !errors.Is(err, ErrRouteExists) {
		t.Fatalf("Resync: %v, want ErrRouteExists for the static route", err)
	}
	wantRoute(t, n, "10.11.0.0/24", main, DefaultProtocol, "10.200.0.1")
	if err := m.Remove(pfx("10.60.0.0/24")); err != nil {
		t.Fatal(err)
	}

	// Nothing changed: no kernel op. Then new next hops and withdrawals in one call.
	ct.changes.Store(0)
	wantChangeErrs(t, m.SetMany(changes[:3]), 3)
	if c := ct.changes.Load(); c != 0 {
		t.Fatalf("%d kernel changes for unchanged routes", c)
	}
	wantChangeErrs(t, m.SetMany([]Change{ch("10.10.0.0/24", "10.99.1.7", "10.99.0.7"), ch("10.11.0.0/24"), ch("10.12.0.0/24", "10.99.0.3"), ch("10.13.0.0/24")}), 4)
	wantRoute(t, n, "10.10.0.0/24", main, DefaultProtocol, "10.99.0.7", "10.99.1.7")
	wantRoute(t, n, "10.11.0.0/24", main, DefaultProtocol)
	wantRoute(t, n, "10.12.0.0/24", main, DefaultProtocol, "10.99.0.3")
	wantRoute(t, n, "10.13.0.0/24", main, DefaultProtocol)
	ct.changes.Store(0)
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	if c := ct.changes.Load(); c != 0 {
		t.Fatalf("%d kernel changes on Resync with everything in place", c)
	}
	wantChangeErrs(t, m.SetMany([]Change{ch("10.10.0.0/24"), ch("10.12.0.0/24")}), 2)
	if got, err := ct.List(); err != nil || len(got) != 0 {
		t.Fatalf("List() after withdrawing all = %v, %v", got, err)
	}
	wantRoute(t, n, "10.60.0.0/24", main, protoStatic, "10.99.0.5")
}

// TestBatchLongAcks: without NETLINK_CAP_ACK the kernel echoes a whole failed request in its error; for a long
// request that is more than an acknowledgement slot, and it still counts (no wait for the timeout).
func TestBatchLongAcks(t *testing.T) {
	n := newTestNS(t)
	n.NS.MustRun(t, "ip", "addr", "add", "2001:db8:99::1/64", "dev", testLinkA, "nodad")
	tbl := batchTable(t, n, DefaultProtocol, 0)
	if err := unix.SetsockoptInt(int(tbl.b.f.Fd()), unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 0); err != nil {
		t.Fatal(err)
	}
	long := Route{Dst: pfx("2001:db8:50::/64")}
	for i := range 40 {
		long.NextHops = append(long.NextHops, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 15: byte(i + 2)}))
	}
	long.NextHops[39] = netip.MustParseAddr("2001:db8:77::1") // unreachable
	errs := wantErrs(t, tbl.Batch([]Op{{Kind: OpAdd, Route: long}, add("2001:db8:51::/64", "2001:db8:99::2")}), 2, 0)
	if !errors.Is(errs[0], syscall.EHOSTUNREACH) && !errors.Is(errs[0], syscall.ENETUNREACH) {
		t.Fatalf("long route via an unreachable gateway: %v", errs[0])
	}
	got, err := tbl.List()
	if err != nil || len(got) != 1 || got[0].Dst != pfx("2001:db8:51::/64") {
		t.Fatalf("List() = %v, %v", got, err)
	}
}
