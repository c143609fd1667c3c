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
// For every destination it knows the desired next hops (from BGP, via Set/Remove/SetMany) and the next hops it
// believes the kernel has under our protocol (from its own successful calls, and from listing the table in Start
// and Resync). Set and Remove act on one destination and cost at most one Table call; SetMany acts on many and,
// when the Table is a Batcher (NetlinkTable is), costs one Batch call per thousand kernel changes, as do the
// repairs of Resync and the deletes of SweepStale. Only Start and Resync list the table.
//
// Routes found in the kernel by Start (left by an earlier run) are stale candidates: they stay, so traffic keeps
// flowing over an agent restart, until Set confirms them or Sweep deletes the unconfirmed ones.
//
// Routes it has not installed are created with the Table's Add when it has one (NetlinkTable does), or with OpAdd
// in a batch, so a route of another protocol to the same destination (a connected subnet, a static route) makes
// the install fail with ErrRouteExists instead of being replaced. Routes it has installed are changed with
// Replace. Call Start before the first Set, so that our routes from an earlier run are known to be ours.
//
// All methods are safe for concurrent use.
type Manager struct {
	t     Table
	add   func(Route) error  // t's Add, or nil
	batch func([]Op) []error // t's Batch, or nil
	log   *slog.Logger

	mu     sync.Mutex
	routes routeMap
	sets   map[string]uint32 // interned next-hop sets: key -> id in hops
	hops   []hopSet          // by id; hops[0] is unused (id 0 = no set)
	free   []uint32          // ids of released sets
	keyBuf []byte
	gen    uint32 // listing generation, for entry.seen
	swept  bool

	// The batch being built (SetMany, Resync, SweepStale), reused from batch to batch.
	ops  []Op
	pend []pendingOp
}

// entry is the state of one destination. It is kept small (16 bytes, no pointers, so the garbage collector does
// not scan the route map): next hops are interned and referred to by id.
type entry struct {
	desired uint32 // hop set id; 0: not desired
	applied uint32 // hop set id; 0: not in the kernel as ours, as far as we know
	seen    uint32 // last listing generation that showed the route in the kernel
	stale   bool   // applied, found in the kernel by a listing before Sweep, not confirmed by Set since
	busy    bool   // has an op in the batch being built
}

// hopSet is an immutable, sorted, unique set of next hops, shared by all routes with the same next hops (commonly
// a handful of sets for the whole table). Equal sets have the same id, so comparing next hops is comparing ids.
type hopSet struct {
	addrs []netip.Addr
	key   string
	refs  int // entry slots (desired, applied) referring to it
}

// NewManager returns a Manager over t. A nil log discards.
func NewManager(t Table, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		t:      t,
		log:    log,
		routes: newRouteMap(),
		sets:   make(map[string]uint32),
		hops:   make([]hopSet, 1),
	}
	if a, ok := t.(adder); ok {
		m.add = a.Add
	}
	if b, ok := t.(Batcher); ok {
		m.batch = b.Batch
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
	for _, e := range m.routes.all {
		if e.stale {
			stale++
		}
	}
	m.log.Info("routes: found existing routes", "routes", len(kernel), "stale_candidates", stale)
	if bm, ok := m.t.(interface{ BatchMode() error }); ok && m.batch != nil {
		if err := bm.BatchMode(); err != nil {
			m.log.Warn("routes: batched kernel writes unavailable, writing one route at a time", "err", err)
		}
	}
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
	e, _ := m.routes.get(dst)
	m.swap(&e.desired, m.intern(nextHops))
	e.stale = false
	if e.applied != e.desired {
		err = m.install(dst, &e)
	}
	m.routes.set(dst, e)
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
	e, ok := m.routes.get(dst)
	if !ok {
		return nil
	}
	m.swap(&e.desired, 0)
	e.stale = false
	if e.applied != 0 {
		err = m.delete(dst, &e)
	}
	m.store(dst, e)
	return err
}

// Change is one destination's new desired next hops, for SetMany. No next hops: the destination is removed.
type Change struct {
	Dst      netip.Prefix
	NextHops []netip.Addr
}

// SetMany applies changes in order, each as Set (or Remove, for a change without next hops) would, with the same
// outcome, but with far fewer kernel round trips when the Table is a Batcher (NetlinkTable is): the kernel
// changes of up to maxBatch changes go to the Table in one Batch call. It returns nil when every change
// succeeded, and otherwise a slice as long as changes with the error of changes[i] at i (nil where it
// succeeded). As with Set, a failed change stays desired and is retried by the next Set, SetMany or Resync.
//
// The Manager is held for one batch at a time, so Set and Remove from elsewhere interleave with a long SetMany.
func (m *Manager) SetMany(changes []Change) []error {
	res := batchErrs{n: len(changes)}
	done := func(p *pendingOp, err error) {
		if err != nil {
			res.set(int(p.idx), err)
		}
	}
	for i := 0; i < len(changes); {
		m.mu.Lock()
		for ; i < len(changes) && len(m.pend) < maxBatch; i++ {
			if err := m.change(&changes[i], int32(i), done); err != nil {
				res.set(i, err)
			}
		}
		m.flush(done)
		m.mu.Unlock()
	}
	return res.errs
}

// change queues the kernel op of one SetMany change, if it needs one. Called with m.mu held.
func (m *Manager) change(c *Change, idx int32, done func(*pendingOp, error)) error {
	remove := len(c.NextHops) == 0
	dst, err := canonPrefix(c.Dst)
	hops := c.NextHops
	if err == nil && !remove {
		hops, err = canonHops(dst, hops)
	}
	if err != nil {
		if remove {
			deleteErrors.Inc()
		} else {
			installErrors.Inc()
		}
		return fmt.Errorf("routes: %w", err)
	}
	e, ok := m.routes.get(dst)
	if e.busy {
		// An earlier change of this batch is on the same destination: it goes first.
		m.flush(done)
		e, ok = m.routes.get(dst)
	}
	if remove {
		if !ok {
			return nil
		}
		m.swap(&e.desired, 0)
		e.stale = false
		if e.applied != 0 {
			m.queue(dst, &e, OpDelete, idx)
		}
		m.store(dst, e)
		return nil
	}
	m.swap(&e.desired, m.intern(hops))
	e.stale = false
	if e.applied != e.desired {
		m.queue(dst, &e, m.installKind(&e), idx)
	}
	m.routes.set(dst, e)
	return nil
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
	for dst, e := range m.routes.all {
		m.swap(&e.desired, 0)
		e.stale = e.applied != 0
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
// ours that is not desired. With a Batcher Table the deletes go in batches.
func (m *Manager) SweepStale(remove func(dst netip.Prefix, nextHops []netip.Addr) bool) (removed, left int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs errCollector
	done := func(_ *pendingOp, err error) {
		if err != nil {
			errs.add(err)
			left++
			return
		}
		removed++
	}
	for dst, e := range m.routes.all {
		if !e.stale || e.desired != 0 {
			continue
		}
		if !remove(dst, m.addrs(e.applied)) {
			left++
			continue
		}
		m.queue(dst, &e, OpDelete, -1)
		m.routes.set(dst, e)
		if len(m.pend) >= maxBatch {
			m.flush(done)
		}
	}
	m.flush(done)
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
// routes of other protocols or tables. It holds the Manager for the duration: Set and Remove wait. With a Batcher
// Table the repairs go in batches.
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
	done := func(p *pendingOp, err error) {
		switch {
		case err != nil:
			errs.add(err)
		case p.kind == OpDelete:
			removed++
		default:
			repaired++
		}
	}
	for dst, e := range m.routes.all {
		switch {
		case e.desired != 0 && e.applied != e.desired:
			m.queue(dst, &e, m.installKind(&e), -1)
		case e.desired == 0 && e.applied != 0 && (m.swept || !e.stale):
			m.queue(dst, &e, OpDelete, -1)
		default:
			continue
		}
		m.routes.set(dst, e)
		if len(m.pend) >= maxBatch {
			m.flush(done)
		}
	}
	m.flush(done)
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
	out := make([]Route, 0, m.routes.len())
	for dst, e := range m.routes.all {
		if e.desired != 0 {
			out = append(out, Route{Dst: dst, NextHops: slices.Clone(m.addrs(e.desired))})
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
		e, existed := m.routes.get(dst)
		m.setApplied(&e, m.intern(hops))
		e.seen = m.gen
		if !existed {
			e.stale = !m.swept
		}
		m.routes.set(dst, e)
	}
	for dst, e := range m.routes.all {
		if e.seen != m.gen && e.applied != 0 {
			m.setApplied(&e, 0) // gone from the kernel behind our back
			e.stale = false
			m.store(dst, e)
		}
	}
}

// installKind is how e.desired goes into the kernel: Add if we have no route there (so another protocol's route
// is not replaced) and the Table can, Replace if we have.
func (m *Manager) installKind(e *entry) OpKind {
	if e.applied == 0 && (m.add != nil || m.batch != nil) {
		return OpAdd
	}
	return OpReplace
}

// install applies e.desired to the kernel with one Table call.
func (m *Manager) install(dst netip.Prefix, e *entry) error {
	r := Route{Dst: dst, NextHops: m.addrs(e.desired)}
	var err error
	if e.applied == 0 && m.add != nil {
		err = m.add(r)
	} else {
		err = m.t.Replace(r)
	}
	return m.installed(dst, e, e.desired, err)
}

// installed records the outcome of installing hop set id on dst.
func (m *Manager) installed(dst netip.Prefix, e *entry, id uint32, err error) error {
	if err != nil {
		installErrors.Inc()
		return fmt.Errorf("routes: install %s: %w", Route{Dst: dst, NextHops: m.addrs(id)}, err)
	}
	installOps.Inc()
	if m.log.Enabled(context.Background(), slog.LevelDebug) {
		m.log.Debug("routes: installed", "dst", dst, "via", m.addrs(id))
	}
	m.setApplied(e, id)
	e.stale = false
	return nil
}

func (m *Manager) delete(dst netip.Prefix, e *entry) error {
	return m.deleted(dst, e, m.t.Delete(dst))
}

// deleted records the outcome of deleting dst.
func (m *Manager) deleted(dst netip.Prefix, e *entry, err error) error {
	if err != nil {
		deleteErrors.Inc()
		return fmt.Errorf("routes: delete %s: %w", dst, err)
	}
	deleteOps.Inc()
	if m.log.Enabled(context.Background(), slog.LevelDebug) {
		m.log.Debug("routes: deleted", "dst", dst)
	}
	m.setApplied(e, 0)
	e.stale = false
	return nil
}

// maxBatch is how many kernel ops a Manager hands the Table in one Batch call, at most (and so how many routes
// it holds itself for, in SetMany).
const maxBatch = 1024

// pendingOp is an op of the batch being built: what it does to which destination, for which change.
type pendingOp struct {
	dst  netip.Prefix
	hops uint32 // the hop set installed (OpAdd, OpReplace)
	kind OpKind
	idx  int32 // SetMany: index of the change; -1 otherwise
}

// queue adds the op to the batch being built and marks e busy; the caller stores e. Called with m.mu held.
func (m *Manager) queue(dst netip.Prefix, e *entry, kind OpKind, idx int32) {
	p := pendingOp{dst: dst, kind: kind, idx: idx}
	op := Op{Kind: kind, Route: Route{Dst: dst}}
	if kind != OpDelete {
		p.hops = e.desired
		op.Route.NextHops = m.addrs(e.desired)
	}
	e.busy = true
	m.pend = append(m.pend, p)
	m.ops = append(m.ops, op)
}

// flush sends the batch being built to the Table (one Batch call, or one call per op for a Table without Batch),
// records every outcome in its entry like Set and Remove do, and calls done for each op with its error (wrapped
// as Set's and Remove's). Called with m.mu held.
func (m *Manager) flush(done func(*pendingOp, error)) {
	if len(m.pend) == 0 {
		return
	}
	var errs []error
	if m.batch != nil {
		errs = m.batch(m.ops)
	} else {
		errs = m.single(m.ops)
	}
	var nInst, nDel int
	for k := range m.pend {
		p := &m.pend[k]
		var err error
		if errs != nil {
			err = errs[k]
		}
		e, _ := m.routes.get(p.dst)
		e.busy = false
		if p.kind == OpDelete {
			if err != nil {
				deleteErrors.Inc()
				err = fmt.Errorf("routes: delete %s: %w", p.dst, err)
			} else {
				nDel++
				m.setApplied(&e, 0)
				e.stale = false
			}
		} else {
			if err != nil {
				installErrors.Inc()
				err = fmt.Errorf("routes: install %s: %w", Route{Dst: p.dst, NextHops: m.addrs(p.hops)}, err)
			} else {
				nInst++
				m.setApplied(&e, p.hops)
				e.stale = false
			}
		}
		m.store(p.dst, e)
		done(p, err)
	}
	installOps.Add(float64(nInst))
	deleteOps.Add(float64(nDel))
	if m.log.Enabled(context.Background(), slog.LevelDebug) {
		m.log.Debug("routes: batch applied", "ops", len(m.pend), "installed", nInst, "deleted", nDel, "errors", len(m.pend)-nInst-nDel)
	}
	clear(m.ops) // drop the references to next-hop slices
	m.ops, m.pend = m.ops[:0], m.pend[:0]
}

// single applies ops with one Table call each (a Table without Batch).
func (m *Manager) single(ops []Op) []error {
	res := batchErrs{n: len(ops)}
	for i := range ops {
		var err error
		switch op := &ops[i]; {
		case op.Kind == OpDelete:
			err = m.t.Delete(op.Route.Dst)
		case op.Kind == OpAdd && m.add != nil:
			err = m.add(op.Route)
		default:
			err = m.t.Replace(op.Route)
		}
		if err != nil {
			res.set(i, err)
		}
	}
	return res.errs
}

// store writes e back, or forgets dst when nothing is desired or applied.
func (m *Manager) store(dst netip.Prefix, e entry) {
	if e.desired == 0 && e.applied == 0 && !e.busy {
		m.routes.del(dst)
		return
	}
	m.routes.set(dst, e)
}

// intern returns the id of the shared hop set for hops (sorted, unique). A new set has no references: the caller
// must put it in an entry slot with swap or setApplied right away.
func (m *Manager) intern(hops []netip.Addr) uint32 {
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
	if id, ok := m.sets[string(b)]; ok {
		return id
	}
	hs := hopSet{addrs: slices.Clone(hops), key: string(b)}
	var id uint32
	if n := len(m.free); n > 0 {
		id = m.free[n-1]
		m.free = m.free[:n-1]
		m.hops[id] = hs
	} else {
		id = uint32(len(m.hops))
		m.hops = append(m.hops, hs)
	}
	m.sets[hs.key] = id
	return id
}

// addrs returns the next hops of set id (nil for 0). They are shared: never modify them.
func (m *Manager) addrs(id uint32) []netip.Addr {
	if id == 0 {
		return nil
	}
	return m.hops[id].addrs
}

// swap points *slot at set id, keeping reference counts; a set nobody refers to any more is released.
func (m *Manager) swap(slot *uint32, id uint32) {
	old := *slot
	if old == id {
		return
	}
	if id != 0 {
		m.hops[id].refs++
	}
	*slot = id
	if old != 0 {
		hs := &m.hops[old]
		hs.refs--
		if hs.refs <= 0 {
			delete(m.sets, hs.key)
			*hs = hopSet{}
			m.free = append(m.free, old)
		}
	}
}

// setApplied is swap on e.applied, keeping the installed-routes gauge.
func (m *Manager) setApplied(e *entry, id uint32) {
	was := e.applied != 0
	m.swap(&e.applied, id)
	switch is := id != 0; {
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
	for _, e := range m.routes.all {
		if e.applied != 0 {
			installed++
			if e.stale {
				stale++
			}
		}
	}
	return installed, stale
}
