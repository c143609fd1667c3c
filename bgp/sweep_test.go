package bgp

import (
	"net/netip"
	"testing"
)

func TestSweepable(t *testing.T) {
	tor, n2, n3, other := addr("10.99.0.1"), addr("10.99.0.12"), addr("10.99.0.13"), addr("10.99.0.77")
	peers := []netip.Addr{tor, n2, n3}
	up := func(eor bool) SessionStatus { return SessionStatus{State: StateEstablished, EndOfRIB: eor} }
	down := SessionStatus{State: StateActive}
	for _, c := range []struct {
		name     string
		nhs      []netip.Addr
		sessions map[netip.Addr]SessionStatus
		settled  bool
		want     bool
	}{
		{"nobody established: never", []netip.Addr{n2}, nil, true, false},
		{"established but no End-of-RIB yet: never", []netip.Addr{n2}, map[netip.Addr]SessionStatus{n2: up(false)}, true, false},
		{"its peer sent End-of-RIB", []netip.Addr{n2}, map[netip.Addr]SessionStatus{n2: up(true)}, false, true},
		{"its peer is unreachable: kept, even settled", []netip.Addr{tor}, map[netip.Addr]SessionStatus{tor: down, n2: up(true), n3: up(true)}, true, false},
		{"ECMP: one of its peers has not spoken", []netip.Addr{n2, n3}, map[netip.Addr]SessionStatus{n2: up(true), n3: up(false)}, true, false},
		{"third-party next hop: waits for every configured peer", []netip.Addr{other}, map[netip.Addr]SessionStatus{tor: down, n2: up(true), n3: up(true)}, false, false},
		{"third-party next hop: every configured peer spoke", []netip.Addr{other}, map[netip.Addr]SessionStatus{tor: up(true), n2: up(true), n3: up(true)}, false, true},
		{"third-party next hop, settled: the established ones suffice", []netip.Addr{other}, map[netip.Addr]SessionStatus{tor: down, n2: up(true), n3: up(true)}, true, true},
		{"third-party next hop, settled, an established peer still loading", []netip.Addr{other}, map[netip.Addr]SessionStatus{tor: down, n2: up(true), n3: up(false)}, true, false},
	} {
		if got := Sweepable(c.nhs, peers, c.sessions, c.settled); got != c.want {
			t.Errorf("%s: Sweepable = %v, want %v", c.name, got, c.want)
		}
	}
}
