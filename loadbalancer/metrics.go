package loadbalancer

import "github.com/prometheus/client_golang/prometheus"

var (
	allocatedIPs = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_lballoc_allocated_ips", Help: "LoadBalancer IPs held by Services (0 on a node that is not the leader).",
	})
	poolSize = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_lballoc_pool_size", Help: "Addresses in the configured load balancer IP ranges.",
	})
	allocationFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_lballoc_allocation_failures_total",
		Help: "Attempts to give a Service a LoadBalancer IP that failed, by reason (exhausted, unavailable, invalid).",
	}, []string{"reason"})
	leading = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_lballoc_leader", Help: "1 while this node holds the load balancer allocator lease.",
	})
)

// Failure reasons, the values of the allocation_failures_total "reason" label.
const (
	failExhausted   = "exhausted"
	failUnavailable = "unavailable"
	failInvalid     = "invalid"
)

// Collectors returns the package's metrics, every failure reason's series present from the start (0).
func Collectors() []prometheus.Collector {
	for _, r := range []string{failExhausted, failUnavailable, failInvalid} {
		allocationFailures.WithLabelValues(r)
	}
	return []prometheus.Collector{allocatedIPs, poolSize, allocationFailures, leading}
}
