package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"canopy.io/canopy/internal/controller"
)

// Identity is what a BGP speaker cannot change without a restart: its AS number and router ID, and the addresses
// it listens on.
type Identity struct {
	ASN      uint32
	RouterID netip.Addr
	NodeIP   netip.Addr
	// NodeIP6 is the node's IPv6 address when NodeIP is an IPv4 one (dual stack): the speaker listens on it too,
	// and dials its IPv6 peers from it. Invalid otherwise.
	NodeIP6 netip.Addr
}

// listen returns the addresses the speaker listens on: NodeIP, then NodeIP6 if valid.
func (id Identity) listen() []netip.Addr {
	out := []netip.Addr{id.NodeIP}
	if id.NodeIP6.IsValid() && id.NodeIP6 != id.NodeIP {
		out = append(out, id.NodeIP6)
	}
	return out
}

// Path groups: each controller owns the paths of its group.
const (
	GroupPodCIDRs = "pod-cidrs"
	GroupVIPs     = "service-vips"
)

// StartFunc starts a speaker with cfg (StartGoBGP, or a fake).
type StartFunc func(ctx context.Context, cfg GlobalConfig) (Router, error)

// Manager owns BGP's desired state — the speaker's identity, its peers, and the paths of each group — and keeps
// one running speaker (an instance) equal to it. Controllers only say what they want (SetIdentity, SetPeers,
// SetPaths); nobody else holds a reconciler or reaches into the speaker. Every instance starts empty and gets
// the whole desired state replayed onto it, so a speaker restart (first start, a new ASN or router ID, a start
// that failed and is retried) can never lose a peer or an announcement. The reconcilers run in a fixed order:
// paths before peers, so a peer's first End-of-RIB follows a full RIB.
type Manager struct {
	base     GlobalConfig
	start    StartFunc
	watch    Watcher
	onStart  []func() // run before each new instance starts (importer, sessions, sweep)
	log      *slog.Logger
	ctrl     *controller.Controller
	instMu   sync.Mutex // held while reconciling and shutting down
	inst     *instance
	mu       sync.Mutex
	desired  desiredState
	bounce   map[netip.Addr]bool // sessions to reset (BFD saw the peer go, or come back)
	shutdown bool
}

type desiredState struct {
	id        Identity
	peers     []PeerSpec
	paths     map[string]map[netip.Prefix]Path
	withdrawn bool // this node's Node is gone: announce nothing, peer with nobody
}

// instance is one running speaker and what has been applied to it.
type instance struct {
	id     Identity
	r      Router
	cancel context.CancelFunc
	peers  map[netip.Addr]PeerSpec
	paths  map[string]map[netip.Prefix]Path
	// peerErrs holds the last reconcile's error for each peer it could not configure (for status).
	peerErrs map[netip.Addr]string
}

// reconciler brings one part of an instance to the desired state, issuing only the calls a difference needs.
type reconciler struct {
	name     string
	priority int // lower runs first
	run      func(ctx context.Context, inst *instance, d *desiredState, log *slog.Logger) error
}

var reconcilers = sortedReconcilers(
	reconciler{name: "paths", priority: 10, run: reconcilePaths},
	reconciler{name: "peers", priority: 20, run: reconcilePeers},
)

func sortedReconcilers(rs ...reconciler) []reconciler {
	slices.SortFunc(rs, func(a, b reconciler) int { return a.priority - b.priority })
	return rs
}

// NewManager returns a Manager that starts speakers with start (base is their shared configuration: ASN,
// RouterID and ListenAddresses come from the identity) and feeds what each learns to watch. onStart runs
// before each instance starts, after the previous one stopped.
func NewManager(base GlobalConfig, start StartFunc, watch Watcher, log *slog.Logger, onStart ...func()) *Manager {
	m := &Manager{base: base, start: start, watch: watch, onStart: onStart, log: log,
		desired: desiredState{paths: map[string]map[netip.Prefix]Path{}}}
	m.ctrl = controller.New(controller.Config{Name: "bgp", Full: m.reconcile, Log: log})
	return m
}

// Run applies the desired state whenever it changes (retrying failures with back-off) until ctx ends.
func (m *Manager) Run(ctx context.Context) { m.ctrl.Run(ctx) }

// Controller is the manager's loop (for health).
func (m *Manager) Controller() *controller.Controller { return m.ctrl }

// SetIdentity sets the speaker's identity; a change restarts the speaker (every session resets).
func (m *Manager) SetIdentity(id Identity) { m.set(func(d *desiredState) { d.id = id }) }

// SetPeers sets the desired sessions.
func (m *Manager) SetPeers(peers []PeerSpec) {
	peers = slices.Clone(peers)
	m.set(func(d *desiredState) { d.peers = peers })
}

// SetPaths sets the desired paths of group (the other groups' stay).
func (m *Manager) SetPaths(group string, paths map[netip.Prefix]Path) {
	paths = maps.Clone(paths)
	m.set(func(d *desiredState) { d.paths[group] = paths })
}

// SetWithdrawn(true) announces nothing and closes every session (this node's Node is gone), keeping the desired
// state for when it returns; false undoes it.
func (m *Manager) SetWithdrawn(w bool) { m.set(func(d *desiredState) { d.withdrawn = w }) }

func (m *Manager) set(f func(*desiredState)) {
	m.mu.Lock()
	f(&m.desired)
	m.mu.Unlock()
	m.ctrl.EnqueueFull()
}

// Bounce resets the BGP session with peer at once: the peer is removed from the running speaker (its learned
// routes are withdrawn now, not kept for graceful restart or the hold time) and added again by the next
// reconcile, with a fresh state machine (no idle hold before it connects).
func (m *Manager) Bounce(peer netip.Addr) {
	m.mu.Lock()
	if m.bounce == nil {
		m.bounce = map[netip.Addr]bool{}
	}
	m.bounce[peer] = true
	m.mu.Unlock()
	m.ctrl.EnqueueFull()
}

// Peers returns the addresses of the desired peers.
func (m *Manager) Peers() []netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.desired.withdrawn {
		return nil
	}
	out := make([]netip.Addr, 0, len(m.desired.peers))
	for _, p := range m.desired.peers {
		out = append(out, p.Address)
	}
	return out
}

// Running returns the identity of the running speaker (ok false if none runs).
func (m *Manager) Running() (Identity, bool) {
	m.instMu.Lock()
	defer m.instMu.Unlock()
	if m.inst == nil {
		return Identity{}, false
	}
	return m.inst.id, true
}

func (m *Manager) snapshot() desiredState {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.desired
	d.peers = slices.Clone(d.peers)
	d.paths = maps.Clone(d.paths)
	if d.withdrawn {
		d.peers, d.paths = nil, nil
	}
	return d
}

// reconcile makes the running instance equal to the desired state, starting or restarting it if needed.
func (m *Manager) reconcile(ctx context.Context) error {
	m.instMu.Lock()
	defer m.instMu.Unlock()
	m.mu.Lock()
	down := m.shutdown
	m.mu.Unlock()
	if down {
		return nil
	}
	d := m.snapshot()
	if !d.id.NodeIP.IsValid() {
		return nil // the node controller has not said who we are yet
	}
	if m.inst != nil && m.inst.id != d.id {
		m.log.Warn("BGP identity changed: restarting the speaker (all sessions reset)", "old_asn", m.inst.id.ASN, "asn", d.id.ASN,
			"old_router_id", m.inst.id.RouterID, "router_id", d.id.RouterID, "old_node_ip", m.inst.id.NodeIP, "node_ip", d.id.NodeIP,
			"old_node_ip6", m.inst.id.NodeIP6, "node_ip6", d.id.NodeIP6)
		m.stop(true)
	}
	if m.inst == nil {
		if err := m.startInstance(ctx, d.id); err != nil {
			return err
		}
	}
	m.mu.Lock()
	bounce := m.bounce
	m.bounce = nil
	m.mu.Unlock()
	for peer := range bounce {
		if _, ok := m.inst.peers[peer]; !ok {
			continue
		}
		if err := m.inst.r.DeletePeer(ctx, peer); err != nil {
			m.log.Error("resetting a BGP session", "peer", peer, "err", err)
			continue
		}
		delete(m.inst.peers, peer)
		peerResets.Inc()
		m.log.Info("BGP session reset", "peer", peer)
	}
	var errs []error
	for _, r := range reconcilers {
		if err := r.run(ctx, m.inst, &d, m.log); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.name, err))
		}
	}
	configuredPeers.Set(float64(len(m.inst.peers)))
	n := 0
	for _, g := range m.inst.paths {
		n += len(g)
	}
	advertisedPaths.Set(float64(n))
	return errors.Join(errs...)
}

func (m *Manager) startInstance(ctx context.Context, id Identity) error {
	for _, f := range m.onStart {
		f()
	}
	cfg := m.base
	cfg.ASN, cfg.RouterID, cfg.ListenAddresses = id.ASN, id.RouterID, id.listen()
	r, err := m.start(ctx, cfg)
	if err != nil {
		return fmt.Errorf("start the BGP speaker: %w", err)
	}
	// The watch outlives this reconcile: it ends with the instance (stop), or with the agent.
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if err := r.Watch(wctx, m.watch); err != nil {
		cancel()
		r.Stop(context.Background())
		return fmt.Errorf("watch the BGP speaker: %w", err)
	}
	m.inst = &instance{id: id, r: r, cancel: cancel, peers: map[netip.Addr]PeerSpec{}, paths: map[string]map[netip.Prefix]Path{}}
	speakerStarts.Inc()
	listen := make([]string, 0, 2)
	for _, a := range cfg.ListenAddresses {
		listen = append(listen, netip.AddrPortFrom(a, uint16(cfg.ListenPort)).String())
	}
	m.log.Info("BGP speaker started", "asn", id.ASN, "router_id", id.RouterID, "listen", listen, "grpc", cfg.GRPCAddr)
	return nil
}

// stop ends the running instance; withdraw sends Cease to every peer (they drop our routes at once).
func (m *Manager) stop(withdraw bool) {
	if m.inst == nil {
		return
	}
	m.inst.cancel()
	if withdraw {
		m.inst.r.Stop(context.Background())
	}
	m.inst = nil
}

// Shutdown stops the speaker for good. withdraw=true sends Cease to every peer (they drop our routes at once);
// false just stops watching and leaves the process to exit, so peers with graceful restart keep our routes.
func (m *Manager) Shutdown(withdraw bool) {
	m.mu.Lock()
	m.shutdown = true
	m.mu.Unlock()
	m.instMu.Lock()
	defer m.instMu.Unlock()
	m.stop(withdraw)
}

// reconcilePaths makes the instance's originated paths equal to the desired ones, group by group. A failed call
// leaves that path as it was applied, so the next reconcile retries it.
func reconcilePaths(ctx context.Context, inst *instance, d *desiredState, log *slog.Logger) error {
	var errs []error
	groups := slices.Collect(maps.Keys(inst.paths))
	for g := range d.paths {
		if _, ok := inst.paths[g]; !ok {
			groups = append(groups, g)
		}
	}
	slices.Sort(groups)
	for _, group := range groups {
		desired := d.paths[group]
		applied := inst.paths[group]
		if applied == nil {
			applied = map[netip.Prefix]Path{}
			inst.paths[group] = applied
		}
		for pfx, old := range applied {
			if w, ok := desired[pfx]; ok && w.Equal(old) {
				continue
			}
			if err := inst.r.DeletePath(ctx, old); err != nil {
				errs = append(errs, fmt.Errorf("withdraw %s: %w", pfx, err))
				continue
			}
			delete(applied, pfx)
			log.Info("BGP path withdrawn", "prefix", pfx, "next_hop", old.NextHop, "group", group)
		}
		for _, pfx := range sortedPrefixes(desired) {
			p := desired[pfx]
			if old, ok := applied[pfx]; ok && old.Equal(p) {
				continue
			}
			if err := inst.r.AddPath(ctx, p); err != nil {
				errs = append(errs, fmt.Errorf("advertise %s: %w", pfx, err))
				continue
			}
			applied[pfx] = p
			log.Info("BGP path advertised", "prefix", pfx, "next_hop", p.NextHop, "group", group, "communities", p.Communities, "large", p.Large, "prepend", p.Prepend)
		}
		if len(applied) == 0 {
			delete(inst.paths, group)
		}
	}
	return errors.Join(errs...)
}

func sortedPrefixes(m map[netip.Prefix]Path) []netip.Prefix {
	out := slices.Collect(maps.Keys(m))
	slices.SortFunc(out, netip.Prefix.Compare)
	return out
}

// peerFailed records err as peer's last error and returns it.
func (inst *instance) peerFailed(peer netip.Addr, err error) error {
	inst.peerErrs[peer] = err.Error()
	return err
}

// reconcilePeers makes the instance's sessions equal to the desired ones: a change to one peer never resets
// another session. A failed call leaves that peer as it was applied, so the next reconcile retries it.
func reconcilePeers(ctx context.Context, inst *instance, d *desiredState, log *slog.Logger) error {
	var errs []error
	inst.peerErrs = map[netip.Addr]string{}
	want := make(map[netip.Addr]PeerSpec, len(d.peers))
	for _, p := range d.peers {
		want[p.Address] = p
	}
	for addr, old := range inst.peers {
		if _, ok := want[addr]; ok {
			continue
		}
		if err := inst.r.DeletePeer(ctx, addr); err != nil {
			errs = append(errs, inst.peerFailed(addr, fmt.Errorf("delete peer %s: %w", addr, err)))
			continue
		}
		delete(inst.peers, addr)
		log.Info("BGP peer removed", "peer", addr, "asn", old.ASN, "kind", old.Kind, "name", old.Name)
		peerChanges.WithLabelValues("delete").Inc()
	}
	for _, p := range d.peers {
		old, ok := inst.peers[p.Address]
		switch {
		case !ok:
			if err := inst.r.AddPeer(ctx, p); err != nil {
				errs = append(errs, inst.peerFailed(p.Address, fmt.Errorf("add peer %s (AS %d): %w", p.Address, p.ASN, err)))
				continue
			}
			log.Info("BGP peer added", "peer", p.Address, "asn", p.ASN, "kind", p.Kind, "name", p.Name)
			peerChanges.WithLabelValues("add").Inc()
		case old == p:
			continue
		case old.sessionKey() != p.sessionKey():
			// A session's identity, timers or announcements changed: GoBGP cannot change these in place (timers
			// are negotiated in OPEN), so this one peer is re-created; no other session is touched.
			if err := inst.r.DeletePeer(ctx, p.Address); err != nil {
				errs = append(errs, inst.peerFailed(p.Address, fmt.Errorf("re-create peer %s: %w", p.Address, err)))
				continue
			}
			delete(inst.peers, p.Address)
			if err := inst.r.AddPeer(ctx, p); err != nil {
				errs = append(errs, inst.peerFailed(p.Address, fmt.Errorf("re-create peer %s (AS %d): %w", p.Address, p.ASN, err)))
				continue
			}
			log.Info("BGP peer re-created", "peer", p.Address, "asn", p.ASN, "old_asn", old.ASN, "kind", p.Kind, "name", p.Name)
			peerChanges.WithLabelValues("recreate").Inc()
		case old.MaxPrefixes != p.MaxPrefixes:
			// GoBGP changes a prefix limit in place: the session stays.
			if err := inst.r.UpdatePeer(ctx, p); err != nil {
				errs = append(errs, inst.peerFailed(p.Address, fmt.Errorf("update peer %s: %w", p.Address, err)))
				continue
			}
			log.Info("BGP peer updated", "peer", p.Address, "max_prefixes", p.MaxPrefixes, "old_max_prefixes", old.MaxPrefixes)
			peerChanges.WithLabelValues("update").Inc()
		default:
			// Only descriptive fields (kind, name) changed: nothing to tell the router.
		}
		inst.peers[p.Address] = p
	}
	return errors.Join(errs...)
}

// AppliedPeers returns the peers configured in the running speaker.
func (m *Manager) AppliedPeers() []PeerSpec {
	m.instMu.Lock()
	defer m.instMu.Unlock()
	if m.inst == nil {
		return nil
	}
	out := make([]PeerSpec, 0, len(m.inst.peers))
	for _, p := range m.inst.peers {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b PeerSpec) int { return a.Address.Compare(b.Address) })
	return out
}

// AppliedPaths returns the paths of group announced by the running speaker.
func (m *Manager) AppliedPaths(group string) map[netip.Prefix]Path {
	m.instMu.Lock()
	defer m.instMu.Unlock()
	if m.inst == nil {
		return nil
	}
	return maps.Clone(m.inst.paths[group])
}
