package routes

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// batchFake is an addTable with Batch: each op as the single call would do it, one "batch <n>" call recorded.
type batchFake struct {
	addTable
	batches []int
}

func newBatchFake() *batchFake { return &batchFake{addTable: addTable{newFakeTable()}} }

func (f *batchFake) Batch(ops []Op) []error {
	f.mu.Lock()
	f.batches = append(f.batches, len(ops))
	f.mu.Unlock()
	res := batchErrs{n: len(ops)}
	for i, op := range ops {
		var err error
		switch op.Kind {
		case OpAdd:
			err = f.Add(op.Route)
		case OpReplace:
			err = f.Replace(op.Route)
		case OpDelete:
			err = f.Delete(op.Route.Dst)
		default:
			err = fmt.Errorf("bad op %v", op.Kind)
		}
		if err != nil {
			res.set(i, err)
		}
	}
	return res.errs
}

func (f *batchFake) takeBatches() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.batches
	f.batches = nil
	return b
}

func ch(dst string, hops ...string) Change { return Change{Dst: pfx(dst), NextHops: addrs(hops...)} }

func wantChangeErrs(t *testing.T, errs []error, n int, failing ...int) {
	t.Helper()
	if len(failing) == 0 {
		if errs != nil {
			t.Fatalf("SetMany errors %v, want nil", errs)
		}
		return
	}
	if len(errs) != n {
		t.Fatalf("SetMany returned %d errors for %d changes", len(errs), n)
	}
	for i, err := range errs {
		if (err != nil) != slices.Contains(failing, i) {
			t.Fatalf("change %d: err = %v, want failure %v", i, err, slices.Contains(failing, i))
		}
	}
}

func TestSetManyOneBatchPerThousandChanges(t *testing.T) {
	f := newBatchFake()
	m := startedManager(t, f)
	f.takeCalls()
	var changes []Change
	for i := range 2500 {
		changes = append(changes, Change{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 32), NextHops: addrs("192.0.2.1", "192.0.2.2")})
	}
	wantChangeErrs(t, m.SetMany(changes), len(changes))
	if b := f.takeBatches(); !slices.Equal(b, []int{maxBatch, maxBatch, 2500 - 2*maxBatch}) {
		t.Fatalf("batches %v", b)
	}
	for _, c := range f.takeCalls() {
		if !strings.HasPrefix(c, "add ") {
			t.Fatalf("call %q, want only adds", c)
		}
	}
	if got := m.Routes(); len(got) != 2500 {
		t.Fatalf("%d routes desired", len(got))
	}

	// The same again (next hops unsorted): nothing to do, no batch at all. Then a change of next hops: replaces.
	for i := range changes {
		changes[i].NextHops = addrs("192.0.2.2", "192.0.2.1")
	}
	wantChangeErrs(t, m.SetMany(changes), len(changes))
	if b := f.takeBatches(); len(b) != 0 {
		t.Fatalf("batches %v for unchanged routes", b)
	}
	for i := range changes[:10] {
		changes[i].NextHops = addrs("192.0.2.3")
	}
	wantChangeErrs(t, m.SetMany(changes[:10]), 10)
	calls := f.takeCalls()
	if len(calls) != 10 || calls[0] != "replace 10.1.0.0/32 via [192.0.2.3]" {
		t.Fatalf("calls %q", calls)
	}
	// Withdraw all: deletes.
	for i := range changes {
		changes[i].NextHops = nil
	}
	wantChangeErrs(t, m.SetMany(changes), len(changes))
	if got := m.Routes(); len(got) != 0 || m.routes.len() != 0 || len(m.sets) != 0 {
		t.Fatalf("after withdrawing all: %d desired, %d entries, %d hop sets", len(got), m.routes.len(), len(m.sets))
	}
	if got, _ := f.List(); len(got) != 0 {
		t.Fatalf("kernel keeps %d routes", len(got))
	}
}

func TestSetManyErrorsPerChange(t *testing.T) {
	f := newBatchFake()
	f.foreign[pfx("10.50.0.0/24")] = "proto static"
	f.reject[netip.MustParseAddr("198.51.100.1")] = true
	m := startedManager(t, f)
	if _, err := m.Sweep(); err != nil {
		t.Fatal(err)
	}
	installErrs, deleteErrs := testutil.ToFloat64(installErrors), testutil.ToFloat64(deleteErrors)

	changes := []Change{
		ch("10.1.0.0/24", "192.0.2.1"),                            // 0
		ch("10.2.0.0/24", "198.51.100.1"),                         // 1: rejected next hop
		ch("10.3.0.0/24", "192.0.2.1", "198.51.100.1"),            // 2: ECMP with a rejected next hop
		ch("10.50.0.0/24", "192.0.2.1"),                           // 3: a foreign route is there
		{Dst: pfx("10.4.0.0/24"), NextHops: addrs("2001:db8::1")}, // 4: wrong family, never reaches the table
		{Dst: netip.Prefix{}},                                     // 5: invalid removal
		ch("10.5.0.0/24", "192.0.2.1", "192.0.2.2"),               // 6
		ch("10.9.0.0/24"),                                         // 7: removal of something unknown: nothing
	}
	errs := m.SetMany(changes)
	wantChangeErrs(t, errs, len(changes), 1, 2, 3, 4, 5)
	if !errors.Is(errs[3], ErrRouteExists) {
		t.Fatalf("over a foreign route: %v", errs[3])
	}
	if !strings.Contains(errs[1].Error(), "install 10.2.0.0/24 via [198.51.100.1]") {
		t.Fatalf("error does not name the route: %v", errs[1])
	}
	if d := testutil.ToFloat64(installErrors) - installErrs; d != 4 {
		t.Fatalf("install errors grew by %v, want 4", d)
	}
	if d := testutil.ToFloat64(deleteErrors) - deleteErrs; d != 1 {
		t.Fatalf("delete errors grew by %v, want 1", d)
	}
	wantKernel(t, f.fakeTable, "10.1.0.0/24", "192.0.2.1")
	wantKernel(t, f.fakeTable, "10.2.0.0/24")
	wantKernel(t, f.fakeTable, "10.3.0.0/24")
	wantKernel(t, f.fakeTable, "10.5.0.0/24", "192.0.2.1", "192.0.2.2")
	if f.foreign[pfx("10.50.0.0/24")] != "proto static" {
		t.Fatal("foreign route replaced")
	}

	// Failed changes stay desired: the next SetMany of the same routes retries exactly them (with Add: never
	// Replace over the foreign route), and so does Resync.
	f.takeCalls()
	delete(f.reject, netip.MustParseAddr("198.51.100.1"))
	errs = m.SetMany(changes[:4])
	wantChangeErrs(t, errs, 4, 3)
	calls := f.takeCalls()
	slices.Sort(calls)
	want := []string{"add 10.2.0.0/24 via [198.51.100.1]", "add 10.3.0.0/24 via [192.0.2.1 198.51.100.1]", "add 10.50.0.0/24 via [192.0.2.1]"}
	if !slices.Equal(calls, want) {
		t.Fatalf("retry calls\n got  %q\n want %q", calls, want)
	}
	if err := m.Resync(); !errors.Is(err, ErrRouteExists) {
		t.Fatalf("Resync: %v, want ErrRouteExists for the foreign route", err)
	}
	wantCalls(t, f.fakeTable, "list", "add 10.50.0.0/24 via [192.0.2.1]")
	wantKernel(t, f.fakeTable, "10.3.0.0/24", "192.0.2.1", "198.51.100.1")

	// A failed delete stays applied and is retried by Resync.
	f.failDel[pfx("10.1.0.0/24")] = true
	wantChangeErrs(t, m.SetMany([]Change{ch("10.1.0.0/24"), ch("10.5.0.0/24")}), 2, 0)
	wantKernel(t, f.fakeTable, "10.1.0.0/24", "192.0.2.1")
	wantKernel(t, f.fakeTable, "10.5.0.0/24")
	f.failDel[pfx("10.1.0.0/24")] = false
	f.takeCalls()
	if err := m.Resync(); !errors.Is(err, ErrRouteExists) {
		t.Fatal(err)
	}
	calls = f.takeCalls()
	slices.Sort(calls)
	if want := []string{"add 10.50.0.0/24 via [192.0.2.1]", "delete 10.1.0.0/24", "list"}; !slices.Equal(calls, want) {
		t.Fatalf("resync calls %q, want %q", calls, want)
	}
	wantKernel(t, f.fakeTable, "10.1.0.0/24")
}

func TestSetManySameDestinationInOrder(t *testing.T) {
	f := newBatchFake()
	m := startedManager(t, f)
	f.takeCalls()
	wantChangeErrs(t, m.SetMany([]Change{
		ch("10.1.0.0/24", "192.0.2.1"),
		ch("10.2.0.0/24", "192.0.2.1"),
		ch("10.1.0.0/24", "192.0.2.2"),
		ch("10.1.0.0/24"),
		ch("10.2.0.0/24", "192.0.2.1"), // unchanged: no op, no flush
		ch("10.1.0.0/24", "192.0.2.3"),
	}), 6)
	wantCalls(t, f.fakeTable,
		"add 10.1.0.0/24 via [192.0.2.1]", "add 10.2.0.0/24 via [192.0.2.1]",
		"replace 10.1.0.0/24 via [192.0.2.2]",
		"delete 10.1.0.0/24",
		"add 10.1.0.0/24 via [192.0.2.3]")
	if b := f.takeBatches(); !slices.Equal(b, []int{2, 1, 1, 1}) {
		t.Fatalf("batches %v", b)
	}
	wantKernel(t, f.fakeTable, "10.1.0.0/24", "192.0.2.3")
}

// TestSetManyEqualsSet drives one Manager with Set/Remove and another with SetMany through the same random
// changes (with failing next hops): same errors, same kernel, same desired routes, same counts.
func TestSetManyEqualsSet(t *testing.T) {
	one, many := newBatchFake(), newBatchFake()
	for _, f := range []*batchFake{one, many} {
		f.reject[netip.MustParseAddr("192.0.2.9")] = true
		f.foreign[pfx("10.7.3.0/24")] = "proto static"
		f.ours[pfx("10.7.4.0/24")] = addrs("192.0.2.1") // stale from an earlier run
		f.ours[pfx("10.7.5.0/24")] = addrs("192.0.2.5")
	}
	mOne := startedManager(t, addTable{one.fakeTable}) // Set/Remove: the single calls
	mMany := startedManager(t, many)
	rng := rand.New(rand.NewPCG(1, 2))
	hopChoices := [][]string{nil, {"192.0.2.1"}, {"192.0.2.2", "192.0.2.1"}, {"192.0.2.9"}, {"192.0.2.3"}, {"192.0.2.1", "192.0.2.9"}}
	for round := range 30 {
		changes := make([]Change, 200)
		for i := range changes {
			changes[i] = Change{Dst: pfx(fmt.Sprintf("10.7.%d.0/24", rng.IntN(64))), NextHops: addrs(hopChoices[rng.IntN(len(hopChoices))]...)}
		}
		var errsOne []error
		for i, c := range changes {
			if err := mOne.Set(c.Dst, c.NextHops); err != nil {
				if errsOne == nil {
					errsOne = make([]error, len(changes))
				}
				errsOne[i] = err
			}
		}
		errsMany := mMany.SetMany(changes)
		if len(errsOne) != len(errsMany) {
			t.Fatalf("round %d: %d errors one by one, %d in SetMany", round, len(errsOne), len(errsMany))
		}
		for i := range errsOne {
			if fmt.Sprint(errsOne[i]) != fmt.Sprint(errsMany[i]) {
				t.Fatalf("round %d change %d: Set error %v, SetMany error %v", round, i, errsOne[i], errsMany[i])
			}
		}
		if round == 10 {
			for _, m := range []*Manager{mOne, mMany} {
				if _, err := m.Sweep(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if r1, r2 := fmt.Sprint(mOne.Routes()), fmt.Sprint(mMany.Routes()); r1 != r2 {
			t.Fatalf("round %d: desired routes differ:\n %s\n %s", round, r1, r2)
		}
		k1, _ := one.List()
		k2, _ := many.List()
		slices.SortFunc(k1, func(a, b Route) int { return a.Dst.Compare(b.Dst) })
		slices.SortFunc(k2, func(a, b Route) int { return a.Dst.Compare(b.Dst) })
		if fmt.Sprint(k1) != fmt.Sprint(k2) {
			t.Fatalf("round %d: kernels differ:\n %v\n %v", round, k1, k2)
		}
		i1, s1 := mOne.Counts()
		i2, s2 := mMany.Counts()
		if i1 != i2 || s1 != s2 {
			t.Fatalf("round %d: counts %d/%d vs %d/%d", round, i1, s1, i2, s2)
		}
	}
}

func TestResyncAndSweepInBatches(t *testing.T) {
	f := newBatchFake()
	for i := range 1500 {
		f.ours[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 8, byte(i >> 8), byte(i)}), 32)] = addrs("192.0.2.1")
	}
	m := startedManager(t, f)
	var changes []Change
	for i := range 1200 {
		changes = append(changes, Change{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 8, byte(i >> 8), byte(i)}), 32), NextHops: addrs("192.0.2.1")})
	}
	wantChangeErrs(t, m.SetMany(changes), len(changes))
	f.takeCalls()
	if b := f.takeBatches(); len(b) != 0 {
		t.Fatalf("confirming stale routes: batches %v", b)
	}
	removed, err := m.Sweep()
	if err != nil || removed != 300 {
		t.Fatalf("Sweep() = %d, %v", removed, err)
	}
	if b := f.takeBatches(); !slices.Equal(b, []int{300}) {
		t.Fatalf("sweep batches %v", b)
	}

	// Drift: 1100 of ours gone from the kernel behind our back: Resync puts them back in two batches.
	f.mu.Lock()
	for i := range 1100 {
		delete(f.ours, changes[i].Dst)
	}
	f.mu.Unlock()
	f.takeCalls()
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	if b := f.takeBatches(); !slices.Equal(b, []int{maxBatch, 1100 - maxBatch}) {
		t.Fatalf("resync batches %v", b)
	}
	if installed, stale := m.Counts(); installed != 1200 || stale != 0 {
		t.Fatalf("Counts() = %d, %d", installed, stale)
	}
}

func TestSetManyWithoutBatcher(t *testing.T) {
	f := newFakeTable()
	m := startedManager(t, addTable{f})
	f.takeCalls()
	wantChangeErrs(t, m.SetMany([]Change{ch("10.1.0.0/24", "192.0.2.1"), ch("10.2.0.0/24", "192.0.2.1", "192.0.2.2")}), 2)
	wantChangeErrs(t, m.SetMany([]Change{ch("10.1.0.0/24", "192.0.2.3"), ch("10.2.0.0/24")}), 2)
	wantCalls(t, f, "add 10.1.0.0/24 via [192.0.2.1]", "add 10.2.0.0/24 via [192.0.2.1 192.0.2.2]",
		"replace 10.1.0.0/24 via [192.0.2.3]", "delete 10.2.0.0/24")

	// A Table with neither Add nor Batch: Replace, as Set does.
	g := newFakeTable()
	m = startedManager(t, g)
	g.takeCalls()
	wantChangeErrs(t, m.SetMany([]Change{ch("10.1.0.0/24", "192.0.2.1")}), 1)
	wantCalls(t, g, "replace 10.1.0.0/24 via [192.0.2.1]")
}

func TestConcurrentSetMany(t *testing.T) {
	f := newBatchFake()
	m := startedManager(t, f)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 20 {
				var changes []Change
				for i := range 300 {
					dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(g % 2), byte(i >> 8), byte(i)}), 32)
					var hops []netip.Addr
					if (i+round)%4 != 0 {
						hops = addrs("192.0.2.1", fmt.Sprintf("192.0.2.%d", 2+(i+round+g)%3))
					}
					changes = append(changes, Change{Dst: dst, NextHops: hops})
				}
				if g == 3 {
					for _, c := range changes[:50] {
						_ = m.Set(c.Dst, c.NextHops)
					}
				}
				_ = m.SetMany(changes)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 10 {
			if i == 5 {
				_, _ = m.Sweep()
			}
			_ = m.Resync()
		}
	}()
	wg.Wait()
	if err := m.Resync(); err != nil {
		t.Fatal(err)
	}
	want := m.Routes()
	got, _ := f.List()
	slices.SortFunc(got, func(a, b Route) int { return a.Dst.Compare(b.Dst) })
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("kernel has %d routes, desired %d", len(got), len(want))
	}
	for _, e := range m.routes.all {
		if e.busy {
			t.Fatal("an entry is left busy")
		}
	}
}

// nopBatcher accepts everything.
type nopBatcher struct{ fakeTable }

func (*nopBatcher) Batch(ops []Op) []error { return nil }

func TestSetManyAllocations(t *testing.T) {
	tbl := &nopBatcher{fakeTable: *newFakeTable()}
	m := NewManager(tbl, nil)
	changes := make([]Change, 4096)
	hops := [2][]netip.Addr{addrs("192.0.2.1"), addrs("192.0.2.1", "192.0.2.2")}
	for i := range changes {
		changes[i] = Change{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 32), NextHops: hops[0]}
	}
	m.SetMany(changes) // the map grows once
	flip := 0
	allocs := testing.AllocsPerRun(10, func() {
		flip ^= 1
		for i := range changes {
			changes[i].NextHops = hops[flip]
		}
		if errs := m.SetMany(changes); errs != nil {
			t.Fatal(errs)
		}
	})
	t.Logf("%v allocations per SetMany of %d changes", allocs, len(changes))
	if allocs > 4 {
		t.Fatalf("%v allocations per SetMany of %d changed routes, want none per route", allocs, len(changes))
	}
}

// noBatchFake is a Batcher whose batch path is unavailable (as NetlinkTable's BatchMode reports it).
type noBatchFake struct{ *batchFake }

func (noBatchFake) BatchMode() error { return errors.New("no socket") }

func TestStartWarnsWithoutBatching(t *testing.T) {
	var buf strings.Builder
	m := NewManager(noBatchFake{newBatchFake()}, slog.New(slog.NewTextHandler(&buf, nil)))
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), "no socket") {
		t.Fatalf("log: %s", buf.String())
	}
}
