package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"canopy.io/canopy/bgp/services"
	"canopy.io/canopy/internal/controller"
	"canopy.io/canopy/internal/model"
)

// ReasonVIPNotAdvertised is the Event reason for a Service address Canopy will not announce.
const ReasonVIPNotAdvertised = "ServiceVIPNotAdvertised"

// VIPController announces Service VIPs (ClusterIP, ExternalIPs, LoadBalancer IPs) from this node: it reads the
// Services' ports from the shared Service model (externalTrafficPolicy Local: only with a local endpoint) and this
// Node's community/prepend annotations, and sets the manager's VIP group. Only the Services the model names are
// rebuilt.
type VIPController struct {
	mgr      *Manager
	tracker  *model.ServiceTracker
	base     services.Options // from the flags
	opts     services.Options // base, the BGPConfiguration's settings and this node's annotations
	nodeName string
	svcs     corelisters.ServiceLister
	nodes    corelisters.NodeLister
	warn     model.Warner
	recorder record.EventRecorder
	log      *slog.Logger
	ctrl     *controller.Controller

	// only the sync goroutine uses these
	perSvc   map[string][]services.Advertisement
	warnings map[string]string
	nodeOpts string          // last settings applied (cluster generation|communities|prepend)
	skipped  []AddressFamily // families whose VIPs were last left out: the node has no address of them

	mu         sync.Mutex
	cluster    ClusterVIPSettings
	clusterGen int
}

// ClusterVIPSettings is what the cluster's BGPConfiguration says about Service VIPs; a nil field keeps the flag.
type ClusterVIPSettings struct {
	AdvertiseClusterIP, AdvertiseExternalIP, AdvertiseLoadBalancerIP, AdvertiseServiceCIDR *bool
	// Communities go on every VIP of every node (with the Node's own canopy.io/communities).
	Communities services.Communities
	// AllowedCommunities replaces --service-communities-allowed.
	AllowedCommunities *services.Communities
}

// AddSynced makes the first sync wait for f too (the canopy.io objects). Call before Run.
func (c *VIPController) AddSynced(f cache.InformerSynced) { c.ctrl.AddSynced(f) }

// SetCluster applies the BGPConfiguration's VIP settings (every Service is rebuilt).
func (c *VIPController) SetCluster(s ClusterVIPSettings) {
	c.mu.Lock()
	c.cluster = s
	c.clusterGen++
	c.mu.Unlock()
	c.ctrl.Enqueue(nodeKey)
}

// nodeKey is the queue key that means "this node's annotations changed: rebuild every Service".
const nodeKey = "\x00node"

// NewVIPController subscribes to the tracker and registers a Node handler on factory. warn reports the
// Services' problems (one node records the Events); recorder records problems of this Node's annotations.
func NewVIPController(nodeName string, opts services.Options, factory informers.SharedInformerFactory, tracker *model.ServiceTracker, mgr *Manager, warn model.Warner, recorder record.EventRecorder, log *slog.Logger) *VIPController {
	si, ni := factory.Core().V1().Services(), factory.Core().V1().Nodes()
	c := &VIPController{
		mgr: mgr, tracker: tracker, base: opts, opts: opts, nodeName: nodeName, svcs: si.Lister(), nodes: ni.Lister(),
		warn: warn, recorder: recorder, log: log, perSvc: map[string][]services.Advertisement{}, warnings: map[string]string{},
	}
	c.ctrl = controller.New(controller.Config{Name: "vips",
		Synced: []cache.InformerSynced{tracker.HasSynced, si.Informer().HasSynced, ni.Informer().HasSynced},
		Full:   c.full, Sync: c.sync, Log: log})
	tracker.Subscribe(func(keys []string) { c.ctrl.Enqueue(keys...) })
	_, _ = ni.Informer().AddEventHandler(model.NodeHandler(model.NamedNode(nodeName), func(*corev1.Node, bool) { c.ctrl.Enqueue(nodeKey) }))
	return c
}

// Run follows changes until ctx ends.
func (c *VIPController) Run(ctx context.Context) { c.ctrl.Run(ctx) }

// Controller is the VIP controller's loop (for health and readiness).
func (c *VIPController) Controller() *controller.Controller { return c.ctrl }

func (c *VIPController) full(ctx context.Context) error { return c.sync(ctx, []string{nodeKey}) }

func (c *VIPController) sync(_ context.Context, keys []string) error {
	if slices.Contains(keys, nodeKey) {
		c.applyNode()
		all := c.tracker.Keys()
		keys = make([]string, 0, len(all)+len(c.perSvc)) // a new slice: the caller's batch stays as it is
		keys = append(keys, all...)
		for k := range c.perSvc {
			keys = append(keys, k)
		}
	}
	for _, key := range keys {
		c.build(key)
	}
	self, err := c.nodes.Get(c.nodeName)
	if err != nil {
		return nil // no Node: the node controller withdraws everything
	}
	// Each VIP goes out with this node's address of its family as next hop, as the pod CIDRs do (nodeAddrs,
	// nextHopFor): an IPv6 VIP with the node's IPv6 InternalIP, over the same (IPv4) sessions.
	ip, ip6 := nodeAddrs(self)
	all := make([][]services.Advertisement, 0, len(c.perSvc)+1)
	for _, ads := range c.perSvc {
		all = append(all, ads)
	}
	if c.opts.AdvertiseServiceCIDR {
		aggs := services.ServiceCIDRAdvertisements(c.opts)
		if !c.tracker.IPv6() {
			// The proxy serves no IPv6 (IPVS, or an IPv4 pod network): an IPv6 service CIDR would draw traffic
			// nothing here answers.
			aggs = slices.DeleteFunc(aggs, func(a services.Advertisement) bool { return familyOf(a.Prefix.Addr()) == IPv6Unicast })
		}
		all = append(all, aggs)
	}
	desired := map[netip.Prefix]Path{}
	var skipped []AddressFamily
	for _, a := range services.Merge(all) {
		nh := nextHopFor(a.Prefix, ip, ip6)
		if !nh.IsValid() {
			if f := familyOf(a.Prefix.Addr()); !slices.Contains(skipped, f) {
				skipped = append(skipped, f)
			}
			continue
		}
		desired[a.Prefix] = Path{Prefix: a.Prefix, NextHop: nh, VIP: true, Communities: a.Communities.Standard, Large: a.Communities.Large, Prepend: a.Prepend}
	}
	if !slices.Equal(skipped, c.skipped) {
		c.skipped = skipped
		for _, f := range skipped {
			c.log.Debug("not announcing this family's Service VIPs: the node has no address of it", "node", self.Name, "family", f.String())
		}
	}
	c.mgr.SetPaths(GroupVIPs, desired)
	return nil
}

// applyNode computes the options: the flags', then the BGPConfiguration's settings, then this node's community
// and prepend annotations.
func (c *VIPController) applyNode() {
	self, err := c.nodes.Get(c.nodeName)
	if err != nil {
		return
	}
	c.mu.Lock()
	cs, gen := c.cluster, c.clusterGen
	c.mu.Unlock()
	cv, pv := self.Annotations[services.AnnotationCommunities], self.Annotations[services.AnnotationASPathPrepend]
	key := strconv.Itoa(gen) + "|" + cv + "|" + pv
	if key == c.nodeOpts {
		return
	}
	c.nodeOpts = key
	opts := c.base
	for _, o := range []struct {
		v   *bool
		dst *bool
	}{{cs.AdvertiseClusterIP, &opts.AdvertiseClusterIP}, {cs.AdvertiseExternalIP, &opts.AdvertiseExternalIP},
		{cs.AdvertiseLoadBalancerIP, &opts.AdvertiseLoadBalancerIP}, {cs.AdvertiseServiceCIDR, &opts.AdvertiseServiceCIDR}} {
		if o.v != nil {
			*o.dst = *o.v
		}
	}
	if cs.AllowedCommunities != nil {
		opts.AllowedCommunities = *cs.AllowedCommunities
	}
	opts.NodeCommunities, opts.NodePrepend = cs.Communities, 0
	if comm, err := services.ParseCommunities(cv); err != nil {
		c.event(self, "node %s: %s: %v (ignored)", self.Name, services.AnnotationCommunities, err)
	} else {
		opts.NodeCommunities = services.Union(cs.Communities, comm)
	}
	if pv != "" {
		if p, err := services.ParsePrepend(pv); err != nil {
			c.event(self, "node %s: %s: %v (ignored)", self.Name, services.AnnotationASPathPrepend, err)
		} else {
			opts.NodePrepend = p
		}
	}
	c.opts = opts
}

func (c *VIPController) event(obj *corev1.Node, format string, a ...any) {
	CountInvalidInput("node_annotation")
	msg := fmt.Sprintf(format, a...)
	c.log.Warn(msg)
	if c.recorder != nil {
		c.recorder.Event(obj, corev1.EventTypeWarning, ReasonInvalidAnnotation, msg)
	}
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
	ads, warns := services.Build(svc, c.tracker.Ports(key), c.opts)
	if len(ads) == 0 {
		delete(c.perSvc, key)
	} else {
		c.perSvc[key] = ads
	}
	if text := strings.Join(warns, "; "); text != c.warnings[key] {
		c.warnings[key] = text
		for _, w := range warns {
			CountInvalidInput("service")
			if c.warn != nil {
				c.warn.Warn(svc, ReasonVIPNotAdvertised, w)
			}
		}
	}
}
