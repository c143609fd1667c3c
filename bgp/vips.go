package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"canopy.io/canopy/bgp/services"
	"canopy.io/canopy/internal/batchq"
	"canopy.io/canopy/internal/model"
)

// ReasonVIPNotAdvertised is the Event reason for a Service address Canopy will not announce.
const ReasonVIPNotAdvertised = "ServiceVIPNotAdvertised"

// VIPController announces Service VIPs (ClusterIP, ExternalIPs, LoadBalancer IPs) from this node, following
// Services, EndpointSlices (externalTrafficPolicy Local: only with a local endpoint) and this Node's
// community/prepend annotations. Only the Services an event names are rebuilt.
type VIPController struct {
	speaker  SpeakerControl
	opts     services.Options
	nodeName string
	svcs     corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	nodes    corelisters.NodeLister
	synced   []cache.InformerSynced
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
	log      *slog.Logger

	mu       sync.Mutex
	perSvc   map[string][]services.Advertisement
	warnings map[string]string
	nodeOpts string // last node annotations applied (communities|prepend)
}

// nodeKey is the queue key that means "this node's annotations changed: rebuild every Service".
const nodeKey = "\x00node"

// NewVIPController registers its handlers on factory.
func NewVIPController(nodeName string, opts services.Options, factory informers.SharedInformerFactory, speaker SpeakerControl, recorder record.EventRecorder, log *slog.Logger) *VIPController {
	si, ei, ni := factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices(), factory.Core().V1().Nodes()
	c := &VIPController{
		speaker: speaker, opts: opts, nodeName: nodeName, svcs: si.Lister(), slices: ei.Lister(), nodes: ni.Lister(),
		synced: []cache.InformerSynced{si.Informer().HasSynced, ei.Informer().HasSynced, ni.Informer().HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "vips"}),
		recorder: recorder, log: log, perSvc: map[string][]services.Advertisement{}, warnings: map[string]string{},
	}
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	_, _ = si.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, n any) { enqueue(n) }, DeleteFunc: enqueue})
	slice := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok && s.Labels[discoveryv1.LabelServiceName] != "" {
			c.queue.Add(s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName])
		}
	}
	_, _ = ei.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: slice, UpdateFunc: func(_, n any) { slice(n) }, DeleteFunc: slice})
	node := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok && n.Name == nodeName {
			c.queue.Add(nodeKey)
		}
	}
	_, _ = ni.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: node, UpdateFunc: func(_, n any) { node(n) }})
	return c
}

// Run follows changes until ctx ends.
func (c *VIPController) Run(ctx context.Context) {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	c.queue.Add(nodeKey)
	batchq.Run(c.queue, 1000, func(keys []string) error { return c.sync(ctx, keys) })
}

func (c *VIPController) sync(ctx context.Context, keys []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.Contains(keys, nodeKey) {
		c.applyNode()
		all, _ := c.svcs.List(labels.Everything())
		keys = make([]string, 0, len(all)+len(c.perSvc)) // a new slice: the caller's batch stays as it is
		for _, s := range all {
			keys = append(keys, s.Namespace+"/"+s.Name)
		}
		for k := range c.perSvc {
			keys = append(keys, k)
		}
	}
	for _, key := range keys {
		c.build(key)
	}
	rec := c.speaker.Reconciler()
	if rec == nil {
		return nil // no speaker yet: the node controller starts it; the next event retries
	}
	self, err := c.nodes.Get(c.nodeName)
	if err != nil {
		return nil
	}
	nh := model.NodeIP(self)
	var all [][]services.Advertisement
	for _, ads := range c.perSvc {
		all = append(all, ads)
	}
	if c.opts.AdvertiseServiceCIDR {
		all = append(all, services.ServiceCIDRAdvertisements(c.opts))
	}
	desired := map[netip.Prefix]Path{}
	for _, a := range services.Merge(all) {
		if !nh.IsValid() || a.Prefix.Addr().Is4() != nh.Is4() {
			continue
		}
		desired[a.Prefix] = Path{Prefix: a.Prefix, NextHop: nh, VIP: true, Communities: a.Communities.Standard, Large: a.Communities.Large, Prepend: a.Prepend}
	}
	return rec.SetPaths(ctx, GroupVIPs, desired)
}

// applyNode reads this node's community and prepend annotations into the options.
func (c *VIPController) applyNode() {
	self, err := c.nodes.Get(c.nodeName)
	if err != nil {
		return
	}
	cv, pv := self.Annotations[services.AnnotationCommunities], self.Annotations[services.AnnotationASPathPrepend]
	if cv+"|"+pv == c.nodeOpts {
		return
	}
	c.nodeOpts = cv + "|" + pv
	c.opts.NodeCommunities, c.opts.NodePrepend = services.Communities{}, 0
	if comm, err := services.ParseCommunities(cv); err != nil {
		c.event(self, "node %s: %s: %v (ignored)", self.Name, services.AnnotationCommunities, err)
	} else {
		c.opts.NodeCommunities = comm
	}
	if pv != "" {
		if p, err := services.ParsePrepend(pv); err != nil {
			c.event(self, "node %s: %s: %v (ignored)", self.Name, services.AnnotationASPathPrepend, err)
		} else {
			c.opts.NodePrepend = p
		}
	}
}

func (c *VIPController) event(obj *corev1.Node, format string, a ...any) {
	CountInvalidInput("node_annotation")
	msg := sprintf(format, a...)
	c.log.Warn(msg)
	if c.recorder != nil {
		c.recorder.Event(obj, corev1.EventTypeWarning, ReasonInvalidAnnotation, msg)
	}
}

// reporter says whether this node is the one that records Service events: the node with the smallest name,
// so a 5,000-node cluster does not send 5,000 copies of each Event.
func (c *VIPController) reporter() bool {
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return true
	}
	for _, n := range nodes {
		if n.Name < c.nodeName {
			return false
		}
	}
	return true
}

// build recomputes one Service's advertisements and reports its warnings once per distinct text.
func (c *VIPController) build(key string) {
	ns, name, _ := strings.Cut(key, "/")
	svc, err := c.svcs.Services(ns).Get(name)
	if err != nil {
		delete(c.perSvc, key)
		delete(c.warnings, key)
		return
	}
	sl, _ := c.slices.EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}))
	ports, _ := model.BuildServicePorts(svc, sl, model.Options{NodeName: c.nodeName})
	ads, warns := services.Build(svc, ports, c.opts)
	if len(ads) == 0 {
		delete(c.perSvc, key)
	} else {
		c.perSvc[key] = ads
	}
	text := strings.Join(warns, "; ")
	if text != c.warnings[key] {
		c.warnings[key] = text
		if !c.reporter() {
			return // every node computes the same warnings; one of them tells the user
		}
		for _, w := range warns {
			CountInvalidInput("service")
			c.log.Warn(w, "service", key)
			if c.recorder != nil {
				c.recorder.Event(svc, corev1.EventTypeWarning, ReasonVIPNotAdvertised, w)
			}
		}
	}
}
func sprintf(f string, a ...any) string { return fmt.Sprintf(f, a...) }
