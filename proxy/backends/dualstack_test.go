package backends

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/proxy"
	nftproxy "canopy.io/canopy/proxy/nftables"
)

// An IPv4-only cluster gets the IPv4 back end alone; a cluster with an IPv6 cluster CIDR gets both families in
// the iptables and nftables modes, and Cleanup6 removes each mode's IPv6 side (rules that are not ours stay).
func TestDualStackModes(t *testing.T) {
	testns.Require(t, "iptables-save", "ip6tables-save", "nft")
	ns := testns.New(t, "be6")
	ns.MustRun(t, "ip6tables", "-t", "nat", "-A", "POSTROUTING", "-s", "2001:db8:9::/64", "-j", "MASQUERADE") // not ours
	v4cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Log: slog.New(slog.DiscardHandler)}
	cfg := v4cfg
	cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, netip.MustParsePrefix("fd00:244::/56"))
	cfg.NodeIPs = []netip.Addr{netip.MustParseAddr("10.99.0.11"), netip.MustParseAddr("2001:db8:99::11")}
	if DualStack(v4cfg) || !DualStack(cfg) {
		t.Fatal("DualStack wrong")
	}
	eps6 := []model.Endpoint{{IP: netip.MustParseAddr("fd00:244:1::2"), Port: 8080, Ready: true, Serving: true}}
	sp := &model.ServicePort{Key: "default/web:http/TCP", Namespace: "default", Name: "web", PortName: "http", Protocol: model.TCP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80, NodePort: 30080,
		ClusterEndpoints: []model.Endpoint{{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true}},
		IPv6:             &model.Family{ClusterIPs: []netip.Addr{netip.MustParseAddr("fd00:96::10")}, ClusterEndpoints: eps6, ExternalEndpoints: eps6}}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	desired := map[string]*model.ServicePort{sp.Key: sp}

	err := ns.Do(func() error {
		h, err := ipt.Open()
		if err != nil {
			return err
		}
		v4cfg.IPT, cfg.IPT = h, h
		if be, err := NewIPTables(v4cfg); err != nil {
			return err
		} else if _, dual := be.(*proxy.DualStack); dual {
			t.Error("an IPv4-only cluster got the dual-stack iptables back end")
		}
		if be, err := NewNFTables(v4cfg); err != nil {
			return err
		} else if _, dual := be.(*proxy.DualStack); dual {
			t.Error("an IPv4-only cluster got the dual-stack nftables back end")
		}
		be, err := NewIPTables(cfg)
		if err != nil {
			return err
		}
		if err := be.Start(); err != nil {
			return err
		}
		return be.Sync(desired, []string{sp.Key})
	})
	if err != nil {
		t.Fatal(err)
	}
	nat6 := ns.MustRun(t, "ip6tables-save", "-t", "nat")
	if !strings.Contains(nat6, "-d fd00:96::10/128") || !strings.Contains(nat6, "--to-destination [fd00:244:1::2]:8080") ||
		!strings.Contains(nat6, "-A CANOPY-SERVICES -d 2001:db8:99::11/128") {
		t.Errorf("ip6tables lacks the IPv6 service:\n%s", nat6)
	}
	if nat4 := ns.MustRun(t, "iptables-save", "-t", "nat"); !strings.Contains(nat4, "-d 10.96.0.10/32") || strings.Contains(nat4, "fd00") {
		t.Errorf("iptables:\n%s", nat4)
	}
	// Switch to nftables: the iptables side of both families goes, both tables come.
	err = ns.Do(func() error {
		if err := errors2(Cleanup6(cfg, IPTables), cleanup(cfg, IPTables)); err != nil {
			return err
		}
		be, err := NewNFTables(cfg)
		if err != nil {
			return err
		}
		if err := be.Start(); err != nil {
			return err
		}
		return be.Sync(desired, []string{sp.Key})
	})
	if err != nil {
		t.Fatal(err)
	}
	nat6 = ns.MustRun(t, "ip6tables-save", "-t", "nat")
	if strings.Contains(nat6, "CANOPY") || !strings.Contains(nat6, "-s 2001:db8:9::/64 -j MASQUERADE") {
		t.Errorf("ip6tables after Cleanup6 (want no Canopy chain, the foreign rule kept):\n%s", nat6)
	}
	// (in one of the ip6 canopy tables: the service ports are spread over nftproxy.DefaultShards of them)
	if s := ns.MustRun(t, "nft", "list", "ruleset", "ip6"); !strings.Contains(s, "fd00:96::10 . tcp . 80") || strings.Count(s, "table ip6 canopy") != nftproxy.DefaultShards {
		t.Errorf("the ip6 canopy tables lack the service:\n%s", s)
	}
	if err := ns.Do(func() error { return CleanupAll6(cfg) }); err != nil {
		t.Fatal(err)
	}
	if s := ns.MustRun(t, "nft", "list", "tables"); strings.Contains(s, "ip6 canopy") {
		t.Errorf("table ip6 canopy left after CleanupAll6: %s", s)
	}
}

func errors2(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
