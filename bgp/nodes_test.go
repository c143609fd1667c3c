package bgp

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

// fakeStarts is a StartFunc that returns one lockedRouter and records each start's identity.
type fakeStarts struct {
	mu  sync.Mutex
	ids []Identity
	r   *lockedRouter
}

func (f *fakeStarts) start(_ context.Context, cfg GlobalConfig) (Router, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := Identity{ASN: cfg.ASN, RouterID: cfg.RouterID, NodeIP: cfg.ListenAddresses[0]}
	if len(cfg.ListenAddresses) > 1 {
		id.NodeIP6 = cfg.ListenAddresses[1]
	}
	f.ids = append(f.ids, id)
	return f.r, nil
}

func (f *fakeStarts) identities() []Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ids)
}

// startManager runs a Manager on a fake router until the test ends.
func startManager(t *testing.T, w Watcher) (*Manager, *fakeStarts) {
	t.Helper()
	fs := &fakeStarts{r: &lockedRouter{f: fakeRouter{fail: map[string]bool{}}}}
	if w == nil {
		w = NewSessions(quiet)
	}
	m := NewManager(GlobalConfig{}, fs.start, w, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go m.Run(ctx)
	return m, fs
}

// lockedRouter is a fakeRouter safe for the controller's goroutine.
type lockedRouter struct {
	mu sync.Mutex
	f  fakeRouter
}

func (l *lockedRouter) AddPeer(ctx context.Context, p PeerSpec) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.AddPeer(ctx, p)
}
func (l *lockedRouter) UpdatePeer(ctx context.Context, p PeerSpec) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.UpdatePeer(ctx, p)
}
func (l *lockedRouter) DeletePeer(ctx context.Context, a netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.DeletePeer(ctx, a)
}
func (l *lockedRouter) AddPath(ctx context.Context, p Path) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.AddPath(ctx, p)
}
func (l *lockedRouter) DeletePath(ctx context.Context, p Path) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.DeletePath(ctx, p)
}
func (l *lockedRouter) Watch(ctx context.Context, w Watcher) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Watch(ctx, w)
}
func (l *lockedRouter) Stop(ctx context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.f.Stop(ctx)
}
func (l *lockedRouter) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.take()
}

func node(name, ip, cidr string, ann map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	}
	if cidr != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	}
	return n
}

type nodeHarness struct {
	kube     *fake.Clientset
	mgr      *Manager
	starts   *fakeStarts
	sink     *syncSink
	recorder *record.FakeRecorder
	cancel   context.CancelFunc
}

func startNodeController(t *testing.T, objs ...*corev1.Node) *nodeHarness {
	t.Helper()
	h := &nodeHarness{kube: fake.NewSimpleClientset(), recorder: record.NewFakeRecorder(100)}
	for _, o := range objs {
		if _, err := h.kube.CoreV1().Nodes().Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h.mgr, h.starts = startManager(t, nil)
	h.sink = &syncSink{routes: map[netip.Prefix][]netip.Addr{}}
	cfg := Config{NodeName: "n1", ClusterASN: 64512, Mesh: MeshOptions{FullMesh: true}, ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")},
		Peers: []PeerConfig{{Address: addr("10.99.0.1"), ASN: 64500}}}
	importer := NewImporter(h.sink, NewImportPolicy(PolicyInput{ClusterCIDRs: cfg.ClusterCIDRs}), nil, quiet)
	factory := informers.NewSharedInformerFactory(h.kube, 0)
	c := NewNodeController(cfg, factory, h.mgr, importer, h.recorder, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	go c.Run(ctx)
	return h
}

func (h *nodeHarness) peers() map[netip.Addr]PeerSpec {
	out := map[netip.Addr]PeerSpec{}
	for _, p := range h.mgr.AppliedPeers() {
		out[p.Address] = p
	}
	return out
}

func (h *nodeHarness) update(t *testing.T, n *corev1.Node) {
	t.Helper()
	if _, err := h.kube.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestNodeControllerPeersFollowNodes(t *testing.T) {
	h := startNodeController(t,
		node("n1", "10.99.0.11", "10.244.1.0/24", nil),
		node("n2", "10.99.0.12", "10.244.2.0/24", nil),
	)
	eventually(t, "ToR and n2 peered", func() bool { p := h.peers(); return len(p) == 2 && p[addr("10.99.0.12")].ASN == 64512 })
	if got := h.starts.identities()[0]; got != (Identity{ASN: 64512, RouterID: addr("10.99.0.11"), NodeIP: addr("10.99.0.11")}) {
		t.Fatalf("identity %+v", got)
	}
	h.starts.r.take()
	// A node joins: one AddPeer, nothing else.
	if _, err := h.kube.CoreV1().Nodes().Create(context.Background(), node("n3", "10.99.0.13", "10.244.3.0/24", map[string]string{AnnotationNodeASN: "65003"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n3 peered with its own ASN", func() bool { return h.peers()[addr("10.99.0.13")].ASN == 65003 })
	if got := h.starts.r.take(); len(got) != 1 || got[0] != "add 10.99.0.13 65003" {
		t.Fatalf("calls %v", got)
	}
	// A status heartbeat (condition change) costs nothing.
	n2, _ := h.kube.CoreV1().Nodes().Get(context.Background(), "n2", metav1.GetOptions{})
	n2.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
	h.update(t, n2)
	// A node leaves: one DeletePeer.
	if err := h.kube.CoreV1().Nodes().Delete(context.Background(), "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n2 unpeered", func() bool { _, ok := h.peers()[addr("10.99.0.12")]; return !ok })
	if got := h.starts.r.take(); len(got) != 1 || got[0] != "delete 10.99.0.12" {
		t.Fatalf("calls %v", got)
	}
}

func TestNodeControllerAdvertisesPodCIDRWhenAssigned(t *testing.T) {
	h := startNodeController(t, node("n1", "10.99.0.11", "", nil))
	eventually(t, "ToR peered", func() bool { return len(h.peers()) == 1 })
	n1 := node("n1", "10.99.0.11", "10.244.7.0/24", nil)
	h.update(t, n1)
	eventually(t, "pod CIDR advertised", func() bool {
		for _, c := range h.starts.r.take() {
			if c == "addpath 10.244.7.0/24 10.99.0.11" {
				return true
			}
		}
		return false
	})
}

func TestNodeControllerBadAnnotationKeepsSessions(t *testing.T) {
	h := startNodeController(t, node("n1", "10.99.0.11", "10.244.1.0/24", map[string]string{AnnotationPeers: `[{"ip":"10.99.0.250","asn":65001}]`}))
	eventually(t, "annotation peer up", func() bool { _, ok := h.peers()[addr("10.99.0.250")]; return ok })
	h.starts.r.take()
	h.update(t, node("n1", "10.99.0.11", "10.244.1.0/24", map[string]string{AnnotationPeers: `[{"ip":"10.99.0.250","asn":"banana"}]`}))
	select {
	case ev := <-h.recorder.Events:
		if !strings.Contains(ev, ReasonInvalidAnnotation) || !strings.Contains(ev, "canopy.io/peers[0].asn") || !strings.Contains(ev, "n1") {
			t.Fatalf("event %q", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the malformed annotation")
	}
	time.Sleep(200 * time.Millisecond)
	if got := h.starts.r.take(); len(got) != 0 {
		t.Fatalf("a malformed annotation changed sessions: %v", got)
	}
	if _, ok := h.peers()[addr("10.99.0.250")]; !ok {
		t.Fatal("annotation peer dropped")
	}
	// A bad node ASN keeps the old ASN and is reported too.
	h.update(t, node("n1", "10.99.0.11", "10.244.1.0/24", map[string]string{AnnotationPeers: `[{"ip":"10.99.0.250","asn":65001}]`, AnnotationNodeASN: "0"}))
	select {
	case ev := <-h.recorder.Events:
		if !strings.Contains(ev, AnnotationNodeASN) {
			t.Fatalf("event %q", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the bad node ASN")
	}
	if ids := h.starts.identities(); ids[len(ids)-1].ASN != 64512 {
		t.Fatalf("identity changed on a bad ASN: %+v", ids)
	}
	// The annotation removed: its peer goes (the empty value is no "bad value" to keep the last good one for).
	h.update(t, node("n1", "10.99.0.11", "10.244.1.0/24", nil))
	eventually(t, "annotation peer removed with the annotation", func() bool { _, ok := h.peers()[addr("10.99.0.250")]; return !ok })
	// Valid, removed, valid again, removed again, with no bad value in between.
	h.update(t, node("n1", "10.99.0.11", "10.244.1.0/24", map[string]string{AnnotationPeers: `[{"ip":"10.99.0.251","asn":65001}]`}))
	eventually(t, "second annotation peer up", func() bool { _, ok := h.peers()[addr("10.99.0.251")]; return ok })
	h.update(t, node("n1", "10.99.0.11", "10.244.1.0/24", nil))
	eventually(t, "second annotation peer removed", func() bool { _, ok := h.peers()[addr("10.99.0.251")]; return !ok })
}

func TestNodeControllerSelfDeletedWithdraws(t *testing.T) {
	h := startNodeController(t, node("n1", "10.99.0.11", "10.244.1.0/24", nil), node("n2", "10.99.0.12", "", nil))
	eventually(t, "peered", func() bool { return len(h.peers()) == 2 })
	if err := h.kube.CoreV1().Nodes().Delete(context.Background(), "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "all sessions closed", func() bool { return len(h.peers()) == 0 })
}
