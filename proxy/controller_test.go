package proxy

import (
	"context"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"canopy.io/canopy/internal/model"
)

// recordingBackend records every Sync's changed keys.
type recordingBackend struct {
	mu    sync.Mutex
	syncs [][]string
	have  map[string]*model.ServicePort
}

func (r *recordingBackend) Name() string         { return "recording" }
func (r *recordingBackend) Start() error         { return nil }
func (r *recordingBackend) PruneStale() error    { return nil }
func (r *recordingBackend) Cleanup() error       { return nil }
func (r *recordingBackend) Schedulers() []string { return []string{"random"} }
func (r *recordingBackend) Sync(desired map[string]*model.ServicePort, changed []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncs = append(r.syncs, slices.Clone(changed))
	if r.have == nil {
		r.have = map[string]*model.ServicePort{}
	}
	for _, k := range changed {
		if p, ok := desired[k]; ok {
			r.have[k] = p
		} else {
			delete(r.have, k)
		}
	}
	return nil
}
func (r *recordingBackend) last() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.syncs) == 0 {
		return nil, len(r.have)
	}
	return r.syncs[len(r.syncs)-1], len(r.have)
}

func testService(ns, name, ip string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP}}},
	}
}

func testSlice(ns, svc string, ips ...string) *discoveryv1.EndpointSlice {
	port, name, proto := int32(8080), "http", corev1.ProtocolTCP
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-abc", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	ready := true
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return s
}

// TestControllerIsIncremental: with 10,000 services programmed, adding one hands the back end only that
// service's port; an endpoint change likewise; a deletion hands only the deleted key.
func TestControllerIsIncremental(t *testing.T) {
	const n = 10000
	kube := fake.NewSimpleClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range n {
		ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		if _, err := kube.CoreV1().Services("default").Create(ctx, testService("default", fmt.Sprintf("s%d", i), ip), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.DiscoveryV1().EndpointSlices("default").Create(ctx, testSlice("default", fmt.Sprintf("s%d", i), "10.244.1.2", "10.244.2.2"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	be := &recordingBackend{}
	startController(ctx, kube, be, nil)
	wait := func(what string, f func() bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !f() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("all services programmed", func() bool { _, have := be.last(); return have == n })

	if _, err := kube.CoreV1().Services("other").Create(ctx, testService("other", "new", "10.96.200.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the new service programmed", func() bool { _, have := be.last(); return have == n+1 })
	if got, _ := be.last(); !slices.Equal(got, []string{"other/new:http/TCP"}) {
		t.Fatalf("adding one service to %d synced %d keys: %v", n, len(got), got[:min(5, len(got))])
	}

	s7, _ := kube.DiscoveryV1().EndpointSlices("default").Get(ctx, "s7-abc", metav1.GetOptions{})
	s7.Endpoints = s7.Endpoints[:1]
	before := len(be.syncs)
	if _, err := kube.DiscoveryV1().EndpointSlices("default").Update(ctx, s7, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the endpoint change synced", func() bool { be.mu.Lock(); defer be.mu.Unlock(); return len(be.syncs) > before })
	if got, _ := be.last(); !slices.Equal(got, []string{"default/s7:http/TCP"}) {
		t.Fatalf("an endpoint change synced %v", got)
	}
	if len(be.have["default/s7:http/TCP"].ClusterEndpoints) != 1 {
		t.Fatalf("endpoints after the change: %+v", be.have["default/s7:http/TCP"].ClusterEndpoints)
	}

	if err := kube.CoreV1().Services("default").Delete(ctx, "s9", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the deletion synced", func() bool { _, have := be.last(); return have == n })
	if got, _ := be.last(); !slices.Equal(got, []string{"default/s9:http/TCP"}) {
		t.Fatalf("a deletion synced %v", got)
	}
}

// TestControllerStartsBackendFirst: with StartBackendFirst, Run starts the back end (retrying a failure) before
// its first sync, and no sync reaches the back end before its start succeeded.
func TestControllerStartsBackendFirst(t *testing.T) {
	kube := fake.NewSimpleClientset(testService("default", "a", "10.96.0.10"), testSlice("default", "a", "10.244.1.2"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be := &recordingBackend{}
	factory := informers.NewSharedInformerFactory(kube, 0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tracker := model.NewServiceTracker(factory, model.Options{NodeName: "n1", Schedulers: be.Schedulers()}, model.Admission{}, nil, log)
	c := NewController(tracker, be, nil, 0, log)
	var mu sync.Mutex
	starts := 0
	c.StartBackendFirst(func() error {
		mu.Lock()
		defer mu.Unlock()
		starts++
		if _, have := be.last(); have != 0 {
			t.Error("the back end was synced before it started")
		}
		if starts == 1 {
			return fmt.Errorf("first start fails")
		}
		return nil
	})
	factory.Start(ctx.Done())
	go tracker.Run(ctx)
	go c.Run(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, have := be.last(); have == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the service was never programmed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if starts != 2 {
		t.Fatalf("back end started %d times, want 2 (one failure, retried)", starts)
	}
}

// flakyBackend fails Sync while fail > 0.
type flakyBackend struct {
	recordingBackend
	fail int
}

func (f *flakyBackend) Sync(desired map[string]*model.ServicePort, changed []string) error {
	f.mu.Lock()
	if f.fail > 0 && len(changed) > 0 {
		f.fail--
		f.mu.Unlock()
		return fmt.Errorf("sync fails")
	}
	f.mu.Unlock()
	return f.recordingBackend.Sync(desired, changed)
}

// TestControllerCoalesces: a Service and its EndpointSlice written a few ms apart reach the back end in one
// Sync (with both endpoints), not two; a lone change still syncs after the quiet time; a failed coalesced sync
// is retried with every key it took.
func TestControllerCoalesces(t *testing.T) {
	kube := fake.NewSimpleClientset(testService("default", "a", "10.96.0.10"), testSlice("default", "a", "10.244.1.2"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be := &flakyBackend{}
	c := startController(ctx, kube, be, func(c *Controller) {
		c.quiet, c.hold = 300*time.Millisecond, time.Second // the machine may be loaded: timings far from 3 ms
	})
	wait := func(what string, f func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !f(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
		}
	}
	syncs := func() int { be.mu.Lock(); defer be.mu.Unlock(); return len(be.syncs) }
	wait("the first sync", func() bool { _, have := be.last(); return have == 1 })

	for i, failFirst := range []bool{false, true} {
		be.mu.Lock()
		be.fail = map[bool]int{false: 0, true: 1}[failFirst]
		be.mu.Unlock()
		before := syncs()
		name := fmt.Sprintf("new%d", i)
		key := "other/" + name + ":http/TCP"
		if _, err := kube.CoreV1().Services("other").Create(ctx, testService("other", name, fmt.Sprintf("10.96.200.%d", i+1)), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Millisecond)
		if _, err := kube.DiscoveryV1().EndpointSlices("other").Create(ctx, testSlice("other", name, "10.244.1.9", "10.244.2.9"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		wait("the new service with its endpoints", func() bool {
			be.mu.Lock()
			defer be.mu.Unlock()
			p := be.have[key]
			return p != nil && len(p.ClusterEndpoints) == 2
		})
		time.Sleep(2 * c.hold) // anything still queued shows
		if n := syncs() - before; n != 1 {
			t.Errorf("fail first %v: a Service and its slice 3 ms apart made %d back-end syncs, want 1: %v", failFirst, n, be.syncs[before:])
		}
	}

	// A lone change syncs once, after the quiet time; canopy_proxy_change_to_kernel_seconds counts it, at least
	// the quiet time.
	before := syncs()
	n0, sum0 := histogram(t, changeToKernel, be.Name())
	t0 := time.Now()
	if err := kube.CoreV1().Services("default").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the deletion", func() bool { be.mu.Lock(); defer be.mu.Unlock(); return be.have["default/a:http/TCP"] == nil })
	if took := time.Since(t0); took < c.quiet {
		t.Errorf("a lone change synced after %v, before the quiet time %v", took, c.quiet)
	}
	time.Sleep(2 * c.hold)
	if n := syncs() - before; n != 1 {
		t.Errorf("a lone deletion made %d syncs", n)
	}
	if n, sum := histogram(t, changeToKernel, be.Name()); n != n0+1 || sum-sum0 < c.quiet.Seconds() || sum-sum0 > time.Since(t0).Seconds() {
		t.Errorf("change to kernel: %d observations (want %d), %.3f s (want %v to %v)", n, n0+1, sum-sum0, c.quiet, time.Since(t0))
	}
}

// histogram reads the count and sum of c's series for backend.
func histogram(t *testing.T, c prometheus.Collector, backend string) (uint64, float64) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "backend" && l.GetValue() == backend {
					return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
				}
			}
		}
	}
	return 0, 0
}

// slowBackend takes d per Sync, like a kernel that validates a large table on every transaction.
type slowBackend struct {
	recordingBackend
	d time.Duration
}

func (s *slowBackend) Sync(desired map[string]*model.ServicePort, changed []string) error {
	time.Sleep(s.d)
	return s.recordingBackend.Sync(desired, changed)
}

// TestControllerPaces: under a stream of changes the back end syncs far less often than the coalescing alone
// would make it (each sync taking what came meanwhile), every change still arrives, and a lone change after
// the stream syncs without waiting out the stream's pace.
func TestControllerPaces(t *testing.T) {
	kube := fake.NewSimpleClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be := &slowBackend{d: 40 * time.Millisecond}
	startController(ctx, kube, be, nil)
	syncs := func() int { be.mu.Lock(); defer be.mu.Unlock(); return len(be.syncs) }
	programmed := func(key string) bool { be.mu.Lock(); defer be.mu.Unlock(); return be.have[key] != nil }
	waitFor := func(what string, f func() bool) time.Duration {
		t.Helper()
		t0 := time.Now()
		for deadline := t0.Add(30 * time.Second); !f(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
		}
		return time.Since(t0)
	}
	waitFor("the first sync", func() bool { return syncs() == 1 })

	// 100 Services, one every 20 ms (2 s): coalescing alone (quiet 10 ms, 40 ms per sync) synced 50 times;
	// paced (19x each sync's time, after two syncs of credit) 5 times.
	before := syncs()
	t0 := time.Now()
	const n = 100
	for i := range n {
		if _, err := kube.CoreV1().Services("d").Create(ctx, testService("d", fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.1.%d", i+1)), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stream := time.Since(t0)
	waitFor("every Service of the stream", func() bool { return programmed(fmt.Sprintf("d/s%d:http/TCP", n-1)) })
	for i := range n {
		if !programmed(fmt.Sprintf("d/s%d:http/TCP", i)) {
			t.Errorf("service d/s%d was not programmed", i)
		}
	}
	got := syncs() - before
	t.Logf("%d Services over %v: %d syncs of %v", n, stream.Round(time.Millisecond), got, be.d)
	if limit := int(stream/(time.Duration(SyncPace)*be.d)) + 6; got > limit { // unpaced: about 50
		t.Errorf("%d syncs for a stream of %v, want at most %d (one per %v of back-end time x %d, plus the credit)", got, stream, limit, be.d, SyncPace)
	}

	// After a pause the debt is paid: a lone change waits only the quiet time (and the back end's own).
	time.Sleep(SyncCredit + SyncPaceMax)
	if _, err := kube.CoreV1().Services("d").Create(ctx, testService("d", "lone", "10.96.2.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	took := waitFor("the lone Service", func() bool { return programmed("d/lone:http/TCP") })
	if took > 400*time.Millisecond {
		t.Logf("a lone change took %v (a loaded machine?)", took)
	}
	if took > SyncPaceMax {
		t.Errorf("a lone change after a pause took %v: the stream's pace held it", took)
	}
}

// startController runs a Controller over kube's Services and slices into be until ctx ends (tune, if not nil,
// adjusts it before it runs).
func startController(ctx context.Context, kube kubernetes.Interface, be Backend, tune func(*Controller)) *Controller {
	factory := informers.NewSharedInformerFactory(kube, 0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tracker := model.NewServiceTracker(factory, model.Options{NodeName: "n1", Schedulers: be.Schedulers()}, model.Admission{}, nil, log)
	c := NewController(tracker, be, nil, 0, log)
	if tune != nil {
		tune(c)
	}
	factory.Start(ctx.Done())
	go tracker.Run(ctx)
	go c.Run(ctx)
	return c
}
