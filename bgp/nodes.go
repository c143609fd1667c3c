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
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"canopy.io/canopy/internal/controller"
	"canopy.io/canopy/internal/model"
)

// Event reasons the node controller records on its own Node.
const (
	ReasonInvalidAnnotation = "InvalidBGPAnnotation"
	ReasonBGPError          = "BGPReconcileFailed"
	// ReasonInvalidRouteReflector: the Node's canopy.io/route-reflector label is not a cluster ID, so the node is
	// no reflector.
	ReasonInvalidRouteReflector = "InvalidRouteReflector"
)

// ClusterSettings is what the cluster's BGPConfiguration says about sessions; a nil field keeps the flag.
type ClusterSettings struct {
	ClusterASN      *uint32
	FullMesh        *bool
	MeshPassword    *string
	MeshTTLSecurity *bool
	MaxPrefixes     *uint32
}

// Objects is what the canopy.io objects (BGPConfiguration, BGPPeers) say, already checked (bgp/objects): the
// node controller merges it over the flags and annotations.
type Objects interface {
	// Cluster returns the BGPConfiguration's session settings.
	Cluster() ClusterSettings
	// PeersFor returns the BGPPeers that select node (PeerConfig.Source "BGPPeer/<name>").
	PeersFor(node *corev1.Node) []PeerConfig
	// HasSynced reports whether the objects have been read (or are known to be absent).
	HasSynced() bool
}

// NodeController follows the Nodes and tells the manager what this node's speaker should be: its identity, its
// peers and its pod CIDRs; and tells the importer which learned routes are acceptable. A sync is pure computation
// from the Node cache (the manager applies it as a difference), so a burst of node changes costs one pass.
type NodeController struct {
	cfg      Config
	mgr      *Manager
	bfd      *BFDLink // nil: no BFD
	importer *Importer
	lister   corelisters.NodeLister
	recorder record.EventRecorder
	log      *slog.Logger
	ctrl     *controller.Controller

	// last good values of annotations, kept when a later value is invalid (only the sync goroutine uses them)
	goodPeers      []PeerConfig
	badPeersValue  *string // the refused value of canopy.io/peers, nil when the current one is good
	goodASN        map[string]uint32
	badASNValue    map[string]string
	selfDeleted    bool
	lastOwnCIDRs   []netip.Prefix
	reportedNoCIDR bool
	objects        Objects // nil: flags and annotations only
	conflicts      string  // the peer conflicts last reported
	badRRValue     string  // this node's invalid canopy.io/route-reflector value last reported
	reflectors     string  // the route reflectors last logged
	ridReport      string  // the derived router ID (and its collisions) last logged

	cmu          sync.Mutex
	conflictList []string // the same, for status
}

// Conflicts returns the peer addresses more than one source configures, as last reported.
func (c *NodeController) Conflicts() []string {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	return slices.Clone(c.conflictList)
}

// NewNodeController registers a Node event handler on factory and returns the controller.
func NewNodeController(cfg Config, factory informers.SharedInformerFactory, mgr *Manager, importer *Importer, recorder record.EventRecorder, log *slog.Logger) *NodeController {
	inf := factory.Core().V1().Nodes()
	c := &NodeController{
		cfg: cfg, mgr: mgr, importer: importer, lister: inf.Lister(),
		recorder: recorder, log: log, goodASN: map[string]uint32{}, badASNValue: map[string]string{},
	}
	c.ctrl = controller.New(controller.Config{Name: "bgp-nodes", Synced: []cache.InformerSynced{inf.Informer().HasSynced},
		Full: c.sync, Log: log})
	_, _ = inf.Informer().AddEventHandler(model.NodeHandler(nil, func(*corev1.Node, bool) { c.ctrl.EnqueueFull() }))
	return c
}

// Run follows the Nodes until ctx ends.
func (c *NodeController) Run(ctx context.Context) { c.ctrl.Run(ctx) }

// SetObjects makes the controller merge what the canopy.io objects say over the flags and annotations (call
// before Run); call Changed when they change.
func (c *NodeController) SetObjects(o Objects) {
	c.objects = o
	c.ctrl.AddSynced(o.HasSynced)
}

// Changed makes the controller compute this node's sessions again (the canopy.io objects changed).
func (c *NodeController) Changed() { c.ctrl.EnqueueFull() }

// SetBFD makes the controller keep link's BFD sessions with the peers that want one. Call it before Run.
func (c *NodeController) SetBFD(link *BFDLink) { c.bfd = link }

// Controller is the node controller's loop (for health and readiness).
func (c *NodeController) Controller() *controller.Controller { return c.ctrl }

func (c *NodeController) warn(node *corev1.Node, reason, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	c.log.Warn(msg, "node", node.Name, "reason", reason)
	if c.recorder != nil {
		c.recorder.Event(node, corev1.EventTypeWarning, reason, msg)
	}
}

// routeReflector returns a node's cluster ID from its canopy.io/route-reflector label (invalid: no reflector).
// An invalid value makes the node no reflector on every agent alike (see ParseRouteReflectorLabel); the node's
// own agent reports it, once per value.
func (c *NodeController) routeReflector(n *corev1.Node, self bool) netip.Addr {
	v, ok := n.Labels[LabelRouteReflector]
	if !ok {
		if self {
			c.badRRValue = ""
		}
		return netip.Addr{}
	}
	id, err := ParseRouteReflectorLabel(v)
	if err == nil {
		if self {
			c.badRRValue = ""
		}
		return id
	}
	if self && c.badRRValue != v {
		CountInvalidInput("node_label")
		c.warn(n, ReasonInvalidRouteReflector, "node %s: %v; this node is no route reflector (a client of the valid ones, or in the full mesh if there is none)", n.Name, err)
		c.badRRValue = v
	}
	return netip.Addr{}
}

// logReflectors logs the route reflectors when they change.
func (c *NodeController) logReflectors(infos []NodeInfo, mesh bool) {
	var rr []string
	for _, n := range infos {
		if n.RRClusterID.IsValid() {
			rr = append(rr, n.Name+"="+n.RRClusterID.String())
		}
	}
	slices.Sort(rr)
	now := strings.Join(rr, ",")
	if !mesh && now != "" {
		now += " (no effect: the node mesh is off)"
	}
	if now == c.reflectors {
		return
	}
	c.reflectors = now
	switch {
	case len(rr) == 0:
		c.log.Info("no route reflector: the nodes peer in a full mesh", "node", c.cfg.NodeName)
	case !mesh:
		c.log.Info("route reflectors are labelled but the node mesh is off: they have no effect", "node", c.cfg.NodeName, "route_reflectors", rr)
	default:
		c.log.Info("route reflectors", "node", c.cfg.NodeName, "route_reflectors", rr)
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

func (c *NodeController) sync(context.Context) error {
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
		ip, ip6 := nodeAddrs(n)
		if !ip.IsValid() {
			continue
		}
		ips = append(ips, ip)
		if ip6.IsValid() {
			ips = append(ips, ip6)
		}
		isSelf := n.Name == c.cfg.NodeName
		infos = append(infos, NodeInfo{Name: n.Name, IP: ip, IP6: ip6, ASN: c.nodeASN(n, isSelf), PodCIDRs: model.PodCIDRs(n),
			RRClusterID: c.routeReflector(n, isSelf)})
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
		}
		c.mgr.SetWithdrawn(true)
		return nil
	}
	if c.selfDeleted {
		c.log.Info("this node's Node object is back: announcing and peering again", "node", c.cfg.NodeName)
		c.selfDeleted = false
	}
	c.mgr.SetWithdrawn(false)
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
	clusterASN, mesh, maxPrefixes := c.cfg.ClusterASN, c.cfg.Mesh, c.cfg.MaxPrefixes
	var objPeers []PeerConfig
	if c.objects != nil {
		cs := c.objects.Cluster()
		if cs.ClusterASN != nil {
			clusterASN = *cs.ClusterASN
		}
		if cs.FullMesh != nil {
			mesh.FullMesh = *cs.FullMesh
		}
		if cs.MeshPassword != nil {
			mesh.Password = *cs.MeshPassword
		}
		if cs.MeshTTLSecurity != nil {
			mesh.TTLSecurity = *cs.MeshTTLSecurity
		}
		if cs.MaxPrefixes != nil {
			maxPrefixes = *cs.MaxPrefixes
		}
		objPeers = c.objects.PeersFor(self)
	}
	asn := selfInfo.ASN
	if asn == 0 {
		asn = clusterASN
	}
	rid, derived := routerIDFor(c.cfg.RouterID, self.Name, selfIP)
	c.reportRouterID(rid, derived, infos)

	// Peers from the annotation: a bad value keeps the last good list and the sessions it made.
	// (nil, not "", stands for "no bad value": "" is the annotation removed, which must clear the peers.)
	if v := self.Annotations[AnnotationPeers]; c.badPeersValue == nil || v != *c.badPeersValue {
		peers, perr := ParsePeersAnnotation(v)
		if perr != nil {
			CountInvalidInput("node_annotation")
			c.warn(self, ReasonInvalidAnnotation, "node %s: invalid annotation, keeping the %d peers of the last good value: %v", self.Name, len(c.goodPeers), perr)
			c.badPeersValue = &v
		} else {
			c.goodPeers, c.badPeersValue = peers, nil
		}
	}
	// The import policy before the peers, so that routes are judged with the current nodes and routers.
	in := PolicyInput{ClusterCIDRs: c.cfg.ClusterCIDRs, ImportAllow: c.cfg.ImportAllow, ServiceCIDRs: c.cfg.ServiceCIDRs,
		Own: ownCIDRs, NodeIPs: ips, Owners: map[netip.Prefix]netip.Addr{}}
	for _, n := range infos {
		if n.Name == self.Name {
			continue
		}
		for _, p := range n.PodCIDRs {
			if nh := nextHopFor(p, n.IP, n.IP6); nh.IsValid() {
				in.Owners[p] = nh
			} else {
				in.Owners[p] = n.IP // no address of its family: refused as a bad next hop, as it always was
			}
		}
	}
	for _, p := range slices.Concat(c.cfg.Peers, c.goodPeers, objPeers) {
		in.Routers = append(in.Routers, p.Address)
	}
	selfIPs := []netip.Addr{selfIP}
	if selfInfo.IP6.IsValid() {
		selfIPs = append(selfIPs, selfInfo.IP6)
	}
	c.importer.SetPolicy(NewImportPolicy(in), selfIPs)

	if len(ownCIDRs) == 0 && !c.reportedNoCIDR {
		c.log.Info("waiting for this node to get a pod CIDR (spec.podCIDRs)", "node", self.Name)
		c.reportedNoCIDR = true
	}
	paths := map[netip.Prefix]Path{}
	for _, p := range ownCIDRs {
		if nh := nextHopFor(p, selfIP, selfInfo.IP6); nh.IsValid() {
			paths[p] = Path{Prefix: p, NextHop: nh}
		}
	}
	if !slices.Equal(ownCIDRs, c.lastOwnCIDRs) {
		c.log.Info("node pod CIDRs", "node", self.Name, "pod_cidrs", ownCIDRs)
		c.lastOwnCIDRs = ownCIDRs
	}
	c.mgr.SetIdentity(Identity{ASN: asn, RouterID: rid, NodeIP: selfIP, NodeIP6: selfInfo.IP6})
	c.mgr.SetPaths(GroupPodCIDRs, paths)
	c.logReflectors(infos, mesh.FullMesh)
	peers, conflicts := DesiredPeers(selfInfo, infos, PeerSources{ClusterASN: clusterASN, Mesh: mesh, MaxPrefixes: maxPrefixes,
		BFD: c.cfg.BFD, Flag: c.cfg.Peers, Annotation: c.goodPeers, Objects: objPeers})
	c.reportConflicts(self, conflicts)
	c.mgr.SetPeers(peers)
	if c.bfd != nil {
		c.bfd.SetPeers(selfIPs, peers)
	}
	return nil
}

// reportRouterID logs a derived router ID (an IPv6-only node without --router-id) when it changes, and warns
// about the other IPv6-only nodes whose names derive the same ID (they cannot peer over iBGP).
func (c *NodeController) reportRouterID(rid netip.Addr, derived bool, infos []NodeInfo) {
	if !derived {
		c.ridReport = ""
		return
	}
	var same []string
	for _, n := range infos {
		if n.Name != c.cfg.NodeName && !n.IP.Is4() && DeriveRouterID(n.Name) == rid {
			same = append(same, n.Name)
		}
	}
	slices.Sort(same)
	report := rid.String() + " " + strings.Join(same, ",")
	if report == c.ridReport {
		return
	}
	c.ridReport = report
	c.log.Info("no IPv4 InternalIP and no --router-id: BGP router ID derived from the node name", "node", c.cfg.NodeName, "router_id", rid)
	if len(same) > 0 {
		c.log.Warn("the derived BGP router ID is also that of other nodes: iBGP sessions between them fail; set --router-id or give the nodes IPv4 addresses",
			"node", c.cfg.NodeName, "router_id", rid, "nodes", same)
	}
}

// ReasonPeerConflict is the Event reason for a peer address that more than one source configures.
const ReasonPeerConflict = "BGPPeerConflict"

// reportConflicts logs and records (on the Node) the peer conflicts when they differ from the last reported.
func (c *NodeController) reportConflicts(self *corev1.Node, conflicts []PeerConflict) {
	texts := make([]string, len(conflicts))
	for i, x := range conflicts {
		texts[i] = x.String()
	}
	all := strings.Join(texts, "; ")
	if all == c.conflicts {
		return
	}
	c.conflicts = all
	c.cmu.Lock()
	c.conflictList = texts
	c.cmu.Unlock()
	for _, t := range texts {
		c.warn(self, ReasonPeerConflict, "node %s: %s", self.Name, t)
	}
}
