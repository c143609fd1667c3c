package proxy

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/tools/cache"

	"canopy.io/canopy/internal/controller"
	"canopy.io/canopy/internal/model"
)

var (
	syncDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "canopy_proxy_sync_duration_seconds", Help: "Time to program a batch of changed service ports.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"backend"})
	syncErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_proxy_sync_errors_total", Help: "Back end syncs that failed (retried).",
	}, []string{"backend"})
	changeToKernel = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "canopy_proxy_change_to_kernel_seconds",
		Help:    "From a Service or EndpointSlice change reaching the proxy to the end of the back-end transaction that programs it (the oldest change a sync takes; with the coalescing and pacing waits).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"backend"})
	servicePorts = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "canopy_proxy_service_ports", Help: "Service ports the proxy programs.",
	})
)

// Collectors returns the package's metrics.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{syncDuration, syncErrors, changeToKernel, servicePorts}
}

// Controller programs the Service model's ports into the back end. The model hands it the keys of the Services
// that changed; it rebuilds only those and hands the back end only their port keys, so adding one Service to
// 10,000 touches one Service. Its first full sync programs every Service; only after it succeeded does the back
// end prune what an earlier run left.
type Controller struct {
	backend Backend
	tracker *model.ServiceTracker
	health  *HealthChecks // nil = none
	log     *slog.Logger
	ctrl    *controller.Controller
	start   func() error // nil: the back end was started before

	mu      sync.Mutex
	desired map[string]*model.ServicePort // by port key
	bySvc   map[string][]string           // service key -> its port keys

	// Coalescing: the keys the model changed that no sync has taken yet, and when the last one came. An
	// incremental sync waits until no key came for quiet (at most hold) and then takes every dirty key, so a
	// Service and its EndpointSlice arriving a few ms apart make one back-end transaction, not two (at 10,000
	// Services each nftables transaction that adds a jump costs the kernel ~55 ms of validation).
	dmu         sync.Mutex
	dirty       map[string]bool
	lastDirty   time.Time
	firstDirty  time.Time // when the oldest dirty key came (zero: none)
	quiet, hold time.Duration

	// Pacing: debt is SyncPace times the back end's time in syncs, paid back by the time between them. A
	// sync waits until the debt is down to the credit (SyncBurst syncs like the last one, at least
	// SyncCredit), at most SyncPaceMax. A lone change, or a Service and then its slice, sync at once; under
	// a stream of changes (a bulk load, churn) the back end is busy at most 1/(SyncPace+1) of the time, each
	// sync taking everything that came meanwhile. At 10,000 Services every nftables transaction costs the
	// kernel ~50 ms of table validation whatever its size, so fewer, larger transactions are most of what a
	// bulk load costs (kube-proxy's minSyncPeriod, adaptive).
	debt     time.Duration
	debtAt   time.Time
	lastTook time.Duration
	pace     int
}

// Coalescing defaults (Controller.quiet and hold): a lone change waits SyncQuiet, a burst at most SyncHold.
const (
	SyncQuiet = 10 * time.Millisecond
	SyncHold  = 30 * time.Millisecond
)

// Pacing defaults (see Controller.debt).
const (
	SyncPace    = 19
	SyncBurst   = 2
	SyncCredit  = 500 * time.Millisecond
	SyncPaceMax = time.Second
)

// NewController subscribes to the tracker. repair > 0 re-applies every port that often (the back end repairs
// drift without rewriting what is right). health (nil = none) follows the Local LoadBalancer services.
func NewController(tracker *model.ServiceTracker, backend Backend, health *HealthChecks, repair time.Duration, log *slog.Logger) *Controller {
	c := &Controller{backend: backend, tracker: tracker, health: health, log: log,
		desired: map[string]*model.ServicePort{}, bySvc: map[string][]string{},
		dirty: map[string]bool{}, quiet: SyncQuiet, hold: SyncHold, pace: SyncPace}
	syncErrors.WithLabelValues(backend.Name()) // the series exists from the start (0)
	c.ctrl = controller.New(controller.Config{
		Name: "proxy", Synced: []cache.InformerSynced{tracker.HasSynced},
		Full: c.full, Sync: c.sync, Repair: repair, Log: log,
		OnFirstSync: func() {
			if err := backend.PruneStale(); err != nil {
				log.Warn("removing services a previous run left", "backend", backend.Name(), "err", err)
			}
		},
	})
	tracker.Subscribe(func(keys []string) {
		c.dmu.Lock()
		now := time.Now()
		if len(c.dirty) == 0 {
			c.firstDirty = now
		}
		for _, k := range keys {
			c.dirty[k] = true
		}
		c.lastDirty = now
		c.dmu.Unlock()
		c.ctrl.Enqueue(keys...)
	})
	return c
}

// takeDirty waits until the model has been quiet for c.quiet (at most c.hold from now) if any of keys is still
// dirty, then takes every dirty key (those of this batch and those that came meanwhile). Keys of the batch that
// an earlier sync took already are not returned: it applied them as the model was then or later. since is
// when the oldest of them came.
func (c *Controller) takeDirty(keys []string) (taken []string, since time.Time) {
	deadline := time.Now().Add(c.hold)
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !slices.ContainsFunc(keys, func(k string) bool { return c.dirty[k] }) {
		return nil, time.Time{}
	}
	for {
		now := time.Now()
		wait := min(c.quiet-now.Sub(c.lastDirty), deadline.Sub(now))
		wait = max(wait, c.paceWait(now))
		if wait <= 0 {
			break
		}
		c.dmu.Unlock()
		time.Sleep(wait)
		c.dmu.Lock()
	}
	taken = make([]string, 0, len(c.dirty))
	for k := range c.dirty {
		taken = append(taken, k)
	}
	clear(c.dirty)
	since, c.firstDirty = c.firstDirty, time.Time{}
	slices.Sort(taken)
	return taken, since
}

// paceWait is how long a sync must still wait for the debt to fall to the credit (c.dmu held).
func (c *Controller) paceWait(now time.Time) time.Duration {
	return c.debt - now.Sub(c.debtAt) - c.credit()
}

// credit is the debt a sync may start with: SyncBurst syncs like the last one (so a Service and then its
// slice never wait, whatever the table's size), at least SyncCredit.
func (c *Controller) credit() time.Duration {
	return max(SyncCredit, time.Duration(SyncBurst*c.pace)*c.lastTook)
}

// paid adds a sync that took took to the debt.
func (c *Controller) paid(took time.Duration) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	now := time.Now()
	c.lastTook = took
	c.debt = max(0, c.debt-now.Sub(c.debtAt)) + time.Duration(c.pace)*took
	c.debt = min(c.debt, c.credit()+SyncPaceMax)
	c.debtAt = now
}

// redirty gives keys back after a failed sync (the retry takes them again), with when they came.
func (c *Controller) redirty(keys []string, since time.Time) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.firstDirty.IsZero() || since.Before(c.firstDirty) {
		c.firstDirty = since
	}
	for _, k := range keys {
		c.dirty[k] = true
	}
}

// StartBackendFirst makes Run call start (the back end's Start, which reads what an earlier run left) before
// anything else, retried until it succeeds: in the proxy's own goroutine, while the informers list, so neither
// waits for the other. Call it before Run.
func (c *Controller) StartBackendFirst(start func() error) { c.start = start }

// Run programs every Service once, then follows changes until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	for wait := time.Second; c.start != nil; wait = min(2*wait, 30*time.Second) {
		t0 := time.Now()
		err := c.start()
		if err == nil {
			c.log.Info("service proxy back end started", "backend", c.backend.Name(), "took", time.Since(t0).Round(time.Millisecond))
			break
		}
		c.log.Error("starting the service proxy back end; retrying", "backend", c.backend.Name(), "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	c.ctrl.Run(ctx)
}

// Controller is the proxy's loop (for health and readiness).
func (c *Controller) Controller() *controller.Controller { return c.ctrl }

// full syncs every Service the model has and every one programmed before; the back end is called even when
// nothing changed (the first sync lets it take over what a previous run left, also with no Service at all).
func (c *Controller) full(context.Context) error {
	c.dmu.Lock() // before reading the model: a key dirtied from now on is synced again after this
	clear(c.dirty)
	c.firstDirty = time.Time{}
	c.dmu.Unlock()
	keys := c.tracker.Keys()
	c.mu.Lock()
	for k := range c.bySvc {
		keys = append(keys, k)
	}
	c.mu.Unlock()
	slices.Sort(keys)
	return c.apply(slices.Compact(keys), true)
}

func (c *Controller) sync(_ context.Context, keys []string) error {
	taken, since := c.takeDirty(keys)
	if len(taken) == 0 {
		return nil
	}
	if err := c.apply(taken, false); err != nil {
		c.redirty(taken, since)
		return err
	}
	if !since.IsZero() {
		changeToKernel.WithLabelValues(c.backend.Name()).Observe(time.Since(since).Seconds())
	}
	return nil
}

// apply rebuilds the given Services from the model and syncs the back end for their old and new port keys.
func (c *Controller) apply(keys []string, force bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var changed []string
	for _, key := range keys {
		old := c.bySvc[key]
		for _, k := range old {
			delete(c.desired, k)
		}
		changed = append(changed, old...)
		var now []string
		for _, p := range c.tracker.Ports(key) {
			c.desired[p.Key] = p
			now = append(now, p.Key)
		}
		changed = append(changed, now...)
		if len(now) == 0 {
			delete(c.bySvc, key)
		} else {
			c.bySvc[key] = now
		}
	}
	slices.Sort(changed)
	changed = slices.Compact(changed)
	servicePorts.Set(float64(len(c.desired)))
	if len(changed) == 0 && !force {
		return nil
	}
	t0 := time.Now()
	err := c.backend.Sync(c.desired, changed)
	took := time.Since(t0)
	c.paid(took)
	syncDuration.WithLabelValues(c.backend.Name()).Observe(took.Seconds())
	if err != nil {
		syncErrors.WithLabelValues(c.backend.Name()).Inc()
		return err
	}
	c.log.Debug("service proxy synced", "backend", c.backend.Name(), "ports", len(changed), "took", time.Since(t0))
	if c.health != nil && c.health.relevant(c.desired, changed) {
		c.health.Sync(c.desired)
	}
	return nil
}

// Ports returns how many service ports the back end programs.
func (c *Controller) Ports() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.desired)
}

// Backend is the back end's name.
func (c *Controller) Backend() string { return c.backend.Name() }
