package bgp

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
)

func vipPaths(nh netip.Addr, vips ...string) map[netip.Prefix]Path {
	out := map[netip.Prefix]Path{}
	for _, v := range vips {
		p := pfx(v)
		out[p] = Path{Prefix: p, NextHop: nh, VIP: true}
	}
	return out
}

// Paths and peers desired before the speaker runs are applied once it does; every restart of the speaker
// (an identity change) replays the whole desired state onto the new instance, paths before peers.
func TestManagerReplaysEverythingOnEachSpeakerStart(t *testing.T) {
	m, fs := startManager(t, nil)
	nh := addr("10.99.0.11")
	m.SetPaths(GroupVIPs, vipPaths(nh, "10.200.0.5/32", "10.200.0.6/32"))
	m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{pfx("10.244.1.0/24"): {Prefix: pfx("10.244.1.0/24"), NextHop: nh}})
	m.SetPeers([]PeerSpec{{Address: addr("10.99.0.1"), ASN: 64500}, {Address: addr("10.99.0.12"), ASN: 64512}})
	if _, ok := m.Running(); ok {
		t.Fatal("a speaker runs before the identity is known")
	}
	for i, asn := range []uint32{64512, 65001, 64512, 65002, 64512} {
		m.SetIdentity(Identity{ASN: asn, RouterID: nh, NodeIP: nh})
		eventually(t, "the speaker runs in the new AS with every path and peer", func() bool {
			id, ok := m.Running()
			return ok && id.ASN == asn && len(m.AppliedPaths(GroupVIPs)) == 2 && len(m.AppliedPaths(GroupPodCIDRs)) == 1 &&
				len(m.AppliedPeers()) == 2
		})
		calls := fs.r.take()
		var adds []string
		for _, c := range calls {
			if strings.HasPrefix(c, "add") {
				adds = append(adds, c)
			}
		}
		if len(adds) != 5 {
			t.Fatalf("start %d: calls %v, want 3 paths and 2 peers added", i, calls)
		}
		lastPath, firstPeer := -1, len(calls)
		for j, c := range calls {
			if strings.HasPrefix(c, "addpath") {
				lastPath = j
			} else if strings.HasPrefix(c, "add ") && j < firstPeer {
				firstPeer = j
			}
		}
		if lastPath > firstPeer {
			t.Fatalf("start %d: a peer was added before every path: %v", i, calls)
		}
	}
	if got := len(fs.identities()); got != 5 {
		t.Fatalf("speaker starts %d, want 5", got)
	}
}

// A speaker that fails to start (its port busy) is retried with the desired state intact.
func TestManagerRetriesAFailedStart(t *testing.T) {
	r := &lockedRouter{f: fakeRouter{fail: map[string]bool{}}}
	var mu sync.Mutex
	fails := 2
	start := func(context.Context, GlobalConfig) (Router, error) {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			return nil, errors.New("listen tcp 10.99.0.11:179: address already in use")
		}
		return r, nil
	}
	m := NewManager(GlobalConfig{}, start, NewSessions(quiet), quiet)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	nh := addr("10.99.0.11")
	m.SetPaths(GroupVIPs, vipPaths(nh, "10.200.0.5/32"))
	m.SetIdentity(Identity{ASN: 64512, RouterID: nh, NodeIP: nh})
	eventually(t, "the VIP announced after the retried start", func() bool { return len(m.AppliedPaths(GroupVIPs)) == 1 })
}

// SetWithdrawn(true) withdraws every path and closes every session, and false brings them all back.
func TestManagerWithdrawnAndBack(t *testing.T) {
	m, fs := startManager(t, nil)
	nh := addr("10.99.0.11")
	m.SetIdentity(Identity{ASN: 64512, RouterID: nh, NodeIP: nh})
	m.SetPaths(GroupVIPs, vipPaths(nh, "10.200.0.5/32"))
	m.SetPeers([]PeerSpec{{Address: addr("10.99.0.1"), ASN: 64500}})
	eventually(t, "announced", func() bool { return len(m.AppliedPaths(GroupVIPs)) == 1 && len(m.AppliedPeers()) == 1 })
	m.SetWithdrawn(true)
	eventually(t, "withdrawn", func() bool { return len(m.AppliedPaths(GroupVIPs)) == 0 && len(m.AppliedPeers()) == 0 })
	if len(m.Peers()) != 0 {
		t.Fatal("a withdrawn manager still lists peers to wait for")
	}
	fs.r.take()
	m.SetWithdrawn(false)
	eventually(t, "back", func() bool { return len(m.AppliedPaths(GroupVIPs)) == 1 && len(m.AppliedPeers()) == 1 })
	if got := fs.r.take(); !slices.Contains(got, "addpath 10.200.0.5/32 10.99.0.11") {
		t.Fatalf("calls %v", got)
	}
}
