//go:build linux

package bfd_test

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"canopy.io/canopy/bgp/bfd"
)

// How the agent uses the Server: one per node, sessions to the BGP peers, BGP reset on Up → Down.
func Example() {
	ctx := context.Background()
	nodeIP, tor := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.1")
	srv, err := bfd.New(bfd.Config{LocalAddrs: []netip.Addr{nodeIP}, Log: slog.Default()})
	if err != nil {
		panic(err)
	}
	cancel := srv.Subscribe(func(e bfd.Event) {
		if e.Old == bfd.StateUp {
			slog.Warn("BFD lost the peer: reset its BGP session", "peer", e.Peer, "diag", e.Diag)
		}
	})
	defer cancel()
	go func() { _ = srv.Run(ctx) }()
	if err := srv.SetPeers([]bfd.PeerConfig{{Peer: tor, Local: nodeIP,
		DesiredMinTx: 300 * time.Millisecond, RequiredMinRx: 300 * time.Millisecond, DetectMultiplier: 3}}); err != nil {
		panic(err)
	}
	for _, st := range srv.Sessions() {
		slog.Info("BFD", "peer", st.Peer, "state", st.State, "tx", st.TxInterval, "detect", st.DetectionTime)
	}
}
