package bgp

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// PeerCounters is what the speaker reports of one session.
type PeerCounters struct {
	Address                        netip.Addr
	State                          SessionState
	Since                          time.Time // when it came up (Established) or went down
	Received, Accepted, Advertised uint64
}

// PeerStatus is one desired session as a status command, the metrics and BGPNodeStatus show it.
type PeerStatus struct {
	Address netip.Addr `json:"peer"`
	ASN     uint32     `json:"asn"`
	Kind    PeerKind   `json:"kind"`
	Name    string     `json:"name"`
	State   string     `json:"state"`
	Since   time.Time  `json:"since,omitzero"`
	// Received: prefixes the peer sent; Accepted: of those, what GoBGP took (before Canopy's import policy, which
	// counts its refusals in canopy_bgp_rejected_routes_total); Advertised: what we send it.
	Received   uint64 `json:"prefixesReceived"`
	Accepted   uint64 `json:"prefixesAccepted"`
	Advertised uint64 `json:"prefixesAdvertised"`
	BFD        string `json:"bfd,omitempty"`
	LastError  string `json:"lastError,omitempty"`
}

// Status is the speaker's state.
type Status struct {
	Running  bool         `json:"running"`
	ASN      uint32       `json:"asn,omitempty"`
	RouterID netip.Addr   `json:"routerID,omitzero"`
	Peers    []PeerStatus `json:"peers"`
	Paths    int          `json:"advertisedPaths"`
}

// advertised holds the last count of the prefixes sent to each peer. GoBGP (v3.37) counts them, when ListPeer
// is asked to, on its main loop by running every best path through the export policy once per peer: with 100,000
// learned routes and four peers that took about a second, and the BGPNodeStatus writer asks every second, so the
// speaker spent half its time there and took routes in (and out) several times slower. The count is taken again
// only after 50 times as long as the last one took (so at most about 2% of the loop; with a small table, at every
// call), or when a session's state changed or a peer is new.
type advertised struct {
	mu     sync.Mutex
	counts map[netip.Addr]uint64
	states map[netip.Addr]SessionState
	next   time.Time
}

// advertisedShare: a recount waits this many times as long as the last one took.
const advertisedShare = 50

// Peers implements the status part of Router over GoBGP's ListPeer.
func (g *GoBGP) Peers(ctx context.Context) ([]PeerCounters, error) {
	g.adv.mu.Lock()
	defer g.adv.mu.Unlock()
	recount := g.adv.counts == nil || !time.Now().Before(g.adv.next)
	out, err := g.peers(ctx, recount)
	if err == nil && !recount {
		for _, c := range out {
			if st, ok := g.adv.states[c.Address]; !ok || st != c.State {
				recount = true
				break
			}
		}
		if recount {
			out, err = g.peers(ctx, true)
		}
	}
	if err != nil {
		return out, err
	}
	if !recount {
		for i := range out {
			out[i].Advertised = g.adv.counts[out[i].Address]
		}
	}
	return out, nil
}

// peers lists the sessions; with advertised, GoBGP counts what each is sent (and the count is kept).
func (g *GoBGP) peers(ctx context.Context, advertised bool) ([]PeerCounters, error) {
	var out []PeerCounters
	t0 := time.Now()
	err := g.s.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: advertised}, func(p *api.Peer) {
		a, err := netip.ParseAddr(p.GetState().GetNeighborAddress())
		if err != nil {
			a, _ = netip.ParseAddr(p.GetConf().GetNeighborAddress())
		}
		c := PeerCounters{Address: a, State: sessionState(p.GetState().GetSessionState())}
		ts := p.GetTimers().GetState()
		if c.State == StateEstablished && ts.GetUptime() != nil {
			c.Since = ts.GetUptime().AsTime()
		} else if ts.GetDowntime() != nil {
			c.Since = ts.GetDowntime().AsTime()
		}
		for _, af := range p.GetAfiSafis() {
			st := af.GetState()
			c.Received += st.GetReceived()
			c.Accepted += st.GetAccepted()
			c.Advertised += st.GetAdvertised()
		}
		out = append(out, c)
	})
	if err == nil && advertised {
		g.adv.counts = make(map[netip.Addr]uint64, len(out))
		g.adv.states = make(map[netip.Addr]SessionState, len(out))
		for _, c := range out {
			g.adv.counts[c.Address], g.adv.states[c.Address] = c.Advertised, c.State
		}
		g.adv.next = time.Now().Add(advertisedShare * time.Since(t0))
	}
	return out, err
}

// Status returns the running speaker's sessions: every desired peer, with what the speaker says of it, and bfd
// (may be nil) for its BFD state.
func (m *Manager) Status(ctx context.Context, bfd func(netip.Addr) string) Status {
	m.instMu.Lock()
	defer m.instMu.Unlock()
	st := Status{Peers: []PeerStatus{}}
	m.mu.Lock()
	desired := slices.Clone(m.desired.peers)
	withdrawn := m.desired.withdrawn
	m.mu.Unlock()
	var errs map[netip.Addr]string
	if withdrawn {
		desired = nil
	}
	counters := map[netip.Addr]PeerCounters{}
	if m.inst != nil {
		st.Running, st.ASN, st.RouterID, errs = true, m.inst.id.ASN, m.inst.id.RouterID, m.inst.peerErrs
		for _, g := range m.inst.paths {
			st.Paths += len(g)
		}
		if r, ok := m.inst.r.(interface {
			Peers(context.Context) ([]PeerCounters, error)
		}); ok {
			if cs, err := r.Peers(ctx); err == nil {
				for _, c := range cs {
					counters[c.Address] = c
				}
			}
		}
	}
	for _, p := range desired {
		ps := PeerStatus{Address: p.Address, ASN: p.ASN, Kind: p.Kind, Name: p.Name, State: StateUnknown.String(), LastError: errs[p.Address]}
		if c, ok := counters[p.Address]; ok {
			ps.State, ps.Since, ps.Received, ps.Accepted, ps.Advertised = c.State.String(), c.Since, c.Received, c.Accepted, c.Advertised
		}
		if bfd != nil && p.BFD {
			ps.BFD = bfd(p.Address)
		}
		st.Peers = append(st.Peers, ps)
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int { return a.Address.Compare(b.Address) })
	return st
}
