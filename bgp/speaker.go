package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
)

// Identity is what a BGP speaker cannot change without a restart: its AS number and router ID, and the address
// it listens on.
type Identity struct {
	ASN      uint32
	RouterID netip.Addr
	NodeIP   netip.Addr
}

// Speaker owns the embedded GoBGP server and restarts it when the node's identity changes (a new
// canopy.io/node-asn, a new node address): everything else is applied in place by the Reconciler.
type Speaker struct {
	base    GlobalConfig // template; ASN, RouterID and ListenAddresses come from the Identity
	log     *slog.Logger
	learner *Learner

	mu     sync.Mutex
	id     Identity
	g      *GoBGP
	rec    *Reconciler
	cancel context.CancelFunc
}

// NewSpeaker returns a Speaker that feeds learned routes to learner.
func NewSpeaker(base GlobalConfig, learner *Learner, log *slog.Logger) *Speaker {
	return &Speaker{base: base, learner: learner, log: log}
}

// Ensure starts the speaker with identity id, or restarts it if it runs with another one.
func (s *Speaker) Ensure(ctx context.Context, id Identity) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.g != nil && s.id == id {
		return nil
	}
	if s.g != nil {
		s.log.Warn("BGP identity changed: restarting the speaker (all sessions reset)",
			"old_asn", s.id.ASN, "asn", id.ASN, "old_router_id", s.id.RouterID, "router_id", id.RouterID, "old_node_ip", s.id.NodeIP, "node_ip", id.NodeIP)
		s.cancel()
		s.g.Stop(context.Background())
		s.learner.Reset()
		s.g, s.rec = nil, nil
	}
	cfg := s.base
	cfg.ASN, cfg.RouterID, cfg.ListenAddresses = id.ASN, id.RouterID, []netip.Addr{id.NodeIP}
	g, err := StartGoBGP(ctx, cfg, s.log)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	if err := s.learner.Watch(wctx, g); err != nil {
		cancel()
		g.Stop(context.Background())
		return fmt.Errorf("watch BGP best paths: %w", err)
	}
	s.g, s.rec, s.cancel, s.id = g, NewReconciler(g, s.log), cancel, id
	s.log.Info("BGP speaker started", "asn", id.ASN, "router_id", id.RouterID, "listen", fmt.Sprintf("%s:%d", id.NodeIP, cfg.ListenPort), "grpc", cfg.GRPCAddr)
	return nil
}

// Reconciler returns the running speaker's reconciler (nil before Ensure).
func (s *Speaker) Reconciler() *Reconciler {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec
}

// Shutdown stops the speaker. withdraw=true sends Cease to every peer (they drop our routes at once); false
// just stops watching and leaves the process to exit, so peers with graceful restart keep our routes.
func (s *Speaker) Shutdown(withdraw bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.g == nil {
		return
	}
	s.cancel()
	if withdraw {
		s.g.Stop(context.Background())
	}
	s.g, s.rec = nil, nil
}
