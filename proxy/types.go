// Package proxy is Canopy's service proxy (kube-proxy's job): the ServicePorts of the shared Service model
// (internal/model, which the VIP announcer reads too) are programmed by a Backend (IPVS, or iptables where the
// kernel lacks IPVS) incrementally: an event changes only the service ports it touches.
package proxy

import "canopy.io/canopy/internal/model"

// Backend programs service ports into the kernel. Every back end has the same life: Start, then Syncs (the
// first one full), PruneStale once the first full Sync succeeded, and Cleanup when its mode is no longer used.
type Backend interface {
	// Name says which back end this is ("ipvs", "iptables").
	Name() string
	// Start reads what an earlier run left (it keeps serving until PruneStale) and creates what is shared.
	Start() error
	// Sync makes the kernel match desired for the keys in changed only (a key absent from desired is
	// deleted). A full sync passes every key it has and every key it applied.
	Sync(desired map[string]*model.ServicePort, changed []string) error
	// PruneStale removes what an earlier run left that no synced key claims.
	PruneStale() error
	// Cleanup removes everything this back end ever programmed (its mode was switched off).
	Cleanup() error
	// Schedulers are the canopy.io/scheduler values the back end supports.
	Schedulers() []string
}
