package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"canopy.io/canopy/internal/config"
	"canopy.io/canopy/internal/model"
)

// Event reasons the node controller records on its own Node.
const (
	ReasonInvalidAnnotation = "InvalidBGPAnnotation"
	ReasonBGPError          = "BGPReconcileFailed"
)

// NodeController watches Nodes and keeps the speaker's identity, peers, originated pod CIDRs and import policy
// in line with them. Events only enqueue one key; a single worker recomputes the desired state, which the
// Reconciler applies as a diff, so a burst of node changes costs one pass.
type NodeController struct {
	cfg      *config.Config
	speaker  SpeakerControl
	learner  *Learner
	lister   corelisters.NodeLister
	synced   cache.InformerSynced
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
	log      *slog.Logger

	// last good values of annotations, kept when a later value is invalid
	goodPeers      []config.Peer
	badPeersValue  string
	goodASN        map[string]uint32
	badASNValue    map[string]string
	selfDeleted    bool
	lastIdentity   Identity
	lastOwnCIDRs   []netip.Prefix
	reportedNoCIDR bool
}

// SpeakerControl is what the node controller needs of the speaker (a *Speaker, or a fake in tests).
type SpeakerControl interface {
	Ensure(ctx context.Context, id Identity) error
	Reconciler() *Reconciler
}

// NewNodeController registers a Node event handler on factory and returns the controller.
func NewNodeController(cfg *config.Config, factory informers.SharedInformerFactory, speaker SpeakerControl, learner *Learner, recorder record.EventRecorder, log *slog.Logger) *NodeController {
	inf := factory.Core().V1().Nodes()
	c := &NodeController{
		cfg: cfg, speaker: speaker, learner: learner, lister: inf.Lister(), synced: inf.Informer().HasSynced,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "nodes"}),
		recorder: recorder, log: log, goodASN: map[string]uint32{}, badASNValue: map[string]string{},
	}
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.queue.Add("sync") },
		UpdateFunc: func(o, n any) {
			if relevantChange(o.(*corev1.Node), n.(*corev1.Node)) {
				c.queue.Add("sync")
			}
		},
		DeleteFunc: func(any) { c.queue.Add("sync") },
	})
	return c
}

// relevantChange ignores what the speaker does not use (status heartbeats, conditions, images), so that a
// 5,000-node cluster's node status updates cost nothing.
func relevantChange(o, n *corev1.Node) bool {
	return !reflect.DeepEqual(o.Spec.PodCIDRs, n.Spec.PodCIDRs) || o.Spec.PodCIDR != n.Spec.PodCIDR ||
		!reflect.DeepEqual(o.Status.Addresses, n.Status.Addresses) ||
		o.Annotations[AnnotationPeers] != n.Annotations[AnnotationPeers] ||
		o.Annotations[AnnotationNodeASN] != n.Annotations[AnnotationNodeASN]
}

// Run processes the queue until ctx ends.
func (c *NodeController) Run(ctx context.Context) {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced) {
		return
	}
	c.queue.Add("sync")
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for {
		key, quit := c.queue.Get()
		if quit {
			return
		}
		if err := c.sync(ctx); err != nil {
			c.log.Error("BGP reconcile failed; retrying", "err", err)
			c.queue.AddRateLimited(key)
		} else {
			c.queue.Forget(key)
		}
		c.queue.Done(key)
	}
}

func (c *NodeController) warn(node *corev1.Node, reason, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	c.log.Warn(msg, "node", node.Name, "reason", reason)
	if c.recorder != nil {
		c.recorder.Event(node, corev1.EventTypeWarning, reason, msg)
	}
}

// nodeASN returns a node's ASN from its annotation, keeping the last good value when the annotation is invalid.
func (c *NodeController) nodeASN(n *corev1.Node, self bool) uint32 {
	v := n.Annotations[AnnotationNodeASN]
	asn, err := ParseNodeASN(v)
	if err == nil {
		c.goodASN[n.Name] = asn
		delete(c.badASNValue, n.Name)
		return asn
	}
	if self && c.badASNValue[n.Name] != v {
		CountInvalidInput("node_annotation")
		c.warn(n, ReasonInvalidAnnotation, "node %s: annotation %v; keeping AS %d", n.Name, err, c.goodASN[n.Name])
	}
	c.badASNValue[n.Name] = v
	return c.goodASN[n.Name]
}

func (c *NodeController) sync(ctx context.Context) error {
	nodes, err := c.lister.List(labels.Everything())
	if err != nil {
		return err
	}
	var self *corev1.Node
	infos := make([]NodeInfo, 0, len(nodes))
	ips := make([]netip.Addr, 0, len(nodes))
	names := map[string]bool{}
	for _, n := range nodes {
		names[n.Name] = true
		if n.Name == c.cfg.NodeName {
			self = n
		}
		ip := model.NodeIP(n)
		if !ip.IsValid() {
			continue
		}
		ips = append(ips, ip)
		infos = append(infos, NodeInfo{Name: n.Name, IP: ip, ASN: c.nodeASN(n, n.Name == c.cfg.NodeName), PodCIDRs: model.PodCIDRs(n)})
	}
	for name := range c.goodASN {
		if !names[name] {
			delete(c.goodASN, name)
			delete(c.badASNValue, name)
		}
	}
	if self == nil {
		if !c.selfDeleted {
			c.log.Warn("this node's Node object is gone: withdrawing its routes and closing every BGP session", "node", c.cfg.NodeName)
			c.selfDeleted = true
			if r := c.speaker.Reconciler(); r != nil {
				return joinErr(r.SetPaths(ctx, GroupPodCIDRs, nil), joinErr(r.SetPaths(ctx, GroupVIPs, nil), r.SetPeers(ctx, nil)))
			}
		}
		return nil
	}
	c.selfDeleted = false
	selfIP := model.NodeIP(self)
	if !selfIP.IsValid() {
		return fmt.Errorf("node %s has no usable InternalIP in status.addresses", self.Name)
	}
	ownCIDRs := model.PodCIDRs(self)
	var selfInfo NodeInfo
	for _, in := range infos {
		if in.Name == self.Name {
			selfInfo = in
		}
	}
	asn := selfInfo.ASN
	if asn == 0 {
		asn = c.cfg.ClusterASN
	}
	rid := c.cfg.RouterID
	if !rid.IsValid() {
		if !selfIP.Is4() {
			return fmt.Errorf("node %s has no IPv4 InternalIP to use as router ID; set --router-id", self.Name)
		}
		rid = selfIP
	}
	id := Identity{ASN: asn, RouterID: rid, NodeIP: selfIP}
	if err := c.speaker.Ensure(ctx, id); err != nil {
		return err
	}
	c.lastIdentity = id

	// The import policy first, so that routes are judged with the current node addresses and pod CIDRs.
	allowed := append(slices.Clone(c.cfg.ClusterCIDRs), c.cfg.ImportAllow...)
	c.learner.SetPolicy(NewImportPolicy(allowed, ownCIDRs, ips), []netip.Addr{selfIP})

	// Peers from the annotation: a bad value keeps the last good list and the sessions it made.
	if v := self.Annotations[AnnotationPeers]; v != c.badPeersValue {
		peers, perr := ParsePeersAnnotation(v)
		if perr != nil {
			CountInvalidInput("node_annotation")
			c.warn(self, ReasonInvalidAnnotation, "node %s: invalid annotation, keeping the %d peers of the last good value: %v", self.Name, len(c.goodPeers), perr)
			c.badPeersValue = v
		} else {
			c.goodPeers, c.badPeersValue = peers, ""
		}
	}
	desired := DesiredPeers(selfInfo, c.cfg.ClusterASN, infos, c.cfg.NodesFullMesh, c.cfg.Peers, c.goodPeers)
	rec := c.speaker.Reconciler()
	perr := rec.SetPeers(ctx, desired)

	if len(ownCIDRs) == 0 && !c.reportedNoCIDR {
		c.log.Info("waiting for this node to get a pod CIDR (spec.podCIDRs)", "node", self.Name)
		c.reportedNoCIDR = true
	}
	paths := map[netip.Prefix]Path{}
	for _, p := range ownCIDRs {
		if p.Addr().Is4() == selfIP.Is4() {
			paths[p] = Path{Prefix: p, NextHop: selfIP}
		}
	}
	if !slices.Equal(ownCIDRs, c.lastOwnCIDRs) {
		c.log.Info("node pod CIDRs", "node", self.Name, "pod_cidrs", ownCIDRs)
		c.lastOwnCIDRs = ownCIDRs
	}
	aerr := rec.SetPaths(ctx, GroupPodCIDRs, paths)
	if err := joinErr(perr, aerr); err != nil {
		c.warn(self, ReasonBGPError, "node %s: %v", self.Name, err)
		return err
	}
	return nil
}

// DesiredPeerAddrs returns the addresses of the peers the speaker has configured.
func (c *NodeController) DesiredPeerAddrs() []netip.Addr {
	r := c.speaker.Reconciler()
	if r == nil {
		return nil
	}
	var out []netip.Addr
	for _, p := range r.Peers() {
		out = append(out, p.Address)
	}
	return out
}

// WaitForEOR blocks until every configured peer has sent End-of-RIB, or timeout passes, or ctx ends; it
// reports whether all peers did. The caller then sweeps stale kernel routes.
func (c *NodeController) WaitForEOR(ctx context.Context, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return false
		case <-tick.C:
			peers := c.DesiredPeerAddrs()
			if len(peers) > 0 && c.learner.AllEOR(peers) {
				return true
			}
		}
	}
}

func joinErr(a, b error) error {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return fmt.Errorf("%w; %w", a, b)
}
