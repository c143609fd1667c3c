package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Every proxy case again with every agent on the iptables back end (--proxy-mode=iptables; the lab's default is
// nftables: its kernel has no IPVS). The agents restart into it (removing the nftables back end's table: no
// mode's leftovers steer traffic), and back at the end, so the other tests see the lab as it was.
func TestServiceProxyOnIPTables(t *testing.T) {
	l := needLab(t)
	switchMode := func(args ...string) {
		t.Helper()
		for _, n := range l.Nodes {
			if err := n.StopAgent(); err != nil {
				t.Fatalf("%s: %v", n.Name, err)
			}
			if err := n.StartAgent(args...); err != nil {
				t.Fatalf("%s: %v", n.Name, err)
			}
		}
		waitConverged(t, l)
	}
	switchMode("--proxy-mode=iptables")
	t.Cleanup(func() { switchMode() })
	for _, n := range l.Nodes {
		eventually(t, 20*time.Second, n.Name+" programs iptables and no nftables table of ours", func(ctx context.Context) error {
			save, err := n.Exec(ctx, "iptables-save", "-t", "nat")
			if err != nil {
				return err
			}
			if !strings.Contains(save, ":CANOPY-SERVICES") {
				return fmt.Errorf("no CANOPY-SERVICES chain yet")
			}
			out, err := n.Exec(ctx, "nft", "list", "tables")
			if err != nil {
				return fmt.Errorf("nft tables: %v %s", err, out)
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.HasSuffix(strings.TrimSpace(l), " canopy") {
					return fmt.Errorf("the nftables back end's table is still there: %s", l)
				}
			}
			return nil
		})
	}
	for _, c := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"ClusterIPSpreadsAndFollowsScaling", TestServiceClusterIPSpreadsAndFollowsScaling},
		{"WithoutEndpointsRejectsFast", TestServiceWithoutEndpointsRejectsFast},
		{"NodePortFromOutside", TestServiceNodePortFromOutside},
		{"ClientIPAffinity", TestServiceClientIPAffinity},
		{"Hairpin", TestServiceHairpin},
		{"DNSPath", TestServiceDNSPath},
		{"HealthCheckNodePort", TestServiceHealthCheckNodePort},
		{"LoadBalancerVIPAtTheToR", TestLoadBalancerVIPAtTheToR},
		{"LoadBalancerLocalPolicy", TestLoadBalancerLocalPolicy},
	} {
		t.Run(c.name, c.f)
	}
}
