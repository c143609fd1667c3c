package backends

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/proxy"
	ipvsproxy "canopy.io/canopy/proxy/ipvs"
)

// Starting the iptables back end removes what the IPVS and nftables back ends left (the masquerade chain and jump,
// the table canopy), and with
// the proxy turned off CleanupAll leaves no chain of either back end; rules that are not ours stay. (The IPVS
// side of a switch — virtual services, the dummy interface — is tested in the VM: proxy/ipvs.)
func TestModeSwitchLeavesNothingBehind(t *testing.T) {
	testns.Require(t, "iptables-save", "iptables-restore", "nft")
	ns := testns.New(t, "be")
	ns.MustRun(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "MASQUERADE") // not ours
	ns.MustRun(t, "iptables", "-t", "nat", "-N", ipvsproxy.Chain)
	ns.MustRun(t, "iptables", "-t", "nat", "-A", ipvsproxy.Chain, "-s", "10.244.0.0/16", "-j", "RETURN")
	ns.MustRun(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "canopy: IPVS masquerade", "-j", ipvsproxy.Chain)
	ns.MustRun(t, "nft", "add", "table", "ip", "canopy") // what the nftables back end left
	ns.MustRun(t, "nft", "add", "table", "ip", "theirs")
	cfg := Config{Mode: IPTables, NodeIPs: []netip.Addr{netip.MustParseAddr("10.99.0.11")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Log: slog.New(slog.DiscardHandler)}
	startAndSync(t, ns, &cfg)
	if out := ns.MustRun(t, "nft", "list", "tables"); strings.Contains(out, "canopy") || !strings.Contains(out, "theirs") {
		t.Errorf("after the switch to iptables, nft tables: %s (want theirs, not canopy)", out)
	}
	nat := ns.MustRun(t, "iptables-save", "-t", "nat")
	if strings.Contains(nat, ipvsproxy.Chain) {
		t.Errorf("the IPVS back end's chain survived the switch to iptables:\n%s", nat)
	}
	if !strings.Contains(nat, "CANOPY-SVC-") || !strings.Contains(nat, "-s 192.0.2.0/24 -j MASQUERADE") {
		t.Errorf("want the iptables back end's chains and the foreign rule:\n%s", nat)
	}
	if err := ns.Do(func() error { return CleanupAll(cfg) }); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"nat", "filter"} {
		out := ns.MustRun(t, "iptables-save", "-t", table)
		if strings.Contains(out, "CANOPY") {
			t.Errorf("%s after CleanupAll still has Canopy's rules:\n%s", table, out)
		}
	}
	if out := ns.MustRun(t, "iptables-save", "-t", "nat"); !strings.Contains(out, "-s 192.0.2.0/24 -j MASQUERADE") {
		t.Errorf("CleanupAll removed a rule that is not ours:\n%s", out)
	}
}

// startAndSync starts the back end of cfg.Mode in ns (New: the other modes' rules go) and syncs one Service.
func startAndSync(t *testing.T, ns *testns.NS, cfg *Config) {
	t.Helper()
	sp := &model.ServicePort{Key: "default/web:http/TCP", Namespace: "default", Name: "web", PortName: "http", Protocol: model.TCP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80,
		ClusterEndpoints: []model.Endpoint{{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true}}}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	if err := ns.Do(func() error {
		h, err := ipt.Open()
		if err != nil {
			return err
		}
		cfg.IPT = h
		be, err := New(*cfg)
		if err != nil {
			return err
		}
		return be.Sync(map[string]*model.ServicePort{sp.Key: sp}, []string{sp.Key})
	}); err != nil {
		t.Fatal(err)
	}
}

// TestModeSwitchToNFTables: starting the nftables back end (New) removes the IPVS and iptables modes' rules, in
// the namespace it was started in.
func TestModeSwitchToNFTables(t *testing.T) {
	testns.Require(t, "iptables-save", "iptables-restore", "nft")
	ns := testns.New(t, "be")
	ns.MustRun(t, "iptables", "-t", "nat", "-N", ipvsproxy.Chain)
	ns.MustRun(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "canopy: IPVS masquerade", "-j", ipvsproxy.Chain)
	cfg := Config{Mode: IPTables, NodeIPs: []netip.Addr{netip.MustParseAddr("10.99.0.11")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Log: slog.New(slog.DiscardHandler)}
	startAndSync(t, ns, &cfg) // removes the IPVS chain, writes the iptables back end's
	if nat := ns.MustRun(t, "iptables-save", "-t", "nat"); !strings.Contains(nat, "CANOPY-SVC-") {
		t.Fatalf("the iptables back end wrote nothing:\n%s", nat)
	}
	ns.MustRun(t, "iptables", "-t", "nat", "-N", ipvsproxy.Chain) // and IPVS's again
	cfg.Mode = NFTables
	startAndSync(t, ns, &cfg)
	if nat := ns.MustRun(t, "iptables-save", "-t", "nat"); strings.Contains(nat, "CANOPY") {
		t.Errorf("after the switch to nftables, iptables still has Canopy's rules:\n%s", nat)
	}
	if out := ns.MustRun(t, "nft", "list", "tables"); !strings.Contains(out, "table ip canopy") {
		t.Errorf("no canopy table after the switch to nftables: %s", out)
	}
	if err := ns.Do(func() error { return CleanupAll(cfg) }); err != nil {
		t.Fatal(err)
	}
}

// Asked for IPVS on a kernel without it (this host's), the node gets the nftables back end, and the iptables
// one where nft cannot run.
func TestIPVSMissingPicksNFTables(t *testing.T) {
	testns.Require(t, "iptables-save", "iptables-restore", "nft")
	if ok, _ := ipvsproxy.Available(); ok {
		t.Skip("this kernel has IPVS: the fallback is not taken")
	}
	ns := testns.New(t, "be")
	cfg := Config{Mode: IPVS, NodeIPs: []netip.Addr{netip.MustParseAddr("10.99.0.11")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Log: slog.New(slog.DiscardHandler)}
	pick := func() string {
		var name string
		if err := ns.Do(func() error {
			h, err := ipt.Open()
			if err != nil {
				return err
			}
			cfg.IPT = h
			be, _, err := Prepare(cfg)
			if err != nil {
				return err
			}
			name = be.Name()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return name
	}
	if got := pick(); got != NFTables {
		t.Errorf("without IPVS: %s, want %s", got, NFTables)
	}
	t.Setenv("PATH", t.TempDir()+":/nonexistent") // no nft (nor anything else) on PATH
	if err := nftablesUsable(); err == nil {
		t.Fatal("nft found on an empty PATH")
	}
}

// TestPrepareNFTablesRemovesOthersAfterFirstSync: the agent's nftables back end (Prepare) leaves the other modes'
// rules serving until its first full sync; its first PruneStale removes them, in the background, in the
// namespace PruneStale was called in (this test's, on a locked thread), and a second PruneStale does not again.
func TestPrepareNFTablesRemovesOthersAfterFirstSync(t *testing.T) {
	testns.Require(t, "iptables-save", "iptables-restore", "nft")
	ns := testns.New(t, "be")
	ns.MustRun(t, "iptables", "-t", "nat", "-N", ipvsproxy.Chain)
	cfg := Config{Mode: NFTables, NodeIPs: []netip.Addr{netip.MustParseAddr("10.99.0.11")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Log: slog.New(slog.DiscardHandler)}
	sp := &model.ServicePort{Key: "default/web:http/TCP", Namespace: "default", Name: "web", PortName: "http", Protocol: model.TCP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80,
		ClusterEndpoints: []model.Endpoint{{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true}}}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	var be proxy.Backend
	if err := ns.Do(func() error {
		h, err := ipt.Open()
		if err != nil {
			return err
		}
		cfg.IPT = h
		var start func() error
		if be, start, err = Prepare(cfg); err != nil {
			return err
		}
		if err := start(); err != nil {
			return err
		}
		return be.Sync(map[string]*model.ServicePort{sp.Key: sp}, []string{sp.Key})
	}); err != nil {
		t.Fatal(err)
	}
	if nat := ns.MustRun(t, "iptables-save", "-t", "nat"); !strings.Contains(nat, ipvsproxy.Chain) {
		t.Errorf("the IPVS mode's chain went before the first full sync:\n%s", nat)
	}
	d, ok := be.(*deferredCleanup)
	if !ok {
		t.Fatalf("back end %T, want the deferred cleanup", be)
	}
	if err := ns.Do(be.PruneStale); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the other modes' rules were not removed within 30 s")
	}
	if nat := ns.MustRun(t, "iptables-save", "-t", "nat"); strings.Contains(nat, "CANOPY") {
		t.Errorf("after the first PruneStale, iptables still has Canopy's rules:\n%s", nat)
	}
	if err := ns.Do(be.PruneStale); err != nil { // (a second one starts no second removal: done stays closed)
		t.Fatal(err)
	}
	if err := ns.Do(func() error { return CleanupAll(cfg) }); err != nil {
		t.Fatal(err)
	}
}
