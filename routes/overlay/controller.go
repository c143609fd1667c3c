package overlay

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"canopy.io/canopy/internal/controller"
	"canopy.io/canopy/internal/model"
)

// Options are the controller's settings.
type Options struct {
	NodeName     string
	Mode         Mode
	ClusterCIDRs []netip.Prefix // a remote pod CIDR must be inside one (none: not checked)
	// Repair > 0 re-applies the whole state that often: the kernel is read back, so an entry someone removed
	// or changed is put back.
	Repair time.Duration
}

// Controller keeps the tunnel's entries equal to Desired over the Node informer: every Node event queues one
// full sync (the desired state is a few entries per node; the kernel is read back and only differences are
// written).
type Controller struct {
	opts     Options
	kernel   Kernel
	nodes    listersv1.NodeLister
	recorder record.EventRecorder // may be nil
	log      *slog.Logger
	ctrl     *controller.Controller

	mu       sync.Mutex
	peers    []Peer
	reported map[string]string // node -> the problem its last Event reported
}

// NewController registers a Node handler on factory and returns the controller (Run it).
func NewController(opts Options, factory informers.SharedInformerFactory, kernel Kernel, recorder record.EventRecorder, log *slog.Logger) (*Controller, error) {
	inf := factory.Core().V1().Nodes()
	c := &Controller{opts: opts, kernel: kernel, nodes: inf.Lister(), recorder: recorder, log: log, reported: map[string]string{}}
	c.ctrl = controller.New(controller.Config{Name: "overlay", Synced: []cache.InformerSynced{inf.Informer().HasSynced}, Log: log,
		Repair: opts.Repair, Full: c.sync})
	if _, err := inf.Informer().AddEventHandler(model.NodeHandler(nil, func(*corev1.Node, bool) { c.ctrl.EnqueueFull() })); err != nil {
		return nil, err
	}
	return c, nil
}

// Run syncs until ctx ends.
func (c *Controller) Run(ctx context.Context) { c.ctrl.Run(ctx) }

// Controller is the loop (for health and readiness).
func (c *Controller) Controller() *controller.Controller { return c.ctrl }

// Peers returns the peers last applied.
func (c *Controller) Peers() []Peer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.peers)
}

func (c *Controller) sync(context.Context) error {
	self, err := c.nodes.Get(c.opts.NodeName)
	if err != nil {
		return nil // no Node (yet, or any more): what is programmed stays
	}
	// The underlay: the IPv4 node address; an IPv6-only node's IPv6 one (every peer is then reached over IPv6).
	ip, ip6 := nodeIPs(self)
	if !ip.IsValid() {
		ip = ip6
	}
	if !ip.IsValid() {
		errorsTotal.WithLabelValues(reasonLocal).Inc()
		return fmt.Errorf("overlay: this node (%s) has no InternalIP yet", c.opts.NodeName)
	}
	subnet, err := c.kernel.LocalSubnet(ip)
	if err != nil {
		errorsTotal.WithLabelValues(reasonLocal).Inc()
		return err
	}
	list, err := c.nodes.List(labels.Everything())
	if err != nil {
		return err
	}
	infos := make([]NodeInfo, 0, len(list))
	objs := map[string]*corev1.Node{}
	for _, n := range list {
		if n.DeletionTimestamp != nil {
			continue // on its way out: its entries go now
		}
		_, ip6 := nodeIPs(n)
		infos = append(infos, NodeInfo{Name: n.Name, IP: model.NodeIP(n), IP6: ip6, PodCIDRs: model.PodCIDRs(n)})
		objs[n.Name] = n
	}
	me := Self{Name: self.Name, IP: ip, Subnet: subnet, PodCIDRs: model.PodCIDRs(self)}
	peers, problems := Desired(c.opts.Mode, me, infos, c.opts.ClusterCIDRs)
	c.report(problems, objs)
	if err := c.kernel.Apply(ip, peers); err != nil {
		errorsTotal.WithLabelValues(reasonKernel).Inc()
		return err
	}
	c.mu.Lock()
	changed := !slices.EqualFunc(c.peers, peers, func(a, b Peer) bool { return a.String() == b.String() })
	c.peers = peers
	c.mu.Unlock()
	peersGauge.Set(float64(len(peers)))
	if changed {
		c.log.Info("overlay peers", "mode", c.opts.Mode, "underlay", ip, "subnet", subnet, "peers", len(peers), "refused", len(problems))
		for _, p := range peers {
			c.log.Debug("overlay peer", "node", p.Node, "ip", p.IP, "vtep", p.VTEP, "vtep6", p.VTEP6, "mac", p.MAC.String(), "pod_cidrs", p.PodCIDRs)
		}
	}
	return nil
}

// report sends a Warning Event on each refused Node (once per distinct problem) and counts it.
func (c *Controller) report(problems []Problem, objs map[string]*corev1.Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := map[string]string{}
	for _, p := range problems {
		now[p.Node] = p.Message
		if c.reported[p.Node] == p.Message {
			continue
		}
		errorsTotal.WithLabelValues(reasonInvalidNode).Inc()
		c.log.Warn("overlay: node refused", "node", p.Node, "problem", p.Message)
		if c.recorder != nil && objs[p.Node] != nil {
			ref := &corev1.ObjectReference{Kind: "Node", Name: p.Node, UID: objs[p.Node].UID}
			c.recorder.Eventf(ref, corev1.EventTypeWarning, "InvalidOverlayNode", "the VXLAN overlay of %s has no tunnel to this node: %s",
				c.opts.NodeName, p.Message)
		}
	}
	c.reported = now
}

// nodeIPs returns n's IPv4 and IPv6 node addresses: the first InternalIP of each family, else the first
// ExternalIP (model.NodeIP's order).
func nodeIPs(n *corev1.Node) (v4, v6 netip.Addr) {
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			ip, err := netip.ParseAddr(a.Address)
			if a.Type != t || err != nil {
				continue
			}
			ip = ip.Unmap()
			if ip.Is4() && !v4.IsValid() {
				v4 = ip
			} else if ip.Is6() && !v6.IsValid() {
				v6 = ip
			}
		}
	}
	return v4, v6
}
