package nftables

import (
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/testsupport/testns"
)

// TestRestartKeepsChains: a restarted proxier (new Proxier on the table an earlier one wrote) knows from the
// rules' hash comments what every chain holds: its first full sync rewrites no chain that is right, and
// rewrites a chain someone added a rule to and one whose comment is gone.
func TestRestartKeepsChains(t *testing.T) {
	requireNft(t)
	ns := testns.New(t, "nft-rs")
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/14")}}
	d, keys := benchServices(20)
	newProxier := func() *Proxier {
		var p *Proxier
		if err := ns.Do(func() error {
			nft, err := knftables.New(ipv4.nft, TableName)
			p = New(cfg, nft, nil, nil)
			p.nl = newNLTransport(ipv4, TableName)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := newProxier()
	if err := ns.Do(func() error { return p.Sync(d, keys) }); err != nil {
		t.Fatal(err)
	}
	listing := ns.MustRun(t, "nft", "list", "chain", "ip", TableName, SVCChain(keys[0]))
	if !strings.Contains(listing, `comment "canopy h=`) {
		t.Fatalf("no hash comment on the chain's first rule:\n%s", listing)
	}

	// Restart with nothing changed: no chain written.
	p = newProxier()
	if err := ns.Do(func() error {
		if err := p.Start(); err != nil {
			return err
		}
		if n := len(p.chains); n != 60 {
			t.Errorf("found %d chains, want 60", n)
		}
		for name, st := range p.chains {
			if st.hash == 0 {
				t.Errorf("chain %s: hash unknown after Start", name)
			}
		}
		if err := p.Sync(d, keys); err != nil {
			return err
		}
		return p.PruneStale()
	}); err != nil {
		t.Fatal(err)
	}
	if p.nl.ops != 0 {
		t.Errorf("first sync after a restart with nothing changed wrote %d operations over netlink", p.nl.ops)
	}

	// Someone adds a rule to one chain, and another chain is rewritten without the comment: both are
	// rewritten by the next restart's first sync, nothing else.
	tampered, bare := SVCChain(keys[1]), SVCChain(keys[2])
	ns.MustRun(t, "nft", "add", "rule", "ip", TableName, tampered, "counter")
	ns.MustRun(t, "nft", "flush", "chain", "ip", TableName, bare)
	ns.MustRun(t, "nft", "add", "rule", "ip", TableName, bare, "goto", SEPChain(keys[2], d[keys[2]].ClusterEndpoints[0].IP, 8080))
	p = newProxier()
	if err := ns.Do(func() error {
		if err := p.Start(); err != nil {
			return err
		}
		if p.chains[tampered].hash != 0 || p.chains[bare].hash != 0 {
			t.Errorf("hashes of changed chains known: %x %x", p.chains[tampered].hash, p.chains[bare].hash)
		}
		return p.Sync(d, keys)
	}); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []string{tampered, bare} {
		got := ns.MustRun(t, "nft", "list", "chain", "ip", TableName, ch)
		if strings.Contains(got, "counter") || strings.Count(got, "\n\t\t") != 3 || !strings.Contains(got, `comment "canopy h=`) {
			t.Errorf("chain %s not rewritten:\n%s", ch, got)
		}
	}
	if p.nl.runs != 1 {
		t.Errorf("%d netlink transactions, want 1 (the two chains)", p.nl.runs)
	}
	if err := ns.Do(p.Cleanup); err != nil {
		t.Fatal(err)
	}
}
