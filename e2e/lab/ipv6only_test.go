package lab

import (
	"net/netip"
	"strings"
	"testing"
)

func TestIPv6OnlyConfig(t *testing.T) {
	c, err := Config{Nodes: 2, IPv6Only: true, Prefix: "cnp6o-"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix
	if c.FabricCIDR != p("fd00:99::/64") || c.ExternalCIDR != p("2001:db8:203::/64") || c.ClusterCIDR != p("fd00:10:244::/56") ||
		c.ServiceCIDR != p("fd00:10:96::/112") || c.NodeCIDRMaskSize != 64 {
		t.Fatalf("defaults %s %s %s %s /%d", c.FabricCIDR, c.ExternalCIDR, c.ClusterCIDR, c.ServiceCIDR, c.NodeCIDRMaskSize)
	}
	if got := nthAddr(c.FabricCIDR, 10+1); got != netip.MustParseAddr("fd00:99::b") {
		t.Fatalf("node1's address %s", got)
	}
	if got := nthAddr(c.ServiceCIDR, 1); got != netip.MustParseAddr("fd00:10:96::1") {
		t.Fatalf("the kubernetes Service's address %s", got)
	}
	if c.nodad() != " nodad" || c.bindAddress() != "::" || c.forwardingSysctl() != "net.ipv6.conf.all.forwarding=1" {
		t.Fatalf("nodad %q bind %q sysctl %q", c.nodad(), c.bindAddress(), c.forwardingSysctl())
	}
	tor := &ToR{Host: Host{NS: "cnp6o-tor"}, ASN: 64500}
	conf := tor.bgpdConf(c)
	for _, want := range []string{" bgp router-id 10.255.255.1\n", " no bgp default ipv4-unicast\n", " bgp listen range fd00:99::/64 peer-group NODES\n",
		" address-family ipv6 unicast\n  neighbor NODES activate\n  neighbor NODES as-override\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("bgpd.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, "ipv4 unicast") {
		t.Errorf("bgpd.conf has IPv4 unicast:\n%s", conf)
	}
	// The IPv4 lab is as before.
	c4, err := Config{Nodes: 2, Prefix: "cnp6o-"}.withDefaults()
	if err != nil || c4.nodad() != "" || c4.bindAddress() != "0.0.0.0" || c4.forwardingSysctl() != "net.ipv4.ip_forward=1" || nthAddr(c4.FabricCIDR, 11) != netip.MustParseAddr("10.99.0.11") {
		t.Fatalf("IPv4 lab: %v %q %q %q", err, c4.nodad(), c4.bindAddress(), c4.forwardingSysctl())
	}
	for _, bad := range []Config{
		{Nodes: 2, IPv6Only: true, DualStack: true},
		{Nodes: 2, IPv6Only: true, Racks: 2},
		{Nodes: 2, IPv6Only: true, VMNodes: []int{1}},
		{Nodes: 2, IPv6Only: true, ClusterCIDR: p("10.244.0.0/16")},
		{Nodes: 2, IPv6Only: true, ClusterCIDR: p("fd00:10::/40")}, // /64 nodes: more than 16 bits
		{Nodes: 2, IPv6Only: true, ServiceCIDR: p("fd00:10:96::/100")},
		{Nodes: 2, ClusterCIDR: p("fd00:10:244::/56")}, // IPv6 without IPv6Only
		{Nodes: 2, IPv6Only: true, PerRack: []RackConfig{{ToRKind: ToRBIRD}}},
	} {
		bad.Prefix = "cnp6o-"
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		} else if !strings.HasPrefix(err.Error(), "lab:") {
			t.Errorf("error %v", err)
		}
	}
}
