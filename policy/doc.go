// Package policy enforces networking.k8s.io/v1 NetworkPolicy on one node with iptables chains and ipsets
// (CANOPY-POL-*, CANOPY-P{I,E,R}-*, CANOPY-S-*), incrementally and with no unprotected window for new pods, in
// both families: IPv4 in iptables, IPv6 in ip6tables with inet6 sets (CANOPY-S6-*, CANOPY-POL-READY6/-LOCAL6)
// on a node with an IPv6 pod CIDR; ICMPv6 neighbour discovery is never dropped (state.go says why).
//
//   - semantics.go: Compute, the pure core: policies, pods and namespaces in, one PodFirewall per policed pod
//     out (isolation per direction, allow rules with resolved peers and numeric ports).
//   - state.go: Build, also pure: PodFirewalls and the node's pod addresses in, the data path as plain data
//     (chains, dispatch lines, sets, the addresses whose rules exist). The chain layout is documented there.
//   - firewall.go: Firewall programs a State through iptables-restore --noflush (our chains only) and ipset
//     restore, writing only what differs from the last State it applied.
//   - controller.go: informers (Pods reduced by a transform) → Compute → Build → Firewall.Sync.
package policy
