// Package policy will enforce networking.k8s.io/v1 NetworkPolicy with per-pod iptables chains and ipsets
// (CANOPY- prefixed), incrementally and with no unprotected window for new pods.
//
// Built so far: semantics.go, the pure, I/O-free core. Compute turns NetworkPolicies, pods and
// namespaces into one PodFirewall per policed pod (isolation per direction plus allow rules with
// resolved peers and numeric ports), which the data path (not built yet, see the NetworkPolicy issue)
// will program. The layout follows DESIGN.md.
package policy
