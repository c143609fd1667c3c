package routes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
)

// Manager keeps the kernel in line with the desired routes: it diffs desired against what it applied and issues
// only the needed calls.
//
// For every destination it knows the desired next hops (from BGP, via Set/Remove) and the next hops it believes
// the kernel has under our protocol (from its own successful calls, and from listing the table in Start and
// Resync). Set and Remove act on one destination and cost at most one Table call; only Start and Resync list the
// table.
//
// Routes found in the kernel by Start (left by an earlier run) are stale candidates: they stay, so traffic keeps
// flowing over an agent restart, until Set confirms them or Sweep deletes the unconfirmed ones.
//
// Routes it has not installed are created with the Table's Add when it has one (NetlinkTable does), so a route of
// another protocol to the same destination (a connected subnet, a static route) makes the install fail with
// ErrRouteExists instead of being replaced. Routes it has installed are changed with Replace. Call Start before
// the first Set, so that our routes from an earlier run are known to be ours.
//
// All methods are safe for concurrent use.
type Manager struct {
	t   Table
	add func(Route) error // t's Add, or nil
	log *slog.Logger

	mu     sync.Mutex
	routes map[netip.Prefix]entry
	sets   map[string]*hopSet // interned next-hop sets, by key
	keyBuf []byte
	gen    uint32 // listing generation, for entry.seen
	swept  bool
}

// entry is the state of one destination. It is kept small (24 bytes): next hops are interned.
type entry struct {
	desired *hopSet // nil: not desired
	applied *hopSet // nil: not in the kernel as ours, as far as we know
	seen    uint32  // last listing generation that showed the route in the kernel
	stale   bool    // applied, found in the kernel by a listing before Sweep, not confirmed by Set since
}

// hopSet is an immutable, sorted, unique set of next hops, shared by all routes with the same next hops (commonly
// a handful of sets for the whole table). Equal sets are the same pointer, so comparing next hops is a pointer
// comparison.
type hopSet struct {
	addrs []netip.Addr
	key   string
	refs  int // entry slots (desired, applied) pointing at it
}

// NewManager returns a Manager over t. A nil log discards.
func NewManager(t Table, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		t:      t,
		log:    log,
		routes: make(map[netip.Prefix]entry),
		sets:   make(map[string]*hopSet),
	}
	if a, ok := t.(adder); ok {
		m.add = a.Add
	}
	return m
}

// Start lists our existing kernel routes; they become "stale candidates", kept (traffic keeps flowing over an
// agent restart) until confirmed by Set or until Sweep. It issues no change to the kernel.
func (m *Manager) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	kernel, err := m.list()
	if err != nil {
		return err
	}
	m.absorb(kernel)
	stale := 0
	for _, e := range m.routes {
		if e.stale {
			stale++
		}
	}
	m.log.Info("routes: found existing routes", "routes", len(kernel), "stale_candidates", stale)
	return nil
}

// Set makes nextHops the desired next hops of dst and, if that differs from what is applied, applies it to the
// kernel right away (one Add or Replace). Empty nextHops is Remove. Next hops need not be sorted (they are
// normalised) and must be of dst's address family. On error the desired route is kept and retried by the next Set
// or Resync; the previously applied route, if any, stays as it was.
func (m *Manager) Set(dst netip.Prefix, nextHops []netip.Addr) error {
	if len(nextHops) == 0 {
		return m.Remove(dst)
	}
	dst, err := canonPrefix(dst)
	if err == nil {
		nextHops, err = canonHops(dst, nextHops)
	}
	if err != nil {
		installErrors.Inc()
		return fmt.Errorf("routes: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.routes[dst]
	m.swap(&e.desired, m.intern(nextHops))
	e.stale = false
	if e.applied != e.desired {
		err = m.install(dst, &e)
	}
	m.routes[dst] = e
	return err
}

// Remove makes dst no longer desired and deletes our route to it from the kernel (only if we had it: a desired
// route never installed, or an unknown dst, costs nothing). On error the route is deleted by the next Resync.
func (m *Manager) Remove(dst netip.Prefix) error {
	dst, err := canonPrefix(dst)
	if err != nil {
		deleteErrors.Inc()
		return fmt.Errorf("routes: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.routes[dst]
	if !ok {
		return nil
	}
	m.swap(&e.desired, nil)
	e.stale = false
	if e.applied != nil {
		err = m.delete(dst, &e)
	}
	m.store(dst, e)
	return err
}

// Sweep deletes every stale candidate never confirmed by Set. From then on, Resync also deletes any route of ours
// that is not desired. A stale route whose delete fails is retried by Resync.
func (m *Manager) Sweep() (removed int, err error) {
	removed, _, err = m.SweepStale(func(netip.Prefix, []netip.Addr) bool { return true })
	return removed, err
}

// MarkStale makes every route applied now a stale candidate that nothing desires (the BGP speaker restarted and
// its new RIB must confirm them again): they stay in the kernel until Set confirms them or SweepStale removes
// them, and Resync leaves them alone meanwhile.
func (m *Manager) MarkStale() {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for dst, e := range m.routes {
		m.swap(&e.desired, nil)
		e.stale = e.applied != nil
		if e.stale {
			n++
		}
		m.store(dst, e)
	}
	m.swept = false
	m.log.Info("routes: every route is a stale candidate until confirmed", "routes", n)
}

// SweepStale deletes the stale candidates for which remove(dst, next hops in the kernel) says yes, and returns
// how many it deleted and how many stale candidates are left. Once none is left, Resync also deletes any route of
// ours that is not desired.
func (m *Manager) SweepStale(remove func(dst netip.Prefix, nextHops []netip.Addr) bool) (removed, left int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs errCollector
	for dst, e := range m.routes {
		if !e.stale || e.desired != nil {
			continue
		}
		var hops []netip.Addr
		if e.applied != nil {
			hops = e.applied.addrs
		}
		if !remove(dst, hops) {
			left++
			continue
		}
		if err := m.delete(dst, &e); err != nil {
			errs.add(err)
			left++
			continue
		}
		removed++
		m.store(dst, e)
	}
	if left == 0 {
		m.swept = true
	}
	staleRemovedTotal.Add(float64(removed))
	if removed > 0 || errs.n > 0 {
		m.log.Info("routes: swept stale routes", "removed", removed, "left", left, "errors", errs.n)
	}
	return removed, left, errs.err("sweep")
}

// Resync repairs drift: it lists the kernel, re-applies desired routes that are missing or different, and deletes
// our routes that are not desired (after Sweep; before it, only routes whose Remove failed). It never touches
// routes of other protocols or tables. It holds the Manager for the duration: Set and Remove wait.
func (m *Manager) Resync() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	kernel, err := m.list()
	if err != nil {
		return err
	}
	m.absorb(kernel)
	var repaired, removed int
	var errs errCollector
	for dst, e := range m.routes {
		switch {
		case e.desired != nil && e.applied != e.desired:
			if err := m.install(dst, &e); err != nil {
				errs.add(err)
				continue
			}
			repaired++
		case e.desired == nil && e.applied != nil && (m.swept || !e.stale):
			if err := m.delete(dst, &e); err != nil {
				errs.add(err)
				continue
			}
			removed++
		default:
			continue
		}
		m.store(dst, e)
	}
	level := slog.LevelDebug
	if repaired+removed+errs.n > 0 {
		level = slog.LevelInfo
	}
	m.log.Log(context.Background(), level, "routes: resync", "kernel_routes", len(kernel), "repaired", repaired, "removed", removed, "errors", errs.n)
	return errs.err("resync")
}

// Routes returns the desired routes, sorted by Dst.
func (m *Manager) Routes() []Route {
	m.mu.Lock()
	out := make([]Route, 0, len(m.routes))
	for dst, e := range m.routes {
		if e.desired != nil {
			out = append(out, Route{Dst: dst, NextHops: slices.Clone(e.desired.addrs)})
		}
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Route) int { return a.Dst.Compare(b.Dst) })
	return out
}

func (m *Manager) list() ([]Route, error) {
	kernel, err := m.t.List()
	if err != nil {
		listErrors.Inc()
		return nil, fmt.Errorf("routes: list: %w", err)
	}
	return kernel, nil
}

// absorb takes a listing of our kernel routes as the truth about what is applied. Routes new to the Manager are
// stale candidates before Sweep (and not desired after it).
func (m *Manager) absorb(kernel []Route) {
	m.gen++
	for _, kr := range kernel {
		dst, err := canonPrefix(kr.Dst)
		if err != nil {
			continue
		}
		hops, err := canonHops(dst, kr.NextHops)
		if err != nil {
			hops = nil // something we would not install: differs from anything desired
		}
		e, existed := m.routes[dst]
		m.setApplied(&e, m.intern(hops))
		e.seen = m.gen
		if !existed {
			e.stale = !m.swept
		}
		m.routes[dst] = e
	}
	for dst, e := range m.routes {
		if e.seen != m.gen && e.applied != nil {
			m.setApplied(&e, nil) // gone from the kernel behind our back
			e.stale = false
			m.store(dst, e)
		}
	}
}

// install applies e.desired to the kernel: Add if we have no route there (so another protocol's route is not
// replaced), Replace if we have.
func (m *Manager) install(dst netip.Prefix, e *entry) error {
	r := Route{Dst: dst, NextHops: e.desired.addrs}
	var err error
	if e.applied == nil && m.add != nil {
		err = m.add(r)
	} else {
		err = m.t.Replace(r)
	}
	if err != nil {
		installErrors.Inc()
		return fmt.Errorf("routes: install %s: %w", r, err)
	}
	installOps.Inc()
	if m.log.Enabled(context.Background(), slog.LevelDebug) {
		m.log.Debug("routes: installed", "dst", dst, "via", r.NextHops)
	}
	m.setApplied(e, e.desired)
	e.stale = false
	return nil
}

func (m *Manager) delete(dst netip.Prefix, e *entry) error {
	if err := m.t.Delete(dst); err != nil {
		deleteErrors.Inc()
		return fmt.Errorf("routes: delete %s: %w", dst, err)
	}
	deleteOps.Inc()
	if m.log.Enabled(context.Background(), slog.LevelDebug) {
		m.log.Debug("routes: deleted", "dst", dst)
	}
	m.setApplied(e, nil)
	e.stale = false
	return nil
}

// store writes e back, or forgets dst when nothing is desired or applied.
func (m *Manager) store(dst netip.Prefix, e entry) {
	if e.desired == nil && e.applied == nil {
		delete(m.routes, dst)
		return
	}
	m.routes[dst] = e
}

// intern returns the shared hopSet for hops (sorted, unique). A new set has no references: the caller must put it
// in an entry slot with swap or setApplied right away.
func (m *Manager) intern(hops []netip.Addr) *hopSet {
	b := m.keyBuf[:0]
	for _, h := range hops {
		if h.Is4() {
			a := h.As4()
			b = append(b, 4)
			b = append(b, a[:]...)
		} else {
			a := h.As16()
			b = append(b, 16)
			b = append(b, a[:]...)
		}
	}
	m.keyBuf = b
	if hs, ok := m.sets[string(b)]; ok {
		return hs
	}
	hs := &hopSet{addrs: slices.Clone(hops), key: string(b)}
	m.sets[hs.key] = hs
	return hs
}

// swap points *slot at hs, keeping reference counts; a set nobody points at any more is forgotten.
func (m *Manager) swap(slot **hopSet, hs *hopSet) {
	old := *slot
	if old == hs {
		return
	}
	if hs != nil {
		hs.refs++
	}
	*slot = hs
	if old != nil {
		old.refs--
		if old.refs <= 0 {
			delete(m.sets, old.key)
		}
	}
}

// setApplied is swap on e.applied, keeping the installed-routes gauge.
func (m *Manager) setApplied(e *entry, hs *hopSet) {
	was := e.applied != nil
	m.swap(&e.applied, hs)
	switch is := hs != nil; {
	case is && !was:
		installedRoutes.Inc()
	case !is && was:
		installedRoutes.Dec()
	}
}

// errCollector counts errors and keeps the first few, so a bulk operation's error stays readable.
type errCollector struct {
	n     int
	first []error
}

func (c *errCollector) add(err error) {
	c.n++
	if len(c.first) < 5 {
		c.first = append(c.first, err)
	}
}

func (c *errCollector) err(what string) error {
	if c.n == 0 {
		return nil
	}
	return fmt.Errorf("routes: %s: %d operations failed (first %d follow): %w", what, c.n, len(c.first), errors.Join(c.first...))
}

// Counts returns how many routes of ours are in the kernel, and how many of those are stale candidates.
func (m *Manager) Counts() (installed, stale int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.routes {
		if e.applied != nil {
			installed++
			if e.stale {
				stale++
			}
		}
	}
	return installed, stale
}
