package config

import (
	"net/netip"
	"slices"

	"canopy.io/canopy/routes/overlay"
)

// OverlayOptions returns the VXLAN overlay controller's options (--overlay).
func (c *Config) OverlayOptions() overlay.Options {
	return overlay.Options{NodeName: c.NodeName, Mode: c.Overlay, ClusterCIDRs: slices.Clone(c.ClusterCIDRs)}
}

// overlayOverhead is the CNI plugin's overlayOverhead: the VXLAN encapsulation's bytes when the overlay is on.
// An explicit --cni-mtu is the pods' MTU as given (the plugin subtracts the overhead only from a detected one).
// An IPv6-only cluster (every --cluster-cidr IPv6) tunnels over its nodes' IPv6 addresses, whose outer header
// is 20 bytes longer (overlay.Overhead6); a node of it with an IPv4 InternalIP tunnels over IPv4 and its pods
// are then 20 bytes under what they could have, which is safe.
func (c *Config) overlayOverhead() int {
	if !c.Overlay.On() {
		return 0
	}
	if len(c.ClusterCIDRs) > 0 && !slices.ContainsFunc(c.ClusterCIDRs, func(p netip.Prefix) bool { return p.Addr().Is4() }) {
		return overlay.Overhead6
	}
	return overlay.Overhead
}
