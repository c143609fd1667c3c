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
	RejectNotNodeCIDR = "not_a_node_pod_cidr"
	RejectNotOwner    = "next_hop_not_owner"
	RejectBadNextHop  = "bad_next_hop"
	RejectWrongFamily = "unsupported_family"
)

// ImportPolicy decides which learned prefixes may enter the kernel, and through which next hops. It is a plain
// value: build a new one when its inputs change.
//
// A prefix inside a cluster CIDR is strict: it must be exactly a Node's pod CIDR as the API says, through that
// node's address (or a configured router's, for routers that set next hop self) — so no peer can take over a
// part of another node's pods, or an unallocated block of the pod network. A prefix inside --import-allow (and
// not in a cluster CIDR) may come through any usable next hop. Never a default route, never our own pod CIDR,
// never a prefix covering a node address; and never a next hop that is loopback, link-local, unspecified,
// multicast, this node's own, or inside the pod or service networks.
type ImportPolicy struct {
	cluster []netip.Prefix // strict
	allow   []netip.Prefix // --import-allow
	own     []netip.Prefix // this node's pod CIDRs
	nodeIPs []netip.Addr   // sorted, every node's address
	owners  map[netip.Prefix]netip.Addr
	routers map[netip.Addr]bool
	noHop   []netip.Prefix // pod and service networks
	// loopbackHops accepts loopback next hops: only for tests whose peers live on 127.0.0.0/8.
	loopbackHops bool
}

// PolicyInput is what the import policy is built from.
type PolicyInput struct {
	ClusterCIDRs []netip.Prefix
	ImportAllow  []netip.Prefix
	ServiceCIDRs []netip.Prefix
	Own          []netip.Prefix              // this node's pod CIDRs
	NodeIPs      []netip.Addr                // every node's address
	Owners       map[netip.Prefix]netip.Addr // every other node's pod CIDR -> its address
	Routers      []netip.Addr                // the configured external peers
}

// NewImportPolicy builds an import policy from in.
func NewImportPolicy(in PolicyInput) *ImportPolicy {
	ips := slices.Clone(in.NodeIPs)
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	p := &ImportPolicy{cluster: slices.Clone(in.ClusterCIDRs), allow: slices.Clone(in.ImportAllow), own: slices.Clone(in.Own),
		nodeIPs: slices.Compact(ips), owners: map[netip.Prefix]netip.Addr{}, routers: map[netip.Addr]bool{},
		noHop: append(slices.Clone(in.ClusterCIDRs), in.ServiceCIDRs...)}
	for pfx, ip := range in.Owners {
		p.owners[pfx.Masked()] = ip
	}
	for _, r := range in.Routers {
		p.routers[r] = true
	}
	return p
}

// Check says whether prefix may be installed at all, and if not, why.
func (p *ImportPolicy) Check(prefix netip.Prefix) (ok bool, reason string) {
	prefix = prefix.Masked()
	if prefix.Bits() == 0 {
		return false, RejectDefault
	}
	strict := inside(prefix, p.cluster)
	if !strict && !inside(prefix, p.allow) {
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
	if strict {
		if _, ok := p.owners[prefix]; !ok {
			return false, RejectNotNodeCIDR
		}
	}
	return true, ""
}

// NextHops keeps the next hops prefix may be installed through (prefix passed Check); when none is left, reason
// says why.
func (p *ImportPolicy) NextHops(prefix netip.Prefix, nhs []netip.Addr) (kept []netip.Addr, reason string) {
	prefix = prefix.Masked()
	owner, strict := p.owners[prefix]
	reason = RejectBadNextHop
	for _, nh := range nhs {
		if !p.usableHop(prefix, nh) {
			continue
		}
		if strict && nh != owner && !p.routers[nh] {
			reason = RejectNotOwner
			continue
		}
		kept = append(kept, nh)
	}
	if len(kept) > 0 {
		reason = ""
	}
	return kept, reason
}

func (p *ImportPolicy) usableHop(prefix netip.Prefix, nh netip.Addr) bool {
	if !nh.IsValid() || nh.Is4() != prefix.Addr().Is4() || (nh.IsLoopback() && !p.loopbackHops) || nh.IsLinkLocalUnicast() ||
		nh.IsUnspecified() || nh.IsMulticast() || nh.IsLinkLocalMulticast() {
		return false
	}
	for _, n := range p.noHop {
		if n.Contains(nh) {
			return false
		}
	}
	return true
}

func inside(prefix netip.Prefix, in []netip.Prefix) bool {
	for _, a := range in {
		if a.Bits() <= prefix.Bits() && a.Contains(prefix.Addr()) {
			return true
		}
	}
	return false
}

// coversNode reports whether any node address lies inside prefix, by binary search over the sorted addresses.
func (p *ImportPolicy) coversNode(prefix netip.Prefix) bool {
	first := prefix.Addr()
	i, _ := slices.BinarySearchFunc(p.nodeIPs, first, func(a, t netip.Addr) int { return a.Compare(t) })
	return i < len(p.nodeIPs) && prefix.Contains(p.nodeIPs[i])
}
