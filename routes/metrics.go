package routes

import "github.com/prometheus/client_golang/prometheus"

// Metric operation labels.
const (
	opInstall = "install" // add or replace of a route
	opDelete  = "delete"
	opList    = "list" // only in errors
)

var (
	installedRoutes = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "canopy", Subsystem: "routes", Name: "installed_routes",
		Help: "Routes Canopy has in the kernel (its protocol, its table), including stale ones not yet swept.",
	})
	operationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "canopy", Subsystem: "routes", Name: "operations_total",
		Help: "Successful kernel route operations, by op (install = add or replace, delete).",
	}, []string{"op"})
	errorsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "canopy", Subsystem: "routes", Name: "errors_total",
		Help: "Failed kernel route operations, by op (install, delete, list).",
	}, []string{"op"})
	staleRemovedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "canopy", Subsystem: "routes", Name: "stale_removed_routes_total",
		Help: "Routes left by an earlier run that Sweep deleted because BGP did not confirm them.",
	})
)

// The children, resolved once (they also make every label value show from the start, at zero).
var (
	installOps    = operationsTotal.WithLabelValues(opInstall)
	deleteOps     = operationsTotal.WithLabelValues(opDelete)
	installErrors = errorsTotal.WithLabelValues(opInstall)
	deleteErrors  = errorsTotal.WithLabelValues(opDelete)
	listErrors    = errorsTotal.WithLabelValues(opList)
)

// Collectors returns the package's metrics, for the agent to register:
// canopy_routes_installed_routes, canopy_routes_operations_total{op}, canopy_routes_errors_total{op},
// canopy_routes_stale_removed_routes_total.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{installedRoutes, operationsTotal, errorsTotal, staleRemovedTotal}
}
