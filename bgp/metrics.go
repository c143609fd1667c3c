package bgp

import "github.com/prometheus/client_golang/prometheus"

var (
	peerChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_bgp_peer_changes_total", Help: "BGP peers added, deleted or re-created by the reconciler.",
	}, []string{"op"})
	configuredPeers = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_bgp_configured_peers", Help: "BGP peers configured in the speaker.",
	})
	establishedPeers = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_bgp_established_peers", Help: "BGP sessions in state Established.",
	})
	advertisedPaths = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_bgp_advertised_paths", Help: "Paths this node originates.",
	})
	learnedRoutes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_bgp_learned_routes", Help: "Learned prefixes accepted by the import policy and handed to the kernel.",
	})
	rejectedRoutes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_bgp_rejected_routes_total", Help: "Learned best paths refused by the import policy, by reason.",
	}, []string{"reason"})
	sinkErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "canopy_bgp_route_sink_errors_total", Help: "Accepted routes the kernel route manager failed to apply.",
	})
	prefixLimitTeardowns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_bgp_prefix_limit_teardowns_total", Help: "Sessions torn down because the peer sent more prefixes than its limit (--max-prefixes), by peer.",
	}, []string{"peer"})
	peerResets = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "canopy_bgp_session_resets_total", Help: "BGP sessions reset at once because their BFD session went down (or came back while BGP was not up).",
	})
	speakerStarts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "canopy_bgp_speaker_starts_total", Help: "BGP speaker (re)starts: the first start, identity changes, retried starts.",
	})
	invalidInput = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_bgp_invalid_input_total", Help: "Invalid configuration inputs (annotations) refused, by source.",
	}, []string{"source"})
)

// Collectors returns the package's metrics, every rejection reason's series present from the start (0).
func Collectors() []prometheus.Collector {
	for _, r := range []string{RejectDefault, RejectOutside, RejectOwnPodCIDR, RejectCoversNode, RejectNotNodeCIDR, RejectNotOwner,
		RejectBadNextHop, RejectWrongFamily} {
		rejectedRoutes.WithLabelValues(r)
	}
	return []prometheus.Collector{peerChanges, configuredPeers, establishedPeers, advertisedPaths, learnedRoutes, rejectedRoutes, sinkErrors, invalidInput, speakerStarts, adminRefused, prefixLimitTeardowns, peerResets}
}

// CountInvalidInput counts a refused input from source (e.g. "node_annotation").
func CountInvalidInput(source string) { invalidInput.WithLabelValues(source).Inc() }
