package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	apb "google.golang.org/protobuf/types/known/anypb"
)

// recWatcher records the calls it gets; while hold is non-nil, its first BestPaths waits for hold to close.
type recWatcher struct {
	mu    sync.Mutex
	calls []string
	hold  chan struct{}
	in    chan struct{} // closed when the held call started
}

func (r *recWatcher) add(s string) {
	r.mu.Lock()
	r.calls = append(r.calls, s)
	r.mu.Unlock()
}

func (r *recWatcher) BestPaths(ps []LearnedPath) {
	s := "best"
	for _, p := range ps {
		s += " " + p.Prefix.String()
		switch {
		case p.Withdraw:
			s += "-"
		default:
			s += "@" + p.NextHop.String()
		}
	}
	r.add(s)
	if r.hold != nil {
		h := r.hold
		r.hold = nil
		close(r.in)
		<-h
	}
}
func (r *recWatcher) EndOfRIB(p netip.Addr) { r.add("eor " + p.String()) }
func (r *recWatcher) PeerState(p netip.Addr, asn uint32, st SessionState) {
	r.add(fmt.Sprintf("peer %s %d %s", p, asn, st))
}
func (r *recWatcher) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

func lp(prefix, nh string) LearnedPath {
	return LearnedPath{Prefix: pfx(prefix), NextHop: addr(nh)}
}

// Events that come while the Watcher is busy are handed on merged: a run of best-path events is one call in
// which a destination keeps only its last event's set, and End-of-RIB and session states keep their place.
func TestWatchQueueMergesWhileBusy(t *testing.T) {
	hold := make(chan struct{})
	r := &recWatcher{hold: hold, in: make(chan struct{})}
	q := newWatchQueue(r)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.run(ctx)

	q.BestPaths([]LearnedPath{lp("10.0.0.0/24", "10.99.0.1")})
	<-r.in                                                                                     // the Watcher is busy with the first event now
	q.BestPaths([]LearnedPath{lp("10.0.1.0/24", "10.99.0.1"), lp("10.0.1.0/24", "10.99.0.2")}) // ECMP
	q.BestPaths([]LearnedPath{lp("10.0.2.0/24", "10.99.0.1")})
	q.BestPaths([]LearnedPath{lp("10.0.1.0/24", "10.99.0.2")}) // shrinks: replaces the ECMP set
	q.BestPaths([]LearnedPath{{Prefix: pfx("10.0.2.0/24"), NextHop: addr("10.99.0.1"), Withdraw: true}})
	q.BestPaths(nil) // nothing: not an event
	q.EndOfRIB(addr("10.99.0.1"))
	q.BestPaths([]LearnedPath{lp("10.0.3.0/24", "10.99.0.1")})
	q.PeerState(addr("10.99.0.2"), 64512, StateIdle)
	q.BestPaths([]LearnedPath{lp("10.0.4.0/24", "10.99.0.1")})
	close(hold)

	want := []string{
		"best 10.0.0.0/24@10.99.0.1",
		"best 10.0.1.0/24@10.99.0.2 10.0.2.0/24-",
		"eor 10.99.0.1",
		"best 10.0.3.0/24@10.99.0.1",
		"peer 10.99.0.2 64512 Idle",
		"best 10.0.4.0/24@10.99.0.1",
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(r.get()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := r.get(); !reflect.DeepEqual(got, want) {
		t.Fatalf("calls\n%q\nwant\n%q", got, want)
	}

	// Idle again: an event is handed on by itself, at once.
	q.BestPaths([]LearnedPath{lp("10.0.5.0/24", "10.99.0.1")})
	for len(r.get()) < len(want)+1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := r.get(); len(got) != len(want)+1 || got[len(want)] != "best 10.0.5.0/24@10.99.0.1" {
		t.Fatalf("calls %q", got)
	}
}

// Merged into the importer, the same events leave the kernel as handing them on one by one would.
func TestWatchQueueImporterEndState(t *testing.T) {
	mk := func() (*Importer, *batchSink) {
		sink := &batchSink{fakeSink: fakeSink{routes: map[netip.Prefix][]netip.Addr{}}}
		pol := NewImportPolicy(PolicyInput{ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, ImportAllow: []netip.Prefix{pfx("100.64.0.0/10")},
			Routers: []netip.Addr{addr("10.99.0.1"), addr("10.99.0.2")}})
		return NewImporter(sink, pol, nil, quiet), sink
	}
	var events [][]LearnedPath
	for i := range 300 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(i % 50)}), 32).String()
		switch i % 4 {
		case 0:
			events = append(events, []LearnedPath{lp(p, "10.99.0.1")})
		case 1:
			events = append(events, []LearnedPath{lp(p, "10.99.0.1"), lp(p, "10.99.0.2")})
		case 2:
			events = append(events, []LearnedPath{{Prefix: pfx(p), NextHop: addr("10.99.0.1"), Withdraw: true}})
		case 3:
			events = append(events, []LearnedPath{lp(p, "10.99.0.2")})
		}
	}
	direct, dsink := mk()
	for _, e := range events {
		direct.BestPaths(e)
	}
	merged, msink := mk()
	q := newWatchQueue(merged)
	for _, e := range events {
		q.BestPaths(e)
	}
	q.mu.Lock()
	items, paths := q.items, q.paths
	q.mu.Unlock()
	q.deliver(context.Background(), items, paths)
	if len(msink.batches) != 1 {
		t.Fatalf("%d batches, want 1", len(msink.batches))
	}
	if !reflect.DeepEqual(dsink.routes, msink.routes) || len(dsink.routes) == 0 {
		t.Fatalf("merged %v\ndirect %v", msink.routes, dsink.routes)
	}
}

// learnedPath reads what FromAPIPath reads, with the same result, and hands what it does not expect to it.
func TestLearnedPathMatchesFromAPIPath(t *testing.T) {
	var cases []*api.Path
	for _, p := range []Path{
		{Prefix: pfx("10.244.2.0/24"), NextHop: addr("10.99.0.12")},
		{Prefix: pfx("100.64.0.7/32"), NextHop: addr("10.99.0.200")},
		{Prefix: pfx("0.0.0.0/0"), NextHop: addr("10.99.0.1")},
		{Prefix: pfx("fd00:10:244:2::/64"), NextHop: addr("fd00:99::12")},
		{Prefix: pfx("10.244.3.0/24"), NextHop: addr("10.99.0.13"), Communities: []uint32{1}, Large: [][3]uint32{{1, 2, 3}}, Prepend: 2},
	} {
		ap, err := apiPath(p, 64512)
		if err != nil {
			t.Fatal(err)
		}
		ap.NeighborIp = "10.99.0.12"
		cases = append(cases, ap)
		w := clonePath(ap)
		w.IsWithdraw = true
		cases = append(cases, w)
		l := clonePath(ap)
		l.NeighborIp = "<nil>"
		cases = append(cases, l)
		e := clonePath(ap)
		e.NeighborIp = ""
		cases = append(cases, e)
	}
	anyOf := func(url string, b []byte) *apb.Any { return &apb.Any{TypeUrl: url, Value: b} }
	base, _ := apiPath(Path{Prefix: pfx("10.244.2.0/24"), NextHop: addr("10.99.0.12")}, 0)
	base.NeighborIp = "10.99.0.12"
	odd := func(f func(p *api.Path)) {
		p := clonePath(base)
		f(p)
		cases = append(cases, p)
	}
	nh2, _ := apb.New(&api.NextHopAttribute{NextHop: "10.99.0.99"})
	odd(func(p *api.Path) { p.Pattrs = append(p.Pattrs, nh2) })                                        // the last next hop wins
	odd(func(p *api.Path) { p.Pattrs = nil })                                                          // no next hop
	odd(func(p *api.Path) { p.Nlri = anyOf(urlIPAddressPrefix, []byte{0x08, 0x21, 0x12, 0x01, '1'}) }) // bad prefix
	odd(func(p *api.Path) { p.Nlri = anyOf(urlIPAddressPrefix, []byte{0x08}) })                        // truncated
	odd(func(p *api.Path) { p.Nlri.TypeUrl = "example.com/apipb.IPAddressPrefix" })                    // other URL form
	odd(func(p *api.Path) { p.Pattrs[1] = anyOf(urlNextHop, []byte{0x0a, 0x05, '1'}) })                // truncated attr
	odd(func(p *api.Path) { p.Pattrs[1] = anyOf(urlNextHop, []byte{0x0a, 0x03, 'x', 'y', 'z'}) })      // not an address
	odd(func(p *api.Path) { p.Pattrs[1].TypeUrl = "x/apipb.NextHopAttribute" })                        // other URL form
	mp, _ := apb.New(&api.MpReachNLRIAttribute{Family: familyIPv6})
	odd(func(p *api.Path) { p.Pattrs[1] = mp }) // MP_REACH without next hops: keeps none
	mp2, _ := apb.New(&api.MpReachNLRIAttribute{Family: familyIPv6, NextHops: []string{"fd00::1", "fe80::1"}})
	odd(func(p *api.Path) { p.Pattrs = append(p.Pattrs, mp2) }) // the first of several
	vpn, _ := apb.New(&api.LabeledVPNIPAddressPrefix{Prefix: "10.1.0.0", PrefixLen: 16})
	odd(func(p *api.Path) { p.Nlri = vpn }) // another NLRI type

	for i, c := range cases {
		want, werr := FromAPIPath(c)
		got, gerr := learnedPath(c)
		if (werr != nil) != (gerr != nil) || got != want {
			t.Errorf("case %d (%v): learnedPath = %+v, %v; FromAPIPath = %+v, %v", i, c, got, gerr, want, werr)
		}
	}
}

func clonePath(p *api.Path) *api.Path {
	c := &api.Path{Family: p.Family, Nlri: p.Nlri, NeighborIp: p.NeighborIp, IsWithdraw: p.IsWithdraw}
	if p.Nlri != nil {
		c.Nlri = &apb.Any{TypeUrl: p.Nlri.TypeUrl, Value: p.Nlri.Value}
	}
	for _, a := range p.Pattrs {
		c.Pattrs = append(c.Pattrs, &apb.Any{TypeUrl: a.TypeUrl, Value: a.Value})
	}
	return c
}
