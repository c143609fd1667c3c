package proxy

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"canopy.io/canopy/internal/batchq"
	"canopy.io/canopy/internal/model"
)

// ReasonInvalidService is the Event reason for a Service whose proxy settings are partly refused.
const ReasonInvalidService = "InvalidServiceProxyConfig"

var (
	syncDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "canopy_proxy_sync_duration_seconds", Help: "Time to program a batch of changed service ports.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"backend"})
	syncErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_proxy_sync_errors_total", Help: "Back end syncs that failed (retried).",
	}, []string{"backend"})
	servicePorts = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_proxy_service_ports", Help: "Service ports the proxy programs.",
	})
	proxyWarnings = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "canopy_proxy_invalid_input_total", Help: "Service settings refused (reported as Events).",
	})
)

// Collectors returns the package's metrics.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{syncDuration, syncErrors, servicePorts, proxyWarnings}
}

// Controller turns Service and EndpointSlice events into back end syncs. Events enqueue the Service's key;
// the worker rebuilds only the queued Services and hands the back end only their port keys, so adding one
// Service to 10,000 touches one Service.
type Controller struct {
	backend  Backend
	opts     model.Options
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	synced   []cache.InformerSynced
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
	log      *slog.Logger
	resync   time.Duration

	mu       sync.Mutex
	desired  map[string]*model.ServicePort // by port key
	bySvc    map[string][]string           // service key -> its port keys
	warnings map[string]string             // service key -> last reported warning text

	health   *HealthChecks // nil = none
	onSynced func()        // called once after the first full sync
}

// OnInitialSync sets f to run once, after every Service has been programmed the first time (a back end's
// pruning of what a previous run left is safe only then). Call it before Run.
func (c *Controller) OnInitialSync(f func()) { c.onSynced = f }

// SetHealthChecks makes the controller keep h's servers in line with the Local LoadBalancer services.
// Call it before Run.
func (c *Controller) SetHealthChecks(h *HealthChecks) { c.health = h }

// NewController registers Service and EndpointSlice handlers on factory. resync > 0 re-applies every port
// that often (the back end repairs drift without rewriting what is right).
func NewController(factory informers.SharedInformerFactory, backend Backend, opts model.Options, recorder record.EventRecorder, resync time.Duration, log *slog.Logger) *Controller {
	svcInf := factory.Core().V1().Services()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	c := &Controller{
		backend: backend, opts: opts, services: svcInf.Lister(), slices: sliceInf.Lister(),
		synced: []cache.InformerSynced{svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "services"}),
		recorder: recorder, log: log, resync: resync,
		desired: map[string]*model.ServicePort{}, bySvc: map[string][]string{}, warnings: map[string]string{},
	}
	_, _ = svcInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueObj,
		UpdateFunc: func(_, n any) { c.enqueueObj(n) },
		DeleteFunc: c.enqueueObj,
	})
	_, _ = sliceInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueSlice,
		UpdateFunc: func(_, n any) { c.enqueueSlice(n) },
		DeleteFunc: c.enqueueSlice,
	})
	return c
}

func (c *Controller) enqueueObj(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		c.queue.Add(key)
	}
}

func (c *Controller) enqueueSlice(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	if svc := s.Labels[discoveryv1.LabelServiceName]; svc != "" {
		c.queue.Add(s.Namespace + "/" + svc)
	}
}

// Run programs every Service once, then follows changes until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	svcs, err := c.services.List(labels.Everything())
	if err != nil {
		c.log.Error("list services", "err", err)
	}
	var keys []string
	for _, s := range svcs {
		keys = append(keys, s.Namespace+"/"+s.Name)
	}
	if err := c.syncServicesForce(keys, true); err != nil {
		for _, k := range keys {
			c.queue.AddRateLimited(k)
		}
	} else if c.onSynced != nil {
		c.onSynced()
	}
	if c.resync > 0 {
		go c.resyncLoop(ctx)
	}
	batchq.Run(c.queue, 1000, c.syncServices)
}

// syncServices rebuilds the given Services and syncs the back end for their old and new port keys.
func (c *Controller) syncServices(keys []string) error { return c.syncServicesForce(keys, false) }

// syncServicesForce is syncServices; with force the back end is called even when no port changed (the first
// sync, which lets it remove what a previous run left, also on a node with no service at all).
func (c *Controller) syncServicesForce(keys []string, force bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var changed []string
	for _, key := range keys {
		old := c.bySvc[key]
		for _, k := range old {
			delete(c.desired, k)
		}
		changed = append(changed, old...)
		ports := c.build(key)
		var now []string
		for _, p := range ports {
			c.desired[p.Key] = p
			now = append(now, p.Key)
		}
		changed = append(changed, now...)
		if len(now) == 0 {
			delete(c.bySvc, key)
		} else {
			c.bySvc[key] = now
		}
	}
	slices.Sort(changed)
	changed = slices.Compact(changed)
	servicePorts.Set(float64(len(c.desired)))
	if len(changed) == 0 && !force {
		return nil
	}
	t0 := time.Now()
	err := c.backend.Sync(c.desired, changed)
	syncDuration.WithLabelValues(c.backend.Name()).Observe(time.Since(t0).Seconds())
	if err != nil {
		syncErrors.WithLabelValues(c.backend.Name()).Inc()
		c.log.Error("service proxy sync failed; retrying", "backend", c.backend.Name(), "ports", len(changed), "err", err)
		return err
	}
	c.log.Debug("service proxy synced", "backend", c.backend.Name(), "ports", len(changed), "took", time.Since(t0))
	if c.health != nil && c.health.relevant(c.desired, changed) {
		c.health.Sync(c.desired)
	}
	return nil
}

// build computes a Service's ports from the listers and reports its warnings once per distinct text.
func (c *Controller) build(key string) []*model.ServicePort {
	ns, name, _ := strings.Cut(key, "/")
	svc, err := c.services.Services(ns).Get(name)
	if err != nil {
		delete(c.warnings, key)
		return nil
	}
	sl, err := c.slices.EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}))
	if err != nil {
		c.log.Error("list endpoint slices", "service", key, "err", err)
	}
	ports, warns := model.BuildServicePorts(svc, sl, c.opts)
	text := strings.Join(warns, "; ")
	if text != c.warnings[key] {
		c.warnings[key] = text
		for _, w := range warns {
			proxyWarnings.Inc()
			c.log.Warn(w, "service", key)
			if c.recorder != nil {
				c.recorder.Event(svc, corev1.EventTypeWarning, ReasonInvalidService, w)
			}
		}
	}
	return ports
}

func (c *Controller) resyncLoop(ctx context.Context) {
	t := time.NewTicker(c.resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.mu.Lock()
			keys := make([]string, 0, len(c.desired))
			for k := range c.desired {
				keys = append(keys, k)
			}
			err := c.backend.Sync(c.desired, keys)
			c.mu.Unlock()
			if err != nil {
				syncErrors.WithLabelValues(c.backend.Name()).Inc()
				c.log.Error("service proxy resync", "err", err)
			}
		}
	}
}
