package bgp

import (
	"crypto/sha256"
	"net/netip"
)

// BGP over IPv6 (RFC 2545): a session's transport is whatever family its peer address has. On an IPv6-only node
// (no IPv4 InternalIP) every session is an IPv6 one: the node mesh runs between the nodes' IPv6 InternalIPs, the
// ToR and BGPPeer routers are IPv6 addresses, and the speaker listens on the node's IPv6 address. A dual-stack
// node listens on both of its addresses, so an IPv6 peer (a BGPPeer, a flag or annotation router) gets an IPv6
// session beside the IPv4 ones, dialled from the node's IPv6 address.
//
// Families: an IPv6 session carries IPv6 unicast only. An IPv4 session carries every family of the pod network
// (dualstack.go), so on a dual-stack node the IPv6 routes ride the IPv4 sessions unless the router turns that
// family off on them (capability negotiation: FRR `no neighbor X activate` under `address-family ipv6 unicast`),
// e.g. where it has an IPv6 session with the node as well. IPv4 routes are never sent over an IPv6 session:
// their IPv4 next hop would need RFC 8950 (extended next hop) on the other side.
//
// GTSM (IPV6_MINHOPCOUNT, hop limit 255) and TCP MD5 (an AF_INET6 key) work on IPv6 sessions as on IPv4 ones
// (GoBGP sets the option of the socket's family); the CANOPY-BGP-GUARD chain that keeps pods off port 179 exists in
// ip6tables for IPv6 cluster CIDRs (internal/egress).
//
// Router ID: BGP's identifier stays 32 bits (RFC 6286), so an IPv6-only node has no address to take it from. Without
// --router-id, a node with an IPv4 InternalIP uses that; one without derives it from its node name (DeriveRouterID:
// the first four bytes of the name's SHA-256, the first octet moved out of 224-255), the same scheme as Calico's
// CALICO_ROUTER_ID=hash, but automatic, because a DaemonSet cannot hand each node its own --router-id (kube-router
// asks for --router-id=generate, a hash of the node IP). Two nodes of one AS that derive the same ID cannot peer
// over iBGP; the node controller warns when another IPv6-only node's name hashes to this node's ID (about 1 in 8.6
// billion per pair).

// DeriveRouterID is the router ID of a node without an IPv4 address: the first four bytes of the SHA-256 of its
// name as an IPv4 address, with a first octet of 224 or more lowered by 32 (no multicast or class E ID) and 0.0.0.0
// (not a valid BGP identifier) replaced by 0.0.0.1.
func DeriveRouterID(nodeName string) netip.Addr {
	sum := sha256.Sum256([]byte(nodeName))
	b := [4]byte{sum[0], sum[1], sum[2], sum[3]}
	if b[0] >= 224 {
		b[0] -= 32
	}
	if b == [4]byte{} {
		b[3] = 1
	}
	return netip.AddrFrom4(b)
}

// routerIDFor returns the router ID of a node: configured if valid, else its IPv4 address ip4 if valid, else
// DeriveRouterID(name) (derived true).
func routerIDFor(configured netip.Addr, name string, ip4 netip.Addr) (rid netip.Addr, derived bool) {
	switch {
	case configured.IsValid():
		return configured, false
	case ip4.IsValid() && ip4.Is4():
		return ip4, false
	}
	return DeriveRouterID(name), true
}

// localAddressFor returns the address of addrs (the speaker's listen addresses) that sessions with peer are
// dialled from: the first of the peer's family, invalid if none.
func localAddressFor(peer netip.Addr, addrs []netip.Addr) netip.Addr {
	for _, a := range addrs {
		if familyOf(a) == familyOf(peer) {
			return a
		}
	}
	return netip.Addr{}
}
