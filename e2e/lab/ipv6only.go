package lab

import (
	"errors"
	"fmt"
	"net/netip"
)

// IPv6-only (Config.IPv6Only): the single-rack lab with no IPv4 on any link but loopback.
//
//	ToR br0        fd00:99::1/64      (IPv6 forwarding; FRR: router-id 10.255.255.1, IPv6 listen range, peer group
//	                                   NODES in address-family ipv6 unicast only, as-override, maximum-paths 16)
//	control plane  fd00:99::2         (kube-apiserver on [::]:6443, advertised on fd00:99::2; etcd on 127.0.0.1)
//	node i         fd00:99::(10+i hex) (node1 fd00:99::b; its only InternalIP)
//	pods           fd00:10:244::/56   (nodeipam: a /64 per node; addresses from the CNI plugin)
//	services       fd00:10:96::/112   (kube-apiserver and kube-controller-manager single-stack IPv6)
//	ToR ext        2001:db8:203::1/64 (the link to the external host)
//	external host  2001:db8:203::a    (default route via the ToR)
//
// Host.IP is the IPv6 address everywhere (the fabric's nthAddr counts in IPv6 too), so the standard agent flags
// become IPv6 ones (--cluster-cidr, --peer-router-ips, --service-cluster-ip-range): the agents peer with the ToR
// and with each other over IPv6 sessions and derive their BGP router IDs (no IPv4 InternalIP). Addresses are added
// with nodad, so they are usable at once. Pods need the CNI plugin (Config.CNIPlugin). Single rack, FRR ToR, no VM
// nodes, not with DualStack.

// torRouterID6 is the FRR ToR's BGP router ID in an IPv6-only lab, which has no IPv4 address to take it from.
const torRouterID6 = "10.255.255.1"

// ipv6OnlyDefaults fills in the IPv6-only lab's prefixes (before the IPv4 defaults would) and refuses what it does
// not support.
func (c *Config) ipv6OnlyDefaults() error {
	if !c.IPv6Only {
		return nil
	}
	switch {
	case c.DualStack:
		return errors.New("lab: IPv6Only and DualStack exclude each other")
	case c.multiRack():
		return errors.New("lab: IPv6Only is single-rack only")
	case len(c.VMNodes) > 0:
		return errors.New("lab: IPv6Only has no VM nodes")
	}
	for _, k := range c.torKinds() {
		if k != ToRFRR && k != "" {
			return fmt.Errorf("lab: IPv6Only needs an FRR ToR, not %s", k)
		}
	}
	def := func(p *netip.Prefix, s string) {
		if !p.IsValid() {
			*p = netip.MustParsePrefix(s)
		}
	}
	def(&c.FabricCIDR, "fd00:99::/64")
	def(&c.ExternalCIDR, "2001:db8:203::/64")
	def(&c.ClusterCIDR, "fd00:10:244::/56")
	def(&c.ServiceCIDR, "fd00:10:96::/112")
	if c.NodeCIDRMaskSize == 0 {
		c.NodeCIDRMaskSize = 64
	}
	return nil
}

// checkFamilies checks that the lab's prefixes are all IPv4, or all IPv6 with IPv6Only, and of usable sizes.
func (c Config) checkFamilies() error {
	for _, p := range []netip.Prefix{c.FabricCIDR, c.ExternalCIDR, c.ClusterCIDR, c.ServiceCIDR} {
		if c.IPv6Only && (!p.Addr().Is6() || p.Addr().Is4In6()) {
			return fmt.Errorf("lab: %s: IPv6Only wants IPv6 prefixes", p)
		}
		if !c.IPv6Only && !p.Addr().Is4() {
			return fmt.Errorf("lab: %s: IPv4 only (IPv6: DualStack or IPv6Only)", p)
		}
	}
	if !c.IPv6Only {
		if c.FabricCIDR.Bits() > 24 || 10+c.Nodes >= 1<<(32-c.FabricCIDR.Bits())-1 { // node i is .10+i in every rack
			return fmt.Errorf("lab: FabricCIDR %s too small for %d nodes", c.FabricCIDR, c.Nodes)
		}
		if c.NodeCIDRMaskSize <= c.ClusterCIDR.Bits() || c.NodeCIDRMaskSize > 28 {
			return fmt.Errorf("lab: NodeCIDRMaskSize %d does not fit ClusterCIDR %s", c.NodeCIDRMaskSize, c.ClusterCIDR)
		}
		return nil
	}
	if c.FabricCIDR.Bits() > 120 || c.ExternalCIDR.Bits() > 120 {
		return fmt.Errorf("lab: FabricCIDR %s or ExternalCIDR %s too small", c.FabricCIDR, c.ExternalCIDR)
	}
	// kube-controller-manager allows at most 16 bits between the cluster CIDR and the node mask.
	if c.NodeCIDRMaskSize <= c.ClusterCIDR.Bits() || c.NodeCIDRMaskSize-c.ClusterCIDR.Bits() > 16 || c.NodeCIDRMaskSize > 120 {
		return fmt.Errorf("lab: NodeCIDRMaskSize %d does not fit ClusterCIDR %s (at most 16 bits longer)", c.NodeCIDRMaskSize, c.ClusterCIDR)
	}
	if c.ServiceCIDR.Bits() < 108 {
		return fmt.Errorf("lab: ServiceCIDR %s: kube-apiserver wants /108 or longer", c.ServiceCIDR)
	}
	return nil
}

// nodad is what an `ip addr add` of a fabric address ends with: " nodad" in an IPv6-only lab (usable at once, no
// duplicate address detection), else nothing.
func (c Config) nodad() string {
	if c.IPv6Only {
		return " nodad"
	}
	return ""
}

// forwardingSysctl is the sysctl that makes a lab router or node forward: IPv6 forwarding in an IPv6-only lab.
func (c Config) forwardingSysctl() string {
	if c.IPv6Only {
		return "net.ipv6.conf.all.forwarding=1"
	}
	return "net.ipv4.ip_forward=1"
}

// bindAddress is kube-apiserver's --bind-address: every address of the control plane's namespace, of the lab's
// family.
func (c Config) bindAddress() string {
	if c.IPv6Only {
		return "::"
	}
	return "0.0.0.0"
}

// bgpdConf6 is the IPv6-only ToR's bgpd.conf: the single-rack one with an IPv4 router ID of its own, no IPv4
// unicast by default, and the node peer group (an IPv6 listen range) in address-family ipv6 unicast.
func (t *ToR) bgpdConf6(subnet netip.Prefix) string {
	return t.singleRackConf(subnet, torRouterID6, " no bgp default ipv4-unicast\n", "ipv6")
}
