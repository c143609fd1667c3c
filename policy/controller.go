package policy

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	netlisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"

	"canopy.io/canopy/internal/controller"
	"canopy.io/canopy/internal/model"
)

// Syncer is what the controller programs through (a *Firewall, or a fake).
type Syncer interface {
	Start(Options) error
	Sync(*State) (Stats, error)
}

// Controller follows NetworkPolicies, Pods, Namespaces and this Node, and programs the node's firewall.
// Every relevant change queues one key; a sync computes the whole desired State (pure and cheap next to the
// kernel) and the Firewall writes only the difference.
type Controller struct {
	fw       Syncer
	nodeName string
	opts     Options
	log      *slog.Logger

	podInf   cache.SharedIndexInformer
	pods     cache.Store // of *PodInfo
	nss      corelisters.NamespaceLister
	pols     netlisters.NetworkPolicyLister
	nodes    corelisters.NodeLister
	ctrl     *controller.Controller
	onSynced func()

	mu       sync.Mutex
	last     Stats
	policy   int
	summary  Summary
	podCIDRs []netip.Prefix // the Node's, last known: kept if the Node object disappears

	hmu     sync.Mutex
	hints   map[string]hint // namespace/name -> address the CNI plugin reported
	waiters []waiter
}

// NewController registers its Namespace, NetworkPolicy and Node informers on factory (call it before the
// factory starts) and makes its own Pod informer on kube, which keeps PodInfos (not Pods: the shared factory's
// Pod informer stays usable by others), started by Run. opts.PodCIDRs is ignored: the Node's pod CIDRs are
// used. repair > 0 makes a full rewrite (a repair of drift) that often.
func NewController(factory informers.SharedInformerFactory, kube kubernetes.Interface, fw Syncer, nodeName string, opts Options, repair time.Duration, log *slog.Logger) *Controller {
	podInf := coreinformers.NewPodInformer(kube, metav1.NamespaceAll, 0, cache.Indexers{})
	_ = podInf.SetTransform(ToPodInfo)
	nsInf := factory.Core().V1().Namespaces()
	polInf := factory.Networking().V1().NetworkPolicies()
	nodeInf := factory.Core().V1().Nodes()
	c := &Controller{
		fw: fw, nodeName: nodeName, opts: opts, log: log,
		podInf: podInf, pods: podInf.GetStore(), nss: nsInf.Lister(), pols: polInf.Lister(), nodes: nodeInf.Lister(),
	}
	ccfg := controller.Config{Name: "policy", Full: func(context.Context) error { return c.sync() }, Repair: repair, Log: log,
		Synced: []cache.InformerSynced{podInf.HasSynced, nsInf.Informer().HasSynced, polInf.Informer().HasSynced, nodeInf.Informer().HasSynced},
		OnFirstSync: func() {
			if c.onSynced != nil {
				c.onSynced()
			}
		}}
	if r, ok := fw.(interface{ Invalidate() }); ok {
		ccfg.BeforeRepair = r.Invalidate // the repair rewrites everything
	}
	c.ctrl = controller.New(ccfg)
	enqueue := func(any) { c.ctrl.EnqueueFull() }
	_, _ = podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, DeleteFunc: enqueue,
		UpdateFunc: func(o, n any) {
			a, okA := o.(*PodInfo)
			b, okB := n.(*PodInfo)
			// PodInfo holds only what matters: status heartbeats compare equal.
			if !okA || !okB || a.Finished != b.Finished || !reflect.DeepEqual(a.Pod, b.Pod) {
				enqueue(n)
			}
		},
	})
	for _, inf := range []cache.SharedIndexInformer{nsInf.Informer(), polInf.Informer()} {
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, DeleteFunc: enqueue,
			UpdateFunc: func(o, n any) { enqueue(n) }})
	}
	_, _ = nodeInf.Informer().AddEventHandler(model.NodeHandler(model.NamedNode(nodeName), func(*corev1.Node, bool) { enqueue(nil) }))
	return c
}

// OnInitialSync sets f to run once after the first successful sync. Call it before Run.
func (c *Controller) OnInitialSync(f func()) { c.onSynced = f }

// PodInfo is all the controller's Pod informer keeps of a Pod (its transform, ToPodInfo, makes it): 253 bytes
// against 4.9 KB for a whole Pod (BenchmarkPodCache), which matters on an agent that watches every pod of a large
// cluster (534 bytes while it embedded an ObjectMeta, of which it used three fields). The cache's keys and
// indexes read the namespace, name and labels through GetObjectMeta.
type PodInfo struct {
	Pod      Pod
	Finished bool // Succeeded or Failed: its address may already be another pod's
}

var (
	_ runtime.Object            = (*PodInfo)(nil)
	_ metav1.ObjectMetaAccessor = (*PodInfo)(nil)
)

// GetObjectKind implements runtime.Object.
func (p *PodInfo) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// GetObjectMeta implements metav1.ObjectMetaAccessor (meta.Accessor: the informer's keys and indexes): a new
// ObjectMeta with the pod's namespace, name and labels, made at each call.
func (p *PodInfo) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: p.Pod.Name, Namespace: p.Pod.Namespace, Labels: p.Pod.Labels}
}

// DeepCopyObject implements runtime.Object.
func (p *PodInfo) DeepCopyObject() runtime.Object {
	c := *p
	c.Pod.Labels = maps.Clone(p.Pod.Labels)
	c.Pod.IPs = slices.Clone(p.Pod.IPs)
	c.Pod.Ports = slices.Clone(p.Pod.Ports)
	return &c
}

// ToPodInfo is the Pod informer's transform (tombstones and other objects pass through).
func ToPodInfo(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	// Shared across pods (model.InternLabels): the pods of one ReplicaSet have the same labels, and 20,000 pods
	// live in far fewer namespaces on far fewer nodes.
	p.Namespace, p.Spec.NodeName, p.Labels = model.Intern(p.Namespace), model.Intern(p.Spec.NodeName), model.InternLabels(p.Labels)
	info := &PodInfo{Finished: p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed}
	fromPod(p, &info.Pod)
	return info, nil
}

// Run programs everything once the caches have synced, then follows changes until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	go c.podInf.Run(ctx.Done())
	c.ctrl.Run(ctx)
}

// Controller is the policy controller's loop (for health and readiness).
func (c *Controller) Controller() *controller.Controller { return c.ctrl }

// Start starts the firewall with the Node's pod CIDRs as known now (before the caches sync).
func (c *Controller) Start(node *corev1.Node) error {
	o := c.opts
	o.PodCIDRs = model.PodCIDRs(node)
	c.mu.Lock()
	c.podCIDRs = o.PodCIDRs
	c.mu.Unlock()
	return c.fw.Start(o)
}

// Desired computes the State for the current caches.
func (c *Controller) Desired() (*State, int, error) {
	st, n, _, err := c.desired()
	return st, n, err
}

// desired also returns the local pods whose address the API has (their hints are no longer needed).
func (c *Controller) desired() (*State, int, map[string]bool, error) {
	o := c.opts
	c.mu.Lock()
	if node, err := c.nodes.Get(c.nodeName); err == nil && len(model.PodCIDRs(node)) > 0 {
		c.podCIDRs = model.PodCIDRs(node)
	}
	// No Node (deleted, or not created yet): the last known pod CIDRs stay policed, so the pods still running
	// here keep their rules.
	o.PodCIDRs = c.podCIDRs
	c.mu.Unlock()
	pols, err := c.pols.List(labels.Everything())
	if err != nil {
		return nil, 0, nil, err
	}
	nsObjs, err := c.nss.List(labels.Everything())
	if err != nil {
		return nil, 0, nil, err
	}
	podObjs := c.pods.List()
	nss := make([]*Namespace, 0, len(nsObjs))
	for _, n := range nsObjs {
		nss = append(nss, &Namespace{Name: n.Name, Labels: n.Labels})
	}
	pods := make([]*Pod, 0, len(podObjs))
	var local []LocalPod
	apiKnown := map[string]bool{}
	for _, obj := range podObjs {
		info, ok := obj.(*PodInfo)
		if !ok || info.Finished {
			continue
		}
		pp := &info.Pod
		if pp.NodeName == c.nodeName && !pp.HostNetwork {
			key := pp.Namespace + "/" + pp.Name
			if pp.IP.IsValid() {
				apiKnown[key] = true
			} else if ips := c.hinted(key, o.PodCIDRs); len(ips) > 0 {
				cp := *pp // never modify the informer's object
				cp.IP, cp.IPs = primary(ips), ips
				pp = &cp
			}
		}
		pods = append(pods, pp)
		if pp.NodeName == c.nodeName && !pp.HostNetwork {
			for _, a := range pp.Addrs() {
				local = append(local, LocalPod{Key: pp.Namespace + "/" + pp.Name, IP: a})
			}
		}
	}
	fws := Compute(pols, pods, nss, c.nodeName)
	return Build(fws, local, o), len(pols), apiKnown, nil
}

// primary is a pod's primary address: its IPv4 one when it has one, else its first.
func primary(addrs []netip.Addr) netip.Addr {
	for _, a := range addrs {
		if a.Is4() {
			return a
		}
	}
	return addrs[0]
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// FromPod converts a Pod (whatever its phase).
func FromPod(p *corev1.Pod) *Pod {
	out := &Pod{}
	fromPod(p, out)
	return out
}

// fromPod is FromPod into out (the transform fills its PodInfo's Pod in place: no second allocation).
func fromPod(p *corev1.Pod, out *Pod) {
	*out = Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, HostNetwork: p.Spec.HostNetwork, NodeName: p.Spec.NodeName}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	var addrs []netip.Addr
	for _, ip := range ips {
		// One address per family: the kubelet reports at most that; anything else is ignored.
		if a, err := netip.ParseAddr(ip.IP); err == nil && familyOf(a.Unmap()) != nil &&
			!slices.ContainsFunc(addrs, func(b netip.Addr) bool { return b.Is4() == a.Unmap().Is4() }) {
			addrs = append(addrs, a.Unmap())
		}
	}
	if len(addrs) > 0 {
		out.IP = primary(addrs)
		if len(addrs) > 1 {
			out.IPs = addrs
		}
	}
	for _, ct := range p.Spec.Containers {
		for _, cp := range ct.Ports {
			if cp.ContainerPort > 0 && cp.ContainerPort < 65536 {
				// (Names and protocols shared: "http" and "TCP" repeat over every pod, each its own decoded string.)
				out.Ports = append(out.Ports, NamedPort{Name: model.Intern(cp.Name), Port: uint16(cp.ContainerPort),
					Protocol: corev1.Protocol(model.Intern(string(cp.Protocol)))})
			}
		}
	}
}

func (c *Controller) sync() error {
	start := time.Now()
	st, npol, apiKnown, err := c.desired()
	if err != nil {
		syncErrors.Inc()
		return err
	}
	stats, err := c.fw.Sync(st)
	syncDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		syncErrors.Inc()
		c.log.Error("network policy sync failed; retrying with a full rewrite", "err", err)
		return err
	}
	c.programmed(st, apiKnown)
	policedPods.Set(float64(st.Pods))
	isolated.WithLabelValues("ingress").Set(float64(distinct(st.Ingress)))
	isolated.WithLabelValues("egress").Set(float64(distinct(st.Egress)))
	chains.Set(float64(len(st.Chains) + len(st.Chains6)))
	sets.Set(float64(len(st.Sets)))
	conflicts.Set(float64(len(st.Conflict)))
	if len(st.Conflict) > 0 {
		c.log.Warn("several local pods claim the same address; it stays unready (dropped) until resolved", "addresses", st.Conflict)
	}
	isolatedPods := map[string]bool{} // by pod (its chains are named after it), whatever its families
	for _, m := range []map[netip.Addr]string{st.Ingress, st.Egress} {
		for _, ch := range m {
			isolatedPods[ch[len(prefixPodIn):]] = true
		}
	}
	c.mu.Lock()
	c.last, c.policy = stats, npol
	c.summary = Summary{Policies: npol, Pods: st.Pods, Isolated: len(isolatedPods), Chains: len(st.Chains) + len(st.Chains6), Sets: len(st.Sets)}
	c.mu.Unlock()
	lvl := slog.LevelDebug
	if stats.Full {
		lvl = slog.LevelInfo
	}
	c.log.Log(context.Background(), lvl, "network policies synced", "policies", npol, "pods", st.Pods,
		"chains_written", stats.Chains, "chains_deleted", stats.DeletedChains, "dispatch_lines", stats.DispatchLines,
		"set_ops", stats.SetOps, "full", stats.Full, "took", time.Since(start).Round(time.Microsecond))
	return nil
}

// distinct counts the pods of a dispatch map (a dual-stack pod has an entry per family, both to its chain).
func distinct(m map[netip.Addr]string) int {
	seen := map[string]bool{}
	for _, ch := range m {
		seen[ch] = true
	}
	return len(seen)
}

var (
	syncDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "canopy_policy_sync_duration_seconds",
		Help: "Time to compute and program the network policies of this node", Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)})
	syncErrors    = prometheus.NewCounter(prometheus.CounterOpts{Name: "canopy_policy_sync_errors_total", Help: "Failed network policy syncs"})
	policedPods   = prometheus.NewGauge(prometheus.GaugeOpts{Name: "canopy_policy_pods", Help: "Local pods whose firewall is programmed"})
	isolated      = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "canopy_policy_isolated_pods", Help: "Local pods isolated by a policy, by direction"}, []string{"direction"})
	chains        = prometheus.NewGauge(prometheus.GaugeOpts{Name: "canopy_policy_chains", Help: "iptables chains of the policy data path"})
	sets          = prometheus.NewGauge(prometheus.GaugeOpts{Name: "canopy_policy_ipsets", Help: "ipsets of the policy data path"})
	conflicts     = prometheus.NewGauge(prometheus.GaugeOpts{Name: "canopy_policy_address_conflicts", Help: "Addresses claimed by several local pods (kept unready)"})
	hintsReceived = prometheus.NewCounter(prometheus.CounterOpts{Name: "canopy_policy_cni_hints_total", Help: "Pod addresses the CNI plugin reported before the API had them"})
	hintsRefused  = prometheus.NewCounter(prometheus.CounterOpts{Name: "canopy_policy_cni_hints_refused_total", Help: "CNI hints refused as malformed"})
)

// Collectors returns the package's metrics; counters is read at scrape time (nil: no packet counters).
func Collectors(counters func() (Counters, error)) []prometheus.Collector {
	cs := []prometheus.Collector{syncDuration, syncErrors, policedPods, isolated, chains, sets, conflicts, hintsReceived, hintsRefused}
	if counters != nil {
		cs = append(cs, &denyCollector{read: counters})
	}
	return cs
}

var denyDesc = prometheus.NewDesc("canopy_policy_denied_packets_total",
	"Packets dropped or rejected by network policy (reason: ingress, egress, or unready = pod not programmed yet; family: ipv4, ipv6)", []string{"reason", "family"}, nil)

type denyCollector struct{ read func() (Counters, error) }

func (d *denyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- denyDesc }
func (d *denyCollector) Collect(ch chan<- prometheus.Metric) {
	c, err := d.read()
	if err != nil {
		return
	}
	for _, f := range []struct {
		name string
		n    Counts
	}{{"ipv4", Counts{c.DeniedIngress - c.IPv6.DeniedIngress, c.DeniedEgress - c.IPv6.DeniedEgress, c.Unready - c.IPv6.Unready}}, {"ipv6", c.IPv6}} {
		ch <- prometheus.MustNewConstMetric(denyDesc, prometheus.CounterValue, float64(f.n.DeniedIngress), "ingress", f.name)
		ch <- prometheus.MustNewConstMetric(denyDesc, prometheus.CounterValue, float64(f.n.DeniedEgress), "egress", f.name)
		ch <- prometheus.MustNewConstMetric(denyDesc, prometheus.CounterValue, float64(f.n.Unready), "unready", f.name)
	}
}

// Summary is the firewall's state for a status command.
type Summary struct {
	Policies int `json:"policies"`
	Pods     int `json:"pods"`
	Isolated int `json:"isolatedPods"`
	Chains   int `json:"chains"`
	Sets     int `json:"ipsets"`
}

// Summary returns what the last successful sync programmed.
func (c *Controller) Summary() Summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.summary
}

// CounterCache reads the deny counters in the background, so a /metrics scrape never runs iptables (a scraper
// hammering the endpoint cannot make the agent fork).
type CounterCache struct {
	read  func() (Counters, error)
	every time.Duration

	mu   sync.Mutex
	last Counters
	err  error
}

// NewCounterCache reads with read every period (Run).
func NewCounterCache(read func() (Counters, error), every time.Duration) *CounterCache {
	return &CounterCache{read: read, every: every, err: errors.New("not read yet")}
}

// Run refreshes the counters until ctx ends.
func (c *CounterCache) Run(ctx context.Context) {
	t := time.NewTicker(c.every)
	defer t.Stop()
	for {
		v, err := c.read()
		c.mu.Lock()
		if err == nil {
			c.last = v
		}
		c.err = err
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Get returns the last counters read.
func (c *CounterCache) Get() (Counters, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.err
}
