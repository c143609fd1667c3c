package backends

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/testsupport/testns"
	ipvsproxy "canopy.io/canopy/proxy/ipvs"
)

// The IPVS mode's IPv6 side is its masquerade chain in ip6tables (IPVS itself keeps one table for both
// families): Cleanup6 and CleanupAll6 remove it and its jump, and leave rules that are not ours.
func TestCleanup6IPVS(t *testing.T) {
	testns.Require(t, "ip6tables-save")
	ns := testns.New(t, "ipvs6")
	ns.MustRun(t, "ip6tables", "-t", "nat", "-A", "POSTROUTING", "-s", "2001:db8:9::/64", "-j", "MASQUERADE") // not ours
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")},
		Log: slog.New(slog.DiscardHandler)}
	for _, cleanup := range []func(Config) error{
		func(c Config) error { return Cleanup6(c, IPVS) },
		CleanupAll6,
	} {
		ns.MustRun(t, "ip6tables", "-t", "nat", "-N", ipvsproxy.Chain)
		ns.MustRun(t, "ip6tables", "-t", "nat", "-A", ipvsproxy.Chain, "-s", "fd00:244::/56", "-j", "RETURN")
		ns.MustRun(t, "ip6tables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "canopy: IPVS masquerade", "-j", ipvsproxy.Chain)
		err := ns.Do(func() error {
			h, err := ipt.Open()
			if err != nil {
				return err
			}
			cfg.IPT = h
			return cleanup(cfg)
		})
		if err != nil {
			t.Fatal(err)
		}
		nat6 := ns.MustRun(t, "ip6tables-save", "-t", "nat")
		if strings.Contains(nat6, ipvsproxy.Chain) || !strings.Contains(nat6, "-s 2001:db8:9::/64 -j MASQUERADE") {
			t.Errorf("ip6tables after the cleanup (want no IPVS chain, the foreign rule kept):\n%s", nat6)
		}
	}
}
