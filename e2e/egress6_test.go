package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
)

// TestPodEgressDualStack runs its own dual-stack lab (2 nodes; the external host has an address of each family,
// lab.ExternalCIDR6 for IPv6) and checks the pod egress masquerade in both families: a pod's connection to the
// external host arrives from its node's IPv6 address over IPv6 and from its node's IPv4 address over IPv4
// (CANOPY-POSTROUTING in ip6tables and in iptables), while a connection to a pod on the other node keeps the
// pod's own address in both families. Without the masquerade the external host would see the pod's address: the
// ToR routes every pod CIDR back to its node.
func TestPodEgressDualStack(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	l := lab.New(t, lab.Config{Nodes: 2, DualStack: true, AgentBin: agentBin(), CNIPlugin: cniBin()})
	ctx := context.Background()
	if !l.Ext.IP6().IsValid() {
		t.Fatal("the dual-stack lab's external host has no IPv6 address")
	}
	// The nodes reach the external host's link through the ToR (as the shared lab's nodes do for IPv4); the
	// routes live in the lab's node namespaces and go with the lab.
	for _, n := range l.Nodes {
		for _, r := range [][]string{
			{"ip", "route", "add", l.Config().ExternalCIDR.String(), "via", l.ToR.IP.String()},
			{"ip", "-6", "route", "add", lab.ExternalCIDR6.String(), "via", l.ToR.IP6().String()},
		} {
			if out, err := n.Exec(ctx, r...); err != nil {
				t.Fatalf("%s: %v: %v: %s", n.Name, r, err, out)
			}
		}
	}
	n1 := l.Nodes[0]
	a := addPod(t, l, n1, "ega")
	b := addPod(t, l, l.Nodes[1], "egb")
	if !a.IP6.IsValid() || !b.IP6.IsValid() {
		t.Fatalf("pods without an IPv6 address: %s %s, %s %s", a.Name, a.IP6, b.Name, b.IP6)
	}

	// The agent writes each family's chain once it has the node's pod CIDRs: wait for both rules before a
	// connection, so a connection made before them cannot pass for the outcome.
	for _, f := range []struct{ save, cidr string }{{"iptables-save", n1.PodCIDR.String()}, {"ip6tables-save", n1.PodCIDR6.String()}} {
		eventually(t, 60*time.Second, fmt.Sprintf("%s: %s masquerades %s", n1.Name, f.save, f.cidr), func(ctx context.Context) error {
			out, err := n1.Exec(ctx, f.save, "-t", "nat")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if !strings.Contains(out, "-A CANOPY-POSTROUTING -s "+f.cidr) || !strings.Contains(out, "-j CANOPY-POSTROUTING") {
				return fmt.Errorf("no masquerade rule for %s or no jump:\n%s", f.cidr, out)
			}
			return nil
		})
	}
	// Pod to pod across nodes needs the other node's pod CIDRs (BGP): wait until the IPv6 one answers.
	eventually(t, 90*time.Second, fmt.Sprintf("ping %s -> %s (IPv6, across nodes)", a.Name, b.IP6), func(ctx context.Context) error {
		return a.Ping(ctx, b.IP6)
	})

	for _, tc := range []struct {
		what   string
		server *lab.Host
		dst    netip.Addr
		want   netip.Addr
	}{
		{"pod -> external host over IPv6: the node's IPv6 address", l.Ext, l.Ext.IP6(), n1.IP6()},
		{"pod -> external host over IPv4: the node's IPv4 address", l.Ext, l.Ext.IP, n1.IP},
		{"pod -> pod on the other node over IPv6: the pod's own address", &b.Host, b.IP6, a.IP6},
		{"pod -> pod on the other node over IPv4: the pod's own address", &b.Host, b.IP, a.IP},
	} {
		got := sourceSeenAt(t, tc.server, tc.dst, a)
		if got != tc.want {
			t.Errorf("%s: %s sees the connection from %s, want %s", tc.what, tc.server.Name, got, tc.want)
		} else {
			t.Logf("%s: %s", tc.what, got)
		}
	}
}
