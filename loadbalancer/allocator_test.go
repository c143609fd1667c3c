package loadbalancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// recorder is a record.EventRecorder that keeps events (record.FakeRecorder blocks when its buffer fills).
type recorder struct {
	mu     sync.Mutex
	events []event
}

type event struct{ obj, typ, reason, msg string }

func (r *recorder) Event(o runtime.Object, typ, reason, msg string) {
	name := fmt.Sprintf("%T", o)
	if m, ok := o.(metav1.Object); ok {
		name = m.GetNamespace() + "/" + m.GetName()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{name, typ, reason, msg})
}

func (r *recorder) Eventf(o runtime.Object, typ, reason, format string, args ...any) {
	r.Event(o, typ, reason, fmt.Sprintf(format, args...))
}

func (r *recorder) AnnotatedEventf(o runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	r.Event(o, typ, reason, fmt.Sprintf(format, args...))
}

// find returns the events about obj ("ns/name") with reason.
func (r *recorder) find(obj, reason string) []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []event
	for _, e := range r.events {
		if e.obj == obj && e.reason == reason {
			out = append(out, e)
		}
	}
	return out
}

func (r *recorder) all() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// count returns the number of objects with an event of reason. (Objects, not events: the fake clientset does
// not check resourceVersion, so a sync from a cache that has not seen the allocator's own write yet writes
// the same status again, where an API server would answer Conflict.)
func (r *recorder) count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	objs := map[string]bool{}
	for _, e := range r.events {
		if e.reason == reason {
			objs[e.obj] = true
		}
	}
	return len(objs)
}

// running is an Allocator started on its own informer factory.
type running struct {
	a      *Allocator
	rec    *recorder
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func testConfig(identity string, ranges ...string) Config {
	rs, err := ParseRanges(ranges)
	if err != nil {
		panic(err)
	}
	return Config{
		Ranges: rs, LeaseNamespace: "kube-system", Identity: identity,
		LeaseDuration: time.Second, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 100 * time.Millisecond,
	}
}

// watches counts the Service watches opened on each fake clientset.
var watches sync.Map // *fake.Clientset -> *atomic.Int64

// newKube returns a fake clientset that counts Service watches. The fake's watch does not resume from the
// list's resourceVersion, so a change made between an informer's List and its Watch is lost: start waits for
// the watch before it returns.
func newKube(objs ...runtime.Object) *fake.Clientset {
	kube := fake.NewClientset(objs...)
	n := &atomic.Int64{}
	watches.Store(kube, n)
	kube.PrependWatchReactor("services", func(action k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := action.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		w, err := kube.Tracker().Watch(action.GetResource(), action.GetNamespace(), opts)
		if err != nil {
			return true, nil, err
		}
		n.Add(1)
		return true, w, nil
	})
	return kube
}

func start(t *testing.T, kube *fake.Clientset, cfg Config) *running {
	t.Helper()
	v, ok := watches.Load(kube)
	if !ok {
		t.Fatal("use newKube")
	}
	before := v.(*atomic.Int64).Load()
	factory := informers.NewSharedInformerFactory(kube, 0)
	rec := &recorder{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("node", cfg.Identity)
	}
	a, err := New(cfg, kube, factory, rec, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	r := &running{a: a, rec: rec, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
		factory.Shutdown()
	})
	eventually(t, "the Service watch", func() bool { return v.(*atomic.Int64).Load() > before })
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

var created atomic.Int64

type svcOpt func(*corev1.Service)

func class(c string) svcOpt { return func(s *corev1.Service) { s.Spec.LoadBalancerClass = &c } }
func annotated(v string) svcOpt {
	return func(s *corev1.Service) { s.Annotations = map[string]string{AnnotationIPs: v} }
}
func specIP(v string) svcOpt { return func(s *corev1.Service) { s.Spec.LoadBalancerIP = v } }
func status(ip string) svcOpt {
	return func(s *corev1.Service) {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
}
func typ(t corev1.ServiceType) svcOpt { return func(s *corev1.Service) { s.Spec.Type = t } }

// svc returns a LoadBalancer Service "default/name", created after the ones before it.
func svc(name string, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: name,
			CreationTimestamp: metav1.NewTime(time.Unix(1_700_000_000+created.Add(1), 0)),
		},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
			Ports: []corev1.ServicePort{{Port: 80}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func create(t *testing.T, kube *fake.Clientset, s *corev1.Service) {
	t.Helper()
	if _, err := kube.CoreV1().Services(s.Namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, kube *fake.Clientset, name string) *corev1.Service {
	t.Helper()
	s, err := kube.CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// update applies f to a Service (the whole object, as a user's edit of spec or annotations would).
func update(t *testing.T, kube *fake.Clientset, name string, f func(*corev1.Service)) {
	t.Helper()
	s := get(t, kube, name)
	f(s)
	if _, err := kube.CoreV1().Services("default").Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, kube *fake.Clientset, name string) {
	t.Helper()
	if err := kube.CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ips returns the status addresses of a Service, joined by ",".
func ips(t *testing.T, kube *fake.Clientset, name string) string {
	t.Helper()
	var out []string
	for _, in := range get(t, kube, name).Status.LoadBalancer.Ingress {
		out = append(out, in.IP)
	}
	return strings.Join(out, ",")
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitIP(t *testing.T, kube *fake.Clientset, name, want string) {
	t.Helper()
	var got string
	deadline := time.Now().Add(5 * time.Second)
	for got = ips(t, kube, name); got != want; got = ips(t, kube, name) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s to have IP %q: it has %q", name, want, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settle waits long enough for a leading allocator to have handled earlier changes, for checks that
// something does not happen.
func settle() { time.Sleep(300 * time.Millisecond) }

func waitLeading(t *testing.T, r *running) {
	t.Helper()
	eventually(t, r.a.cfg.Identity+" to lead", r.a.Leading)
}

func TestNewValidates(t *testing.T) {
	kube := newKube()
	factory := informers.NewSharedInformerFactory(kube, 0)
	good := testConfig("n1", "10.0.0.0/30")
	for name, mod := range map[string]func(*Config){
		"no ranges":    func(c *Config) { c.Ranges = nil },
		"no namespace": func(c *Config) { c.LeaseNamespace = "" },
		"no identity":  func(c *Config) { c.Identity = "" },
		"bad timings":  func(c *Config) { c.RenewDeadline = 2 * c.LeaseDuration },
		"overlap":      func(c *Config) { c.Ranges = append(c.Ranges, c.Ranges...) },
	} {
		c := good
		mod(&c)
		if _, err := New(c, kube, factory, nil, nil); err == nil {
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
	a, err := New(good, kube, factory, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.Class != DefaultClass {
		t.Fatalf("class %q", a.cfg.Class)
	}
}

func TestAllocatesByClass(t *testing.T) {
	kube := newKube()
	r := start(t, kube, testConfig("n1", "10.0.0.0/29")) // 10.0.0.1-10.0.0.6
	waitLeading(t, r)
	create(t, kube, svc("plain"))
	waitIP(t, kube, "plain", "10.0.0.1")
	create(t, kube, svc("ours", class(DefaultClass)))
	waitIP(t, kube, "ours", "10.0.0.2")
	create(t, kube, svc("other", class("example.com/lb")))
	create(t, kube, svc("other-with-status", class("example.com/lb"), status("10.0.0.3")))
	create(t, kube, svc("clusterip", typ(corev1.ServiceTypeClusterIP)))
	create(t, kube, svc("nodeport", typ(corev1.ServiceTypeNodePort)))
	create(t, kube, svc("v6only", func(s *corev1.Service) { s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol} }))
	eventually(t, "an event for the IPv6-only Service", func() bool { return len(r.rec.find("default/v6only", ReasonUnavailable)) == 1 })
	settle()
	for name, want := range map[string]string{"other": "", "other-with-status": "10.0.0.3", "clusterip": "", "nodeport": "", "v6only": ""} {
		if got := ips(t, kube, name); got != want {
			t.Errorf("%s: status %q, want %q", name, got, want)
		}
	}
	s := get(t, kube, "plain")
	if in := s.Status.LoadBalancer.Ingress[0]; in.IPMode == nil || *in.IPMode != corev1.LoadBalancerIPModeVIP {
		t.Errorf("ingress %+v: want ipMode VIP", in)
	}
	if e := r.rec.find("default/plain", ReasonAllocated); len(e) == 0 || e[0].typ != corev1.EventTypeNormal || !strings.Contains(e[0].msg, "10.0.0.1") {
		t.Errorf("events %+v", e)
	}
	if got := testutil.ToFloat64(allocatedIPs); got != 2 {
		t.Errorf("allocated gauge %v, want 2", got)
	}
	if got := testutil.ToFloat64(poolSize); got != 6 {
		t.Errorf("pool size gauge %v, want 6", got)
	}
	if got := testutil.ToFloat64(leading); got != 1 {
		t.Errorf("leader gauge %v, want 1", got)
	}
}

func TestRequestedIP(t *testing.T) {
	kube := newKube()
	r := start(t, kube, testConfig("n1", "10.0.0.1-10.0.0.5"))
	waitLeading(t, r)

	create(t, kube, svc("ann", annotated("10.0.0.4")))
	waitIP(t, kube, "ann", "10.0.0.4")
	create(t, kube, svc("spec", specIP("10.0.0.3")))
	waitIP(t, kube, "spec", "10.0.0.3")
	create(t, kube, svc("both", annotated(" 10.0.0.5 "), specIP("10.0.0.2"))) // the annotation wins
	waitIP(t, kube, "both", "10.0.0.5")
	create(t, kube, svc("any"))
	waitIP(t, kube, "any", "10.0.0.1")

	failsBefore := testutil.ToFloat64(allocationFailures.WithLabelValues(failUnavailable))
	create(t, kube, svc("outside", annotated("10.9.0.1")))
	create(t, kube, svc("taken", specIP("10.0.0.4")))
	create(t, kube, svc("bad", annotated("10.0.0.x")))
	create(t, kube, svc("two", annotated("10.0.0.2,10.0.0.3")))
	eventually(t, "warnings", func() bool {
		return len(r.rec.find("default/outside", ReasonUnavailable)) == 1 && len(r.rec.find("default/taken", ReasonUnavailable)) == 1 &&
			len(r.rec.find("default/bad", ReasonInvalidRequest)) == 1 && len(r.rec.find("default/two", ReasonInvalidRequest)) == 1
	})
	if e := r.rec.find("default/outside", ReasonUnavailable)[0]; e.typ != corev1.EventTypeWarning || !strings.Contains(e.msg, "10.9.0.1") || !strings.Contains(e.msg, "not in the configured") {
		t.Errorf("event %+v", e)
	}
	if e := r.rec.find("default/taken", ReasonUnavailable)[0]; !strings.Contains(e.msg, "in use by default/ann") {
		t.Errorf("event %+v", e)
	}
	if got := testutil.ToFloat64(allocationFailures.WithLabelValues(failUnavailable)) - failsBefore; got < 2 {
		t.Errorf("unavailable failures counted %v, want >= 2", got)
	}
	settle()
	for _, name := range []string{"outside", "taken", "bad", "two"} {
		if got := ips(t, kube, name); got != "" {
			t.Errorf("%s: status %q, want empty", name, got)
		}
	}

	// The holder goes away: the Service that asked for its address gets it.
	del(t, kube, "ann")
	waitIP(t, kube, "taken", "10.0.0.4")

	// Changing the request moves the Service; its old address is free again.
	update(t, kube, "spec", func(s *corev1.Service) { s.Spec.LoadBalancerIP = "10.0.0.2" })
	waitIP(t, kube, "spec", "10.0.0.2")
	update(t, kube, "outside", func(s *corev1.Service) { s.Annotations[AnnotationIPs] = "10.0.0.3" })
	waitIP(t, kube, "outside", "10.0.0.3")

	// A request that no longer parses keeps the address the Service has.
	update(t, kube, "any", func(s *corev1.Service) { s.Annotations = map[string]string{AnnotationIPs: "garbage"} })
	eventually(t, "invalid request warning", func() bool { return len(r.rec.find("default/any", ReasonInvalidRequest)) == 1 })
	if e := r.rec.find("default/any", ReasonInvalidRequest)[0]; !strings.Contains(e.msg, "keeping 10.0.0.1") {
		t.Errorf("event %+v", e)
	}
	settle()
	if got := ips(t, kube, "any"); got != "10.0.0.1" {
		t.Errorf("any: status %q", got)
	}
}

// TestStableAcrossRestart: a new allocator rebuilds the allocations from the Services' status before it
// allocates, so nothing moves and new Services get free addresses.
func TestStableAcrossRestart(t *testing.T) {
	kube := newKube(
		svc("c", status("10.0.0.3")),
		svc("a", status("10.0.0.1")),
		svc("new1"),
	)
	cfg := testConfig("n1", "10.0.0.1-10.0.0.9")
	r := start(t, kube, cfg)
	waitIP(t, kube, "new1", "10.0.0.2")
	create(t, kube, svc("new2"))
	waitIP(t, kube, "new2", "10.0.0.4")
	settle()
	if ips(t, kube, "a") != "10.0.0.1" || ips(t, kube, "c") != "10.0.0.3" {
		t.Fatalf("existing Services moved: a=%s c=%s", ips(t, kube, "a"), ips(t, kube, "c"))
	}
	if n := len(r.rec.find("default/a", ReasonAllocated)) + len(r.rec.find("default/c", ReasonAllocated)); n != 0 {
		t.Fatalf("%d status writes for Services that had their address", n)
	}
	r.stop(t)

	// The next allocator (another process, same cluster) keeps them all.
	del(t, kube, "a") // while no one is leading: its address is free for the next one
	r2 := start(t, kube, cfg)
	create(t, kube, svc("new3"))
	waitIP(t, kube, "new3", "10.0.0.1")
	create(t, kube, svc("new4"))
	waitIP(t, kube, "new4", "10.0.0.5")
	settle()
	for name, want := range map[string]string{"c": "10.0.0.3", "new1": "10.0.0.2", "new2": "10.0.0.4"} {
		if got := ips(t, kube, name); got != want {
			t.Errorf("%s: %q after restart, want %q", name, got, want)
		}
	}
	if n := r2.rec.count(ReasonAllocated); n != 2 {
		t.Errorf("second allocator wrote %d addresses, want 2", n)
	}
}

// TestConflictingStatus: two Services show the same address; the older keeps it, the other moves.
func TestConflictingStatus(t *testing.T) {
	kube := newKube(svc("young", status("10.0.0.2")))
	old := svc("old", status("10.0.0.2"))
	old.CreationTimestamp = metav1.NewTime(time.Unix(1_000, 0))
	if err := kube.Tracker().Add(old); err != nil {
		t.Fatal(err)
	}
	r := start(t, kube, testConfig("n1", "10.0.0.1-10.0.0.9"))
	waitIP(t, kube, "young", "10.0.0.1")
	if e := r.rec.find("default/young", ReasonConflict); len(e) != 1 || !strings.Contains(e[0].msg, "in use by default/old") {
		t.Fatalf("events %+v", e)
	}
	if got := ips(t, kube, "old"); got != "10.0.0.2" {
		t.Fatalf("old: %q", got)
	}
}

func TestOutOfRangeStatusIsReallocated(t *testing.T) {
	// The range shrank from 10.0.0.0/24 to 10.0.0.1-10.0.0.2 while a and b held 10.0.0.7 and 10.0.0.8.
	kube := newKube(svc("a", status("10.0.0.7")), svc("b", status("10.0.0.8")), svc("c", status("10.0.0.1")))
	r := start(t, kube, testConfig("n1", "10.0.0.1-10.0.0.2"))
	// One of them gets 10.0.0.2; the other finds the pool full: its stale address is cleared, and it waits.
	eventually(t, "a or b to get 10.0.0.2 and the other to be cleared", func() bool {
		x, y := ips(t, kube, "a"), ips(t, kube, "b")
		return (x == "10.0.0.2" && y == "") || (x == "" && y == "10.0.0.2")
	})
	moved, waiting := "a", "b"
	if ips(t, kube, "b") == "10.0.0.2" {
		moved, waiting = "b", "a"
	}
	eventually(t, "events", func() bool {
		return len(r.rec.find("default/a", ReasonOutOfRange)) == 1 && len(r.rec.find("default/b", ReasonOutOfRange)) == 1 &&
			len(r.rec.find("default/"+waiting, ReasonExhausted)) == 1
	})
	if e := r.rec.find("default/a", ReasonOutOfRange)[0]; e.typ != corev1.EventTypeWarning || !strings.Contains(e.msg, "10.0.0.7 is outside the configured ranges 10.0.0.1-10.0.0.2") {
		t.Errorf("event %+v", e)
	}
	if got := ips(t, kube, "c"); got != "10.0.0.1" {
		t.Errorf("c: %q", got)
	}
	del(t, kube, "c")
	waitIP(t, kube, waiting, "10.0.0.1")
	if got := ips(t, kube, moved); got != "10.0.0.2" {
		t.Errorf("%s: %q", moved, got)
	}
}

// TestExhaustionAndRelease: a full pool warns and counts; deleting a Service or changing its type frees its
// address for the one waiting.
func TestExhaustionAndRelease(t *testing.T) {
	kube := newKube()
	r := start(t, kube, testConfig("n1", "10.0.0.1-10.0.0.2"))
	waitLeading(t, r)
	create(t, kube, svc("a"))
	waitIP(t, kube, "a", "10.0.0.1")
	create(t, kube, svc("b"))
	waitIP(t, kube, "b", "10.0.0.2")

	before := testutil.ToFloat64(allocationFailures.WithLabelValues(failExhausted))
	create(t, kube, svc("c"))
	create(t, kube, svc("d"))
	eventually(t, "exhaustion events", func() bool {
		return len(r.rec.find("default/c", ReasonExhausted)) == 1 && len(r.rec.find("default/d", ReasonExhausted)) == 1
	})
	if e := r.rec.find("default/c", ReasonExhausted)[0]; e.typ != corev1.EventTypeWarning || !strings.Contains(e.msg, "all 2 addresses") {
		t.Errorf("event %+v", e)
	}
	if got := testutil.ToFloat64(allocationFailures.WithLabelValues(failExhausted)) - before; got < 2 {
		t.Errorf("exhausted failures counted %v, want >= 2", got)
	}

	// Delete: c or d gets 10.0.0.1.
	del(t, kube, "a")
	eventually(t, "a waiting Service to get 10.0.0.1", func() bool {
		return ips(t, kube, "c") == "10.0.0.1" || ips(t, kube, "d") == "10.0.0.1"
	})
	waiter := "d"
	if ips(t, kube, "d") == "10.0.0.1" {
		waiter = "c"
	}

	// Type change: b's status is cleared and its address goes to the other waiter.
	update(t, kube, "b", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeClusterIP })
	waitIP(t, kube, "b", "")
	waitIP(t, kube, waiter, "10.0.0.2")
	if e := r.rec.find("default/b", ReasonReleased); len(e) == 0 || !strings.Contains(e[0].msg, "10.0.0.2") {
		t.Errorf("events %+v", e)
	}
	eventually(t, "allocated gauge 2", func() bool { return testutil.ToFloat64(allocatedIPs) == 2 })

	// Back to LoadBalancer: b waits its turn.
	update(t, kube, "b", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer })
	eventually(t, "b exhausted", func() bool { return len(r.rec.find("default/b", ReasonExhausted)) == 1 })
}

// TestClassSwitchReleases: a Service that moves to another class loses the address it was given (and only
// that) and frees it.
func TestClassSwitchReleases(t *testing.T) {
	kube := newKube()
	r := start(t, kube, testConfig("n1", "10.0.0.1"))
	waitLeading(t, r)
	create(t, kube, svc("a"))
	waitIP(t, kube, "a", "10.0.0.1")
	create(t, kube, svc("b", class(DefaultClass)))
	eventually(t, "b exhausted", func() bool { return len(r.rec.find("default/b", ReasonExhausted)) == 1 })

	update(t, kube, "a", func(s *corev1.Service) {
		c := "example.com/lb"
		s.Spec.LoadBalancerClass = &c
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: "192.0.2.1"})
	})
	waitIP(t, kube, "a", "192.0.2.1") // the other controller's address stays
	waitIP(t, kube, "b", "10.0.0.1")
}

// TestStaleCacheDoesNotFree: a Service the cache does not show (yet) keeps its address while the API server
// has it; it is freed once the API server says it is gone.
func TestStaleCacheDoesNotFree(t *testing.T) {
	ctx := context.Background()
	kube := newKube(svc("a", status("10.0.0.1")))
	factory := informers.NewSharedInformerFactory(kube, 0) // never started: the cache shows nothing
	a, err := New(testConfig("n1", "10.0.0.1-10.0.0.3"), kube, factory, &recorder{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	tm := newTerm(a)
	if err := tm.rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tm.sync(ctx, "default/a"); err != nil {
		t.Fatal(err)
	}
	if ip, ok := tm.pools[corev1.IPv4Protocol].Lookup("default/a"); !ok || ip.String() != "10.0.0.1" {
		t.Fatalf("a holds %v %v after a sync from a cache that lags", ip, ok)
	}
	del(t, kube, "a")
	if err := tm.sync(ctx, "default/a"); err != nil {
		t.Fatal(err)
	}
	if _, ok := tm.pools[corev1.IPv4Protocol].Lookup("default/a"); ok || tm.inUse() != 0 {
		t.Fatal("a's address not freed after it was deleted")
	}
}

// TestLeaderElection: of two allocators on one cluster only the leader writes; when its context ends it
// gives the Lease up and the other takes over at once.
func TestLeaderElection(t *testing.T) {
	kube := newKube()
	n1 := start(t, kube, testConfig("n1", "10.0.0.1-10.0.0.9"))
	waitLeading(t, n1)
	n2 := start(t, kube, testConfig("n2", "10.0.0.1-10.0.0.9"))

	var both atomic.Bool
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Millisecond):
				if n1.a.Leading() && n2.a.Leading() {
					both.Store(true)
				}
			}
		}
	}()

	create(t, kube, svc("a"))
	waitIP(t, kube, "a", "10.0.0.1")
	settle()
	if n1.rec.count(ReasonAllocated) != 1 || n2.rec.count(ReasonAllocated) != 0 || n2.a.Leading() {
		t.Fatalf("n1 wrote %d, n2 wrote %d (leading %v)", n1.rec.count(ReasonAllocated), n2.rec.count(ReasonAllocated), n2.a.Leading())
	}
	if holder := leaseHolder(t, kube); holder != "n1" {
		t.Fatalf("lease holder %q", holder)
	}

	start := time.Now()
	n1.stop(t)
	waitLeading(t, n2)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("takeover took %v; the lease should have been released", d)
	}
	create(t, kube, svc("b"))
	waitIP(t, kube, "b", "10.0.0.2")
	eventually(t, "n2's event", func() bool { return n2.rec.count(ReasonAllocated) == 1 })
	if n2.rec.count(ReasonAllocated) != 1 || n1.rec.count(ReasonAllocated) != 1 {
		t.Fatalf("n1 wrote %d, n2 wrote %d: %+v %+v", n1.rec.count(ReasonAllocated), n2.rec.count(ReasonAllocated), n1.rec.all(), n2.rec.all())
	}
	if got := ips(t, kube, "a"); got != "10.0.0.1" {
		t.Fatalf("a moved to %q on takeover", got)
	}
	if holder := leaseHolder(t, kube); holder != "n2" {
		t.Fatalf("lease holder %q", holder)
	}
	close(stopWatch)
	<-watched
	if both.Load() {
		t.Fatal("both allocators led at once")
	}
}

// TestLosingLeaseStopsAllocating: a leader that cannot renew stops allocating and keeps running (it
// campaigns again); the other node takes over.
func TestLosingLeaseStopsAllocating(t *testing.T) {
	kube := newKube()
	var cutN1 atomic.Bool
	kube.PrependReactor("update", "leases", func(action k8stesting.Action) (bool, runtime.Object, error) {
		l, ok := action.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		if ok && cutN1.Load() && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == "n1" {
			return true, nil, errors.New("injected: n1 cannot reach the API server")
		}
		return false, nil, nil
	})
	n1 := start(t, kube, testConfig("n1", "10.0.0.1-10.0.0.9"))
	waitLeading(t, n1)
	n2 := start(t, kube, testConfig("n2", "10.0.0.1-10.0.0.9"))
	create(t, kube, svc("a"))
	waitIP(t, kube, "a", "10.0.0.1")

	cutN1.Store(true)
	eventually(t, "n1 to stop leading", func() bool { return !n1.a.Leading() })
	waitLeading(t, n2)
	select {
	case <-n1.done:
		t.Fatal("n1's Run returned on losing the lease")
	default:
	}
	create(t, kube, svc("b"))
	waitIP(t, kube, "b", "10.0.0.2")
	eventually(t, "n2's event", func() bool { return n2.rec.count(ReasonAllocated) == 1 })
	if n1.rec.count(ReasonAllocated) != 1 || n2.rec.count(ReasonAllocated) != 1 {
		t.Fatalf("n1 wrote %d, n2 wrote %d: %+v %+v", n1.rec.count(ReasonAllocated), n2.rec.count(ReasonAllocated), n1.rec.all(), n2.rec.all())
	}
	// n1 campaigns again: when n2 goes away, it leads again.
	cutN1.Store(false)
	n2.stop(t)
	waitLeading(t, n1)
	create(t, kube, svc("c"))
	waitIP(t, kube, "c", "10.0.0.3")
}

func leaseHolder(t *testing.T, kube *fake.Clientset) string {
	t.Helper()
	l, err := kube.CoordinationV1().Leases("kube-system").Get(context.Background(), LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}
