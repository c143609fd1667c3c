package bgp

import (
	"context"
	"net/netip"
	"sync"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/encoding/protowire"
)

// watchQueue sits between GoBGP's watch and a Watcher (the importer). GoBGP v3.37 raises one best-path event per
// path it takes in (propagateUpdate runs once per path), so a peer's 100,000 prefixes are 100,000 events; handed
// on one at a time, each cost the importer a kernel batch of one route (a netlink round trip), a lock and its
// maps. The queue takes events as fast as GoBGP raises them, and its own goroutine hands them on, in order, with
// every best-path event that arrived while the Watcher was busy merged into one BestPaths call: a destination
// several of them name keeps only its last set (each is the destination's complete set), so the Watcher sees
// the same end state with fewer calls. End-of-RIB and session states keep their place between the paths. An
// event that finds the Watcher idle is handed on at once: there is no timer and no added delay.
//
// It is a Watcher itself (its methods only queue, and copy the paths); run delivers to the wrapped one.
type watchQueue struct {
	w    Watcher
	wake chan struct{}

	mu    sync.Mutex
	items []watchItem
	paths []LearnedPath // the paths of the queued best-path events, in order

	seen map[netip.Prefix]struct{} // run's: destinations named by a later event of the run being merged
	keep []bool                    // run's: which paths of that run are handed on
}

type watchKind uint8

const (
	watchBest watchKind = iota
	watchEOR
	watchPeer
)

// watchItem is one queued event. A best-path event's paths are paths[start:end], start being the previous
// best-path event's end (0 for the first).
type watchItem struct {
	kind  watchKind
	end   int
	peer  netip.Addr
	asn   uint32
	state SessionState
}

// mergeMapMax is the largest merge map kept between runs: a flood's map is dropped after use.
const mergeMapMax = 4096

func newWatchQueue(w Watcher) *watchQueue {
	return &watchQueue{w: w, wake: make(chan struct{}, 1)}
}

func (q *watchQueue) push(it watchItem, paths []LearnedPath) {
	q.mu.Lock()
	if it.kind == watchBest {
		q.paths = append(q.paths, paths...)
		it.end = len(q.paths)
	}
	q.items = append(q.items, it)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// BestPaths queues a best-path event (paths is copied).
func (q *watchQueue) BestPaths(paths []LearnedPath) {
	if len(paths) > 0 {
		q.push(watchItem{kind: watchBest}, paths)
	}
}

// EndOfRIB queues an End-of-RIB.
func (q *watchQueue) EndOfRIB(peer netip.Addr) { q.push(watchItem{kind: watchEOR, peer: peer}, nil) }

// PeerState queues a session state change.
func (q *watchQueue) PeerState(peer netip.Addr, asn uint32, st SessionState) {
	q.push(watchItem{kind: watchPeer, peer: peer, asn: asn, state: st}, nil)
}

// run hands the queued events on until ctx ends (what is still queued then is dropped).
func (q *watchQueue) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		}
		q.mu.Lock()
		items, paths := q.items, q.paths
		q.items, q.paths = nil, nil
		q.mu.Unlock()
		q.deliver(ctx, items, paths)
	}
}

// deliver hands items on in order, each run of consecutive best-path events as one BestPaths call.
func (q *watchQueue) deliver(ctx context.Context, items []watchItem, paths []LearnedPath) {
	start := 0
	for i := 0; i < len(items); {
		if ctx.Err() != nil {
			return
		}
		switch it := items[i]; it.kind {
		case watchBest:
			j := i + 1
			for j < len(items) && items[j].kind == watchBest {
				j++
			}
			end := items[j-1].end
			q.w.BestPaths(q.merge(items[i:j], paths, start))
			start, i = end, j
		case watchEOR:
			q.w.EndOfRIB(it.peer)
			i++
		case watchPeer:
			q.w.PeerState(it.peer, it.asn, it.state)
			i++
		}
	}
}

// merge returns the paths of a run of best-path events (the first starting at paths[start]) as one event: the
// paths of a destination that a later event of the run names again are left out.
func (q *watchQueue) merge(run []watchItem, paths []LearnedPath, start int) []LearnedPath {
	all := paths[start:run[len(run)-1].end]
	if len(run) == 1 {
		return all
	}
	if q.seen == nil {
		q.seen = make(map[netip.Prefix]struct{})
	}
	defer func() {
		if len(q.seen) > mergeMapMax {
			q.seen = nil
		} else {
			clear(q.seen)
		}
	}()
	if cap(q.keep) < len(all) || cap(q.keep) > mergeMapMax && len(all) <= mergeMapMax {
		q.keep = make([]bool, len(all))
	}
	q.keep = q.keep[:len(all)]
	dropped := 0
	// Latest event first: a destination seen in a later event is dropped from the earlier ones.
	for k := len(run) - 1; k >= 0; k-- {
		s := start
		if k > 0 {
			s = run[k-1].end
		}
		ev := paths[s:run[k].end]
		for i, p := range ev {
			_, later := q.seen[p.Prefix]
			q.keep[s-start+i] = !later
			if later {
				dropped++
			}
		}
		for _, p := range ev {
			q.seen[p.Prefix] = struct{}{}
		}
	}
	if dropped == 0 {
		return all
	}
	out := make([]LearnedPath, 0, len(all)-dropped)
	for i, p := range all {
		if q.keep[i] {
			out = append(out, p)
		}
	}
	return out
}

// The type URLs of the GoBGP API messages learnedPath reads (GoBGP makes them with anypb.New).
const (
	urlIPAddressPrefix = "type.googleapis.com/apipb.IPAddressPrefix"
	urlNextHop         = "type.googleapis.com/apipb.NextHopAttribute"
	urlMpReach         = "type.googleapis.com/apipb.MpReachNLRIAttribute"
	urlPrefix          = "type.googleapis.com/"
)

// learnedPath is FromAPIPath, with the same result, without protobuf's reflection and allocations: it reads the
// three fields it needs (the NLRI's prefix and length, the NEXT_HOP or first MP_REACH next hop) straight from
// the wire bytes of the Any values. Anything it does not expect (another NLRI type, a type URL of another form,
// bytes that do not parse) goes to FromAPIPath, which decides.
func learnedPath(p *api.Path) (LearnedPath, error) {
	if p.Nlri == nil || p.Nlri.TypeUrl != urlIPAddressPrefix {
		return FromAPIPath(p)
	}
	var plen uint64
	var pfx []byte
	if !wireFields(p.Nlri.Value, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) bool {
		switch {
		case num == 1 && typ == protowire.VarintType:
			plen = v
		case num == 2 && typ == protowire.BytesType:
			pfx = b
		}
		return true
	}) {
		return FromAPIPath(p)
	}
	a, err := netip.ParseAddr(string(pfx))
	if err != nil || uint32(plen) > uint32(a.BitLen()) {
		return FromAPIPath(p)
	}
	lp := LearnedPath{Prefix: netip.PrefixFrom(a, int(uint32(plen))).Masked(), Withdraw: p.IsWithdraw}
	lp.Local = p.NeighborIp == "" || p.NeighborIp == "<nil>"
	if !lp.Local {
		lp.Peer, _ = netip.ParseAddr(p.NeighborIp)
	}
	for _, attr := range p.Pattrs {
		if len(attr.TypeUrl) < len(urlPrefix) || attr.TypeUrl[:len(urlPrefix)] != urlPrefix {
			return FromAPIPath(p)
		}
		switch attr.TypeUrl {
		case urlNextHop:
			var nh []byte
			if !wireFields(attr.Value, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) bool {
				if num == 1 && typ == protowire.BytesType {
					nh = b
				}
				return true
			}) {
				return FromAPIPath(p)
			}
			lp.NextHop, _ = netip.ParseAddr(string(nh))
		case urlMpReach:
			var nh []byte
			found := false
			if !wireFields(attr.Value, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) bool {
				if num == 2 && typ == protowire.BytesType && !found {
					nh, found = b, true
				}
				return true
			}) {
				return FromAPIPath(p)
			}
			if found {
				lp.NextHop, _ = netip.ParseAddr(string(nh))
			}
		}
	}
	return lp, nil
}

// wireFields calls f for each field of the protobuf message b (v: a varint's value; b: a length-delimited
// field's bytes), until f says stop; it reports whether b parsed.
func wireFields(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, b []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		var v uint64
		var val []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			val, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return false
		}
		b = b[n:]
		if !f(num, typ, v, val) {
			return true
		}
	}
	return true
}
