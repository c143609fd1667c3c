package bgp

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// Sessions tracks, for the running speaker, each peer's session state and whether it has sent End-of-RIB: what
// the stale-route sweep waits for, what the metrics count and what a status command shows.
type Sessions struct {
	log *slog.Logger

	mu    sync.Mutex
	peers map[netip.Addr]*SessionStatus
}

// SessionStatus is one peer's session as the speaker reported it.
type SessionStatus struct {
	Peer     netip.Addr
	ASN      uint32
	State    SessionState
	EndOfRIB bool      // the peer sent End-of-RIB since the speaker started
	Since    time.Time // last state change
}

// NewSessions returns an empty tracker.
func NewSessions(log *slog.Logger) *Sessions {
	return &Sessions{log: log, peers: map[netip.Addr]*SessionStatus{}}
}

// Reset forgets every session (a new speaker started).
func (s *Sessions) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peers = map[netip.Addr]*SessionStatus{}
	establishedPeers.Set(0)
}

func (s *Sessions) peer(a netip.Addr) *SessionStatus {
	p := s.peers[a]
	if p == nil {
		p = &SessionStatus{Peer: a, Since: time.Now()}
		s.peers[a] = p
	}
	return p
}

// EndOfRIB implements Watcher.
func (s *Sessions) EndOfRIB(peer netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peer(peer).EndOfRIB = true
	s.log.Debug("End-of-RIB received", "peer", peer)
}

// PeerState implements Watcher.
func (s *Sessions) PeerState(peer netip.Addr, asn uint32, st SessionState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.peer(peer)
	old := p.State
	if old == st && p.ASN == asn {
		return
	}
	p.ASN, p.State, p.Since = asn, st, time.Now()
	n := 0
	for _, q := range s.peers {
		if q.State == StateEstablished {
			n++
		}
	}
	establishedPeers.Set(float64(n))
	if st == StateEstablished || old == StateEstablished {
		s.log.Info("BGP session state", "peer", peer, "asn", asn, "state", st.String(), "was", old.String())
	} else {
		s.log.Debug("BGP session state", "peer", peer, "asn", asn, "state", st.String(), "was", old.String())
	}
}

// BestPaths implements Watcher (the importer takes them).
func (s *Sessions) BestPaths([]LearnedPath) {}

// Snapshot returns every known session.
func (s *Sessions) Snapshot() map[netip.Addr]SessionStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[netip.Addr]SessionStatus, len(s.peers))
	for a, p := range s.peers {
		out[a] = *p
	}
	return out
}

// State returns a peer's session state (StateUnknown if it never reported one).
func (s *Sessions) State(peer netip.Addr) SessionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.peers[peer]; p != nil {
		return p.State
	}
	return StateUnknown
}

// Watchers fans one Router's events out to several Watchers, in order.
func Watchers(ws ...Watcher) Watcher { return watchers(ws) }

type watchers []Watcher

func (w watchers) BestPaths(p []LearnedPath) {
	for _, x := range w {
		x.BestPaths(p)
	}
}
func (w watchers) EndOfRIB(peer netip.Addr) {
	for _, x := range w {
		x.EndOfRIB(peer)
	}
}
func (w watchers) PeerState(peer netip.Addr, asn uint32, st SessionState) {
	for _, x := range w {
		x.PeerState(peer, asn, st)
	}
}
