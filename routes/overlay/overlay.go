// Package overlay is Canopy's VXLAN overlay for nodes that cannot peer: pod traffic to a node that no BGP route
// reaches goes through one Linux kernel VXLAN device, canopy.vxlan, programmed from the Node objects.
//
// What the kernel gets (Flannel's and Calico's layout, Linux VXLAN through netlink):
//
//   - the device canopy.vxlan: VNI 4096, UDP port 4789, learning off, local = the node's underlay address (its
//     IPv4 InternalIP; an IPv6-only node's IPv6 InternalIP), its lower device the interface that holds that
//     address, MTU = that interface's MTU − 50 (IPv6 underlay: − 70), a MAC derived from the underlay address
//     (MAC), and IPv6 enabled on it (disable_ipv6=0) when it carries IPv6 routes;
//   - per remote node: a permanent FDB entry (its MAC → its underlay address), a permanent neighbour entry per
//     pod family it has (its VTEP address of that family → its MAC), and for each of its pod CIDRs a route
//     `<pod CIDR> via <VTEP of that family> dev canopy.vxlan onlink proto 185 metric 1024` (IPv6: metric 2048).
//
// A node's VTEP address of a family is the network address of its first pod CIDR of that family (10.244.3.0 for
// 10.244.3.0/24, fd00:10:244:3:: for fd00:10:244:3::/64), an address the CNI plugin never gives a pod; it is
// never configured on any interface, only named as the route's on-link gateway and in the neighbour entry.
//
// Dual stack: one device and one underlay carry both pod families. A dual-stack node's underlay is IPv4, so its
// IPv6 pod CIDRs ride VXLAN over IPv4 to the same MAC and FDB destination as its IPv4 ones; an IPv6-only node
// (no IPv4 node address) tunnels over IPv6 to the other nodes' IPv6 addresses (a node of the other family only
// is refused). Pod CIDRs of a family no --cluster-cidr has are not routed.
//
// The MAC is derived from the underlay address (IPv4: 02:cb:<the four bytes>; IPv6: 06:cb:<four bytes of its
// SHA-256>), not announced in a Node annotation: every node computes every other node's MAC from what the API
// already says, so the agents write nothing to the API, no node waits for another's annotation, there is no
// hostile annotation value to validate, and a recreated device or a restarted agent gets the same MAC again.
//
// Modes (--overlay): none (no device; one an earlier run left is removed), vxlan (a tunnel route to every remote
// node) and crosssubnet (a tunnel route only to nodes outside this node's subnet — the prefix of the address
// that holds its underlay address; same-subnet traffic stays native, on BGP routes or the segment).
//
// BGP and the tunnel never fight: tunnel routes have their own protocol number (Protocol, 185: the BGP route
// table's sweep, which owns --route-protocol, never sees them) and metric 1024 (IPv6: 2048), and learned BGP
// routes have metric 0 (IPv6: 1024, the kernel's for 0). Where BGP learned a route to a pod CIDR, the kernel uses it (the native path wins); where it did
// not — the node cannot peer, or its routes were withdrawn — the tunnel route carries the traffic. Unlike
// Calico's crosssubnet (which encapsulates all cross-subnet traffic even where BGP has a route), traffic
// between peered nodes keeps its native path, and a node that loses BGP falls back to the tunnel by itself.
// Both ends must agree on which path a pair uses, or the return traffic arrives on another interface than its
// route: run the nodes with loose (2) or no reverse-path filtering, the kernel's and Debian's default.
package overlay

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// Mode is the overlay mode (--overlay).
type Mode string

const (
	ModeNone        Mode = "none"
	ModeVXLAN       Mode = "vxlan"
	ModeCrossSubnet Mode = "crosssubnet"
)

// ParseMode reads --overlay ("" is none).
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "", ModeNone:
		return ModeNone, nil
	case ModeVXLAN, ModeCrossSubnet:
		return m, nil
	}
	return "", fmt.Errorf("%q is not none, vxlan or crosssubnet", s)
}

// On reports whether the mode programs a tunnel.
func (m Mode) On() bool { return m == ModeVXLAN || m == ModeCrossSubnet }

const (
	// Device is the VXLAN device's name.
	Device = "canopy.vxlan"
	// DefaultVNI is the VXLAN network identifier.
	DefaultVNI = 4096
	// DefaultPort is the UDP destination port (IANA's VXLAN port).
	DefaultPort = 4789
	// Overhead is what VXLAN over IPv4 adds to each packet (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet
	// 14): the pods' MTU is the uplink's minus this (the CNI plugin's overlayOverhead).
	Overhead = 50
	// Overhead6 is the same over an IPv6 underlay (outer IPv6 40): an IPv6-only node's device MTU.
	Overhead6 = 70
	// Protocol is the kernel route protocol of the tunnel routes (not --route-protocol: those are BGP's).
	Protocol = 185
	// Metric is the tunnel's IPv4 routes' metric: above BGP's 0, so a learned route wins.
	Metric = 1024
	// Metric6 is the tunnel's IPv6 routes' metric: the kernel gives an IPv6 route of metric 0 metric 1024
	// (IP6_RT_PRIO_USER), where BGP's IPv6 routes are, so the tunnel's sit above that. With one metric a
	// replace of either would take the other's place.
	Metric6 = 2048
)

// MAC is the VXLAN device's MAC of the node with underlay address ip: locally administered and unicast.
// IPv4: 02:cb:<a>:<b>:<c>:<d>, so distinct addresses give distinct MACs. IPv6 (an IPv6-only node's underlay):
// 06:cb:<the first four bytes of the SHA-256 of the sixteen address bytes> — four bytes cannot hold an IPv6
// address, and its low bytes alone would repeat across subnets (fd00:1::11, fd00:2::11), so it is hashed;
// Desired refuses two nodes whose MACs collide (about one pair in 2^32) instead of guessing.
func MAC(ip netip.Addr) (net.HardwareAddr, error) {
	ip = ip.Unmap()
	switch {
	case ip.Is4():
		b := ip.As4()
		return net.HardwareAddr{0x02, 0xcb, b[0], b[1], b[2], b[3]}, nil
	case ip.Is6():
		b := ip.As16()
		h := sha256.Sum256(b[:])
		return net.HardwareAddr{0x06, 0xcb, h[0], h[1], h[2], h[3]}, nil
	}
	return nil, fmt.Errorf("overlay: node address %v is not an IP address", ip)
}

// VTEP is the tunnel address of a node with this pod CIDR: its network address (for IPv6 the subnet-router
// anycast address, which the CNI plugin never hands out either).
func VTEP(podCIDR netip.Prefix) netip.Addr { return podCIDR.Masked().Addr() }

// Peer is one remote node the tunnel reaches.
type Peer struct {
	Node     string
	IP       netip.Addr       // its underlay address (the family of this node's): the FDB entry's destination
	MAC      net.HardwareAddr // its VXLAN device's MAC
	VTEP     netip.Addr       // the on-link gateway of its IPv4 routes, in a neighbour entry (invalid: none)
	VTEP6    netip.Addr       // the on-link gateway of its IPv6 routes, in a neighbour entry (invalid: none)
	PodCIDRs []netip.Prefix   // routed through the tunnel, IPv4 ones via VTEP, IPv6 ones via VTEP6
}

func (p Peer) String() string {
	s := fmt.Sprintf("%s (%s, vtep %s", p.Node, p.IP, p.VTEP)
	if p.VTEP6.IsValid() {
		s += " " + p.VTEP6.String()
	}
	return s + fmt.Sprintf(" %s, %v)", p.MAC, p.PodCIDRs)
}

// Self is this node as the desired state needs it.
type Self struct {
	Name     string
	IP       netip.Addr   // the underlay address: the IPv4 InternalIP, an IPv6-only node's IPv6 one
	Subnet   netip.Prefix // of the address holding IP; crosssubnet tunnels to nodes outside it
	PodCIDRs []netip.Prefix
}

// NodeInfo is a remote node as the Node object says.
type NodeInfo struct {
	Name     string
	IP       netip.Addr // its node address (model.NodeIP: IPv4 where it has one)
	IP6      netip.Addr // its IPv6 node address, if any (the underlay when this node is IPv6-only)
	PodCIDRs []netip.Prefix
}

// underlay returns n's address of family v6.
func (n NodeInfo) underlay(v6 bool) netip.Addr {
	ip := n.IP.Unmap()
	if ip.IsValid() && ip.Is6() == v6 {
		return ip
	}
	if ip6 := n.IP6.Unmap(); v6 && ip6.Is6() {
		return ip6
	}
	if ip.IsValid() {
		return ip // of the other family: refused below, by name
	}
	return netip.Addr{}
}

// Problem is a Node the tunnel refuses, and why.
type Problem struct {
	Node    string
	Message string
}

// Desired returns the peers the tunnel should have in mode, sorted by node name, and every remote Node that
// is refused: an underlay address not of self.IP's family, special, our own or another node's (or, IPv6, one
// whose MAC another node's has); a pod CIDR outside clusterCIDRs (when any are given), smaller than /30 (IPv6:
// /126), overlapping ours or another node's, or covering a node address. Pod CIDRs of a family no cluster CIDR
// has are ignored (an IPv4-only configuration ignores the IPv6 pod CIDRs of dual-stack Nodes, as before). A
// node without a pod CIDR or without an address yet is skipped quietly (nothing to route, or nowhere to send
// it, until the API says).
// In crosssubnet mode nodes whose underlay address is inside self.Subnet are left out (native). A refused node
// gets no tunnel entries; the others are not affected.
func Desired(mode Mode, self Self, nodes []NodeInfo, clusterCIDRs []netip.Prefix) ([]Peer, []Problem) {
	if !mode.On() {
		return nil, nil
	}
	self.IP = self.IP.Unmap()
	v6 := self.IP.Is6()
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	routed := func(p netip.Prefix) bool {
		return len(clusterCIDRs) == 0 || slices.ContainsFunc(clusterCIDRs, func(c netip.Prefix) bool { return c.Addr().Is4() == p.Addr().Is4() })
	}
	var problems []Problem
	bad := map[string]bool{}
	refuse := func(n, format string, a ...any) {
		if !bad[n] {
			bad[n] = true
			problems = append(problems, Problem{Node: n, Message: fmt.Sprintf(format, a...)})
		}
	}
	type cand struct {
		NodeInfo
		cidrs []netip.Prefix
		mac   net.HardwareAddr
	}
	var cands []cand
	for _, n := range nodes {
		if n.Name == self.Name {
			continue
		}
		var cidrs []netip.Prefix
		for _, p := range n.PodCIDRs {
			if p.IsValid() && routed(p) {
				cidrs = append(cidrs, p.Masked())
			}
		}
		if len(cidrs) == 0 {
			continue
		}
		ip := n.underlay(v6)
		switch {
		case !ip.IsValid():
			continue // no address yet (a Node is often registered before its addresses are set): nothing to reach
		case ip.Is6() != v6:
			refuse(n.Name, "node address %s is not %s (this node's tunnel runs over %s)", ip, fam, fam)
			continue
		case ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() || ip.IsLinkLocalUnicast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			refuse(n.Name, "node address %s cannot be a tunnel end point", ip)
			continue
		case ip == self.IP:
			refuse(n.Name, "node address %s is this node's own", ip)
			continue
		}
		for _, p := range cidrs {
			if max := map[bool]int{false: 30, true: 126}[p.Addr().Is6()]; p.Bits() > max {
				refuse(n.Name, "pod CIDR %s is smaller than /%d", p, max)
			} else if len(clusterCIDRs) > 0 && !slices.ContainsFunc(clusterCIDRs, func(c netip.Prefix) bool { return c.Contains(p.Addr()) && c.Bits() <= p.Bits() }) {
				refuse(n.Name, "pod CIDR %s is outside the cluster CIDRs %v", p, clusterCIDRs)
			} else if slices.ContainsFunc(self.PodCIDRs, p.Overlaps) {
				refuse(n.Name, "pod CIDR %s overlaps this node's %v", p, self.PodCIDRs)
			}
		}
		mac, _ := MAC(ip) // a valid address
		cands = append(cands, cand{NodeInfo{Name: n.Name, IP: ip, IP6: n.IP6.Unmap(), PodCIDRs: n.PodCIDRs}, cidrs, mac})
	}
	// Conflicts between nodes that passed the checks above: both are refused (which one is right is not ours
	// to guess); a node refused already does not take a valid one down with it.
	cands = slices.DeleteFunc(cands, func(c cand) bool { return bad[c.Name] })
	allIPs := []netip.Addr{self.IP}
	for _, c := range cands {
		allIPs = append(allIPs, c.IP)
		if c.IP6.IsValid() && c.IP6 != c.IP {
			allIPs = append(allIPs, c.IP6)
		}
	}
	selfMAC, _ := MAC(self.IP)
	for i, a := range cands {
		if selfMAC != nil && a.mac.String() == selfMAC.String() {
			refuse(a.Name, "its tunnel MAC %s is this node's own", a.mac)
		}
		for _, b := range cands[i+1:] {
			if a.IP == b.IP {
				refuse(a.Name, "node address %s is also %s's", a.IP, b.Name)
				refuse(b.Name, "node address %s is also %s's", b.IP, a.Name)
			} else if a.mac.String() == b.mac.String() {
				refuse(a.Name, "its tunnel MAC %s is also %s's", a.mac, b.Name)
				refuse(b.Name, "its tunnel MAC %s is also %s's", b.mac, a.Name)
			}
			for _, p := range a.cidrs {
				for _, q := range b.cidrs {
					if p.Overlaps(q) {
						refuse(a.Name, "pod CIDR %s overlaps %s's %s", p, b.Name, q)
						refuse(b.Name, "pod CIDR %s overlaps %s's %s", q, a.Name, p)
					}
				}
			}
		}
		for _, p := range a.cidrs {
			for _, ip := range allIPs {
				if ip.IsValid() && p.Contains(ip) {
					refuse(a.Name, "pod CIDR %s covers the node address %s", p, ip)
				}
			}
		}
	}
	var peers []Peer
	for _, c := range cands {
		if bad[c.Name] {
			continue
		}
		if mode == ModeCrossSubnet && self.Subnet.IsValid() && self.Subnet.Contains(c.IP) {
			continue // same subnet: native
		}
		p := Peer{Node: c.Name, IP: c.IP, MAC: c.mac, PodCIDRs: c.cidrs}
		for _, x := range c.cidrs {
			if x.Addr().Is4() && !p.VTEP.IsValid() {
				p.VTEP = VTEP(x)
			} else if x.Addr().Is6() && !p.VTEP6.IsValid() {
				p.VTEP6 = VTEP(x)
			}
		}
		peers = append(peers, p)
	}
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.Node, b.Node) })
	slices.SortFunc(problems, func(a, b Problem) int { return strings.Compare(a.Node, b.Node) })
	return peers, problems
}
