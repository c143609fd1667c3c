package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// A multi-rack lab (Config.Racks > 1) is a small routed fabric as RFC 7938 draws it:
//
//	                 <p>ext 203.0.113.10            <p>cp 10.98.0.2 (etcd, kube-apiserver, controller-manager)
//	                        │ ext .1                        │ br0 10.98.0.1/24 (SpineCIDR)
//	            ┌───────────┴───────────────────────────────┴───────────┐
//	            │ <p>spine  FRR, AS 65500 (SpineASN), ECMP, multipath-relax │
//	            └──────┬ r1 10.98.1.1/30 ───────────────── r2 10.98.1.5/30 ┬┘   (UplinkCIDR, a /30 per rack)
//	             spine │ 10.98.1.2                             10.98.1.6 │ spine
//	      ┌────────────┴─────────────┐                ┌──────────────────┴───────┐
//	      │ <p>tor  rack 1, AS 64500 │                │ <p>tor2  rack 2, AS 64501 │   FRR, BIRD or gobgpd
//	      │ br0 10.99.0.1/24         │                │ br0 10.99.1.1/24          │   (RackConfig.ToRKind)
//	      └───┬──────────────┬───────┘                └───┬──────────────┬────────┘
//	      <p>n1 10.99.0.11  <p>n2 10.99.0.12          <p>n3 10.99.1.13  <p>n4 10.99.1.14
//
// Every ToR accepts BGP from its rack's subnet (unless RackConfig.NoNodePeering), announces that subnet to the
// spine and installs what it learns into its kernel with ECMP; the spine announces its own segment and the
// external link. A node keeps its index-based address (.10+i) inside its rack's subnet, and has static routes
// through its ToR to the spine's segment (the API server), the external link and the other racks' subnets, as a
// server's uplink in a routed fabric would; the pod CIDRs and VIPs still come from BGP only. Namespaces: the ToR
// of rack 1 keeps <p>tor (and l.ToR points at it), rack r's is <p>tor<r>, the spine's <p>spine.
//
// A dual-homed rack (RackConfig.DualToR) has a second ToR <p>tor<r>b at .2, in the same AS, on its own /30 to
// the spine (the /30s after every rack's first); its segment is then a bridge in a namespace of its own
// (<p>sw<r>) with a port for each node and each ToR, so either ToR can fail alone (ToR.PowerOff).

// ToRKind is the software that plays a ToR.
type ToRKind string

const (
	// ToRFRR is FRR (zebra, bgpd, bfdd): dynamic neighbours by `bgp listen range`, multipath-relax, ECMP into
	// the kernel, as-override towards the nodes (unless RackConfig.NoASOverride), BFD profile for the nodes.
	ToRFRR ToRKind = "frr"
	// ToRBIRD is BIRD 2 (bird2): dynamic neighbours by `neighbor range … external`, GTSM, ECMP into the kernel
	// (`merge paths`). BIRD has no as-override: nodes sharing one ASN behind it need allow-own-AS (allowas-in).
	ToRBIRD ToRKind = "bird"
	// ToRGoBGP is gobgpd with a FIB helper (gobgpd installs nothing into the kernel by itself; FRR 8.4's zebra
	// crashes gobgpd 3.10's client, so a BIRD instance learns gobgpd's paths over iBGP and installs them, ECMP
	// included): dynamic neighbours of any AS. gobgpd never sends a route to a peer whose AS is in its path
	// (sender-side loop check, before any as-override): nodes behind it that share an ASN do not learn each
	// other's routes through it, so give them their own ASNs.
	ToRGoBGP ToRKind = "gobgpd"
)

// RackConfig is one rack's settings (Config.PerRack); zero fields take the defaults.
type RackConfig struct {
	// ToRKind is the software of the rack's ToR; default ToRFRR.
	ToRKind ToRKind `json:",omitempty"`
	// ToRASN is the ToR's AS number; default Config.ToRASN+r-1 (64500 for rack 1, 64501 for rack 2, …).
	ToRASN uint32 `json:",omitempty"`
	// NodeASN, when set, is written as the canopy.io/node-asn annotation of the rack's Nodes when the lab
	// registers them (eBGP per rack); unset, the nodes keep the cluster ASN.
	NodeASN uint32 `json:",omitempty"`
	// Nodes is how many nodes the rack holds. Zero in every rack: Config.Nodes are spread in contiguous blocks,
	// the first racks taking one more when they do not divide evenly (5 nodes on 2 racks: node1-3 in rack 1,
	// node4-5 in rack 2). Set it in every rack or in none; Config.Nodes, if set, must be their sum.
	Nodes int `json:",omitempty"`
	// NoNodePeering: the ToR routes the rack's subnet but accepts no BGP session from its nodes (a rack, or a
	// single node on its own subnet, that cannot peer: pod traffic to it needs an overlay). The agents of such a
	// rack get no --peer-router-* flags.
	NoNodePeering bool `json:",omitempty"`
	// NoASOverride leaves `as-override` out of an FRR ToR's node peer group: nodes sharing one ASN then need
	// allow-own-AS to learn each other's routes, as behind a BIRD ToR.
	NoASOverride bool `json:",omitempty"`
	// DualToR gives the rack (multi-rack labs only) a second ToR of the same kind and AS — a dual-homed rack:
	// ToR a at .1 and ToR b at .2 of the rack's subnet, each with its own link to the spine, both on the rack's
	// segment, which then is a bridge of its own (namespace <p>sw<r>) so that either ToR can fail alone. The
	// agents get both ToRs as peer routers; the nodes' static uplink routes are ECMP over both, with
	// fib_multipath_use_neigh and short neighbour timers, so a dead ToR's next hop is skipped once its ARP entry
	// fails (routes learned by BGP fail over by BGP/BFD).
	DualToR bool `json:",omitempty"`
}

// RackLabel is the Node label a multi-rack lab gives every node: its rack's name (Rack.Name, "rack1", …), what
// a BGPPeer's nodeSelector picks a rack's ToR by.
const RackLabel = "topology.canopy.io/rack"

// AnnotationNodeASN is the Node annotation RackConfig.NodeASN is written to (the agent's per-node ASN).
const AnnotationNodeASN = "canopy.io/node-asn"

// Rack is one rack: an L2 segment with its subnet, its ToR and its nodes. A single-rack lab has one (the whole
// fabric).
type Rack struct {
	Index  int          // 1 for the first rack
	Name   string       // "rack1": the value of RackLabel on its nodes
	Subnet netip.Prefix // the rack's segment: ToR .1 (a dual-homed rack's second ToR .2), node i .10+i, fabric hosts .200+
	ToR    *ToR
	// ToRs are the rack's ToRs: ToR alone, or ToR and the second of a dual-homed rack (RackConfig.DualToR).
	ToRs  []*ToR
	Nodes []*Node
	// NodeASN is RackConfig.NodeASN (0: the nodes use the cluster ASN).
	NodeASN uint32
	// NoNodePeering is RackConfig.NoNodePeering.
	NoNodePeering bool

	seg string // a dual-homed rack's switch namespace ("": the bridge is in the ToR's namespace)
}

// segmentNS is the namespace holding the rack's bridge br0 (the L2 segment): the ToR's, or in a dual-homed
// rack a switch namespace of its own.
func (r *Rack) segmentNS() string {
	if r.seg != "" {
		return r.seg
	}
	return r.ToR.NS
}

// ToRIPs are the addresses of the rack's ToRs on its segment.
func (r *Rack) ToRIPs() []netip.Addr {
	var out []netip.Addr
	for _, t := range r.ToRs {
		out = append(out, t.IP)
	}
	return out
}

// NodeIPs are the addresses of the rack's nodes.
func (r *Rack) NodeIPs() []netip.Addr {
	var out []netip.Addr
	for _, n := range r.Nodes {
		out = append(out, n.IP)
	}
	return out
}

// rackCount is the number of racks (at least 1).
func (c Config) rackCount() int { return max(1, c.Racks) }

// multiRack: the lab has a spine.
func (c Config) multiRack() bool { return c.Racks > 1 }

// perRackNodes is the sum of PerRack[].Nodes.
func (c Config) perRackNodes() int {
	sum := 0
	for i, r := range c.PerRack {
		if i < c.rackCount() {
			sum += r.Nodes
		}
	}
	return sum
}

// rack returns rack r's settings with the defaults filled in.
func (c Config) rack(r int) RackConfig {
	var rc RackConfig
	if r-1 < len(c.PerRack) {
		rc = c.PerRack[r-1]
	}
	if rc.ToRKind == "" {
		rc.ToRKind = ToRFRR
	}
	if rc.ToRASN == 0 {
		rc.ToRASN = c.ToRASN + uint32(r-1)
	}
	if rc.Nodes == 0 {
		n, racks := c.Nodes, c.rackCount()
		rc.Nodes = n / racks
		if r <= n%racks {
			rc.Nodes++
		}
	}
	return rc
}

// rackOf is the rack (1-based) of node i (1-based): contiguous blocks of rack(r).Nodes.
func (c Config) rackOf(i int) int {
	first := 1
	for r := 1; r <= c.rackCount(); r++ {
		n := c.rack(r).Nodes
		if i < first+n {
			return r
		}
		first += n
	}
	return c.rackCount()
}

// rackSubnet is rack r's subnet: FabricCIDR moved on by r-1 blocks of its size.
func (c Config) rackSubnet(r int) netip.Prefix {
	if r <= 1 { // also the single rack of an IPv6-only lab, whose /64 cannot be counted in IPv4 blocks
		return c.FabricCIDR.Masked()
	}
	return netip.PrefixFrom(nthAddr(c.FabricCIDR, (r-1)<<(32-c.FabricCIDR.Bits())), c.FabricCIDR.Bits())
}

// uplink returns the spine's and the ToR's addresses on rack r's link (second: the link of a dual-homed rack's
// second ToR, the /30s after every rack's first).
func (c Config) uplink(r int, second bool) (spine, tor netip.Addr) {
	k := r - 1
	if second {
		k += c.Racks
	}
	return nthAddr(c.UplinkCIDR, 4*k+1), nthAddr(c.UplinkCIDR, 4*k+2)
}

// dualToRs says whether a rack is dual-homed.
func (c Config) dualToRs() bool {
	for i, r := range c.PerRack {
		if i < c.rackCount() && r.DualToR {
			return true
		}
	}
	return false
}

// torKinds lists the ToR kinds the lab uses.
func (c Config) torKinds() []ToRKind {
	seen := map[ToRKind]bool{}
	var out []ToRKind
	for r := 1; r <= c.rackCount(); r++ {
		k := ToRFRR
		if r-1 < len(c.PerRack) && c.PerRack[r-1].ToRKind != "" {
			k = c.PerRack[r-1].ToRKind
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// checkRacks fills the multi-rack defaults and checks the rack settings (withDefaults, after the rest).
func (c *Config) checkRacks() error {
	if c.Racks < 0 || c.Racks > 64 {
		return fmt.Errorf("lab: Racks=%d: want 0..64", c.Racks)
	}
	if len(c.PerRack) > c.rackCount() {
		return fmt.Errorf("lab: PerRack has %d entries for %d racks", len(c.PerRack), c.rackCount())
	}
	set := 0
	for _, r := range c.PerRack {
		if r.Nodes < 0 {
			return fmt.Errorf("lab: PerRack: Nodes=%d", r.Nodes)
		}
		if r.Nodes > 0 {
			set++
		}
	}
	if set > 0 {
		if set != c.rackCount() {
			return fmt.Errorf("lab: PerRack: set Nodes in every rack (%d) or in none", c.rackCount())
		}
		if sum := c.perRackNodes(); sum != c.Nodes {
			return fmt.Errorf("lab: Nodes=%d but PerRack's Nodes add up to %d", c.Nodes, sum)
		}
	} else if c.Nodes < c.rackCount() {
		return fmt.Errorf("lab: %d nodes for %d racks: every rack needs one", c.Nodes, c.rackCount())
	}
	for i, r := range c.PerRack {
		switch r.ToRKind {
		case "", ToRFRR, ToRBIRD, ToRGoBGP:
		default:
			return fmt.Errorf("lab: PerRack[%d].ToRKind %q: want %q, %q or %q", i, r.ToRKind, ToRFRR, ToRBIRD, ToRGoBGP)
		}
		if r.NoASOverride && r.ToRKind != "" && r.ToRKind != ToRFRR {
			return fmt.Errorf("lab: PerRack[%d].NoASOverride: only an FRR ToR does as-override", i)
		}
		if r.DualToR && !c.multiRack() {
			return fmt.Errorf("lab: PerRack[%d].DualToR: needs a multi-rack lab (Racks > 1)", i)
		}
	}
	if !c.multiRack() {
		return nil
	}
	if len(c.VMNodes) > 0 {
		return errors.New("lab: VMNodes need a single-rack lab")
	}
	if c.SpineASN == 0 {
		c.SpineASN = 65500
	}
	def := func(p *netip.Prefix, s string) {
		if !p.IsValid() {
			*p = netip.MustParsePrefix(s)
		}
		*p = p.Masked()
	}
	def(&c.SpineCIDR, "10.98.0.0/24")
	def(&c.UplinkCIDR, "10.98.1.0/24")
	if c.SpineCIDR.Bits() > 29 || !c.SpineCIDR.Addr().Is4() || !c.UplinkCIDR.Addr().Is4() {
		return fmt.Errorf("lab: SpineCIDR %s / UplinkCIDR %s: want IPv4, room for the spine and the control plane", c.SpineCIDR, c.UplinkCIDR)
	}
	links := c.Racks
	if c.dualToRs() {
		links *= 2
	}
	if 4*links > 1<<(32-c.UplinkCIDR.Bits()) {
		return fmt.Errorf("lab: UplinkCIDR %s has no room for %d /30 links", c.UplinkCIDR, c.Racks)
	}
	nets := map[string]netip.Prefix{"SpineCIDR": c.SpineCIDR, "UplinkCIDR": c.UplinkCIDR, "ExternalCIDR": c.ExternalCIDR,
		"ClusterCIDR": c.ClusterCIDR, "ServiceCIDR": c.ServiceCIDR}
	for r := 1; r <= c.Racks; r++ {
		nets[fmt.Sprintf("rack %d's subnet", r)] = c.rackSubnet(r)
	}
	names := make([]string, 0, len(nets))
	for n := range nets {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, a := range names {
		for _, b := range names[i+1:] {
			if nets[a].Overlaps(nets[b]) {
				return fmt.Errorf("lab: %s %s overlaps %s %s", a, nets[a], b, nets[b])
			}
		}
	}
	return nil
}

// newRouter makes a ToR (rack > 0) or the spine (rack 0) of the layout: names, addresses, directories.
func (l *Lab) newRouter(rack int) *ToR { return l.newRackRouter(rack, false) }

// newRackRouter is newRouter; the second ToR of a dual-homed rack (second) is tor<r>b (rack 1: tor1b), at .2 of
// the rack's subnet.
func (l *Lab) newRackRouter(rack int, second bool) *ToR {
	c := l.cfg
	if rack == 0 {
		return &ToR{Host: Host{Name: "spine", NS: l.Prefix + "spine", IP: nthAddr(c.SpineCIDR, 1), lab: l}, ASN: c.SpineASN,
			Kind: ToRFRR, Dir: filepath.Join(stateDir(c.StateRoot, l.Prefix), "spine"), procPrefix: "spine-", logDir: "spine"}
	}
	rc := c.rack(rack)
	t := &ToR{Host: Host{Name: "tor", NS: l.Prefix + "tor", IP: nthAddr(c.rackSubnet(rack), 1), lab: l}, ASN: rc.ToRASN,
		Kind: rc.ToRKind, Dir: filepath.Join(stateDir(c.StateRoot, l.Prefix), "tor"), logDir: "tor"}
	if rack > 1 || second {
		name := fmt.Sprintf("tor%d", rack)
		if second {
			name += "b"
			t.IP = nthAddr(c.rackSubnet(rack), 2)
		}
		t.Name, t.NS, t.Dir, t.procPrefix, t.logDir = name, l.Prefix+name, filepath.Join(filepath.Dir(t.Dir), name), name+"-", name
	}
	if c.multiRack() {
		t.SpineIP, t.Uplink = c.uplink(rack, second)
	}
	return t
}

// layoutRacks makes l.Racks (and in a multi-rack lab the ToRs, the spine and the control plane's and external
// host's places on the spine), and moves each node into its rack's subnet. l.ToR, l.CP, l.Ext and l.Nodes
// exist (layout, or Attach).
func (l *Lab) layoutRacks() {
	c := l.cfg
	l.Racks = nil
	for r := 1; r <= c.rackCount(); r++ {
		rc := c.rack(r)
		rk := &Rack{Index: r, Name: fmt.Sprintf("rack%d", r), Subnet: c.rackSubnet(r), NodeASN: rc.NodeASN,
			NoNodePeering: rc.NoNodePeering}
		if r == 1 {
			rk.ToR = l.ToR
		} else {
			rk.ToR = l.newRouter(r)
		}
		rk.ToRs = []*ToR{rk.ToR}
		if rc.DualToR && c.multiRack() {
			rk.ToRs = append(rk.ToRs, l.newRackRouter(r, true))
			rk.seg = fmt.Sprintf("%ssw%d", l.Prefix, r)
		}
		for _, t := range rk.ToRs {
			t.rack = rk
		}
		l.Racks = append(l.Racks, rk)
	}
	for _, n := range l.Nodes {
		rk := l.Racks[c.rackOf(n.Index)-1]
		rk.Nodes = append(rk.Nodes, n)
		n.Rack = rk
	}
	if c.multiRack() {
		l.Spine = l.newRouter(0)
		l.CP.IP = nthAddr(c.SpineCIDR, 2)
		for _, n := range l.Nodes {
			if !n.IP.IsValid() || !n.Rack.Subnet.Contains(n.IP) {
				n.IP = nthAddr(n.Rack.Subnet, 10+n.Index)
			}
		}
	}
}

// Routers returns the lab's BGP routers: every rack's ToRs, then the spine if there is one.
func (l *Lab) Routers() []*ToR {
	var out []*ToR
	for _, r := range l.Racks {
		if len(r.ToRs) == 0 { // a Rack made by hand
			out = append(out, r.ToR)
			continue
		}
		out = append(out, r.ToRs...)
	}
	if l.Spine != nil {
		out = append(out, l.Spine)
	}
	return out
}

// buildFabric makes the namespaces and links of a multi-rack lab (buildNetwork's multi-rack half).
func (l *Lab) buildFabric(ctx context.Context) error {
	c := l.cfg
	hosts := []*Host{&l.Spine.Host, l.Ext, l.CP}
	for _, r := range l.Racks {
		for _, t := range r.ToRs {
			hosts = append(hosts, &t.Host)
		}
		if r.seg != "" {
			hosts = append(hosts, &Host{NS: r.seg})
		}
	}
	for _, n := range l.Nodes {
		hosts = append(hosts, &n.Host)
	}
	for _, h := range hosts {
		if err := l.addNetns(ctx, h.NS); err != nil {
			return err
		}
	}
	spine := []string{
		"link set lo up",
		"link add br0 type bridge",
		fmt.Sprintf("addr add %s/%d dev br0", l.Spine.IP, c.SpineCIDR.Bits()),
		"link set br0 up",
		fmt.Sprintf("link add cp type veth peer name eth0 netns %s", l.CP.NS),
		"link set cp master br0 up",
		fmt.Sprintf("link add ext type veth peer name eth0 netns %s", l.Ext.NS),
		fmt.Sprintf("addr add %s/%d dev ext", nthAddr(c.ExternalCIDR, 1), c.ExternalCIDR.Bits()),
		"link set ext up",
	}
	for _, r := range l.Racks {
		for i, t := range r.ToRs {
			port := fmt.Sprintf("r%d", r.Index)
			if i > 0 {
				port += "b"
			}
			spine = append(spine,
				fmt.Sprintf("link add %s type veth peer name spine netns %s", port, t.NS),
				fmt.Sprintf("addr add %s/30 dev %s", t.SpineIP, port),
				fmt.Sprintf("link set %s up", port))
		}
	}
	if err := ipBatch(ctx, l.Spine.NS, spine...); err != nil {
		return err
	}
	if err := sysctlIn(ctx, l.Spine.NS, "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	for _, r := range l.Racks {
		if err := l.buildRack(ctx, r); err != nil {
			return err
		}
	}
	if err := ipBatch(ctx, l.Ext.NS, "link set lo up",
		fmt.Sprintf("addr add %s/%d dev eth0", l.Ext.IP, c.ExternalCIDR.Bits()), "link set eth0 up",
		fmt.Sprintf("route add default via %s", nthAddr(c.ExternalCIDR, 1))); err != nil {
		return err
	}
	if err := ipBatch(ctx, l.CP.NS, "link set lo up",
		fmt.Sprintf("addr add %s/%d dev eth0", l.CP.IP, c.SpineCIDR.Bits()), "link set eth0 up",
		fmt.Sprintf("route add default via %s", l.Spine.IP)); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(l.Nodes))
	for i, n := range l.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gw := "via " + n.Rack.ToR.IP.String()
			sysctls := []string{"net.ipv4.ip_forward=1"}
			if len(n.Rack.ToRs) > 1 {
				// ECMP over both ToRs; a next hop whose neighbour entry failed is skipped (use_neigh), and a
				// dead ToR's entry fails within about 2 s (reachable 0.5-1.5 s, 1 s delay, 3 probes 200 ms apart).
				gw = ""
				for _, t := range n.Rack.ToRs {
					gw += fmt.Sprintf(" nexthop via %s", t.IP)
				}
				sysctls = append(sysctls, "net.ipv4.fib_multipath_use_neigh=1",
					"net.ipv4.neigh.eth0.base_reachable_time_ms=1000", "net.ipv4.neigh.eth0.delay_first_probe_time=1",
					"net.ipv4.neigh.eth0.retrans_time_ms=200", "net.ipv4.neigh.eth0.ucast_solicit=3")
			}
			cmds := []string{"link set lo up", fmt.Sprintf("addr add %s/%d dev eth0", n.IP, n.Rack.Subnet.Bits()), "link set eth0 up"}
			for _, p := range l.uplinkRoutes(n.Rack) {
				cmds = append(cmds, fmt.Sprintf("route add %s %s", p, gw))
			}
			if c.NodeDefaultRoute {
				cmds = append(cmds, fmt.Sprintf("route add default %s", gw))
			}
			if err := ipBatch(ctx, n.NS, cmds...); err != nil {
				errs[i] = err
				return
			}
			errs[i] = sysctlIn(ctx, n.NS, sysctls...)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// buildRack makes a rack's ToRs' links and its segment: a bridge br0 in the ToR's namespace with a port for each
// node; in a dual-homed rack a bridge br0 in the switch namespace with a port for each node and each ToR (whose
// end, named br0 too, holds its address).
func (l *Lab) buildRack(ctx context.Context, r *Rack) error {
	var seg []string
	for _, t := range r.ToRs {
		cmds := []string{"link set lo up"}
		if r.seg == "" {
			cmds = append(cmds, "link add br0 type bridge")
		} else {
			port := strings.TrimPrefix(t.NS, l.Prefix)
			cmds = append(cmds, fmt.Sprintf("link add br0 type veth peer name %s netns %s", port, r.seg))
			seg = append(seg, fmt.Sprintf("link set %s master br0 up", port))
		}
		cmds = append(cmds,
			fmt.Sprintf("addr add %s/%d dev br0", t.IP, r.Subnet.Bits()),
			"link set br0 up",
			fmt.Sprintf("addr add %s/30 dev spine", t.Uplink),
			"link set dev spine up")
		if err := ipBatch(ctx, t.NS, cmds...); err != nil {
			return err
		}
		if err := sysctlIn(ctx, t.NS, "net.ipv4.ip_forward=1"); err != nil {
			return err
		}
	}
	ns := r.segmentNS()
	if r.seg != "" {
		if err := ipBatch(ctx, ns, "link set lo up", "link add br0 type bridge", "link set br0 up"); err != nil {
			return err
		}
	}
	for _, n := range r.Nodes {
		port := fmt.Sprintf("n%d", n.Index)
		seg = append(seg,
			fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, n.NS),
			fmt.Sprintf("link set %s master br0 up", port))
	}
	if len(seg) == 0 {
		return nil
	}
	return ipBatch(ctx, ns, seg...)
}

// uplinkRoutes are the static routes a node of rack has through its ToR in a multi-rack lab: the spine's
// segment (the API server), the external link and the other racks' subnets.
func (l *Lab) uplinkRoutes(rack *Rack) []netip.Prefix {
	c := l.cfg
	out := []netip.Prefix{c.SpineCIDR, c.ExternalCIDR}
	for _, r := range l.Racks {
		if r != rack {
			out = append(out, r.Subnet)
		}
	}
	return out
}

// spineConf is the spine's bgpd.conf: eBGP with every ToR, ECMP across racks (multipath-relax), its segment and
// the external link announced.
func (l *Lab) spineConf() string {
	c := l.cfg
	var b strings.Builder
	fmt.Fprintf(&b, `hostname %s
log timestamp precision 3
router bgp %d
 bgp router-id %s
 no bgp ebgp-requires-policy
 no bgp network import-check
 bgp bestpath as-path multipath-relax
 bgp log-neighbor-changes
 timers bgp 3 9
`, l.Spine.NS, l.Spine.ASN, l.Spine.IP)
	for _, r := range l.Racks {
		for _, t := range r.ToRs {
			fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s description %s\n", t.Uplink, t.ASN, t.Uplink, r.Name)
			if len(r.ToRs) > 1 {
				// A dual-homed rack's ToR may be powered off and on: reconnect within 2 s, not FRR's 10.
				fmt.Fprintf(&b, " neighbor %s timers connect 2\n", t.Uplink)
			}
		}
	}
	fmt.Fprintf(&b, ` address-family ipv4 unicast
  network %s
  network %s
  maximum-paths 16
 exit-address-family
exit
`, c.SpineCIDR, c.ExternalCIDR)
	return b.String()
}

// startRouters starts every rack's ToR and the spine, in parallel, and waits until each answers.
func (l *Lab) startRouters(ctx context.Context) error {
	routers := l.Routers()
	errs := make([]error, len(routers))
	var wg sync.WaitGroup
	for i, t := range routers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch t.Kind {
			case ToRBIRD:
				err = l.startBIRD(ctx, t)
			case ToRGoBGP:
				err = l.startGoBGP(ctx, t)
			default:
				if t.rack == nil {
					err = l.startFRRDaemons(ctx, t, l.spineConf(), false)
				} else {
					err = l.startFRRDaemons(ctx, t, t.bgpdConf(l.cfg), true)
				}
			}
			if err != nil {
				errs[i] = fmt.Errorf("%s (%s): %w", t.Name, t.Kind, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitFabric waits until the spine routes to every rack's subnet and every ToR to the spine's segment (what the
// nodes need to reach the API server), and returns how long the BGP sessions took.
func (l *Lab) waitFabric(ctx context.Context) error {
	has := func(ns string, p netip.Prefix) error {
		out, err := execIn(ctx, ns, "ip", "-j", "route", "show", "exact", p.String())
		if err != nil {
			return err
		}
		var rs []json.RawMessage
		if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) == 0 {
			return fmt.Errorf("%s: no route to %s", ns, p)
		}
		return nil
	}
	for _, r := range l.Racks {
		for _, t := range r.ToRs {
			if err := l.waitFor(ctx, fmt.Sprintf("the spine's route to %s (%s, %s)", r.Subnet, r.Name, t.Name), t.procPrefix+t.mainDaemon(), func() error {
				return errors.Join(has(l.Spine.NS, r.Subnet), has(t.NS, l.cfg.SpineCIDR))
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// KernelRoutes returns the router's kernel routes that have a gateway (learned, static): prefix → next hops,
// sorted. For every kind this is what the router forwards by (its ECMP next hops included).
func (t *ToR) KernelRoutes(ctx context.Context) (map[netip.Prefix][]netip.Addr, error) {
	out, err := t.Exec(ctx, "ip", "-j", "route", "show")
	if err != nil {
		return nil, err
	}
	var rs []struct {
		Dst      string `json:"dst"`
		Gateway  string `json:"gateway"`
		Nexthops []struct {
			Gateway string `json:"gateway"`
		} `json:"nexthops"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return nil, fmt.Errorf("ip -j route: %w", err)
	}
	res := map[netip.Prefix][]netip.Addr{}
	for _, r := range rs {
		dst := r.Dst
		if dst == "default" {
			dst = "0.0.0.0/0"
		} else if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			continue
		}
		var nhs []netip.Addr
		if a, err := netip.ParseAddr(r.Gateway); err == nil {
			nhs = append(nhs, a)
		}
		for _, h := range r.Nexthops {
			if a, err := netip.ParseAddr(h.Gateway); err == nil {
				nhs = append(nhs, a)
			}
		}
		if len(nhs) == 0 {
			continue
		}
		sort.Slice(nhs, func(i, j int) bool { return nhs[i].Less(nhs[j]) })
		res[p] = nhs
	}
	return res, nil
}

// pollEvery calls f until it succeeds or ctx ends.
func pollEvery(ctx context.Context, d time.Duration, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", err, ctx.Err())
		case <-time.After(d):
		}
	}
}

// joinAddrs is "a,b,…".
func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}
