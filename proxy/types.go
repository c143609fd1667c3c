// Package proxy is Canopy's service proxy (kube-proxy's job): the ServicePorts of the shared Service model
// (internal/model, which the VIP announcer reads too) are programmed by a Backend (IPVS, or iptables where the
// kernel lacks IPVS) incrementally: an event changes only the service ports it touches.
package proxy

import "canopy.io/canopy/internal/model"

// Backend programs service ports into the kernel.
type Backend interface {
	// Sync makes the kernel match desired for the keys in changed only (a key absent from desired is
	// deleted). A full resync passes every key it has and every key it applied.
	Sync(desired map[string]*model.ServicePort, changed []string) error
	// Name says which back end this is ("ipvs", "iptables").
	Name() string
}
