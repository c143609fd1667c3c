package bgp

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"

	"canopy.io/canopy/bgp/bfd"
)

// BFDLink ties BFD to BGP: it keeps a BFD session with every peer whose PeerSpec asks for one, resets that
// peer's BGP session the moment its BFD session goes down (its learned routes leave the kernel at once, instead
// of after the hold time), and restarts the BGP session when BFD comes back up (so it reconnects without GoBGP's
// idle hold).
type BFDLink struct {
	srv      *bfd.Server
	mgr      *Manager
	sessions *Sessions
	timers   BFDTimers
	log      *slog.Logger

	mu    sync.Mutex
	peers map[netip.Addr]bool // peers with BFD
}

// NewBFDLink returns a link between srv and mgr; sessions tells whether a BGP session is up.
func NewBFDLink(srv *bfd.Server, mgr *Manager, sessions *Sessions, timers BFDTimers, log *slog.Logger) *BFDLink {
	return &BFDLink{srv: srv, mgr: mgr, sessions: sessions, timers: timers, log: log, peers: map[netip.Addr]bool{}}
}

// SetPeers keeps a BFD session, from the address of locals of the peer's family (the node's addresses), with each
// of peers that wants one (PeerSpec.BFD, directly connected), and none with the others.
func (b *BFDLink) SetPeers(locals []netip.Addr, peers []PeerSpec) {
	var want []bfd.PeerConfig
	set := map[netip.Addr]bool{}
	for _, p := range peers {
		local := localAddressFor(p.Address, locals)
		if !p.BFD || p.MultihopTTL > 1 || !local.IsValid() {
			continue
		}
		t := b.timers
		if p.BFDTimers.MinTx > 0 {
			t.MinTx = p.BFDTimers.MinTx
		}
		if p.BFDTimers.MinRx > 0 {
			t.MinRx = p.BFDTimers.MinRx
		}
		if p.BFDTimers.Multiplier > 0 {
			t.Multiplier = p.BFDTimers.Multiplier
		}
		want = append(want, bfd.PeerConfig{Peer: p.Address, Local: local, DesiredMinTx: t.MinTx,
			RequiredMinRx: t.MinRx, DetectMultiplier: t.Multiplier})
		set[p.Address] = true
	}
	b.mu.Lock()
	b.peers = set
	b.mu.Unlock()
	if err := b.srv.SetPeers(want); err != nil {
		b.log.Error("BFD sessions", "err", err)
	}
}

// Run runs the BFD speaker and acts on its state changes until ctx ends.
func (b *BFDLink) Run(ctx context.Context) {
	cancel := b.srv.Subscribe(b.event)
	defer cancel()
	if err := b.srv.Run(ctx); err != nil && ctx.Err() == nil {
		b.log.Error("BFD speaker stopped", "err", err)
	}
}

func (b *BFDLink) event(ev bfd.Event) {
	b.mu.Lock()
	watched := b.peers[ev.Peer]
	b.mu.Unlock()
	if !watched {
		return
	}
	switch {
	case ev.Old == bfd.StateUp && ev.New != bfd.StateUp:
		b.log.Warn("BFD session down: resetting the BGP session", "peer", ev.Peer, "state", ev.New, "diag", ev.Diag)
		b.mgr.Bounce(ev.Peer)
	case ev.New == bfd.StateUp && b.sessions.State(ev.Peer) != StateEstablished:
		b.log.Info("BFD session up: restarting the BGP session at once", "peer", ev.Peer)
		b.mgr.Bounce(ev.Peer)
	}
}

// States returns the state of each BFD session, by peer ("Up", "Down", ...).
func (b *BFDLink) States() map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, s := range b.srv.Sessions() {
		out[s.Peer] = s.State.String()
	}
	return out
}
