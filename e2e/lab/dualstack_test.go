package lab

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestDualStackConfig(t *testing.T) {
	c, err := Config{Nodes: 3, DualStack: true, Prefix: "cnpds-"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.FabricCIDR6 != netip.MustParsePrefix("fd00:99::/64") || c.ClusterCIDR6 != netip.MustParsePrefix("fd00:10:244::/56") ||
		c.ServiceCIDR6 != netip.MustParsePrefix("fd00:10:96::/112") || c.NodeCIDRMaskSize6 != 64 {
		t.Fatalf("defaults %s %s %s %d", c.FabricCIDR6, c.ClusterCIDR6, c.ServiceCIDR6, c.NodeCIDRMaskSize6)
	}
	if got := nthAddr6(c.FabricCIDR6, 0x10+2); got != netip.MustParseAddr("fd00:99::12") {
		t.Fatalf("node2's IPv6 address %s", got)
	}
	api, kcm := c.dualStackControlPlane([]string{"--service-cluster-ip-range=10.96.0.0/16", "--x"},
		[]string{"--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24", "--service-cluster-ip-range=10.96.0.0/16"})
	if !slices.Equal(api, []string{"--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112", "--x"}) {
		t.Fatalf("apiserver %v", api)
	}
	if want := []string{"--cluster-cidr=10.244.0.0/16,fd00:10:244::/56", "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64",
		"--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112"}; !slices.Equal(kcm, want) {
		t.Fatalf("kcm %v, want %v", kcm, want)
	}
	// Off: nothing changes.
	c4, _ := Config{Nodes: 3, Prefix: "cnpds-"}.withDefaults()
	if c4.FabricCIDR6.IsValid() {
		t.Fatalf("IPv4 lab has %s", c4.FabricCIDR6)
	}
	a, k := c4.dualStackControlPlane([]string{"--service-cluster-ip-range=10.96.0.0/16"}, []string{"--node-cidr-mask-size=24"})
	if len(a) != 1 || len(k) != 1 || k[0] != "--node-cidr-mask-size=24" {
		t.Fatalf("IPv4 lab control plane changed: %v %v", a, k)
	}
	for _, bad := range []Config{
		{Nodes: 2, DualStack: true, Racks: 2},
		{Nodes: 2, DualStack: true, ClusterCIDR6: netip.MustParsePrefix("fd00:10::/40")},
		{Nodes: 2, DualStack: true, FabricCIDR6: netip.MustParsePrefix("10.1.0.0/24")},
	} {
		bad.Prefix = "cnpds-"
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		} else if !strings.HasPrefix(err.Error(), "lab:") {
			t.Errorf("error %v", err)
		}
	}
}
