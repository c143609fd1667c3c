// Package ipvs is Canopy's IPVS proxy back end: every service port becomes IPVS virtual services (one per
// ClusterIP, per node IP for a NodePort, per ExternalIP and per LoadBalancer IP) whose real servers are its
// endpoints, programmed through netlink (github.com/moby/ipvs). ClusterIPs, ExternalIPs and LoadBalancer IPs
// are bound to the dummy interface canopy-ipvs0 so the kernel accepts traffic for them; one nat chain,
// CANOPY-POSTROUTING-IPVS, masquerades IPVS traffic that does not come from the pod network (so replies come
// back through this node), except external traffic to externalTrafficPolicy: Local services, and a local pod's
// connection that IPVS sent back to the same pod (hairpin).
//
// Both families live in the one IPVS table: a dual-stack or IPv6-only service port (model.ServicePort.IPv6)
// gets IPv6 virtual services on its IPv6 cluster IPs, ExternalIPs and LoadBalancer IPs (bound to canopy-ipvs0 as
// /128s) and, for a NodePort, on the node's IPv6 addresses (Config.NodeIPs), each with the real servers of its
// own family only (as the iptables and nftables back ends' proxy.DualStack: a family a port has no cluster IP
// of is not served). The IPv6 twin of the chain lives in ip6tables (Config.IPT6). When a UDP real server goes,
// or a UDP virtual service gets its first one, the conntrack entries of the flows it leaves wrong are deleted
// (both families), as kube-proxy does.
//
// Sync is incremental: what is applied is kept in memory (rebuilt from the kernel by New), and a Sync diffs
// only the keys it is given, issuing netlink calls only for what differs. Nothing is ever flushed.
//
// IPVS needs a kernel with ip_vs; moby/ipvs fails silently without it, so callers check Available first.
package ipvs

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/proxy"
)

// Interface is the dummy interface the virtual addresses are bound to.
const Interface = "canopy-ipvs0"

// DefaultScheduler is used when a service port names none (or names one IPVS lacks, such as "random").
const DefaultScheduler = "rr"

// DefaultAffinityTimeout is Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds.
const DefaultAffinityTimeout = 3 * time.Hour

const (
	svcFlagPersistent = 0x1 // IP_VS_SVC_F_PERSISTENT
	svcFlagHashed     = 0x2 // IP_VS_SVC_F_HASHED: set by the kernel, reported back, never ours to set
)

// Handle is the part of moby/ipvs's *Handle the back end uses (a fake or a counting wrapper in tests).
type Handle interface {
	GetServices() ([]*mobyipvs.Service, error)
	GetService(*mobyipvs.Service) (*mobyipvs.Service, error)
	GetDestinations(*mobyipvs.Service) ([]*mobyipvs.Destination, error)
	NewService(*mobyipvs.Service) error
	UpdateService(*mobyipvs.Service) error
	DelService(*mobyipvs.Service) error
	NewDestination(*mobyipvs.Service, *mobyipvs.Destination) error
	UpdateDestination(*mobyipvs.Service, *mobyipvs.Destination) error
	DelDestination(*mobyipvs.Service, *mobyipvs.Destination) error
}

// Addresses binds virtual addresses to the node-local interface (Interface).
type Addresses interface {
	// Ensure creates the interface if it is missing and returns the addresses bound to it.
	Ensure() ([]netip.Addr, error)
	Add(netip.Addr) error
	Del(netip.Addr) error
}

// Config configures a Backend.
type Config struct {
	// NetNS is the path of the network namespace to program ("" = this process's). Handle and Addresses
	// default to ones opened in it; IPT must already act in it.
	NetNS string
	// NodeIPs are the addresses NodePorts listen on.
	NodeIPs []netip.Addr
	// PodCIDRs is the cluster's pod network: IPVS traffic from it keeps its source address; traffic from
	// anywhere else is masqueraded. Empty means masquerade all IPVS traffic (but Local-policy external traffic).
	PodCIDRs []netip.Prefix
	// IPT programs the masquerade chain; nil leaves masquerading alone (IPVS and addresses only).
	IPT IPTables
	// IPT6 programs the IPv6 twin of the chain (ip6tables, in the same namespace); nil leaves IPv6
	// masquerading alone.
	IPT6 IPTables
	// Conntrack deletes stale UDP conntrack entries; nil: netlink in NetNS. NoConntrack turns it off.
	Conntrack   Conntrack
	NoConntrack bool
	// Handle and Addresses default to netlink in NetNS.
	Handle    Handle
	Addresses Addresses
	// SkipSysctls leaves net.ipv4.vs.* alone (unit tests); otherwise New sets conntrack=1 (so the nat chain
	// sees IPVS connections), expire_nodest_conn=1 and expire_quiescent_template=1 (so removed and weight-0
	// real servers stop receiving packets and persistence templates).
	SkipSysctls bool
	Log         *slog.Logger
}

// vsKey identifies a virtual service.
type vsKey struct {
	proto uint16
	addr  netip.Addr
	port  uint16
}

func (k vsKey) String() string {
	return fmt.Sprintf("%s/%s", protoName(k.proto), netip.AddrPortFrom(k.addr, k.port))
}

// dKey identifies a real server.
type dKey struct {
	addr netip.Addr
	port uint16
}

// vsState is a virtual service as wanted or as applied.
type vsState struct {
	sched   string
	flags   uint32
	timeout uint32
	dests   map[dKey]int // weight
}

// keyWant is what one service port key wants.
type keyWant struct {
	vs     map[vsKey]*vsState
	addrs  map[netip.Addr]bool // bound to Interface
	locals map[vsKey]bool      // external virtual services not to masquerade (externalTrafficPolicy: Local)
	// hairpins are the endpoints on this node (both families): a pod IPVS sends its own connection to is
	// masqueraded.
	hairpins map[netip.Addr]bool
}

// Backend programs IPVS. It is safe for concurrent use.
type Backend struct {
	mu    sync.Mutex
	cfg   Config
	h     Handle
	addrs Addresses
	log   *slog.Logger
	masq  *masq // IPv4 (nil without Config.IPT)
	masq6 *masq // IPv6 (nil without Config.IPT6)
	ct    Conntrack

	applied map[vsKey]*vsState  // in the kernel
	owner   map[vsKey]string    // key claiming each virtual service
	claims  map[string]*keyWant // by key: what was applied for it
	bound   map[netip.Addr]bool // addresses on Interface
	users   map[netip.Addr]int  // keys wanting each address bound
	nodeIPs map[netip.Addr]bool // for Prune
	hairpin map[netip.Addr]int  // keys wanting a hairpin rule for each local endpoint
	retry   map[vsKey]bool      // virtual services whose deletion failed
	unbind  []netip.Addr        // addresses whose removal failed
	stale   []Flow              // UDP conntrack entries to delete at the end of this Sync or Prune
	closers []func()
}

// New opens IPVS in cfg.NetNS, reads back what the kernel already has (nothing is removed until Prune), makes
// sure the dummy interface and, with cfg.IPT, the masquerade chain exist. It fails if the kernel lacks IPVS.
func New(cfg Config) (*Backend, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	b := &Backend{
		cfg: cfg, log: log, h: cfg.Handle, addrs: cfg.Addresses,
		applied: map[vsKey]*vsState{}, owner: map[vsKey]string{}, claims: map[string]*keyWant{},
		bound: map[netip.Addr]bool{}, users: map[netip.Addr]int{}, nodeIPs: map[netip.Addr]bool{},
		retry: map[vsKey]bool{}, hairpin: map[netip.Addr]int{},
	}
	for _, ip := range cfg.NodeIPs {
		b.nodeIPs[ip.Unmap()] = true
	}
	if b.h == nil {
		if ok, err := available(cfg.NetNS, true); !ok {
			if err == nil {
				err = errors.New("the kernel has no IPVS")
			}
			return nil, err
		}
		h, err := mobyipvs.New(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("ipvs netlink: %w", err)
		}
		b.h = h
		b.closers = append(b.closers, h.Close)
	}
	if b.addrs == nil {
		a, err := newLinkAddresses(cfg.NetNS)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.addrs = a
		b.closers = append(b.closers, a.close)
	}
	if !cfg.SkipSysctls {
		if err := setSysctls(cfg.NetNS); err != nil {
			b.Close()
			return nil, err
		}
	}
	if err := b.restore(); err != nil {
		b.Close()
		return nil, err
	}
	if cfg.IPT != nil {
		m, err := newMasq(cfg.IPT, false, cfg.PodCIDRs, log)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.masq = m
	}
	if cfg.IPT6 != nil {
		m, err := newMasq(cfg.IPT6, true, cfg.PodCIDRs, log)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.masq6 = m
	}
	b.ct = cfg.Conntrack
	if b.ct == nil && !cfg.NoConntrack {
		ct, err := newNetlinkConntrack(cfg.NetNS)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.ct = ct
		b.closers = append(b.closers, ct.close)
	}
	return b, nil
}

// Name implements proxy.Backend.
func (b *Backend) Name() string { return "ipvs" }

// Close releases the netlink sockets; the kernel state stays.
func (b *Backend) Close() {
	for _, c := range b.closers {
		c()
	}
	b.closers = nil
}

// restore reads the kernel's virtual services, real servers and bound addresses into memory.
func (b *Backend) restore() error {
	bound, err := b.addrs.Ensure()
	if err != nil {
		return fmt.Errorf("%s: %w", Interface, err)
	}
	for _, a := range bound {
		b.bound[a] = true
	}
	svcs, err := b.h.GetServices()
	if err != nil {
		return fmt.Errorf("ipvs: list services: %w", err)
	}
	for _, s := range svcs {
		if s.FWMark != 0 {
			continue // not ours: Canopy makes no firewall-mark services
		}
		k, ok := keyOf(s)
		if !ok {
			continue
		}
		st, err := b.readState(s)
		if err != nil {
			return err
		}
		b.applied[k] = st
	}
	b.log.Debug("ipvs state restored", "virtual_services", len(b.applied), "addresses", len(b.bound))
	return nil
}

func (b *Backend) readState(s *mobyipvs.Service) (*vsState, error) {
	st := &vsState{sched: s.SchedName, flags: s.Flags &^ svcFlagHashed, timeout: s.Timeout, dests: map[dKey]int{}}
	if st.flags&svcFlagPersistent == 0 {
		st.timeout = 0
	}
	ds, err := b.h.GetDestinations(s)
	if err != nil {
		return nil, fmt.Errorf("ipvs: list real servers of %v: %w", s.Address, err)
	}
	for _, d := range ds {
		a, ok := netip.AddrFromSlice(d.Address)
		if !ok {
			continue
		}
		st.dests[dKey{a.Unmap(), d.Port}] = d.Weight
	}
	return st, nil
}

func keyOf(s *mobyipvs.Service) (vsKey, bool) {
	a, ok := netip.AddrFromSlice(s.Address)
	if !ok {
		return vsKey{}, false
	}
	if s.AddressFamily == syscall.AF_INET {
		a = a.Unmap()
	}
	return vsKey{s.Protocol, a, s.Port}, true
}

// Sync implements proxy.Backend: for each key in changed, the kernel is made to match desired[key] (absent:
// deleted). Errors of one key do not stop the others; the state of a virtual service that failed is re-read
// from the kernel so the next Sync of its key repairs it.
func (b *Backend) Sync(desired map[string]*model.ServicePort, changed []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	defer b.flushConntrack()
	var errs []error
	// Earlier failed deletions first (none in a healthy run: a no-op Sync writes nothing).
	for _, k := range sortedKeys(b.retry) {
		if _, owned := b.owner[k]; !owned {
			if err := b.delete(k); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		delete(b.retry, k)
	}
	failed := b.unbind
	b.unbind = nil
	for _, a := range failed {
		if b.users[a] > 0 || !b.bound[a] {
			continue
		}
		if err := b.addrs.Del(a); err != nil {
			b.unbind = append(b.unbind, a)
			errs = append(errs, fmt.Errorf("unbind %s: %w", a, err))
			continue
		}
		delete(b.bound, a)
	}
	seen := map[string]bool{}
	for _, key := range changed {
		if seen[key] {
			continue
		}
		seen[key] = true
		if err := b.syncKey(key, desired[key]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

func (b *Backend) syncKey(key string, sp *model.ServicePort) error {
	want := b.build(sp)
	old := b.claims[key]
	if old == nil {
		old = &keyWant{}
	}
	var errs []error

	// Addresses first (a new virtual service must be reachable), removed last.
	for a := range want.addrs {
		if !old.addrs[a] {
			b.users[a]++
		}
		if !b.bound[a] {
			if err := b.addrs.Add(a); err != nil {
				errs = append(errs, fmt.Errorf("bind %s: %w", a, err))
			} else {
				b.bound[a] = true
			}
		}
	}

	for _, k := range sortedKeys(want.vs) {
		if o, ok := b.owner[k]; ok && o != key {
			b.log.Warn("virtual service claimed by two service ports; the later one wins", "vs", k, "was", o, "now", key)
			if ow := b.claims[o]; ow != nil {
				delete(ow.vs, k)
			}
		}
		b.owner[k] = key
		if err := b.reconcile(k, want.vs[k]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range sortedKeys(old.vs) {
		if _, ok := want.vs[k]; ok || b.owner[k] != key {
			continue
		}
		delete(b.owner, k)
		if err := b.delete(k); err != nil {
			b.retry[k] = true
			errs = append(errs, err)
		}
	}

	touched := map[netip.Addr]bool{}
	for a := range want.hairpins {
		if !old.hairpins[a] {
			b.hairpin[a]++
		}
		touched[a] = true
	}
	for a := range old.hairpins {
		if !want.hairpins[a] {
			if b.hairpin[a]--; b.hairpin[a] <= 0 {
				delete(b.hairpin, a)
			}
		}
		touched[a] = true
	}
	for _, m := range b.masqs() {
		if err := m.update(old.locals, want.locals); err != nil {
			errs = append(errs, err)
		}
		if err := m.hairpin(touched, b.hairpin); err != nil {
			errs = append(errs, err)
		}
	}

	for a := range old.addrs {
		if want.addrs[a] {
			continue
		}
		b.users[a]--
		if b.users[a] <= 0 {
			delete(b.users, a)
			if b.bound[a] {
				if err := b.addrs.Del(a); err != nil {
					b.unbind = append(b.unbind, a)
					errs = append(errs, fmt.Errorf("unbind %s: %w", a, err))
				} else {
					delete(b.bound, a)
				}
			}
		}
	}

	if sp == nil {
		delete(b.claims, key)
	} else {
		b.claims[key] = want
	}
	return errors.Join(errs...)
}

// reconcile makes the kernel's virtual service k match w, touching only what differs.
func (b *Backend) reconcile(k vsKey, w *vsState) (err error) {
	defer func() {
		if err != nil {
			b.refresh(k)
		}
	}()
	svc := toService(k, w)
	cur := b.applied[k]
	if k.proto == syscall.IPPROTO_UDP {
		// Computed before the writes: a write that fails is retried by the next Sync of the key, and deleting
		// an entry twice is harmless.
		b.stale = append(b.stale, udpFlows(k, cur, w)...)
	}
	if cur == nil {
		if err := b.h.NewService(svc); err != nil {
			return fmt.Errorf("create %v: %w", k, err)
		}
		cur = &vsState{sched: w.sched, flags: w.flags, timeout: w.timeout, dests: map[dKey]int{}}
		b.applied[k] = cur
	} else if cur.sched != w.sched || cur.flags != w.flags || cur.timeout != w.timeout {
		if err := b.h.UpdateService(svc); err != nil {
			return fmt.Errorf("update %v: %w", k, err)
		}
		cur.sched, cur.flags, cur.timeout = w.sched, w.flags, w.timeout
	}
	// New and changed real servers before removing old ones: the service never runs empty in between.
	for _, d := range sortedDests(w.dests) {
		weight := w.dests[d]
		have, ok := cur.dests[d]
		switch {
		case !ok:
			if err := b.h.NewDestination(svc, toDest(d, weight)); err != nil {
				return fmt.Errorf("add %v to %v: %w", netip.AddrPortFrom(d.addr, d.port), k, err)
			}
		case have != weight:
			if err := b.h.UpdateDestination(svc, toDest(d, weight)); err != nil {
				return fmt.Errorf("set weight of %v in %v: %w", netip.AddrPortFrom(d.addr, d.port), k, err)
			}
		default:
			continue
		}
		cur.dests[d] = weight
	}
	for _, d := range sortedDests(cur.dests) {
		if _, ok := w.dests[d]; ok {
			continue
		}
		if err := b.h.DelDestination(svc, toDest(d, 0)); err != nil {
			return fmt.Errorf("remove %v from %v: %w", netip.AddrPortFrom(d.addr, d.port), k, err)
		}
		delete(cur.dests, d)
	}
	return nil
}

func (b *Backend) delete(k vsKey) error {
	cur, ok := b.applied[k]
	if !ok {
		return nil
	}
	if err := b.h.DelService(toService(k, &vsState{})); err != nil {
		b.refresh(k)
		return fmt.Errorf("delete %v: %w", k, err)
	}
	delete(b.applied, k)
	b.stale = append(b.stale, udpFlows(k, cur, nil)...)
	return nil
}

// flushConntrack deletes the conntrack entries of b.stale. A failure is logged, not returned: the virtual
// services are right, and a retried Sync would not know the flows any more (the entries time out by themselves).
func (b *Backend) flushConntrack() {
	flows := b.stale
	b.stale = nil
	if len(flows) == 0 || b.ct == nil {
		return
	}
	if err := b.ct.DeleteUDP(flows); err != nil {
		b.log.Warn("deleting stale UDP conntrack entries", "flows", len(flows), "err", err)
		return
	}
	b.log.Debug("stale UDP conntrack entries deleted", "flows", flows)
}

// refresh re-reads one virtual service from the kernel after a failed write.
func (b *Backend) refresh(k vsKey) {
	s, err := b.h.GetService(toService(k, &vsState{}))
	if err != nil || s == nil {
		delete(b.applied, k)
		return
	}
	st, err := b.readState(s)
	if err != nil {
		delete(b.applied, k) // unknown: the next Sync recreates (and reports if that fails)
		return
	}
	b.applied[k] = st
}

// Prune removes what the kernel had when New ran and no Sync has claimed since: virtual services on addresses
// bound to Interface or on node IPs, addresses on Interface, and the chain's Local exceptions and hairpin
// rules. Call it once
// after the first full Sync (an agent restarted while services were deleted leaves them behind otherwise).
func (b *Backend) Prune() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	defer b.flushConntrack()
	var errs []error
	for _, k := range sortedKeys(b.applied) {
		if _, ok := b.owner[k]; ok {
			continue
		}
		if !b.bound[k.addr] && !b.nodeIPs[k.addr] {
			continue // someone else's virtual service
		}
		b.log.Info("removing stale IPVS virtual service", "vs", k)
		if err := b.delete(k); err != nil {
			errs = append(errs, err)
		}
	}
	for a := range b.bound {
		if b.users[a] > 0 {
			continue
		}
		if err := b.addrs.Del(a); err != nil {
			errs = append(errs, fmt.Errorf("unbind %s: %w", a, err))
			continue
		}
		delete(b.bound, a)
	}
	claimed := map[vsKey]bool{}
	for _, w := range b.claims {
		for k := range w.locals {
			claimed[k] = true
		}
	}
	for _, m := range b.masqs() {
		if err := m.prune(claimed); err != nil {
			errs = append(errs, err)
		}
		if err := m.hairpin(maps.Clone(m.hairpins), b.hairpin); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// masqs are the masquerade chains programmed (IPv4, IPv6: those configured).
func (b *Backend) masqs() []*masq {
	var out []*masq
	for _, m := range []*masq{b.masq, b.masq6} {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

// build turns a service port into the virtual services, addresses and masquerade exceptions it needs: those
// of its IPv4 side (the port's own fields) and of its IPv6 side (sp.IPv6), each address with the endpoints of
// its family. A family the port has no cluster IP of gets nothing (no NodePort on the node's addresses of it).
func (b *Backend) build(sp *model.ServicePort) *keyWant {
	w := &keyWant{vs: map[vsKey]*vsState{}, addrs: map[netip.Addr]bool{}, locals: map[vsKey]bool{}, hairpins: map[netip.Addr]bool{}}
	if sp == nil {
		return w
	}
	proto := protoNumber(sp.Protocol)
	if proto == 0 {
		return w
	}
	clusterIPs, externalIPs, lbIPs := sp.ClusterIPs, sp.ExternalIPs, sp.LoadBalancerIPs
	clusterEps, externalEps := sp.ClusterEndpoints, sp.ExternalEndpoints
	if f := sp.IPv6; f != nil {
		clusterIPs = slices.Concat(clusterIPs, f.ClusterIPs)
		externalIPs = slices.Concat(externalIPs, f.ExternalIPs)
		lbIPs = slices.Concat(lbIPs, f.LoadBalancerIPs)
		clusterEps = slices.Concat(clusterEps, f.ClusterEndpoints)
		externalEps = slices.Concat(externalEps, f.ExternalEndpoints)
	}
	var served [2]bool // by family: IPv4, IPv6
	for _, ip := range clusterIPs {
		if ip = ip.Unmap(); ip.IsValid() {
			served[fam(ip)] = true
		}
	}
	for _, eps := range [][]model.Endpoint{clusterEps, externalEps} {
		for _, e := range eps {
			if a := e.IP.Unmap(); e.Local && a.IsValid() && served[fam(a)] {
				w.hairpins[a] = true
			}
		}
	}
	sched := sp.Scheduler
	if sched == "" || sched == "random" {
		sched = DefaultScheduler
	}
	var flags, timeout uint32
	if sp.AffinityClientIP {
		flags = svcFlagPersistent
		t := sp.AffinityTimeout
		if t <= 0 {
			t = DefaultAffinityTimeout
		}
		timeout = uint32((t + time.Second - 1) / time.Second)
	}
	add := func(ip netip.Addr, port uint16, eps []model.Endpoint, bind, local bool) {
		ip = ip.Unmap()
		if !ip.IsValid() || port == 0 || !served[fam(ip)] {
			return
		}
		k := vsKey{proto, ip, port}
		w.vs[k] = &vsState{sched: sched, flags: flags, timeout: timeout, dests: Weights(eps, ip.Is4())}
		if bind {
			w.addrs[ip] = true
		}
		if local {
			w.locals[k] = true
		}
	}
	for _, ip := range clusterIPs {
		add(ip, sp.Port, clusterEps, true, false)
	}
	if sp.NodePort != 0 {
		for _, ip := range b.cfg.NodeIPs {
			add(ip, sp.NodePort, externalEps, false, sp.ExternalPolicyLocal)
		}
	}
	for _, ip := range externalIPs {
		add(ip, sp.Port, externalEps, true, sp.ExternalPolicyLocal)
	}
	for _, ip := range lbIPs {
		add(ip, sp.Port, externalEps, true, sp.ExternalPolicyLocal)
	}
	return w
}

// fam is an (unmapped) address's family index: 0 IPv4, 1 IPv6.
func fam(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// Weights is the real servers of a virtual service of one address family: ready endpoints weigh 1; while any
// is ready, terminating ones weigh 0 (they keep their connections and get no new ones); when none is ready,
// serving terminating ones weigh 1 and the others 0. Endpoints neither ready nor terminating are left out.
func Weights(eps []model.Endpoint, v4 bool) map[dKey]int {
	anyReady := false
	for _, e := range eps {
		if e.Ready && e.IP.Unmap().Is4() == v4 {
			anyReady = true
			break
		}
	}
	out := map[dKey]int{}
	for _, e := range eps {
		ip := e.IP.Unmap()
		if !ip.IsValid() || ip.Is4() != v4 || e.Port == 0 {
			continue
		}
		w := 0
		switch {
		case e.Ready:
			w = 1
		case !e.Terminating:
			continue
		case !anyReady && e.Serving:
			w = 1
		}
		k := dKey{ip, e.Port}
		if cur, ok := out[k]; !ok || w > cur {
			out[k] = w
		}
	}
	return out
}

func toService(k vsKey, w *vsState) *mobyipvs.Service {
	s := &mobyipvs.Service{
		Address: net.IP(k.addr.AsSlice()), Protocol: k.proto, Port: k.port,
		SchedName: w.sched, Flags: w.flags, Timeout: w.timeout,
	}
	if k.addr.Is4() {
		s.AddressFamily, s.Netmask = syscall.AF_INET, 0xffffffff
	} else {
		s.AddressFamily, s.Netmask = syscall.AF_INET6, 128
	}
	return s
}

func toDest(d dKey, weight int) *mobyipvs.Destination {
	dst := &mobyipvs.Destination{
		Address: net.IP(d.addr.AsSlice()), Port: d.port, Weight: weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq, AddressFamily: syscall.AF_INET,
	}
	if !d.addr.Is4() {
		dst.AddressFamily = syscall.AF_INET6
	}
	return dst
}

func protoNumber(p model.Protocol) uint16 {
	switch p {
	case model.TCP:
		return syscall.IPPROTO_TCP
	case model.UDP:
		return syscall.IPPROTO_UDP
	case model.SCTP:
		return syscall.IPPROTO_SCTP
	}
	return 0
}

func protoName(p uint16) string {
	switch p {
	case syscall.IPPROTO_TCP:
		return "tcp"
	case syscall.IPPROTO_UDP:
		return "udp"
	case syscall.IPPROTO_SCTP:
		return "sctp"
	}
	return fmt.Sprint(p)
}

func sortedKeys[V any](m map[vsKey]V) []vsKey {
	out := make([]vsKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if c := a.addr.Compare(b.addr); c != 0 {
			return c < 0
		}
		if a.port != b.port {
			return a.port < b.port
		}
		return a.proto < b.proto
	})
	return out
}

func sortedDests(m map[dKey]int) []dKey {
	out := make([]dKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b dKey) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		return int(a.port) - int(b.port)
	})
	return out
}

// setSysctls sets the net.ipv4.vs sysctls in the namespace (they are per network namespace).
func setSysctls(nsPath string) error {
	return inNS(nsPath, func() error {
		for name, v := range map[string]string{
			"conntrack": "1", "expire_nodest_conn": "1", "expire_quiescent_template": "1",
		} {
			p := filepath.Join("/proc/sys/net/ipv4/vs", name)
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == v {
				continue // set already (by the DaemonSet's init container: the agent's /proc/sys is read-only there)
			}
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl net.ipv4.vs.%s: %w", name, err)
			}
		}
		return nil
	})
}

var _ proxy.Backend = (*Backend)(nil)

// linkAddresses implements Addresses with netlink on a dummy interface.
type linkAddresses struct {
	h *netlink.Handle
}

func (l *linkAddresses) close() { l.h.Close() }
