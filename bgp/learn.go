package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	api "github.com/osrg/gobgp/v3/api"
)

// RouteSink receives the learned routes that passed the import policy (the kernel route manager).
type RouteSink interface {
	Set(dst netip.Prefix, nextHops []netip.Addr) error
	Remove(dst netip.Prefix) error
}

// LearnedPath is one best (or equal-cost multipath) path of a destination, as the RIB reports it.
type LearnedPath struct {
	Prefix   netip.Prefix
	NextHop  netip.Addr
	Withdraw bool
	Local    bool // originated by this speaker
}

// Learner turns best-path events into route sink calls, through the import policy. It remembers every
// destination's current next hops before the policy, so a policy change (a new node address, our pod CIDR
// arriving) is re-applied to what is already known without asking the RIB again.
type Learner struct {
	sink RouteSink
	log  *slog.Logger

	mu     sync.Mutex
	policy *ImportPolicy
	self   map[netip.Addr]bool
	known  map[netip.Prefix]learned
	nInst  int // destinations in known with installed set
	eor    map[netip.Addr]bool
	states map[netip.Addr]api.PeerState_SessionState
}

type learned struct {
	nextHops  []netip.Addr
	installed bool
}

// NewLearner returns a Learner writing to sink. self holds this node's addresses (paths pointing at them are ours).
func NewLearner(sink RouteSink, policy *ImportPolicy, self []netip.Addr, log *slog.Logger) *Learner {
	l := &Learner{sink: sink, log: log, policy: policy, known: map[netip.Prefix]learned{}, eor: map[netip.Addr]bool{}, states: map[netip.Addr]api.PeerState_SessionState{}}
	l.self = map[netip.Addr]bool{}
	for _, a := range self {
		l.self[a] = true
	}
	return l
}

// Apply takes one best-path event: for each destination it names, the paths given are its complete new
// multipath set (a lone withdrawn path means the destination is gone).
func (l *Learner) Apply(paths []LearnedPath) {
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
	learnedRoutes.Set(float64(l.nInst))
}

// SetPolicy replaces the import policy and re-applies it to every known destination.
func (l *Learner) SetPolicy(p *ImportPolicy, self []netip.Addr) {
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
	learnedRoutes.Set(float64(l.nInst))
}

// record stores a destination's state, keeping the installed count.
func (l *Learner) record(pfx netip.Prefix, e learned) {
	if old, ok := l.known[pfx]; ok && old.installed {
		l.nInst--
	}
	if e.installed {
		l.nInst++
	}
	l.known[pfx] = e
}

func (l *Learner) learn(pfx netip.Prefix, nhs []netip.Addr, fresh bool) {
	old, had := l.known[pfx]
	var kept []netip.Addr
	for _, nh := range nhs {
		if nh.Is4() != pfx.Addr().Is4() || l.self[nh] {
			continue
		}
		kept = append(kept, nh)
	}
	ok, reason := l.policy.Check(pfx)
	if ok && len(kept) == 0 {
		ok, reason = false, RejectBadNextHop
	}
	if !ok {
		if fresh {
			rejectedRoutes.WithLabelValues(reason).Inc()
			l.log.Debug("learned route refused by import policy", "prefix", pfx, "next_hops", nhs, "reason", reason)
		}
		if had && old.installed {
			if err := l.sink.Remove(pfx); err != nil {
				sinkErrors.Inc()
				l.log.Error("remove route", "prefix", pfx, "err", err)
			}
		}
		l.record(pfx, learned{nextHops: nhs})
		return
	}
	if err := l.sink.Set(pfx, kept); err != nil {
		sinkErrors.Inc()
		l.log.Error("install route", "prefix", pfx, "next_hops", kept, "err", err)
		l.record(pfx, learned{nextHops: nhs})
		return
	}
	l.record(pfx, learned{nextHops: nhs, installed: true})
}

func (l *Learner) forget(pfx netip.Prefix) {
	old, had := l.known[pfx]
	if !had {
		return
	}
	delete(l.known, pfx)
	if old.installed {
		l.nInst--
		if err := l.sink.Remove(pfx); err != nil {
			sinkErrors.Inc()
			l.log.Error("remove route", "prefix", pfx, "err", err)
		}
	}
}

// Reset forgets every destination and removes what it installed (the speaker was restarted: its RIB is new).
func (l *Learner) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for pfx := range l.known {
		l.forget(pfx)
	}
	l.eor = map[netip.Addr]bool{}
	l.states = map[netip.Addr]api.PeerState_SessionState{}
	learnedRoutes.Set(0)
	establishedPeers.Set(0)
}

// markEOR records an End-of-RIB from peer.
func (l *Learner) markEOR(peer netip.Addr) {
	l.mu.Lock()
	l.eor[peer] = true
	l.mu.Unlock()
}

// AllEOR reports whether every one of peers has sent End-of-RIB since the speaker started.
func (l *Learner) AllEOR(peers []netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range peers {
		if !l.eor[p] {
			return false
		}
	}
	return true
}

// PeerStates returns the last known session state of each peer that reported one.
func (l *Learner) PeerStates() map[netip.Addr]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[netip.Addr]string, len(l.states))
	for a, s := range l.states {
		out[a] = s.String()
	}
	return out
}

func (l *Learner) peerState(addr netip.Addr, asn uint32, st api.PeerState_SessionState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old, had := l.states[addr]
	if had && old == st {
		return
	}
	l.states[addr] = st
	n := 0
	for _, s := range l.states {
		if s == api.PeerState_ESTABLISHED {
			n++
		}
	}
	establishedPeers.Set(float64(n))
	if st == api.PeerState_ESTABLISHED || old == api.PeerState_ESTABLISHED {
		l.log.Info("BGP session state", "peer", addr, "asn", asn, "state", st.String(), "was", old.String())
	} else {
		l.log.Debug("BGP session state", "peer", addr, "asn", asn, "state", st.String(), "was", old.String())
	}
}

// Watch subscribes to the GoBGP server's best paths (multipath), End-of-RIB and peer state, feeding them to the
// Learner until ctx ends. The current RIB is replayed first.
func (l *Learner) Watch(ctx context.Context, g *GoBGP) error {
	req := &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_BEST, Init: true},
			{Type: api.WatchEventRequest_Table_Filter_EOR},
		}},
	}
	return g.S.WatchEvent(ctx, req, func(r *api.WatchEventResponse) {
		switch ev := r.Event.(type) {
		case *api.WatchEventResponse_Table:
			var batch []LearnedPath
			for _, p := range ev.Table.Paths {
				if p.Nlri == nil { // End-of-RIB marker
					if a, err := netip.ParseAddr(p.NeighborIp); err == nil {
						l.markEOR(a)
						l.log.Debug("End-of-RIB received", "peer", a)
					}
					continue
				}
				lp, err := FromAPIPath(p)
				if err != nil {
					rejectedRoutes.WithLabelValues(RejectWrongFamily).Inc()
					l.log.Debug("learned path not understood", "err", err)
					continue
				}
				batch = append(batch, lp)
			}
			if len(batch) > 0 {
				l.Apply(batch)
			}
		case *api.WatchEventResponse_Peer:
			st := ev.Peer.GetPeer().GetState()
			if a, err := netip.ParseAddr(st.GetNeighborAddress()); err == nil {
				l.peerState(a, st.GetPeerAsn(), st.GetSessionState())
			}
		}
	})
}

// FromAPIPath decodes the parts of a GoBGP API path the Learner needs.
func FromAPIPath(p *api.Path) (LearnedPath, error) {
	var nlri api.IPAddressPrefix
	if err := p.Nlri.UnmarshalTo(&nlri); err != nil {
		return LearnedPath{}, fmt.Errorf("NLRI %s: %w", p.Nlri.GetTypeUrl(), err)
	}
	a, err := netip.ParseAddr(nlri.Prefix)
	if err != nil || int(nlri.PrefixLen) > a.BitLen() {
		return LearnedPath{}, fmt.Errorf("bad prefix %s/%d", nlri.Prefix, nlri.PrefixLen)
	}
	lp := LearnedPath{Prefix: netip.PrefixFrom(a, int(nlri.PrefixLen)).Masked(), Withdraw: p.IsWithdraw}
	lp.Local = p.NeighborIp == "" || p.NeighborIp == "<nil>"
	for _, attr := range p.Pattrs {
		switch {
		case attr.MessageIs(&api.NextHopAttribute{}):
			var nh api.NextHopAttribute
			if attr.UnmarshalTo(&nh) == nil {
				lp.NextHop, _ = netip.ParseAddr(nh.NextHop)
			}
		case attr.MessageIs(&api.MpReachNLRIAttribute{}):
			var mp api.MpReachNLRIAttribute
			if attr.UnmarshalTo(&mp) == nil && len(mp.NextHops) > 0 {
				lp.NextHop, _ = netip.ParseAddr(mp.NextHops[0])
			}
		}
	}
	return lp, nil
}
