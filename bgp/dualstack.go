package bgp

import (
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"
	corev1 "k8s.io/api/core/v1"

	"canopy.io/canopy/internal/model"
)

// Dual stack (MP-BGP, RFC 4760): a node of a dual-stack cluster announces its pod CIDR of each family with its
// own address of that family as the next hop, over whatever sessions it has (the node mesh and the ToR sessions
// are IPv4 ones in a dual-stack fabric): every IPv4 session negotiates unicast for each family of the pod network
// (GlobalConfig.Families) besides its own address's (an IPv6 session, ipv6.go, carries IPv6 only). A learned IPv6 pod CIDR must come through its node's IPv6
// address (or a configured router's), as an IPv4 one through its IPv4 address. Without an IPv6 cluster CIDR
// nothing changes: the sessions carry their own family only, as before.

// AddressFamily is a unicast address family a session carries.
type AddressFamily uint8

const (
	IPv4Unicast AddressFamily = 4
	IPv6Unicast AddressFamily = 6
)

func (f AddressFamily) String() string {
	if f == IPv6Unicast {
		return "ipv6-unicast"
	}
	return "ipv4-unicast"
}

func (f AddressFamily) api() *api.Family {
	if f == IPv6Unicast {
		return familyIPv6
	}
	return familyIPv4
}

// familyOf is the unicast family of a.
func familyOf(a netip.Addr) AddressFamily {
	if a.Is4() || a.Is4In6() {
		return IPv4Unicast
	}
	return IPv6Unicast
}

// FamiliesOf returns the families of prefixes, IPv4 first, each once (nil for none).
func FamiliesOf(prefixes []netip.Prefix) []AddressFamily {
	var v4, v6 bool
	for _, p := range prefixes {
		if familyOf(p.Addr()) == IPv4Unicast {
			v4 = true
		} else {
			v6 = true
		}
	}
	var out []AddressFamily
	if v4 {
		out = append(out, IPv4Unicast)
	}
	if v6 {
		out = append(out, IPv6Unicast)
	}
	return out
}

// sessionFamilies are the families a session with peer carries: the peer address's own first, then, on an IPv4
// session, extra (an IPv6 session carries IPv6 unicast only: see ipv6.go).
func sessionFamilies(peer netip.Addr, extra []AddressFamily) []AddressFamily {
	out := []AddressFamily{familyOf(peer)}
	if out[0] == IPv6Unicast {
		return out
	}
	for _, f := range extra {
		if f != out[0] && (len(out) == 1 || f != out[1]) {
			out = append(out, f)
		}
	}
	return out
}

// nodeIPOf returns a node's address of family f: its first InternalIP of that family, else its first
// ExternalIP of it (the order model.NodeIP prefers); invalid when it has none.
func nodeIPOf(n *corev1.Node, f AddressFamily) netip.Addr {
	if n == nil {
		return netip.Addr{}
	}
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != t {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err == nil && familyOf(ip) == f {
				return ip.Unmap()
			}
		}
	}
	return netip.Addr{}
}

// nodeAddrs returns the addresses a node's routes go through: its main address (model.NodeIP) and, when that is
// an IPv4 one, its IPv6 address (nodeIPOf; invalid when it has none). nextHopFor picks between them per prefix:
// the pod CIDRs' next hops (NodeController) and the Service VIPs' (VIPController) come from here.
func nodeAddrs(n *corev1.Node) (ip, ip6 netip.Addr) {
	ip = model.NodeIP(n)
	if ip.Is4() {
		ip6 = nodeIPOf(n, IPv6Unicast)
	}
	return ip, ip6
}

// nextHopFor returns the address of a node (ip: its main address, ip6: its IPv6 one or invalid; see nodeAddrs)
// that is the next hop of a prefix p it announces (a pod CIDR, a Service VIP): the one of p's family, invalid
// when the node has none.
func nextHopFor(p netip.Prefix, ip, ip6 netip.Addr) netip.Addr {
	switch {
	case ip.IsValid() && familyOf(ip) == familyOf(p.Addr()):
		return ip
	case ip6.IsValid() && familyOf(p.Addr()) == IPv6Unicast:
		return ip6
	}
	return netip.Addr{}
}
