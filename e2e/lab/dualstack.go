package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
)

// Dual stack (Config.DualStack): IPv6 beside the IPv4 lab, the first working step of dual-stack clusters.
//
//	ToR br0        10.99.0.1/24   fd00:99::1/64      (IPv6 forwarding; FRR: address-family ipv6 unicast,
//	control plane  10.99.0.2      fd00:99::2          peer group NODES activated, as-override, maximum-paths)
//	node i         10.99.0.10+i   fd00:99::(10+i hex) (both are InternalIPs of its Node)
//	pods           10.244.0.0/16  fd00:10:244::/56    (nodeipam: a /24 and a /64 per node)
//	services       10.96.0.0/16   fd00:10:96::/112
//	ToR ext        203.0.113.1    2001:db8:203::1/64 (the link to the external host, ExternalCIDR6)
//	external host  203.0.113.10   2001:db8:203::10   (default route via the ToR in both families)
//
// The BGP sessions stay the IPv4 ones: the agents carry IPv6 unicast over them (MP-BGP) because their
// --cluster-cidr has both families, each IPv6 pod CIDR with its node's IPv6 address as next hop. IPv6 addresses
// are added with nodad, so they are usable at once. Everything here is a hook the single-rack code calls; the
// IPv4 side is built exactly as without DualStack.

// dualStackDefaults fills in and checks the IPv6 side of the config.
func (c *Config) dualStackDefaults() error {
	if !c.DualStack {
		return nil
	}
	if c.multiRack() {
		return errors.New("lab: DualStack is single-rack only for now")
	}
	if len(c.VMNodes) > 0 {
		return errors.New("lab: DualStack has no VM nodes yet")
	}
	def := func(p *netip.Prefix, s string) {
		if !p.IsValid() {
			*p = netip.MustParsePrefix(s)
		}
		*p = p.Masked()
	}
	def(&c.FabricCIDR6, "fd00:99::/64")
	def(&c.ClusterCIDR6, "fd00:10:244::/56")
	def(&c.ServiceCIDR6, "fd00:10:96::/112")
	if c.NodeCIDRMaskSize6 == 0 {
		c.NodeCIDRMaskSize6 = 64
	}
	for _, p := range []netip.Prefix{c.FabricCIDR6, c.ClusterCIDR6, c.ServiceCIDR6} {
		if !p.Addr().Is6() || p.Addr().Is4In6() {
			return fmt.Errorf("lab: %s: want an IPv6 prefix", p)
		}
	}
	if c.FabricCIDR6.Bits() > 120 {
		return fmt.Errorf("lab: FabricCIDR6 %s too small", c.FabricCIDR6)
	}
	// kube-controller-manager allows at most 16 bits between the cluster CIDR and the node mask.
	if c.NodeCIDRMaskSize6 <= c.ClusterCIDR6.Bits() || c.NodeCIDRMaskSize6-c.ClusterCIDR6.Bits() > 16 || c.NodeCIDRMaskSize6 > 120 {
		return fmt.Errorf("lab: NodeCIDRMaskSize6 %d does not fit ClusterCIDR6 %s (at most 16 bits longer)", c.NodeCIDRMaskSize6, c.ClusterCIDR6)
	}
	if c.ServiceCIDR6.Bits() < 108 {
		return fmt.Errorf("lab: ServiceCIDR6 %s: kube-apiserver wants /108 or longer", c.ServiceCIDR6)
	}
	return nil
}

// ExternalCIDR6 is the IPv6 prefix of the link from the ToR to the external host (DualStack): the ToR ::1, the
// external host ::10 (Ext.IP6()). Like the IPv4 ExternalCIDR, the nodes have no route to it unless a test adds
// one (via the ToR's fabric address).
var ExternalCIDR6 = netip.MustParsePrefix("2001:db8:203::/64")

// nthAddr6 is the address i places after the start of IPv6 prefix p (i small).
func nthAddr6(p netip.Prefix, i int) netip.Addr {
	a := p.Masked().Addr().As16()
	v := uint32(a[12])<<24 | uint32(a[13])<<16 | uint32(a[14])<<8 | uint32(a[15])
	v += uint32(i)
	a[12], a[13], a[14], a[15] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return netip.AddrFrom16(a)
}

// IP6 is the host's IPv6 address on the fabric (Config.DualStack; invalid otherwise): the ToR ::1, the control
// plane ::2, node i ::10+i in hex (node1 fd00:99::11); the external host's is on its link, ExternalCIDR6 ::10.
// Pods have theirs in Pod.IP6.
func (h *Host) IP6() netip.Addr {
	if h.lab == nil || !h.lab.cfg.DualStack || !h.lab.cfg.FabricCIDR6.IsValid() {
		return netip.Addr{}
	}
	switch {
	case h.lab.ToR != nil && h == &h.lab.ToR.Host:
		return nthAddr6(h.lab.cfg.FabricCIDR6, 1)
	case h == h.lab.CP:
		return nthAddr6(h.lab.cfg.FabricCIDR6, 2)
	case h == h.lab.Ext:
		return nthAddr6(ExternalCIDR6, 0x10)
	}
	for _, n := range h.lab.Nodes {
		if h == &n.Host {
			return nthAddr6(h.lab.cfg.FabricCIDR6, 0x10+n.Index)
		}
	}
	return netip.Addr{}
}

// buildNetwork6 gives the fabric its IPv6 side (DualStack only): addresses on the ToR's bridge, the control
// plane and the nodes, the ToR's link to the external host and the external host itself (ExternalCIDR6, default
// route via the ToR), and IPv6 forwarding on the ToR and the nodes.
func (l *Lab) buildNetwork6(ctx context.Context) error {
	c := l.cfg
	if !c.DualStack {
		return nil
	}
	bits := c.FabricCIDR6.Bits()
	if err := ipBatch(ctx, l.ToR.NS, fmt.Sprintf("addr add %s/%d dev br0 nodad", l.ToR.IP6(), bits),
		fmt.Sprintf("addr add %s/%d dev ext nodad", nthAddr6(ExternalCIDR6, 1), ExternalCIDR6.Bits())); err != nil {
		return err
	}
	if err := ipBatch(ctx, l.Ext.NS, fmt.Sprintf("addr add %s/%d dev eth0 nodad", l.Ext.IP6(), ExternalCIDR6.Bits()),
		fmt.Sprintf("route add default via %s", nthAddr6(ExternalCIDR6, 1))); err != nil {
		return err
	}
	if err := sysctlIn(ctx, l.ToR.NS, "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}
	if err := ipBatch(ctx, l.CP.NS, fmt.Sprintf("addr add %s/%d dev eth0 nodad", l.CP.IP6(), bits),
		fmt.Sprintf("route add default via %s", l.ToR.IP6())); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(l.Nodes))
	for i, n := range l.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ipBatch(ctx, n.NS, fmt.Sprintf("addr add %s/%d dev eth0 nodad", n.IP6(), bits)); err != nil {
				errs[i] = err
				return
			}
			if c.NodeDefaultRoute {
				if err := ipBatch(ctx, n.NS, fmt.Sprintf("route add default via %s", l.ToR.IP6())); err != nil {
					errs[i] = err
					return
				}
			}
			errs[i] = sysctlIn(ctx, n.NS, "net.ipv6.conf.all.forwarding=1")
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dualStackControlPlane gives kube-apiserver and kube-controller-manager both families (DualStack only): the
// service CIDR pair, the cluster CIDR pair, and a node mask per family (nodeipam refuses --node-cidr-mask-size
// with two cluster CIDRs).
func (c Config) dualStackControlPlane(apiserver, kcm []string) ([]string, []string) {
	if !c.DualStack {
		return apiserver, kcm
	}
	svc := "--service-cluster-ip-range=" + c.ServiceCIDR.String() + "," + c.ServiceCIDR6.String()
	for i, a := range apiserver {
		if strings.HasPrefix(a, "--service-cluster-ip-range=") {
			apiserver[i] = svc
		}
	}
	var out []string
	for _, a := range kcm {
		switch {
		case strings.HasPrefix(a, "--service-cluster-ip-range="):
			a = svc
		case strings.HasPrefix(a, "--cluster-cidr="):
			a = "--cluster-cidr=" + c.ClusterCIDR.String() + "," + c.ClusterCIDR6.String()
		case strings.HasPrefix(a, "--node-cidr-mask-size="):
			out = append(out, fmt.Sprintf("--node-cidr-mask-size-ipv4=%d", c.NodeCIDRMaskSize))
			a = fmt.Sprintf("--node-cidr-mask-size-ipv6=%d", c.NodeCIDRMaskSize6)
		}
		out = append(out, a)
	}
	return apiserver, out
}

// dualStackAddresses adds the node's IPv6 InternalIP after its IPv4 one (DualStack only).
func (n *Node) dualStackAddresses(addrs []corev1.NodeAddress) []corev1.NodeAddress {
	ip6 := n.IP6()
	if !ip6.IsValid() {
		return addrs
	}
	var out []corev1.NodeAddress
	for _, a := range addrs {
		out = append(out, a)
		if a.Type == corev1.NodeInternalIP {
			out = append(out, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip6.String()})
		}
	}
	return out
}

// setPodCIDR6 records the node's IPv6 pod CIDR from its Node (DualStack only: nodeipam gives both at once).
func (n *Node) setPodCIDR6(node *corev1.Node) error {
	if !n.lab.cfg.DualStack {
		return nil
	}
	for _, s := range node.Spec.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("node %s: podCIDRs %q: %w", n.Name, s, err)
		}
		if p.Addr().Is6() {
			n.PodCIDR6 = p
			return nil
		}
	}
	return fmt.Errorf("node %s has no IPv6 pod CIDR (podCIDRs %v)", n.Name, node.Spec.PodCIDRs)
}

// dualStackAgentArgs are the agent's IPv6 flags (DualStack only): the IPv6 cluster CIDR beside the IPv4 one the
// standard flags give (the agent then negotiates IPv6 unicast on its sessions and puts IPv6 into the CNI
// conflist), and the IPv6 service CIDR.
func (n *Node) dualStackAgentArgs() []string {
	c := n.lab.cfg
	if !c.DualStack || c.NoDefaultAgentArgs {
		return nil
	}
	return []string{"--cluster-cidr=" + c.ClusterCIDR6.String(), "--service-cluster-ip-range=" + c.ServiceCIDR6.String()}
}

// torIPv6 activates IPv6 unicast for the node peer group on the ToR (FRR), live: the sessions are IPv4 ones and
// carry IPv6 routes (MP-BGP) once the agents offer the family. With the node mesh on, a node's best path to
// another node's pod CIDR is the mesh's (shorter AS path), so what the ToR sends back does not matter (TestDualStack
// passes without the next-hop line too); the ToR still sends a node's IPv6 pod CIDR on with that node's next hop
// unchanged, because an agent accepts an IPv6 pod CIDR only through its owner's IPv6 address (a router is known by
// its IPv4 address only), which matters where nodes hear each other through the ToR alone.
func (l *Lab) torIPv6(ctx context.Context) error {
	if k := l.ToR.Kind; k != ToRFRR && k != "" {
		return fmt.Errorf("lab: DualStack needs an FRR ToR, not %s", l.ToR.Kind)
	}
	return l.ToR.Config(ctx, fmt.Sprintf("router bgp %d", l.ToR.ASN), "address-family ipv6 unicast",
		"neighbor "+peerGroup+" activate", "neighbor "+peerGroup+" as-override",
		"neighbor "+peerGroup+" attribute-unchanged next-hop", "maximum-paths 16", "exit-address-family")
}

// podIPs is status.podIPs: the IPv4 address, then the IPv6 one (dual stack).
func (p *Pod) podIPs() []corev1.PodIP {
	ips := []corev1.PodIP{{IP: p.IP.String()}}
	if p.IP6.IsValid() {
		ips = append(ips, corev1.PodIP{IP: p.IP6.String()})
	}
	return ips
}
