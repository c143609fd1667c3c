package policy_test

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"canopy.io/canopy/internal/cleanup"
	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/policy"
)

// `canopy cleanup` (internal/cleanup) removes the IPv6 data path too: ip6tables chains and jumps, inet6 sets.
func TestKernelCleanupRemovesIPv6(t *testing.T) {
	testns.Require(t, "iptables-nft-restore", "ip6tables-nft-restore", "ip6tables-nft-save", "ipset")
	ns := testns.New(t, "pol-clean6")
	do := func(f func() error) {
		t.Helper()
		if err := ns.Do(f); err != nil {
			t.Fatal(err)
		}
	}
	opts := policy.Options{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}}
	peer := policy.Peer{Selector: "sel", PodIPs: []netip.Addr{netip.MustParseAddr("10.244.2.5"), netip.MustParseAddr("fd00:10:244:2::5")}}
	block := policy.Peer{Selector: "cidr6", CIDR: netip.MustParsePrefix("2001:db8::/32"), Except: []netip.Prefix{netip.MustParsePrefix("2001:db8:1::/48")}}
	fws := map[string]*policy.PodFirewall{"ns/p": {IngressIsolated: true, EgressIsolated: true,
		Ingress: []policy.Rule{{Peers: []policy.Peer{peer}, Policy: "ns/in"}}, Egress: []policy.Rule{{Peers: []policy.Peer{block}, Policy: "ns/out"}}}}
	pods := []policy.LocalPod{{Key: "ns/p", IP: netip.MustParseAddr("10.244.1.10")}, {Key: "ns/p", IP: netip.MustParseAddr("fd00:10:244:1::10")}}
	save6 := func() string {
		var s string
		do(func() error {
			out, err := exec.Command("ip6tables-nft-save", "-t", "filter").Output()
			s = string(out)
			return err
		})
		return s
	}
	do(func() error {
		h, err := ipt.OpenFlavour(ipt.NFT)
		if err != nil {
			return err
		}
		fw := policy.NewHost(h, slog.Default())
		if err := fw.Start(opts); err != nil {
			return err
		}
		_, err = fw.Sync(policy.Build(fws, pods, opts))
		return err
	})
	if s := save6(); !strings.Contains(s, policy.SetName6("cidr6")) || !strings.Contains(s, "-j CANOPY-POL-FORWARD") {
		t.Fatalf("no IPv6 data path programmed:\n%s", s)
	}
	var rep *cleanup.Report
	do(func() error {
		rep = cleanup.Run(cleanup.Config{RouteProtocol: 186, RouteTable: syscall.RT_TABLE_MAIN})
		return nil
	})
	if s := save6(); strings.Contains(s, "CANOPY-") {
		t.Errorf("ip6tables after cleanup:\n%s", s)
	}
	do(func() error {
		out, err := exec.Command("ipset", "list", "-n").Output()
		if err == nil && strings.TrimSpace(string(out)) != "" {
			err = fmt.Errorf("sets after cleanup: %s", out)
		}
		return err
	})
	if rep.Failures() != 0 {
		var b strings.Builder
		_ = rep.WriteText(&b)
		t.Errorf("cleanup failed:\n%s", b.String())
	}
}
