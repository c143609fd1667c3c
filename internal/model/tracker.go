package model

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"canopy.io/canopy/internal/controller"
)

// ReasonInvalidService is the Event reason for a Service whose settings are partly refused.
const ReasonInvalidService = "InvalidServiceProxyConfig"

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
	adm      Admission
	services corelisters.ServiceLister
	nodes    corelisters.NodeLister
	ctrl     *controller.Controller
	warn     Warner
	log      *slog.Logger

	mu     sync.RWMutex
	ports  map[string][]*ServicePort // by service key
	warned map[string]string         // service key -> last reported warnings
	subs   []func(keys []string)

	// The EndpointSlices by Service key, as their informer's handler saw them (a Service's slices are found
	// without scanning its namespace, and without an index: a map and a set per Service).
	smu      sync.Mutex
	slicesOf map[string][]*Slice

	// only the sync goroutine uses these
	book      *addressBook
	addressed map[string]bool // Services with ExternalIPs or LoadBalancer IPs (re-checked when the cluster's addresses change)
}

// kubernetesSlices is the key of the API server's own Service, whose endpoints are the control plane's addresses.
const kubernetesService = "default/kubernetes"

// addressesKey in the queue means "the nodes' or the API server's addresses changed".
const addressesKey = "\x00addresses"

// NewServiceTracker registers its handlers on factory (call it before the factory starts). adm decides which
// ExternalIPs and LoadBalancer IPs are admitted; warn (may be nil) reports what is refused.
func NewServiceTracker(factory informers.SharedInformerFactory, opts Options, adm Admission, warn Warner, log *slog.Logger) *ServiceTracker {
	si, ei, ni := factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices(), factory.Core().V1().Nodes()
	t := &ServiceTracker{opts: opts, adm: adm, services: si.Lister(), nodes: ni.Lister(),
		warn: warn, log: log, ports: map[string][]*ServicePort{}, warned: map[string]string{}, slicesOf: map[string][]*Slice{},
		book: newAddressBook(), addressed: map[string]bool{}}
	var sliceReg cache.ResourceEventHandlerRegistration
	slicesSynced := func() bool { // the slices' handler has seen every slice of the first list
		return sliceReg != nil && sliceReg.HasSynced()
	}
	t.ctrl = controller.New(controller.Config{
		Name:   "service-model",
		Synced: []cache.InformerSynced{si.Informer().HasSynced, slicesSynced, ni.Informer().HasSynced},
		Full:   t.full, Sync: t.sync, Log: log,
	})
	sliceReg, _ = ei.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.sliceChanged(nil, sliceOf(obj)) },
		UpdateFunc: func(o, n any) { t.sliceChanged(sliceOf(o), sliceOf(n)) },
		DeleteFunc: func(obj any) { t.sliceChanged(sliceOf(obj), nil) },
	})
	_, _ = ni.Informer().AddEventHandler(NodeHandler(nil, func(*corev1.Node, bool) { t.ctrl.Enqueue(addressesKey) }))
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
	return t
}

// sliceChanged records that the EndpointSlice old became cur (old nil: added; cur nil: deleted) and enqueues
// the Services concerned.
func (t *ServiceTracker) sliceChanged(old, cur *Slice) {
	var keys []string
	t.smu.Lock()
	if old != nil {
		if k := old.ServiceKey(); k != "" {
			keys = append(keys, k)
			l := slices.DeleteFunc(t.slicesOf[k], func(s *Slice) bool { return s.Name == old.Name })
			if len(l) == 0 {
				delete(t.slicesOf, k)
			} else {
				t.slicesOf[k] = l
			}
		}
	}
	if cur != nil {
		if k := cur.ServiceKey(); k != "" {
			keys = append(keys, k)
			l := slices.DeleteFunc(t.slicesOf[k], func(s *Slice) bool { return s.Name == cur.Name })
			t.slicesOf[k] = append(l, cur)
		}
	}
	t.smu.Unlock()
	for _, k := range keys {
		t.ctrl.Enqueue(k)
		if k == kubernetesService {
			t.ctrl.Enqueue(addressesKey)
		}
	}
}

// slicesFor returns the EndpointSlices of the Service key (shared, read-only).
func (t *ServiceTracker) slicesFor(key string) []*Slice {
	t.smu.Lock()
	defer t.smu.Unlock()
	return slices.Clone(t.slicesOf[key])
}

// Subscribe makes f receive the keys of the Services whose ports changed (also deleted ones), after Ports
// returns their new value, from the end of the first computation of every Service on (HasSynced: f's
// controller waits for it, then reads every key). Call it before Run; f must not block (a controller's Enqueue).
func (t *ServiceTracker) Subscribe(f func(keys []string)) { t.subs = append(t.subs, f) }

// Run follows the informers until ctx ends.
func (t *ServiceTracker) Run(ctx context.Context) { t.ctrl.Run(ctx) }

// IPv6 reports whether the tracker builds the IPv6 side of Services (Options.IPv6: the proxy serves IPv6).
func (t *ServiceTracker) IPv6() bool { return t.opts.IPv6 }

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
	t.updateAddresses()
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
	keys = slices.Clone(keys) // the caller's batch stays as it is
	if slices.Contains(keys, addressesKey) {
		keys = slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return k == addressesKey })
		if t.updateAddresses() {
			for k := range t.addressed {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			keys = slices.Compact(keys)
		}
	}
	var changed []string
	pending := make(map[string]bool, len(keys))
	for _, k := range keys {
		pending[k] = true
	}
	for i := 0; i < len(keys); i++ {
		key := keys[i]
		delete(pending, key)
		ports, affected := t.build(key)
		for _, a := range affected { // another Service's claim on an address changed with this one: re-admit it
			if !pending[a] {
				pending[a] = true
				keys = append(keys, a)
			}
		}
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
	// Not during the first computation of every Service: the subscribers wait for HasSynced and then read every
	// key (Keys). Sent then, 10,000 keys went to each subscriber's queue (whose maps keep their size) only for
	// it to sync them all again after its first full sync.
	if len(changed) > 0 && t.ctrl.Ready() {
		for _, f := range t.subs {
			f(changed)
		}
	}
	t.log.Debug("services computed", "services", len(keys), "changed", len(changed), "took", time.Since(start))
	return nil
}

// updateAddresses re-reads the nodes' and the API server's addresses; it reports whether they changed.
func (t *ServiceTracker) updateAddresses() bool {
	nodes := map[netip.Addr]string{}
	if all, err := t.nodes.List(labels.Everything()); err == nil {
		for _, n := range all {
			for _, a := range NodeAddresses(n) {
				nodes[a] = n.Name
			}
		}
	}
	cp := map[netip.Addr]bool{}
	for _, s := range t.slicesFor(kubernetesService) {
		for _, e := range s.Endpoints {
			if e.IP.IsValid() {
				cp[e.IP] = true
			}
		}
	}
	if maps.Equal(nodes, t.book.nodes) && maps.Equal(cp, t.book.controlPlane) {
		return false
	}
	t.book.nodes, t.book.controlPlane = nodes, cp
	return true
}

// build computes one Service's ports, admits its addresses, and reports its warnings once per distinct text. It
// returns the other Services whose claim on an ExternalIP is affected by this one's change.
func (t *ServiceTracker) build(key string) (ports []*ServicePort, affected []string) {
	ns, name, _ := strings.Cut(key, "/")
	svc, err := t.services.Services(ns).Get(name)
	if err != nil {
		delete(t.warned, key)
		delete(t.addressed, key)
		return nil, t.book.setClaims(key, time.Time{}, nil)
	}
	ports, warns := buildServicePorts(svc, t.slicesFor(key), t.opts)
	var refused []string
	if len(ports) > 0 {
		p := ports[0]
		ext := p.ExternalIPs
		n := len(p.ExternalIPs) + len(p.LoadBalancerIPs)
		if f := p.IPv6; f != nil {
			ext = append(slices.Clone(ext), f.ExternalIPs...)
			n += len(f.ExternalIPs) + len(f.LoadBalancerIPs)
		}
		if n > 0 {
			t.addressed[key] = true
		} else {
			delete(t.addressed, key)
		}
		affected = t.book.setClaims(key, svc.CreationTimestamp.Time, t.adm.inRangeExternalIPs(ext))
		refused = t.adm.admit(t.book, key, ports)
	} else {
		delete(t.addressed, key)
		affected = t.book.setClaims(key, time.Time{}, nil)
	}
	if text := strings.Join(append(slices.Clone(warns), refused...), "; "); text != t.warned[key] {
		t.warned[key] = text
		if t.warn != nil {
			for _, w := range warns {
				t.warn.Warn(svc, ReasonInvalidService, w)
			}
			for _, w := range refused {
				t.warn.Warn(svc, ReasonExternalIPRefused, w)
			}
		}
	}
	return ports, affected
}
