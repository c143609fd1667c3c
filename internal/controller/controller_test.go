package controller

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/cache"
)

// recorder is a controller's Full and Sync that record their calls and fail while told to.
type recorder struct {
	mu       sync.Mutex
	fulls    int
	batches  [][]string
	failFull int // fail this many Full calls
	failSync int
	firsts   int
	block    chan struct{} // Full waits on it when set
}

func (r *recorder) full(ctx context.Context) error {
	r.mu.Lock()
	block := r.block
	r.mu.Unlock()
	if block != nil {
		<-block
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fulls++
	if r.failFull > 0 {
		r.failFull--
		return errors.New("full failed")
	}
	return nil
}

func (r *recorder) sync(_ context.Context, keys []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, slices.Clone(keys))
	if r.failSync > 0 {
		r.failSync--
		return errors.New("sync failed")
	}
	return nil
}

func (r *recorder) snapshot() (fulls int, batches [][]string, firsts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fulls, slices.Clone(r.batches), r.firsts
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func start(t *testing.T, cfg Config) (*Controller, context.CancelFunc) {
	t.Helper()
	c := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return c, cancel
}

// The first sync is Full and waits for the caches; a failing first Full is retried, keys queued meanwhile are
// folded into Full syncs, and OnFirstSync runs once, only after a Full sync succeeded.
func TestFirstSyncIsFullAndRetried(t *testing.T) {
	r := &recorder{failFull: 2}
	var synced bool
	var smu sync.Mutex
	c, _ := start(t, Config{Name: "t", Full: r.full, Sync: r.sync,
		Synced:      []cache.InformerSynced{func() bool { smu.Lock(); defer smu.Unlock(); return synced }},
		OnFirstSync: func() { r.mu.Lock(); r.firsts++; r.mu.Unlock() }})
	c.Enqueue("a", "b")
	time.Sleep(150 * time.Millisecond)
	if f, b, _ := r.snapshot(); f != 0 || len(b) != 0 {
		t.Fatalf("synced before the caches: fulls %d, batches %v", f, b)
	}
	smu.Lock()
	synced = true
	smu.Unlock()
	waitFor(t, "a successful first Full", func() bool { _, _, n := r.snapshot(); return n == 1 })
	fulls, batches, _ := r.snapshot()
	if fulls < 3 {
		t.Errorf("fulls = %d, want at least 3 (two failures, then success)", fulls)
	}
	if len(batches) != 0 {
		t.Errorf("keys queued before the first successful Full went to Sync: %v", batches)
	}
	if !c.Ready() {
		t.Error("not Ready after the first Full")
	}
	c.Enqueue("c")
	waitFor(t, "Sync of c", func() bool { _, b, _ := r.snapshot(); return len(b) > 0 })
	_, batches, firsts := r.snapshot()
	if firsts != 1 || !slices.Contains(batches[len(batches)-1], "c") {
		t.Errorf("after ready: firsts %d, batches %v", firsts, batches)
	}
}

// Keys queued while a sync runs are coalesced into one batch; a failed batch is retried.
func TestBatchesAndRetries(t *testing.T) {
	r := &recorder{}
	c, _ := start(t, Config{Name: "t", Full: r.full, Sync: r.sync})
	waitFor(t, "ready", c.Ready)
	r.mu.Lock()
	r.failSync = 1
	r.mu.Unlock()
	c.Enqueue("x", "y", "x")
	waitFor(t, "retry", func() bool { _, b, _ := r.snapshot(); return len(b) >= 2 })
	_, b, _ := r.snapshot()
	for _, batch := range b[:2] {
		slices.Sort(batch)
		if !slices.Equal(batch, []string{"x", "y"}) {
			t.Errorf("batch %v, want [x y] (coalesced, then retried whole)", batch)
		}
	}
}

// Without Sync every batch is Full; Repair queues a Full through the queue after BeforeRepair.
func TestRepairAndFullOnly(t *testing.T) {
	r := &recorder{}
	var before int
	var mu sync.Mutex
	c, _ := start(t, Config{Name: "t", Full: r.full, Repair: 20 * time.Millisecond,
		BeforeRepair: func() { mu.Lock(); before++; mu.Unlock() }})
	waitFor(t, "repairs", func() bool { f, _, _ := r.snapshot(); return f >= 4 })
	mu.Lock()
	if before < 3 {
		t.Errorf("BeforeRepair ran %d times", before)
	}
	mu.Unlock()
	c.Enqueue("k")
	n, _, _ := r.snapshot()
	waitFor(t, "Full for a key", func() bool { f, _, _ := r.snapshot(); return f > n })
}

// Healthy fails while one sync runs longer than WedgeAfter, and recovers when it ends.
func TestHealthyReportsAWedgedSync(t *testing.T) {
	r := &recorder{block: make(chan struct{})}
	c, _ := start(t, Config{Name: "t", Full: r.full, WedgeAfter: 50 * time.Millisecond})
	time.Sleep(120 * time.Millisecond)
	if err := c.Healthy(); err == nil {
		t.Fatal("Healthy = nil while the first sync is stuck")
	}
	close(r.block)
	waitFor(t, "ready", c.Ready)
	if err := c.Healthy(); err != nil {
		t.Fatalf("Healthy after the sync ended: %v", err)
	}
}

// The keys queued before the first sync (the informers' initial list: thousands, more than a Batch) are all
// covered by the first Full: none goes to Sync after it, and there is one Full, not a second one for the
// queued Full key.
func TestFirstFullTakesEveryQueuedKey(t *testing.T) {
	r := &recorder{}
	var synced bool
	var smu sync.Mutex
	c, _ := start(t, Config{Name: "t", Full: r.full, Sync: r.sync, Batch: 10,
		Synced: []cache.InformerSynced{func() bool { smu.Lock(); defer smu.Unlock(); return synced }}})
	for i := range 2500 {
		c.Enqueue(string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676)))
	}
	smu.Lock()
	synced = true
	smu.Unlock()
	waitFor(t, "ready", c.Ready)
	c.Enqueue("after")
	waitFor(t, "Sync of the key queued after the first sync", func() bool { _, b, _ := r.snapshot(); return len(b) > 0 })
	fulls, batches, _ := r.snapshot()
	if fulls != 1 || len(batches) != 1 || !slices.Equal(batches[0], []string{"after"}) {
		t.Errorf("fulls %d, batches %d (first %v): want one Full, then only [after]", fulls, len(batches), batches[0][:min(3, len(batches[0]))])
	}
}
