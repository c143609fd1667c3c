// Package policy will enforce networking.k8s.io/v1 NetworkPolicy with per-pod iptables chains and ipsets
// (CANOPY- prefixed), incrementally and with no unprotected window for new pods. Not built yet: see the
// NetworkPolicy issue. It holds only this comment so the layout of DESIGN.md is visible from the start.
package policy
