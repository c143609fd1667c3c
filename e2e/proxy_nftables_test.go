package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Every proxy case again with every agent on the native nftables back end (--proxy-mode=nftables). The agents
// restart into it (removing the iptables back end's rules: no mode's leftovers steer traffic), and back at the
// end, so the other tests see the lab as it was.
func TestServiceProxyOnNFTables(t *testing.T) {
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
	switchMode("--proxy-mode=nftables")
	t.Cleanup(func() { switchMode() })
	for _, n := range l.Nodes {
		eventually(t, 20*time.Second, n.Name+" programs nftables and no iptables service chain", func(ctx context.Context) error {
			out, err := n.Exec(ctx, "nft", "list", "tables")
			if err != nil || !strings.Contains(out, "canopy") {
				return fmt.Errorf("nft tables: %v %s", err, out)
			}
			save, err := n.Exec(ctx, "iptables-save", "-t", "nat")
			if err != nil {
				return err
			}
			if strings.Contains(save, "CANOPY-SERVICES") {
				return fmt.Errorf("the iptables back end's chains are still there")
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
