package model

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
)

var invalidServices = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "canopy_service_invalid_input_total", Help: "Service settings refused (reported as Warning Events), by reason.",
}, []string{"reason"})

// Collectors returns the package's metrics.
func Collectors() []prometheus.Collector { return []prometheus.Collector{invalidServices} }

// ServiceEvents is the Warner of the Service consumers: every warning is logged and counted on every node, and
// recorded as a Warning Event on the Service by one node only (the one with the smallest name), since every
// node computes the same warnings from the same objects and a 5,000-node cluster must not send 5,000 copies.
type ServiceEvents struct {
	Recorder record.EventRecorder // nil: no Events
	Nodes    corelisters.NodeLister
	Self     string
	Log      *slog.Logger
}

// Warn implements Warner.
func (e *ServiceEvents) Warn(svc *corev1.Service, reason, msg string) {
	invalidServices.WithLabelValues(reason).Inc()
	if e.Log != nil {
		e.Log.Warn(msg, "service", svc.Namespace+"/"+svc.Name, "reason", reason)
	}
	if e.Recorder != nil && e.Reporter() {
		e.Recorder.Event(svc, corev1.EventTypeWarning, reason, msg)
	}
}

// Reporter says whether this node is the one that records Service Events.
func (e *ServiceEvents) Reporter() bool {
	if e.Nodes == nil {
		return true
	}
	nodes, err := e.Nodes.List(labels.Everything())
	if err != nil {
		return true
	}
	for _, n := range nodes {
		if n.Name < e.Self {
			return false
		}
	}
	return true
}
