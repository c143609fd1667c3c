// Package controller is the one loop every Canopy controller runs, so they all behave alike: wait for the caches
// they read, sync everything once, then follow changes in batches of queued keys, retry failures with a
// rate-limited back-off, repair drift periodically through the same queue, and stop cleanly.
//
// A controller brings only what is its own: the keys its event handlers queue (Enqueue), a Full sync (desired
// state from the caches, applied as a difference) and optionally an incremental Sync of a batch of keys. Until
// the first Full sync succeeded, every batch is a Full sync, so nothing is applied from a half-known world and
// OnFirstSync (e.g. pruning what an earlier run left) runs only after a successful one.
package controller

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// fullKey in the queue asks for a Full sync.
const fullKey = "\x00full"

// DefaultWedgeAfter is how long one sync may run before Healthy reports the controller wedged.
const DefaultWedgeAfter = 3 * time.Minute

// Config is what one controller brings to the loop.
type Config struct {
	// Name labels the queue, the metrics and the log lines.
	Name string
	// Synced are the informers' HasSynced (or any readiness function): the first sync waits for all of them.
	Synced []cache.InformerSynced
	// Full makes everything match the desired state (the first sync, repairs, and every batch until the first
	// Full sync succeeded). Required.
	Full func(ctx context.Context) error
	// Sync applies the desired state of the given keys only. nil: every batch is a Full sync.
	Sync func(ctx context.Context, keys []string) error
	// Batch is the most keys one Sync gets (0: 1000).
	Batch int
	// OnFirstSync runs once, after the first successful Full sync.
	OnFirstSync func()
	// Repair > 0 queues a Full sync that often (drift made by others is repaired; incremental work still goes
	// through Sync). BeforeRepair, if set, runs first (e.g. to forget what was applied, so the Full rewrites).
	Repair       time.Duration
	BeforeRepair func()
	// WedgeAfter: a sync running longer makes Healthy fail (0: DefaultWedgeAfter).
	WedgeAfter time.Duration
	Log        *slog.Logger
}

// Controller runs one Config.
type Controller struct {
	cfg   Config
	queue workqueue.TypedRateLimitingInterface[string]

	mu        sync.Mutex
	ready     bool
	busySince time.Time // zero: not syncing
	lastErr   error
}

var (
	syncSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "canopy_controller_sync_duration_seconds", Help: "Time one sync of a controller took (full or a batch of keys).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
	}, []string{"controller", "kind"})
	syncFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_controller_sync_errors_total", Help: "Syncs of a controller that failed (retried with back-off).",
	}, []string{"controller"})
	queuedKeys = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "canopy_controller_queue_keys", Help: "Keys waiting in a controller's queue.",
	}, []string{"controller"})
	firstSync = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "canopy_controller_first_sync_seconds",
		Help: "Seconds from the process's start to the end of a controller's first successful full sync (absent until then).",
	}, []string{"controller"})
)

// processStart is (about) when the process started: package variables are set before main runs.
var processStart = time.Now()

// Collectors returns the loop's metrics (every controller's, labelled by name).
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{syncSeconds, syncFailures, queuedKeys, firstSync}
}

// New returns a controller for cfg; its queue takes keys at once (Enqueue before Run is fine).
func New(cfg Config) *Controller {
	if cfg.Full == nil {
		panic("controller " + cfg.Name + ": Config.Full is required")
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 1000
	}
	if cfg.WedgeAfter <= 0 {
		cfg.WedgeAfter = DefaultWedgeAfter
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	// The series exist from the start (0), so a rate() or an alert on them sees the first failure.
	syncFailures.WithLabelValues(cfg.Name)
	queuedKeys.WithLabelValues(cfg.Name)
	return &Controller{cfg: cfg, queue: workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: cfg.Name})}
}

// Name is the controller's name.
func (c *Controller) Name() string { return c.cfg.Name }

// Enqueue queues keys for Sync (coalesced with those already queued).
func (c *Controller) Enqueue(keys ...string) {
	for _, k := range keys {
		c.queue.Add(k)
	}
}

// AddSynced adds a readiness function the first sync waits for (call before Run).
func (c *Controller) AddSynced(f cache.InformerSynced) { c.cfg.Synced = append(c.cfg.Synced, f) }

// EnqueueFull queues a Full sync.
func (c *Controller) EnqueueFull() { c.queue.Add(fullKey) }

// Run waits for the caches, syncs everything, and follows the queue until ctx ends. It returns once the work in
// hand is finished.
func (c *Controller) Run(ctx context.Context) {
	defer c.queue.ShutDown()
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), c.cfg.Synced...) {
		return
	}
	c.queue.Add(fullKey)
	if c.cfg.Repair > 0 {
		go c.repairLoop(ctx)
	}
	for {
		key, quit := c.queue.Get()
		if quit {
			return
		}
		batch := []string{key}
		// A Full sync covers every key queued before it starts (it reads the caches as they are then): it takes
		// them all, so the keys the informers queued while they listed (every object, before the first sync) or
		// during a repair are not synced once more, batch after batch, after it.
		c.mu.Lock()
		full := !c.ready || c.cfg.Sync == nil || key == fullKey
		c.mu.Unlock()
		for n := c.queue.Len(); n > 0 && (full || len(batch) < c.cfg.Batch); n-- {
			k, quit := c.queue.Get()
			if quit {
				break
			}
			batch = append(batch, k)
			full = full || k == fullKey
		}
		queuedKeys.WithLabelValues(c.cfg.Name).Set(float64(c.queue.Len()))
		err := c.process(ctx, batch)
		for _, k := range batch {
			if err != nil && ctx.Err() == nil {
				c.queue.AddRateLimited(k)
			} else {
				c.queue.Forget(k)
			}
			c.queue.Done(k)
		}
	}
}

// process runs one batch: a Full sync if it asks for one, or if no Full sync has succeeded yet.
func (c *Controller) process(ctx context.Context, batch []string) error {
	c.mu.Lock()
	full := !c.ready || c.cfg.Sync == nil || slices.Contains(batch, fullKey)
	c.busySince = time.Now()
	c.mu.Unlock()
	kind := "keys"
	if full {
		kind = "full"
	}
	t0 := time.Now()
	var err error
	if full {
		err = c.cfg.Full(ctx)
	} else {
		err = c.cfg.Sync(ctx, batch)
	}
	took := time.Since(t0)
	syncSeconds.WithLabelValues(c.cfg.Name, kind).Observe(took.Seconds())
	c.mu.Lock()
	c.busySince = time.Time{}
	c.lastErr = err
	first := err == nil && full && !c.ready
	if first {
		c.ready = true
	}
	c.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			syncFailures.WithLabelValues(c.cfg.Name).Inc()
			c.cfg.Log.Error("sync failed; retrying", "controller", c.cfg.Name, "full", full, "keys", len(batch), "err", err)
		}
		return err
	}
	if first {
		firstSync.WithLabelValues(c.cfg.Name).Set(time.Since(processStart).Seconds())
		c.cfg.Log.Info("first full sync done", "controller", c.cfg.Name, "took", took.Round(time.Millisecond),
			"since_start", time.Since(processStart).Round(time.Millisecond))
		if c.cfg.OnFirstSync != nil {
			c.cfg.OnFirstSync()
		}
	}
	return nil
}

func (c *Controller) repairLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.Repair)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if c.cfg.BeforeRepair != nil {
				c.cfg.BeforeRepair()
			}
			c.queue.Add(fullKey)
		}
	}
}

// Ready reports whether the first Full sync has succeeded.
func (c *Controller) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// Healthy returns an error when one sync has been running longer than WedgeAfter (the controller is stuck).
// Failing syncs are not unhealthy: they are retried, and restarting the agent would not help them.
func (c *Controller) Healthy() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.busySince.IsZero() {
		if d := time.Since(c.busySince); d > c.cfg.WedgeAfter {
			return fmt.Errorf("controller %s: one sync has been running for %s", c.cfg.Name, d.Round(time.Second))
		}
	}
	return nil
}

// LastError is the error of the last sync (nil if it succeeded).
func (c *Controller) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}
