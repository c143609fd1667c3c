package bgp

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// StaleRoutes is the kernel route manager as the sweep sees it.
type StaleRoutes interface {
	// MarkStale makes every route applied now a stale candidate: it stays in the kernel (traffic keeps flowing)
	// until the importer confirms it, or SweepStale removes it.
	MarkStale()
	// SweepStale removes the stale candidates for which remove says yes; it returns how many it removed and how
	// many stale candidates are left.
	SweepStale(remove func(dst netip.Prefix, nextHops []netip.Addr) bool) (removed, left int, err error)
}

// Sweeper removes the kernel routes an earlier run or an earlier speaker left, which the new speaker's peers
// do not confirm, without ever deleting a route that was right: per route, only once every peer it points at has
// sent End-of-RIB (so a peer that is slow or unreachable keeps its routes), and never while no peer has.
type Sweeper struct {
	routes   StaleRoutes
	sessions *Sessions
	peers    func() []netip.Addr // the configured peers
	timeout  time.Duration
	every    time.Duration
	log      *slog.Logger
	kick     chan struct{}
}

// NewSweeper returns a Sweeper; peers lists the configured peers. After timeout, routes whose next hop is no
// configured peer are swept once every established peer has sent End-of-RIB (unreachable peers are not waited
// for any more); routes via a configured peer always wait for that peer.
func NewSweeper(routes StaleRoutes, sessions *Sessions, peers func() []netip.Addr, timeout time.Duration, log *slog.Logger) *Sweeper {
	return &Sweeper{routes: routes, sessions: sessions, peers: peers, timeout: timeout, every: 200 * time.Millisecond,
		log: log, kick: make(chan struct{}, 1)}
}

// Restart marks every kernel route stale and starts a sweep (a speaker started).
func (s *Sweeper) Restart() {
	s.routes.MarkStale()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run sweeps after each Restart until no stale route is left, until ctx ends.
func (s *Sweeper) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		s.sweep(ctx)
	}
}

func (s *Sweeper) sweep(ctx context.Context) {
	start := time.Now()
	t := time.NewTicker(s.every)
	defer t.Stop()
	total := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick: // restarted meanwhile: start over
			start, total = time.Now(), 0
		case <-t.C:
		}
		peers := s.peers()
		ses := s.sessions.Snapshot()
		settled := time.Since(start) >= s.timeout
		removed, left, err := s.routes.SweepStale(func(_ netip.Prefix, nhs []netip.Addr) bool {
			return Sweepable(nhs, peers, ses, settled)
		})
		total += removed
		if err != nil {
			s.log.Warn("removing stale routes", "err", err)
		}
		if left == 0 {
			s.log.Info("route sync after speaker start done; stale kernel routes removed", "removed", total,
				"took", time.Since(start).Round(time.Millisecond))
			return
		}
	}
}

// Sweepable says whether a stale route (one an earlier run left, not confirmed by the running speaker) with
// nextHops may be removed now, given the configured peers and their sessions:
//   - never while no established peer has sent End-of-RIB (a blind sweep could remove every route);
//   - a next hop that is a configured peer: once that peer has sent End-of-RIB (it has had its say);
//   - any other next hop: once every configured peer has sent End-of-RIB, or, when settled (the stale timeout
//     passed), once every established one has.
func Sweepable(nextHops []netip.Addr, peers []netip.Addr, sessions map[netip.Addr]SessionStatus, settled bool) bool {
	heard := false
	for _, s := range sessions {
		if s.EndOfRIB && s.State == StateEstablished {
			heard = true
			break
		}
	}
	if !heard {
		return false
	}
	configured := make(map[netip.Addr]bool, len(peers))
	for _, p := range peers {
		configured[p] = true
	}
	allConfigured, allEstablished := true, true
	for _, p := range peers {
		s := sessions[p]
		if !s.EndOfRIB {
			allConfigured = false
			if s.State == StateEstablished {
				allEstablished = false
			}
		}
	}
	for _, nh := range nextHops {
		switch {
		case configured[nh]:
			if !sessions[nh].EndOfRIB {
				return false
			}
		case allConfigured:
		case settled && allEstablished:
		default:
			return false
		}
	}
	return true
}
