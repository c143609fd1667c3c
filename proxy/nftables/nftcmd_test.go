package nftables

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/testsupport/testns"
)

// TestNFTCmdBigTransactions: a bulk load through NewHost goes through nftCmd's own nft process (not knftables'
// kept buffer) and lands whole; a failing large transaction returns nft's own message.
func TestNFTCmdBigTransactions(t *testing.T) {
	requireNft(t)
	ns := testns.New(t, "nft-big")
	const n = 1000 // more operations than the netlink transport takes (maxNetlinkOps)
	d, keys := benchServices(n)
	var p *Proxier
	if err := ns.Do(func() (err error) {
		if p, err = NewHost(Config{}, nil); err != nil {
			return err
		}
		return p.Sync(d, keys)
	}); err != nil {
		t.Fatal(err)
	}
	cmd := p.nft.(*nftCmd)
	if cmd.bigRuns == 0 {
		t.Errorf("a load of %d service ports made no transaction of %d operations or more", n, bigRunOps)
	}
	out := ns.MustRun(t, "nft", "list", "map", "ip", TableName, MapServiceIPs)
	if got := strings.Count(out, "goto svc-"); got != n {
		t.Errorf("service-ips holds %d services, want %d", got, n)
	}

	tx := cmd.NewTransaction()
	for i := range bigRunOps {
		tx.Add(&knftables.Element{Map: "no-such-map", Key: []string{fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), "tcp", "80"}, Value: []string{"drop"}})
	}
	err := ns.Do(func() error { return cmd.Run(context.Background(), tx) })
	if err == nil || !strings.Contains(err.Error(), "no-such-map") {
		t.Errorf("a large transaction on a missing map: %v, want nft's error naming it", err)
	}
}

// TestNFTCmdNotRunAtConstruction: making the back end runs no nft (knftables.New's checks read the whole
// ruleset, each time), and a restart that finds its tables current never needs it either.
func TestNFTCmdNotRunAtConstruction(t *testing.T) {
	requireNft(t)
	ns := testns.New(t, "nft-lazy")
	d, keys := benchServices(20)
	if err := ns.Do(func() error {
		s, err := NewHostShards(Config{}, false, DefaultShards, nil)
		if err != nil {
			return err
		}
		if err := s.Start(); err != nil {
			return err
		}
		return s.Sync(d, keys)
	}); err != nil {
		t.Fatal(err)
	}
	var s *Shards
	if err := ns.Do(func() (err error) {
		s, err = NewHostShards(Config{}, false, DefaultShards, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, p := range s.shards {
		if p.nft.(*nftCmd).inner != nil {
			t.Errorf("table %s: knftables created (nft run) by the construction", p.table)
		}
	}
	if err := ns.Do(func() error {
		if err := s.Start(); err != nil {
			return err
		}
		return s.Sync(d, keys)
	}); err != nil {
		t.Fatal(err)
	}
	for _, p := range s.shards {
		if !p.staticCurrent {
			t.Errorf("table %s: the shared objects a run left were not found current", p.table)
		}
		if p.nft.(*nftCmd).inner != nil {
			t.Errorf("table %s: knftables created (nft run) by a restart on current tables", p.table)
		}
	}
}
