package bgp

import (
	"net/netip"
	"slices"
)

// Reasons an import is refused; they label the rejected-routes metric.
const (
	RejectDefault     = "default_route"
	RejectOutside     = "outside_allowed"
	RejectOwnPodCIDR  = "own_pod_cidr"
	RejectCoversNode  = "covers_node_address"
	RejectBadNextHop  = "bad_next_hop"
	RejectWrongFamily = "unsupported_family"
)

// ImportPolicy decides which learned prefixes may enter the kernel. It is a plain value: build a new one when
// its inputs change.
type ImportPolicy struct {
	allowed []netip.Prefix // cluster CIDRs and --import-allow
	own     []netip.Prefix // this node's pod CIDRs
	nodeIPs []netip.Addr   // sorted, every node's address
}

// NewImportPolicy builds an import policy: accept only prefixes inside allowed, never a default route, never one
// overlapping our own pod CIDRs, never one that contains a node address (it would steal the node's own traffic).
func NewImportPolicy(allowed, own []netip.Prefix, nodeIPs []netip.Addr) *ImportPolicy {
	ips := slices.Clone(nodeIPs)
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	return &ImportPolicy{allowed: slices.Clone(allowed), own: slices.Clone(own), nodeIPs: slices.Compact(ips)}
}

// Check says whether prefix may be installed, and if not, why.
func (p *ImportPolicy) Check(prefix netip.Prefix) (ok bool, reason string) {
	prefix = prefix.Masked()
	if prefix.Bits() == 0 {
		return false, RejectDefault
	}
	inside := false
	for _, a := range p.allowed {
		if a.Bits() <= prefix.Bits() && a.Contains(prefix.Addr()) {
			inside = true
			break
		}
	}
	if !inside {
		return false, RejectOutside
	}
	for _, o := range p.own {
		if o.Overlaps(prefix) {
			return false, RejectOwnPodCIDR
		}
	}
	if p.coversNode(prefix) {
		return false, RejectCoversNode
	}
	return true, ""
}

// coversNode reports whether any node address lies inside prefix, by binary search over the sorted addresses.
func (p *ImportPolicy) coversNode(prefix netip.Prefix) bool {
	first := prefix.Addr()
	i, _ := slices.BinarySearchFunc(p.nodeIPs, first, func(a, t netip.Addr) int { return a.Compare(t) })
	return i < len(p.nodeIPs) && prefix.Contains(p.nodeIPs[i])
}
