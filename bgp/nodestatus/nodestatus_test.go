package nodestatus

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/bgp"
)

const nodeName = "node1"

var sourcePattern = regexp.MustCompile(`^(mesh|flag|annotation|BGPPeer/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$`)

// checkCRD checks what the CRD's schema and CEL rules check of a status.
func checkCRD(t *testing.T, st v1alpha1.NodeBGPState) {
	t.Helper()
	if len(st.Sessions) > maxSessions {
		t.Errorf("%d sessions, the CRD allows %d", len(st.Sessions), maxSessions)
	}
	est := 0
	seen := map[string]bool{}
	for _, s := range st.Sessions {
		if s.State == v1alpha1.SessionEstablished {
			est++
		}
		if seen[s.PeerAddress] {
			t.Errorf("peer address %s listed twice", s.PeerAddress)
		}
		seen[s.PeerAddress] = true
		if !sourcePattern.MatchString(s.Source) {
			t.Errorf("session %s: source %q does not match the CRD's pattern", s.PeerAddress, s.Source)
		}
		if len(s.LastError) > maxLastError {
			t.Errorf("session %s: lastError of %d bytes", s.PeerAddress, len(s.LastError))
		}
	}
	if int(st.Configured) != len(st.Sessions) || int(st.Established) != est {
		t.Errorf("configured %d, established %d; sessions %d, established %d", st.Configured, st.Established, len(st.Sessions), est)
	}
	if want := fmt.Sprintf("%d/%d", est, len(st.Sessions)); st.Summary != want {
		t.Errorf("summary %q, want %q", st.Summary, want)
	}
	for _, c := range st.Conditions {
		if c.LastTransitionTime.IsZero() || c.Reason == "" || c.Status == "" {
			t.Errorf("condition %+v lacks a required field", c)
		}
	}
}

func TestFromStatus(t *testing.T) {
	since := time.Date(2026, 11, 30, 20, 20, 0, 123456789, time.UTC)
	st := bgp.Status{
		Running: true, ASN: 4200000000, RouterID: netip.MustParseAddr("10.99.0.11"),
		Peers: []bgp.PeerStatus{
			{Address: netip.MustParseAddr("192.0.2.3"), ASN: 65002, Kind: bgp.PeerKindExternal, Name: "BGPPeer/border",
				State: "Active", BFD: "Down", LastError: "dial tcp 192.0.2.3:179: connect: network is unreachable"},
			{Address: netip.MustParseAddr("10.99.0.12"), ASN: 64512, Kind: bgp.PeerKindNode, Name: "node2",
				State: "Established", Since: since, Received: 1, Accepted: 1, Advertised: 2, BFD: "Up"},
			{Address: netip.MustParseAddr("10.99.0.1"), ASN: 65001, Kind: bgp.PeerKindExternal, Name: "flag", State: "Unknown"},
			{Address: netip.MustParseAddr("10.99.0.2"), ASN: 65001, Kind: bgp.PeerKindExternal, Name: "annotation", State: "OpenConfirm", BFD: "AdminDown"},
			{Address: netip.MustParseAddr("2001:db8::1"), ASN: 65003, Kind: bgp.PeerKindExternal, Name: "flag", State: "Connect", BFD: "Init"},
			{Address: netip.MustParseAddr("10.99.0.3"), ASN: 65001, Kind: bgp.PeerKindExternal, Name: "flag", State: "OpenSent", BFD: "State(9)"},
			{Address: netip.MustParseAddr("10.99.0.2"), ASN: 1, Kind: bgp.PeerKindExternal, Name: "flag", State: "Idle"}, // repeated address
		},
	}
	got := FromStatus(st)
	checkCRD(t, got)
	if got.ASN != 4200000000 || got.RouterID != "10.99.0.11" || got.Configured != 6 || got.Established != 1 || got.Summary != "1/6" {
		t.Errorf("asn %d router ID %q configured %d established %d summary %q", got.ASN, got.RouterID, got.Configured, got.Established, got.Summary)
	}
	if got.Updated == nil || len(got.Conditions) != 0 {
		t.Errorf("updated %v, conditions %v", got.Updated, got.Conditions)
	}
	type row struct {
		addr, source string
		asn          int64
		state        v1alpha1.SessionState
		bfd          v1alpha1.BFDState
	}
	want := []row{
		{"10.99.0.1", "flag", 65001, v1alpha1.SessionIdle, ""},
		{"10.99.0.2", "annotation", 65001, v1alpha1.SessionOpenConfirm, v1alpha1.BFDAdminDown},
		{"10.99.0.3", "flag", 65001, v1alpha1.SessionOpenSent, ""},
		{"10.99.0.12", "mesh", 64512, v1alpha1.SessionEstablished, v1alpha1.BFDUp},
		{"192.0.2.3", "BGPPeer/border", 65002, v1alpha1.SessionActive, v1alpha1.BFDDown},
		{"2001:db8::1", "flag", 65003, v1alpha1.SessionConnect, v1alpha1.BFDInit},
	}
	if len(got.Sessions) != len(want) {
		t.Fatalf("%d sessions, want %d: %+v", len(got.Sessions), len(want), got.Sessions)
	}
	for i, w := range want {
		s := got.Sessions[i]
		if r := (row{s.PeerAddress, s.Source, s.PeerASN, s.State, s.BFDState}); r != w {
			t.Errorf("session %d: %+v, want %+v", i, r, w)
		}
	}
	mesh := got.Sessions[3]
	if mesh.Since == nil || !mesh.Since.Time.Equal(since.Truncate(time.Second)) {
		t.Errorf("since %v, want %v", mesh.Since, since.Truncate(time.Second))
	}
	if mesh.PrefixesReceived != 1 || mesh.PrefixesAccepted != 1 || mesh.PrefixesAdvertised != 2 {
		t.Errorf("prefix counters %+v", mesh)
	}
	if got.Sessions[0].Since != nil {
		t.Errorf("zero since became %v", got.Sessions[0].Since)
	}
	if got.Sessions[4].LastError != st.Peers[0].LastError {
		t.Errorf("lastError %q", got.Sessions[4].LastError)
	}

	// No router ID, a long error.
	long := strings.Repeat("é", 600) // 1200 bytes
	got = FromStatus(bgp.Status{Peers: []bgp.PeerStatus{{Address: netip.MustParseAddr("10.0.0.1"), Name: "flag", State: "Idle", LastError: long}}})
	checkCRD(t, got)
	if got.RouterID != "" || got.ASN != 0 {
		t.Errorf("router ID %q, asn %d", got.RouterID, got.ASN)
	}
	if e := got.Sessions[0].LastError; len(e) != 1024 || !strings.HasPrefix(long, e) {
		t.Errorf("lastError cut to %d bytes", len(e))
	}
	if got = FromStatus(bgp.Status{}); got.Summary != "0/0" || len(got.Sessions) != 0 {
		t.Errorf("empty status: %+v", got)
	}
}

func TestFromStatusTruncates(t *testing.T) {
	const n = maxSessions + 37
	peers := make([]bgp.PeerStatus, n)
	for i := range peers {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		peers[i] = bgp.PeerStatus{Address: a, ASN: 64512, Kind: bgp.PeerKindNode, Name: "n" + strconv.Itoa(i), State: "Established"}
	}
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	got := FromStatus(bgp.Status{Peers: peers})
	checkCRD(t, got)
	if len(got.Sessions) != maxSessions || got.Summary != "5000/5000" {
		t.Fatalf("%d sessions, summary %q", len(got.Sessions), got.Summary)
	}
	if got.Sessions[0].PeerAddress != "10.0.0.0" || got.Sessions[maxSessions-1].PeerAddress != "10.0.19.135" {
		t.Errorf("kept %s..%s, want the first 5000 by address", got.Sessions[0].PeerAddress, got.Sessions[maxSessions-1].PeerAddress)
	}
	if len(got.Conditions) != 1 || got.Conditions[0].Type != conditionTruncated || got.Conditions[0].Status != metav1.ConditionTrue ||
		!strings.Contains(got.Conditions[0].Message, strconv.Itoa(n)) {
		t.Errorf("conditions %+v", got.Conditions)
	}
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	again := FromStatus(bgp.Status{Peers: peers})
	if !same(got, again) {
		t.Errorf("a different order of the same peers gives a different status")
	}
}

// lockedBuffer is a log destination for a writer's goroutine and the test's.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// source is a state the test changes, and counts how often the writer asks for it.
type source struct {
	mu    sync.Mutex
	st    v1alpha1.NodeBGPState
	calls int
}

func (s *source) get(context.Context) v1alpha1.NodeBGPState {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return *s.st.DeepCopy()
}

func (s *source) set(established int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sessions []v1alpha1.BGPSession
	for i := range 3 {
		x := v1alpha1.BGPSession{PeerAddress: fmt.Sprintf("10.99.0.%d", 12+i), PeerASN: 64512, Source: v1alpha1.SourceMesh, State: v1alpha1.SessionActive}
		if i < established {
			x.State = v1alpha1.SessionEstablished
		}
		sessions = append(sessions, x)
	}
	s.st = v1alpha1.NodeBGPState{ASN: 64512, RouterID: "10.99.0.11"}
	s.st.SetSessions(sessions, metav1.Now()) // a new updated each time: must not count as a change
}

func (s *source) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

type harness struct {
	t      *testing.T
	client *dynamicfake.FakeDynamicClient
	src    *source
	logs   *lockedBuffer
	w      *Writer
	cancel context.CancelFunc
	done   chan struct{}
}

func newHarness(t *testing.T) *harness {
	node := &unstructured.Unstructured{}
	node.SetAPIVersion("v1")
	node.SetKind("Node")
	node.SetName(nodeName)
	node.SetUID("node-uid-1")
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		v1alpha1.BGPNodeStatusesResource: "BGPNodeStatusList",
		nodesResource:                    "NodeList",
	}, node)
	h := &harness{t: t, client: client, src: &source{}, logs: &lockedBuffer{}}
	h.src.set(1)
	h.w = New(client, nodeName, h.src.get, slog.New(slog.NewTextHandler(h.logs, nil)))
	h.w.tick, h.w.maxBackoff, h.w.crdRetry = 5*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond
	return h
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go func() { defer close(h.done); h.w.Run(ctx) }()
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
}

// eventually polls cond until it holds, failing the test after a generous deadline.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitSourceCalls waits until the writer has asked the source n more times (so it had the chance to write).
func (h *harness) waitSourceCalls(n int) {
	h.t.Helper()
	target := h.src.callCount() + n
	h.eventually("the writer to poll its source", func() bool { return h.src.callCount() >= target })
}

func (h *harness) object() *v1alpha1.BGPNodeStatus {
	// Straight from the tracker: neither recorded as an action nor seen by the reactors.
	o, err := h.client.Tracker().Get(v1alpha1.BGPNodeStatusesResource, "", nodeName)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		h.t.Fatalf("tracker holds a %T", o)
	}
	obj, err := v1alpha1.NodeStatusFromUnstructured(u)
	if err != nil {
		h.t.Fatal(err)
	}
	return obj
}

// count counts the recorded actions of verb on BGPNodeStatuses (subresource "status" for updates).
func (h *harness) count(verb string) int {
	n := 0
	for _, a := range h.client.Actions() {
		if a.GetResource() == v1alpha1.BGPNodeStatusesResource && a.GetVerb() == verb {
			if verb == "update" && a.GetSubresource() != "status" {
				h.t.Errorf("update of subresource %q, want status", a.GetSubresource())
			}
			n++
		}
	}
	return n
}

func (h *harness) summary() string {
	if o := h.object(); o != nil {
		return o.Status.Summary
	}
	return ""
}

func TestFirstWriteCreates(t *testing.T) {
	h := newHarness(t)
	h.w.SetOptions(true, time.Hour, 3)
	h.start()
	h.eventually("the status", func() bool { return h.summary() == "1/3" })
	obj := h.object()
	checkCRD(t, obj.Status)
	if obj.Labels[labelNode] != nodeName {
		t.Errorf("labels %v", obj.Labels)
	}
	want := metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: nodeName, UID: "node-uid-1"}
	if len(obj.OwnerReferences) != 1 || obj.OwnerReferences[0] != want {
		t.Errorf("owner references %+v, want %+v", obj.OwnerReferences, want)
	}
	if obj.Status.ObservedGeneration != 3 || obj.Status.Updated == nil || obj.Status.ASN != 64512 || len(obj.Status.Sessions) != 3 {
		t.Errorf("status %+v", obj.Status)
	}
	if c, u := h.count("create"), h.count("update"); c != 1 || u != 1 {
		t.Errorf("%d creates, %d status updates", c, u)
	}

	// Nothing changes (but updated): nothing is written, though the interval does not hold it back.
	h.w.SetOptions(true, time.Millisecond, 3)
	h.waitSourceCalls(20)
	if u := h.count("update"); u != 1 {
		t.Errorf("%d status updates without a change", u)
	}
	// A new observed generation is a change.
	h.w.SetOptions(true, time.Millisecond, 4)
	h.eventually("observedGeneration 4", func() bool { return h.object().Status.ObservedGeneration == 4 })
	if c := h.count("create"); c != 1 {
		t.Errorf("%d creates", c)
	}

	// Run ends with ctx and leaves the object.
	h.stop()
	if h.object() == nil || h.count("delete") != 0 {
		t.Errorf("the object was deleted when Run ended")
	}
}

func TestMinInterval(t *testing.T) {
	const interval = 100 * time.Millisecond
	h := newHarness(t)
	var mu sync.Mutex
	var times []time.Time
	h.client.PrependReactor("update", "bgpnodestatuses", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
		return false, nil, nil
	})
	gaps := func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		var d []time.Duration
		for i := 1; i < len(times); i++ {
			d = append(d, times[i].Sub(times[i-1]))
		}
		return d
	}
	h.w.SetOptions(true, time.Hour, 0)
	h.start()
	h.eventually("the first status", func() bool { return h.summary() == "1/3" })

	// Two changes inside the interval: held back, then written together, once.
	h.src.set(2)
	h.waitSourceCalls(3)
	h.src.set(3)
	h.waitSourceCalls(3)
	if u := h.count("update"); u != 1 {
		t.Fatalf("%d status updates inside the interval, want 1", u)
	}
	h.w.SetOptions(true, interval, 0) // the hour is over
	h.eventually("the held-back change", func() bool { return h.summary() == "3/3" })

	// A change right after a write waits for the interval to pass, and is not lost.
	h.src.set(1)
	h.eventually("the next change", func() bool { return h.summary() == "1/3" })
	h.waitSourceCalls(5)
	d := gaps()
	if len(d) != 2 {
		t.Fatalf("%d status updates, want 3", len(d)+1)
	}
	for i, g := range d {
		if g < interval {
			t.Errorf("write %d came %v after the one before, want at least %v", i+2, g, interval)
		}
	}
}

func TestDisableDeletes(t *testing.T) {
	h := newHarness(t)
	h.w.SetOptions(true, time.Millisecond, 0)
	h.start()
	h.eventually("the status", func() bool { return h.object() != nil })
	h.w.SetOptions(false, time.Millisecond, 0)
	h.eventually("the delete", func() bool { return h.object() == nil })
	time.Sleep(20 * h.w.tick)
	if d := h.count("delete"); d != 1 {
		t.Errorf("%d deletes while disabled, want 1", d)
	}
	h.w.SetOptions(true, time.Millisecond, 0)
	h.eventually("the status again", func() bool { return h.summary() == "1/3" })
	if c := h.count("create"); c != 2 {
		t.Errorf("%d creates, want 2", c)
	}
}

func TestDisabledAtStartDeletesMissingObject(t *testing.T) {
	h := newHarness(t)
	h.w.SetOptions(false, 0, 0)
	h.start()
	h.eventually("the delete", func() bool { return h.count("delete") == 1 })
	time.Sleep(20 * h.w.tick)
	if h.object() != nil || h.count("create") != 0 || h.src.callCount() != 0 {
		t.Errorf("a disabled writer wrote or asked its source")
	}
	if h.count("delete") != 1 {
		t.Errorf("deleted more than once")
	}
}

func TestConflictRetried(t *testing.T) {
	h := newHarness(t)
	conflicts := testutil.ToFloat64(writes.WithLabelValues("conflict"))
	oks := testutil.ToFloat64(writes.WithLabelValues("ok"))
	var once sync.Once
	h.client.PrependReactor("update", "bgpnodestatuses", func(k8stesting.Action) (handled bool, _ runtime.Object, err error) {
		once.Do(func() {
			handled, err = true, apierrors.NewConflict(v1alpha1.Resource("bgpnodestatuses"), nodeName, fmt.Errorf("the object has been modified"))
		})
		return handled, nil, err
	})
	h.start()
	h.eventually("the status", func() bool { return h.summary() == "1/3" })
	var verbs []string
	for _, a := range h.client.Actions() {
		if a.GetResource() == v1alpha1.BGPNodeStatusesResource {
			verbs = append(verbs, a.GetVerb())
		}
	}
	if got := strings.Join(verbs, ","); got != "get,create,update,get,update" {
		t.Errorf("actions %s, want get,create,update (conflict),get,update", got)
	}
	if d := testutil.ToFloat64(writes.WithLabelValues("conflict")) - conflicts; d != 1 {
		t.Errorf("conflict counter +%v", d)
	}
	if d := testutil.ToFloat64(writes.WithLabelValues("ok")) - oks; d != 1 {
		t.Errorf("ok counter +%v", d)
	}
	if h.logs.count("not written") != 0 {
		t.Errorf("a retried conflict was logged as an error")
	}
}

func TestCRDMissingAndErrors(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	crd, failures := false, 0
	h.client.PrependReactor("create", "bgpnodestatuses", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if !crd {
			return true, nil, apierrors.NewNotFound(schema.GroupResource{}, "")
		}
		return false, nil, nil
	})
	h.client.PrependReactor("get", "bgpnodestatuses", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if crd && failures < 3 {
			failures++
			return true, nil, apierrors.NewInternalError(fmt.Errorf("etcd is sad"))
		}
		return false, nil, nil
	})
	h.start()
	h.eventually("three create attempts", func() bool { return h.count("create") >= 3 })
	if n := h.logs.count("BGPNodeStatus CRD not installed; not reporting"); n != 1 {
		t.Errorf("CRD missing logged %d times, want once", n)
	}
	mu.Lock()
	crd = true
	mu.Unlock()
	h.eventually("the status", func() bool { return h.summary() == "1/3" })
	if n := h.logs.count("etcd is sad"); n != 1 {
		t.Errorf("the same error logged %d times, want once", n)
	}
	if h.logs.count("BGPNodeStatus written again") != 1 || h.logs.count("CRD installed; reporting") != 1 {
		t.Errorf("recovery not logged:\n%s", h.logs.b.String())
	}
	// The Node's UID was read once, though the object was created several times.
	nodes := 0
	for _, a := range h.client.Actions() {
		if a.GetResource() == nodesResource {
			nodes++
		}
	}
	if nodes != 1 {
		t.Errorf("%d reads of the Node, want 1", nodes)
	}
}

func TestSameIgnoresTimes(t *testing.T) {
	a := FromStatus(bgp.Status{Peers: make([]bgp.PeerStatus, 0)})
	a.Conditions = []metav1.Condition{{Type: "ConfigConflict", Status: metav1.ConditionTrue, Reason: "X", LastTransitionTime: metav1.Now()}}
	b := *a.DeepCopy()
	later := metav1.NewTime(time.Now().Add(time.Hour))
	b.Updated, b.Conditions[0].LastTransitionTime = &later, later
	if !same(a, b) {
		t.Errorf("updated or lastTransitionTime counted as a change")
	}
	b.Conditions[0].Message = "other"
	if same(a, b) {
		t.Errorf("a condition's message did not count as a change")
	}
}
