package bgp

import (
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"canopy.io/canopy/routes"
)

// RouteSink receives the learned routes that passed the import policy (the kernel route manager).
type RouteSink interface {
	Set(dst netip.Prefix, nextHops []netip.Addr) error
	Remove(dst netip.Prefix) error
}

// BatchSink is the optional batch method of a RouteSink (*routes.Manager has it): the sink calls of one
// best-path event, or of a policy change, go to it in one call, with an error per change.
type BatchSink interface {
	SetMany(changes []routes.Change) []error
}

// sinkOp is a sink call staged during one event: Set (kept next hops) or Remove (none).
type sinkOp struct {
	pfx       netip.Prefix
	kept      []netip.Addr // after the policy; nil: Remove
	nhs       []netip.Addr // before the policy, as known keeps them
	reinstall bool         // Set of a destination installed before
}

// LearnedPath is one best (or equal-cost multipath) path of a destination, as the RIB reports it.
type LearnedPath struct {
	Prefix   netip.Prefix
	NextHop  netip.Addr
	Peer     netip.Addr // the peer it came from (invalid for our own paths)
	Withdraw bool
	Local    bool // originated by this speaker
}

// Importer turns best-path events into route sink calls, through the import policy. It remembers every
// destination's current next hops before the policy, so a policy change (a new node address, our pod CIDR
// arriving) is re-applied to what is already known without asking the RIB again.
type Importer struct {
	sink RouteSink
	log  *slog.Logger

	mu       sync.Mutex
	policy   *ImportPolicy
	self     map[netip.Addr]bool
	known    map[netip.Prefix]learned
	nInst    int // destinations in known with installed set
	nRefused int // destinations in known refused (kept for a policy change to accept them), at most maxRefused

	staged  []sinkOp        // sink calls of the event being handled
	changes []routes.Change // their SetMany argument, reused
}

// maxRefused bounds the refused destinations the importer remembers (a refusal a new Node can lift: its pod CIDR
// arriving before its Node object). Past it refused paths are only counted, so a peer flooding prefixes costs
// counters, not memory; the per-peer prefix limit bounds the rest.
const maxRefused = 4096

type learned struct {
	nextHops  []netip.Addr
	installed bool
}

// NewImporter returns an Importer writing to sink. self holds this node's addresses (paths pointing at them are
// ours).
func NewImporter(sink RouteSink, policy *ImportPolicy, self []netip.Addr, log *slog.Logger) *Importer {
	l := &Importer{sink: sink, log: log, policy: policy, known: map[netip.Prefix]learned{}}
	l.self = map[netip.Addr]bool{}
	for _, a := range self {
		l.self[a] = true
	}
	return l
}

// BestPaths takes one best-path event (see Watcher).
func (l *Importer) BestPaths(paths []LearnedPath) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sets := map[netip.Prefix][]netip.Addr{}
	var order []netip.Prefix
	for _, p := range paths {
		pfx := p.Prefix.Masked()
		if _, seen := sets[pfx]; !seen {
			sets[pfx] = nil
			order = append(order, pfx)
		}
		if p.Withdraw || p.Local || !p.NextHop.IsValid() || l.self[p.NextHop] {
			continue
		}
		sets[pfx] = append(sets[pfx], p.NextHop)
	}
	for _, pfx := range order {
		nhs := sets[pfx]
		slices.SortFunc(nhs, func(a, b netip.Addr) int { return a.Compare(b) })
		nhs = slices.Compact(nhs)
		if len(nhs) == 0 {
			l.forget(pfx)
			continue
		}
		l.learn(pfx, nhs, true)
	}
	l.flush()
	learnedRoutes.Set(float64(l.nInst))
}

// SetPolicy replaces the import policy and re-applies it to every known destination.
func (l *Importer) SetPolicy(p *ImportPolicy, self []netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.policy = p
	l.self = map[netip.Addr]bool{}
	for _, a := range self {
		l.self[a] = true
	}
	for pfx, k := range l.known {
		l.learn(pfx, k.nextHops, false)
	}
	l.flush()
	learnedRoutes.Set(float64(l.nInst))
}

// record stores a destination's state, keeping the installed count.
func (l *Importer) record(pfx netip.Prefix, e learned) {
	if old, ok := l.known[pfx]; ok {
		if old.installed {
			l.nInst--
		} else {
			l.nRefused--
		}
	}
	if e.installed {
		l.nInst++
	} else {
		l.nRefused++
	}
	l.known[pfx] = e
}

// drop forgets a destination without touching the sink.
func (l *Importer) drop(pfx netip.Prefix) {
	if old, ok := l.known[pfx]; ok {
		if old.installed {
			l.nInst--
		} else {
			l.nRefused--
		}
		delete(l.known, pfx)
	}
}

func (l *Importer) learn(pfx netip.Prefix, nhs []netip.Addr, fresh bool) {
	old, had := l.known[pfx]
	var kept []netip.Addr
	for _, nh := range nhs {
		if !l.self[nh] {
			kept = append(kept, nh)
		}
	}
	ok, reason := l.policy.Check(pfx)
	if ok {
		if kept, reason = l.policy.NextHops(pfx, kept); len(kept) == 0 {
			ok = false
		}
	}
	if !ok {
		if fresh {
			rejectedRoutes.WithLabelValues(reason).Inc()
			l.log.Debug("learned route refused by import policy", "prefix", pfx, "next_hops", nhs, "reason", reason)
		}
		if had && old.installed {
			l.staged = append(l.staged, sinkOp{pfx: pfx})
		}
		// Remember it only if a policy change could accept it (a new Node, its address), and only so many.
		if reason == RejectDefault || reason == RejectOutside || (!had && l.nRefused >= maxRefused) {
			l.drop(pfx)
			return
		}
		l.record(pfx, learned{nextHops: nhs})
		return
	}
	l.staged = append(l.staged, sinkOp{pfx: pfx, kept: kept, nhs: nhs, reinstall: had && old.installed})
}

// flush makes the staged sink calls (one SetMany when the sink has it) and records their outcomes.
func (l *Importer) flush() {
	if len(l.staged) == 0 {
		return
	}
	bs, batched := l.sink.(BatchSink)
	var errs []error
	if batched {
		l.changes = l.changes[:0]
		for _, o := range l.staged {
			l.changes = append(l.changes, routes.Change{Dst: o.pfx, NextHops: o.kept})
		}
		errs = bs.SetMany(l.changes)
		clear(l.changes)
	}
	for i, o := range l.staged {
		var err error
		switch {
		case batched && errs != nil:
			err = errs[i]
		case batched:
		case o.kept == nil:
			err = l.sink.Remove(o.pfx)
		default:
			err = l.sink.Set(o.pfx, o.kept)
		}
		l.settle(o, err)
	}
	clear(l.staged)
	l.staged = l.staged[:0]
}

// settle records the outcome of one sink call.
func (l *Importer) settle(o sinkOp, err error) {
	if o.kept == nil {
		if err != nil {
			sinkErrors.Inc()
			l.log.Error("remove route", "prefix", o.pfx, "err", err)
		}
		return
	}
	if err != nil {
		sinkErrors.Inc()
		l.log.Error("install route", "prefix", o.pfx, "next_hops", o.kept, "err", err)
		if o.reinstall {
			l.drop(o.pfx) // the kernel may still hold the old next hops: re-learned, it is Set again
		}
		l.record(o.pfx, learned{nextHops: o.nhs})
		return
	}
	l.record(o.pfx, learned{nextHops: o.nhs, installed: true})
}

func (l *Importer) forget(pfx netip.Prefix) {
	old, had := l.known[pfx]
	if !had {
		return
	}
	l.drop(pfx)
	if old.installed {
		l.staged = append(l.staged, sinkOp{pfx: pfx})
	}
}

// Reset forgets every destination without touching the sink: the speaker was restarted and its RIB is new. The
// routes stay in the kernel (traffic keeps flowing) until the new RIB confirms them or the sweep removes them.
func (l *Importer) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.known = map[netip.Prefix]learned{}
	l.nInst, l.nRefused = 0, 0
	learnedRoutes.Set(0)
}

// EndOfRIB implements Watcher (the session tracker keeps them).
func (l *Importer) EndOfRIB(netip.Addr) {}

// PeerState implements Watcher (the session tracker keeps them).
func (l *Importer) PeerState(netip.Addr, uint32, SessionState) {}
