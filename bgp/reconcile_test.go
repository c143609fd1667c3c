package bgp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"canopy.io/canopy/routes"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeRouter records the calls the reconciler makes.
type fakeRouter struct {
	calls []string
	fail  map[string]bool
}

func (f *fakeRouter) do(call string) error {
	f.calls = append(f.calls, call)
	if f.fail[call] {
		return errors.New("injected")
	}
	return nil
}
func (f *fakeRouter) AddPeer(_ context.Context, p PeerSpec) error {
	return f.do(fmt.Sprintf("add %s %d", p.Address, p.ASN))
}
func (f *fakeRouter) UpdatePeer(_ context.Context, p PeerSpec) error {
	return f.do(fmt.Sprintf("update %s", p.Address))
}
func (f *fakeRouter) DeletePeer(_ context.Context, a netip.Addr) error {
	return f.do(fmt.Sprintf("delete %s", a))
}
func (f *fakeRouter) AddPath(_ context.Context, p Path) error {
	return f.do(fmt.Sprintf("addpath %s %s", p.Prefix, p.NextHop))
}
func (f *fakeRouter) DeletePath(_ context.Context, p Path) error {
	return f.do(fmt.Sprintf("delpath %s %s", p.Prefix, p.NextHop))
}

func (f *fakeRouter) Watch(context.Context, Watcher) error { return f.do("watch") }
func (f *fakeRouter) Stop(context.Context)                 { _ = f.do("stop") }

func (f *fakeRouter) take() []string { c := f.calls; f.calls = nil; return c }

// peerRec and pathRec run one reconciler on an instance of f, as the manager does.
type recHarness struct {
	inst *instance
}

func newRecHarness(f *fakeRouter) *recHarness {
	return &recHarness{inst: &instance{r: f, peers: map[netip.Addr]PeerSpec{}, paths: map[string]map[netip.Prefix]Path{}}}
}

func (h *recHarness) SetPeers(ctx context.Context, peers []PeerSpec) error {
	return reconcilePeers(ctx, h.inst, &desiredState{peers: peers}, quiet)
}

// SetPaths sets one group's paths, keeping the others as applied.
func (h *recHarness) SetPaths(ctx context.Context, group string, paths map[netip.Prefix]Path) error {
	d := &desiredState{paths: map[string]map[netip.Prefix]Path{}}
	for g, ps := range h.inst.paths {
		d.paths[g] = maps.Clone(ps)
	}
	d.paths[group] = paths
	return reconcilePaths(ctx, h.inst, d, quiet)
}

func TestPeerReconcilerIsADiff(t *testing.T) {
	f := &fakeRouter{fail: map[string]bool{}}
	r := newRecHarness(f)
	ctx := context.Background()
	a := PeerSpec{Address: addr("10.0.0.1"), ASN: 64512, Kind: PeerKindNode, Name: "a"}
	b := PeerSpec{Address: addr("10.0.0.2"), ASN: 64512, Kind: PeerKindNode, Name: "b"}
	c := PeerSpec{Address: addr("10.0.0.3"), ASN: 64500, Kind: PeerKindExternal, Name: "flag"}
	if err := r.SetPeers(ctx, []PeerSpec{a, b}); err != nil {
		t.Fatal(err)
	}
	if got := f.take(); len(got) != 2 {
		t.Fatalf("calls %v", got)
	}
	// Unchanged set: no call at all.
	_ = r.SetPeers(ctx, []PeerSpec{a, b})
	if got := f.take(); len(got) != 0 {
		t.Fatalf("no-op issued %v", got)
	}
	// Adding c and removing a touches only them: b is not reset.
	_ = r.SetPeers(ctx, []PeerSpec{b, c})
	if got, want := f.take(), []string{"delete 10.0.0.1", "add 10.0.0.3 64500"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	// An ASN change re-creates only that peer.
	b2 := b
	b2.ASN = 65002
	_ = r.SetPeers(ctx, []PeerSpec{b2, c})
	if got, want := f.take(), []string{"delete 10.0.0.2", "add 10.0.0.2 65002"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	// A BGPPeer's timer edit re-creates only that peer (timers are negotiated in OPEN); its BFD timers need no
	// BGP call at all.
	b3 := b2
	b3.Timers.Hold = 9 * time.Second
	_ = r.SetPeers(ctx, []PeerSpec{b3, c})
	if got, want := f.take(), []string{"delete 10.0.0.2", "add 10.0.0.2 65002"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	b2 = b3
	b3.BFDTimers.MinRx = 100 * time.Millisecond
	_ = r.SetPeers(ctx, []PeerSpec{b3, c})
	if got := f.take(); len(got) != 0 {
		t.Fatalf("BFD timer change issued %v", got)
	}
	b2 = b3
	// A name-only change needs no call.
	c2 := c
	c2.Name = "annotation"
	_ = r.SetPeers(ctx, []PeerSpec{b2, c2})
	if got := f.take(); len(got) != 0 {
		t.Fatalf("name change issued %v", got)
	}
	// A failed add is retried by the next call, and reported.
	d := PeerSpec{Address: addr("10.0.0.4"), ASN: 1}
	f.fail["add 10.0.0.4 1"] = true
	if err := r.SetPeers(ctx, []PeerSpec{b2, c2, d}); err == nil {
		t.Fatal("want error")
	}
	f.take()
	delete(f.fail, "add 10.0.0.4 1")
	if err := r.SetPeers(ctx, []PeerSpec{b2, c2, d}); err != nil {
		t.Fatal(err)
	}
	if got := f.take(); !reflect.DeepEqual(got, []string{"add 10.0.0.4 1"}) {
		t.Fatalf("retry calls %v", got)
	}
}

func TestPathReconcilerIsADiff(t *testing.T) {
	f := &fakeRouter{fail: map[string]bool{}}
	r := newRecHarness(f)
	ctx := context.Background()
	nh := addr("10.99.0.11")
	pod := map[netip.Prefix]Path{pfx("10.244.1.0/24"): {Prefix: pfx("10.244.1.0/24"), NextHop: nh}}
	_ = r.SetPaths(ctx, GroupPodCIDRs, pod)
	_ = r.SetPaths(ctx, GroupPodCIDRs, pod)
	if got := f.take(); !reflect.DeepEqual(got, []string{"addpath 10.244.1.0/24 10.99.0.11"}) {
		t.Fatalf("calls %v", got)
	}
	// Another group's paths do not disturb this one's; a changed attribute re-announces only that path.
	vip := Path{Prefix: pfx("10.96.0.10/32"), NextHop: nh, VIP: true}
	_ = r.SetPaths(ctx, GroupVIPs, map[netip.Prefix]Path{vip.Prefix: vip})
	vip.Communities = []uint32{64512<<16 | 100}
	_ = r.SetPaths(ctx, GroupVIPs, map[netip.Prefix]Path{vip.Prefix: vip})
	if got := f.take(); !reflect.DeepEqual(got, []string{"addpath 10.96.0.10/32 10.99.0.11", "delpath 10.96.0.10/32 10.99.0.11", "addpath 10.96.0.10/32 10.99.0.11"}) {
		t.Fatalf("calls %v", got)
	}
	_ = r.SetPaths(ctx, GroupPodCIDRs, nil)
	if got := f.take(); !reflect.DeepEqual(got, []string{"delpath 10.244.1.0/24 10.99.0.11"}) {
		t.Fatalf("calls %v", got)
	}
}

// fakeSink records what the importer installs.
type fakeSink struct{ routes map[netip.Prefix][]netip.Addr }

func (s *fakeSink) Set(dst netip.Prefix, nhs []netip.Addr) error {
	s.routes[dst] = nhs
	return nil
}
func (s *fakeSink) Remove(dst netip.Prefix) error { delete(s.routes, dst); return nil }

func TestImporterAppliesPolicyAndMultipath(t *testing.T) {
	sink := &fakeSink{routes: map[netip.Prefix][]netip.Addr{}}
	self := addr("10.99.0.11")
	pol := NewImportPolicy(PolicyInput{ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, NodeIPs: []netip.Addr{self, addr("10.99.0.12")},
		Owners:  map[netip.Prefix]netip.Addr{pfx("10.244.2.0/24"): addr("10.99.0.13"), pfx("10.244.5.0/24"): addr("10.99.0.13")},
		Routers: []netip.Addr{addr("10.99.0.12")}})
	l := NewImporter(sink, pol, []netip.Addr{self}, quiet)
	l.BestPaths([]LearnedPath{
		{Prefix: pfx("10.244.2.0/24"), NextHop: addr("10.99.0.13")},
		{Prefix: pfx("10.244.2.0/24"), NextHop: addr("10.99.0.12")},
		{Prefix: pfx("0.0.0.0/0"), NextHop: addr("10.99.0.1")},
		{Prefix: pfx("198.51.100.0/24"), NextHop: addr("10.99.0.1")},
		{Prefix: pfx("10.244.1.0/24"), Local: true},
		{Prefix: pfx("10.244.9.0/24"), NextHop: self}, // points at us: not a route
	})
	want := map[netip.Prefix][]netip.Addr{pfx("10.244.2.0/24"): {addr("10.99.0.12"), addr("10.99.0.13")}}
	if !reflect.DeepEqual(sink.routes, want) {
		t.Fatalf("installed %v, want %v", sink.routes, want)
	}
	// One ECMP member goes: the route keeps the other.
	l.BestPaths([]LearnedPath{{Prefix: pfx("10.244.2.0/24"), NextHop: addr("10.99.0.13")}})
	if got := sink.routes[pfx("10.244.2.0/24")]; !reflect.DeepEqual(got, []netip.Addr{addr("10.99.0.13")}) {
		t.Fatalf("after shrink %v", got)
	}
	// Our own pod CIDR arrives in the policy: a learned route overlapping it is removed.
	l.BestPaths([]LearnedPath{{Prefix: pfx("10.244.5.0/24"), NextHop: addr("10.99.0.13")}})
	l.SetPolicy(NewImportPolicy(PolicyInput{ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, Own: []netip.Prefix{pfx("10.244.5.0/24")},
		Owners: map[netip.Prefix]netip.Addr{pfx("10.244.2.0/24"): addr("10.99.0.13")}, Routers: []netip.Addr{addr("10.99.0.12")}}), []netip.Addr{self})
	if _, ok := sink.routes[pfx("10.244.5.0/24")]; ok {
		t.Fatal("route overlapping our pod CIDR still installed")
	}
	// Withdrawn: gone.
	l.BestPaths([]LearnedPath{{Prefix: pfx("10.244.2.0/24"), NextHop: addr("10.99.0.13"), Withdraw: true}})
	if len(sink.routes) != 0 {
		t.Fatalf("left %v", sink.routes)
	}
}

// batchSink is a fakeSink with SetMany: it records each batch and fails the prefixes in fail once.
type batchSink struct {
	fakeSink
	batches [][]routes.Change
	fail    map[netip.Prefix]bool
}

func (s *batchSink) SetMany(cs []routes.Change) []error {
	s.batches = append(s.batches, slices.Clone(cs))
	var errs []error
	for i, c := range cs {
		if s.fail[c.Dst] {
			delete(s.fail, c.Dst)
			if errs == nil {
				errs = make([]error, len(cs))
			}
			errs[i] = errors.New("injected")
			continue
		}
		if len(c.NextHops) == 0 {
			_ = s.Remove(c.Dst)
		} else {
			_ = s.Set(c.Dst, c.NextHops)
		}
	}
	return errs
}

// One best-path event is one kernel batch; a failed route stays not installed and is installed by the next
// event that names it; a withdrawal of many routes is one batch too.
func TestImporterBatches(t *testing.T) {
	sink := &batchSink{fakeSink: fakeSink{routes: map[netip.Prefix][]netip.Addr{}}, fail: map[netip.Prefix]bool{pfx("100.64.0.7/32"): true}}
	self, inj := addr("10.99.0.11"), addr("10.99.0.200")
	pol := NewImportPolicy(PolicyInput{ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, ImportAllow: []netip.Prefix{pfx("100.64.0.0/10")},
		NodeIPs: []netip.Addr{self}, Routers: []netip.Addr{inj}})
	l := NewImporter(sink, pol, []netip.Addr{self}, quiet)
	var paths []LearnedPath
	for i := range 600 {
		paths = append(paths, LearnedPath{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 32), NextHop: inj})
	}
	l.BestPaths(paths)
	if len(sink.batches) != 1 || len(sink.batches[0]) != 600 || len(sink.routes) != 599 {
		t.Fatalf("%d batches, %d routes", len(sink.batches), len(sink.routes))
	}
	l.BestPaths([]LearnedPath{{Prefix: pfx("100.64.0.7/32"), NextHop: inj}})
	if _, ok := sink.routes[pfx("100.64.0.7/32")]; !ok {
		t.Fatal("the failed route was not installed again")
	}
	for i := range paths {
		paths[i].Withdraw = true
	}
	l.BestPaths(paths)
	if len(sink.batches) != 3 || len(sink.routes) != 0 {
		t.Fatalf("%d batches, left %d routes", len(sink.batches), len(sink.routes))
	}
}
