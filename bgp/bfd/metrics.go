package bfd

import "github.com/prometheus/client_golang/prometheus"

// Reasons a received packet is dropped (label of canopy_bfd_packets_dropped_total).
const (
	DropTTL       = "ttl"        // TTL / Hop Limit not 255 (RFC 5881 §5), or not reported by the kernel
	DropMalformed = "malformed"  // fails the checks of RFC 5880 §6.8.6, or does not fit the receive buffer
	DropNoSession = "no_session" // no session for its Your Discriminator, or for its addresses when that is 0
	DropAuth      = "auth"       // carries authentication, which no session here uses
	DropOverload  = "overload"   // the event loop's queue was full
)

var (
	sessionState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "canopy_bfd_session_state", Help: "BFD session state by peer: 0 AdminDown, 1 Down, 2 Init, 3 Up.",
	}, []string{"peer"})
	packetsSent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_bfd_packets_sent_total", Help: "BFD Control packets sent, by peer.",
	}, []string{"peer"})
	packetsReceived = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_bfd_packets_received_total", Help: "BFD Control packets received and accepted by a session, by peer.",
	}, []string{"peer"})
	stateChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_bfd_state_changes_total", Help: "BFD session state changes, by peer and new state.",
	}, []string{"peer", "state"})
	packetsDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_bfd_packets_dropped_total", Help: "Received BFD packets dropped, by reason (ttl, malformed, no_session, auth, overload).",
	}, []string{"reason"})

	// Resolved once, so the receive path counts drops without a label lookup.
	dropTTL       = packetsDropped.WithLabelValues(DropTTL)
	dropMalformed = packetsDropped.WithLabelValues(DropMalformed)
	dropNoSession = packetsDropped.WithLabelValues(DropNoSession)
	dropAuth      = packetsDropped.WithLabelValues(DropAuth)
	dropOverload  = packetsDropped.WithLabelValues(DropOverload)
)

// Collectors returns the package's metrics. Peer series disappear when the peer is removed. Series are labelled
// by peer address only: two sessions to one peer address (from two local addresses) share them.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{sessionState, packetsSent, packetsReceived, stateChanges, packetsDropped}
}

// peerMetrics are one peer's series, resolved when its session is created.
type peerMetrics struct {
	label      string
	state      prometheus.Gauge
	sent, recv prometheus.Counter
}

func newPeerMetrics(peer string) peerMetrics {
	return peerMetrics{label: peer, state: sessionState.WithLabelValues(peer),
		sent: packetsSent.WithLabelValues(peer), recv: packetsReceived.WithLabelValues(peer)}
}

func (m peerMetrics) changed(st State) {
	m.state.Set(float64(st))
	stateChanges.WithLabelValues(m.label, st.String()).Inc()
}

func (m peerMetrics) delete() {
	sessionState.DeleteLabelValues(m.label)
	packetsSent.DeleteLabelValues(m.label)
	packetsReceived.DeleteLabelValues(m.label)
	for _, st := range []State{StateAdminDown, StateDown, StateInit, StateUp} {
		stateChanges.DeleteLabelValues(m.label, st.String())
	}
}
