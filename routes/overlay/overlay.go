// Package overlay is Canopy's VXLAN overlay for nodes that cannot peer: pod traffic to a node that no BGP route
// reaches goes through one Linux kernel VXLAN device, canopy.vxlan, programmed from the Node objects.
//
// What the kernel gets (Flannel's and Calico's layout, Linux VXLAN through netlink):
//
//   - the device canopy.vxlan: VNI 4096, UDP port 4789, learning off, local = the node's IPv4 InternalIP, its
//     lower device the interface that holds that address, MTU = that interface's MTU − 50, and a MAC derived
//     from the node IP (MAC);
//   - per remote node: a permanent neighbour entry (its VTEP address → its MAC) and a permanent FDB entry (its
//     MAC → its node IP), and for each of its IPv4 pod CIDRs a route `<pod CIDR> via <VTEP> dev canopy.vxlan
//     onlink proto 185 metric 1024`.
//
// A node's VTEP address is the network address of its first IPv4 pod CIDR (10.244.3.0 for 10.244.3.0/24),
// an address the CNI plugin never gives a pod; it is never configured on any interface, only named as the
// route's on-link gateway and in the neighbour entry.
//
// The MAC is derived from the node IP (02:cb:<the four bytes>), not announced in a Node annotation: every node
// computes every other node's MAC from what the API already says, so the agents write nothing to the API, no
// node waits for another's annotation, there is no hostile annotation value to validate, and a recreated device
// or a restarted agent gets the same MAC again.
//
// Modes (--overlay): none (no device; one an earlier run left is removed), vxlan (a tunnel route to every remote
// node) and crosssubnet (a tunnel route only to nodes outside this node's subnet — the prefix of the address
// that holds its InternalIP; same-subnet traffic stays native, on BGP routes or the segment).
//
// BGP and the tunnel never fight: tunnel routes have their own protocol number (Protocol, 185: the BGP route
// table's sweep, which owns --route-protocol, never sees them) and metric 1024, and learned BGP routes have
// metric 0. Where BGP learned a route to a pod CIDR, the kernel uses it (the native path wins); where it did
// not — the node cannot peer, or its routes were withdrawn — the tunnel route carries the traffic. Unlike
// Calico's crosssubnet (which encapsulates all cross-subnet traffic even where BGP has a route), traffic
// between peered nodes keeps its native path, and a node that loses BGP falls back to the tunnel by itself.
// Both ends must agree on which path a pair uses, or the return traffic arrives on another interface than its
// route: run the nodes with loose (2) or no reverse-path filtering, the kernel's and Debian's default.
package overlay

import (
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
	// Protocol is the kernel route protocol of the tunnel routes (not --route-protocol: those are BGP's).
	Protocol = 185
	// Metric is the tunnel routes' metric: above BGP's 0, so a learned route wins.
	Metric = 1024
)

// MAC is the VXLAN device's MAC of the node with IPv4 address ip: locally administered, unicast,
// 02:cb:<a>:<b>:<c>:<d>. Distinct addresses give distinct MACs.
func MAC(ip netip.Addr) (net.HardwareAddr, error) {
	ip = ip.Unmap()
	if !ip.Is4() {
		return nil, fmt.Errorf("overlay: node address %v is not IPv4", ip)
	}
	b := ip.As4()
	return net.HardwareAddr{0x02, 0xcb, b[0], b[1], b[2], b[3]}, nil
}

// VTEP is the tunnel address of a node with this pod CIDR: its network address.
func VTEP(podCIDR netip.Prefix) netip.Addr { return podCIDR.Masked().Addr() }

// Peer is one remote node the tunnel reaches.
type Peer struct {
	Node     string
	IP       netip.Addr       // its node address: the FDB entry's destination
	MAC      net.HardwareAddr // its VXLAN device's MAC
	VTEP     netip.Addr       // the on-link gateway of its routes, in the neighbour entry
	PodCIDRs []netip.Prefix   // routed through the tunnel
}

func (p Peer) String() string {
	return fmt.Sprintf("%s (%s, vtep %s %s, %v)", p.Node, p.IP, p.VTEP, p.MAC, p.PodCIDRs)
}

// Self is this node as the desired state needs it.
type Self struct {
	Name     string
	IP       netip.Addr
	Subnet   netip.Prefix // of the address holding IP; crosssubnet tunnels to nodes outside it
	PodCIDRs []netip.Prefix
}

// NodeInfo is a remote node as the Node object says.
type NodeInfo struct {
	Name     string
	IP       netip.Addr
	PodCIDRs []netip.Prefix
}

// Problem is a Node the tunnel refuses, and why.
type Problem struct {
	Node    string
	Message string
}

// Desired returns the peers the tunnel should have in mode, sorted by node name, and every remote Node that
// is refused: a non-IPv4, special or our own node address, or a node address another node has; a pod CIDR
// outside clusterCIDRs (when any are given), smaller than /30, overlapping ours or another node's, or covering a
// node address. A node without an IPv4 pod CIDR or without an address yet is skipped quietly (nothing to route,
// or nowhere to send it, until the API says).
// In crosssubnet mode nodes inside self.Subnet are left out (native). A refused node gets no tunnel entries;
// the others are not affected.
func Desired(mode Mode, self Self, nodes []NodeInfo, clusterCIDRs []netip.Prefix) ([]Peer, []Problem) {
	if !mode.On() {
		return nil, nil
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
		v4 []netip.Prefix
	}
	var cands []cand
	for _, n := range nodes {
		if n.Name == self.Name {
			continue
		}
		var v4 []netip.Prefix
		for _, p := range n.PodCIDRs {
			if p.IsValid() && p.Addr().Is4() {
				v4 = append(v4, p.Masked())
			}
		}
		if len(v4) == 0 {
			continue
		}
		ip := n.IP.Unmap()
		switch {
		case !ip.IsValid():
			continue // no address yet (a Node is often registered before its addresses are set): nothing to reach
		case !ip.Is4():
			refuse(n.Name, "node address %s is not IPv4 (the overlay is IPv4 only)", ip)
			continue
		case ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() || ip.IsLinkLocalUnicast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			refuse(n.Name, "node address %s cannot be a tunnel end point", ip)
			continue
		case ip == self.IP:
			refuse(n.Name, "node address %s is this node's own", ip)
			continue
		}
		for _, p := range v4 {
			if p.Bits() > 30 {
				refuse(n.Name, "pod CIDR %s is smaller than /30", p)
			} else if len(clusterCIDRs) > 0 && !slices.ContainsFunc(clusterCIDRs, func(c netip.Prefix) bool { return c.Contains(p.Addr()) && c.Bits() <= p.Bits() }) {
				refuse(n.Name, "pod CIDR %s is outside the cluster CIDRs %v", p, clusterCIDRs)
			} else if slices.ContainsFunc(self.PodCIDRs, p.Overlaps) {
				refuse(n.Name, "pod CIDR %s overlaps this node's %v", p, self.PodCIDRs)
			}
		}
		cands = append(cands, cand{NodeInfo{Name: n.Name, IP: ip, PodCIDRs: n.PodCIDRs}, v4})
	}
	// Conflicts between nodes that passed the checks above: both are refused (which one is right is not ours
	// to guess); a node refused already does not take a valid one down with it.
	cands = slices.DeleteFunc(cands, func(c cand) bool { return bad[c.Name] })
	allIPs := []netip.Addr{self.IP}
	for _, c := range cands {
		allIPs = append(allIPs, c.IP)
	}
	for i, a := range cands {
		for _, b := range cands[i+1:] {
			if a.IP == b.IP {
				refuse(a.Name, "node address %s is also %s's", a.IP, b.Name)
				refuse(b.Name, "node address %s is also %s's", b.IP, a.Name)
			}
			for _, p := range a.v4 {
				for _, q := range b.v4 {
					if p.Overlaps(q) {
						refuse(a.Name, "pod CIDR %s overlaps %s's %s", p, b.Name, q)
						refuse(b.Name, "pod CIDR %s overlaps %s's %s", q, a.Name, p)
					}
				}
			}
		}
		for _, p := range a.v4 {
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
		mac, _ := MAC(c.IP) // IPv4 checked above
		peers = append(peers, Peer{Node: c.Name, IP: c.IP, MAC: mac, VTEP: VTEP(c.v4[0]), PodCIDRs: c.v4})
	}
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.Node, b.Node) })
	slices.SortFunc(problems, func(a, b Problem) int { return strings.Compare(a.Node, b.Node) })
	return peers, problems
}
