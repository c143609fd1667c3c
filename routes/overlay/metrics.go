package overlay

import "github.com/prometheus/client_golang/prometheus"

// Error reasons of canopy_overlay_errors_total.
const (
	reasonInvalidNode = "invalid_node" // a remote Node refused (Event InvalidOverlayNode on it)
	reasonLocal       = "local"        // this node has no usable IPv4 address on an interface
	reasonKernel      = "kernel"       // a netlink call failed (retried)
)

var (
	peersGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "canopy", Subsystem: "overlay", Name: "peers",
		Help: "Remote nodes the VXLAN overlay has entries for (neighbour, FDB, routes).",
	})
	errorsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "canopy", Subsystem: "overlay", Name: "errors_total",
		Help: "Overlay problems, by reason: invalid_node (a Node refused), local (no usable node address), kernel (a netlink call failed).",
	}, []string{"reason"})
)

func init() {
	for _, r := range []string{reasonInvalidNode, reasonLocal, reasonKernel} {
		errorsTotal.WithLabelValues(r)
	}
}

// Collectors returns the package's metrics: canopy_overlay_peers, canopy_overlay_errors_total{reason}.
func Collectors() []prometheus.Collector { return []prometheus.Collector{peersGauge, errorsTotal} }
