package model

import (
	"context"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"canopy.io/canopy/internal/controller"
)

// ReasonInvalidService is the Event reason for a Service whose settings are partly refused.
const ReasonInvalidService = "InvalidServiceProxyConfig"

// sliceIndex indexes EndpointSlices by the "namespace/name" of their Service, so a Service's slices are found
// without scanning its namespace.
const sliceIndex = "canopy-service"

// Warner tells users about a problem with one of their objects (a Kubernetes Event, a log line, a metric).
type Warner interface {
	Warn(obj *corev1.Service, reason, msg string)
}

// ServiceTracker computes every Service's ServicePorts once per change, from the Service and its
// EndpointSlices, reports the problems it finds once per distinct text, and hands the keys ("namespace/name")
// of the Services whose ports changed to its subscribers (the service proxy, the VIP announcer): they read the
// ports with Ports and never list Services or EndpointSlices themselves.
type ServiceTracker struct {
	opts     Options
	services corelisters.ServiceLister
	slices   cache.Indexer
	ctrl     *controller.Controller
	warn     Warner
	log      *slog.Logger

	mu     sync.RWMutex
	ports  map[string][]*ServicePort // by service key
	warned map[string]string         // service key -> last reported warnings
	subs   []func(keys []string)
}

// NewServiceTracker registers its handlers on factory (call it before the factory starts). warn may be nil.
func NewServiceTracker(factory informers.SharedInformerFactory, opts Options, warn Warner, log *slog.Logger) *ServiceTracker {
	si, ei := factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices()
	_ = ei.Informer().AddIndexers(cache.Indexers{sliceIndex: func(obj any) ([]string, error) {
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok || s.Labels[discoveryv1.LabelServiceName] == "" {
			return nil, nil
		}
		return []string{s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName]}, nil
	}})
	t := &ServiceTracker{opts: opts, services: si.Lister(), slices: ei.Informer().GetIndexer(), warn: warn, log: log,
		ports: map[string][]*ServicePort{}, warned: map[string]string{}}
	t.ctrl = controller.New(controller.Config{
		Name: "service-model", Synced: []cache.InformerSynced{si.Informer().HasSynced, ei.Informer().HasSynced},
		Full: t.full, Sync: t.sync, Log: log,
	})
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			t.ctrl.Enqueue(key)
		}
	}
	_, _ = si.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, DeleteFunc: enqueue,
		UpdateFunc: func(o, n any) {
			// Status heartbeats of other controllers (resourceVersion only) change nothing here.
			if a, b := o.(*corev1.Service), n.(*corev1.Service); !reflect.DeepEqual(a.Spec, b.Spec) ||
				!reflect.DeepEqual(a.Status, b.Status) || !reflect.DeepEqual(a.Annotations, b.Annotations) {
				enqueue(n)
			}
		}})
	slice := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok && s.Labels[discoveryv1.LabelServiceName] != "" {
			t.ctrl.Enqueue(s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName])
		}
	}
	_, _ = ei.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: slice, DeleteFunc: slice,
		UpdateFunc: func(_, n any) { slice(n) }})
	return t
}

// Subscribe makes f receive the keys of the Services whose ports changed (also deleted ones), after Ports
// returns their new value. Call it before Run; f must not block (a controller's Enqueue).
func (t *ServiceTracker) Subscribe(f func(keys []string)) { t.subs = append(t.subs, f) }

// Run follows the informers until ctx ends.
func (t *ServiceTracker) Run(ctx context.Context) { t.ctrl.Run(ctx) }

// HasSynced reports whether every Service has been computed once (subscribers wait for it).
func (t *ServiceTracker) HasSynced() bool { return t.ctrl.Ready() }

// Controller is the tracker's loop (for health and readiness).
func (t *ServiceTracker) Controller() *controller.Controller { return t.ctrl }

// Ports returns the ports of the Service key (nil if it has none). The values are shared and read-only.
func (t *ServiceTracker) Ports(key string) []*ServicePort {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.ports[key]
}

// Keys returns the keys of every Service that has ports.
func (t *ServiceTracker) Keys() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	keys := make([]string, 0, len(t.ports))
	for k := range t.ports {
		keys = append(keys, k)
	}
	return keys
}

func (t *ServiceTracker) full(ctx context.Context) error {
	svcs, err := t.services.List(labels.Everything())
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(svcs))
	for _, s := range svcs {
		keys = append(keys, s.Namespace+"/"+s.Name)
	}
	t.mu.RLock()
	for k := range t.ports {
		keys = append(keys, k) // deleted meanwhile
	}
	t.mu.RUnlock()
	slices.Sort(keys)
	return t.sync(ctx, slices.Compact(keys))
}

func (t *ServiceTracker) sync(_ context.Context, keys []string) error {
	start := time.Now()
	var changed []string
	for _, key := range keys {
		ports := t.build(key)
		t.mu.Lock()
		old, had := t.ports[key]
		if len(ports) == 0 {
			delete(t.ports, key)
		} else {
			t.ports[key] = ports
		}
		t.mu.Unlock()
		if had != (len(ports) > 0) || !reflect.DeepEqual(old, ports) {
			changed = append(changed, key)
		}
	}
	if len(changed) > 0 {
		for _, f := range t.subs {
			f(changed)
		}
	}
	t.log.Debug("services computed", "services", len(keys), "changed", len(changed), "took", time.Since(start))
	return nil
}

// build computes one Service's ports and reports its warnings once per distinct text.
func (t *ServiceTracker) build(key string) []*ServicePort {
	ns, name, _ := strings.Cut(key, "/")
	svc, err := t.services.Services(ns).Get(name)
	if err != nil {
		delete(t.warned, key)
		return nil
	}
	objs, _ := t.slices.ByIndex(sliceIndex, key)
	sl := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			sl = append(sl, s)
		}
	}
	ports, warns := BuildServicePorts(svc, sl, t.opts)
	if text := strings.Join(warns, "; "); text != t.warned[key] {
		t.warned[key] = text
		for _, w := range warns {
			if t.warn != nil {
				t.warn.Warn(svc, ReasonInvalidService, w)
			}
		}
	}
	return ports
}
