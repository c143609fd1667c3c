package config

import (
	"slices"

	"canopy.io/canopy/routes/overlay"
)

// OverlayOptions returns the VXLAN overlay controller's options (--overlay).
func (c *Config) OverlayOptions() overlay.Options {
	return overlay.Options{NodeName: c.NodeName, Mode: c.Overlay, ClusterCIDRs: slices.Clone(c.ClusterCIDRs)}
}

// overlayOverhead is the CNI plugin's overlayOverhead: the VXLAN encapsulation's bytes when the overlay is on.
// An explicit --cni-mtu is the pods' MTU as given (the plugin subtracts the overhead only from a detected one).
func (c *Config) overlayOverhead() int {
	if c.Overlay.On() {
		return overlay.Overhead
	}
	return 0
}
