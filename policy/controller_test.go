package policy

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// recordSyncer records the States the controller asks for.
type recordSyncer struct {
	mu      sync.Mutex
	started Options
	states  []*State
}

func (r *recordSyncer) Start(o Options) error { r.mu.Lock(); r.started = o; r.mu.Unlock(); return nil }
func (r *recordSyncer) Sync(st *State) (Stats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, st)
	return Stats{}, nil
}

func (r *recordSyncer) n() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.states) }
func (r *recordSyncer) last() *State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.states[len(r.states)-1]
}

func kpod(name, node, ip string, lbl map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "a", Labels: lbl},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "img",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}, Env: []corev1.EnvVar{{Name: "X", Value: "big"}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestController(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}}}
	kube := fake.NewClientset(node,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"team": "a"}}},
		kpod("web", "n1", "10.244.1.10", map[string]string{"app": "web"}),
		kpod("client", "n2", "10.244.2.10", map[string]string{"role": "client"}),
		kpod("other", "n2", "10.244.2.11", map[string]string{"role": "other"}),
		kpod("done", "n1", "10.244.1.20", map[string]string{"role": "client"}),
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "allow-client", Namespace: "a"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}}}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// "done" finished: its address may be reused, it is neither policed nor a peer.
	done, _ := kube.CoreV1().Pods("a").Get(ctx, "done", metav1.GetOptions{})
	done.Status.Phase = corev1.PodSucceeded
	_, _ = kube.CoreV1().Pods("a").UpdateStatus(ctx, done, metav1.UpdateOptions{})

	factory := informers.NewSharedInformerFactory(kube, 0)
	fw := &recordSyncer{}
	c := NewController(factory, kube, fw, "n1", Options{Reject: true}, 0, slog.Default())
	if err := c.Start(node); err != nil {
		t.Fatal(err)
	}
	if fw.started.PodCIDRs[0].String() != "10.244.1.0/24" || !fw.started.Reject {
		t.Errorf("Start options %+v", fw.started)
	}
	factory.Start(ctx.Done())
	go c.Run(ctx)
	waitFor(t, "the first sync", func() bool { return fw.n() > 0 })
	st := fw.last()
	web := addr("10.244.1.10")
	if !st.Ready[web] || len(st.Ready) != 1 || st.Ingress[web] == "" {
		t.Fatalf("first state: ready %v ingress %v", st.Ready, st.Ingress)
	}
	setName := SetName("ns=a/pod(role=client)")
	if m := st.Sets[setName]; m == nil || !reflect.DeepEqual(m.Members, []string{"10.244.2.10"}) {
		t.Fatalf("client set %+v", m)
	}

	// The informer keeps only what policies use.
	obj, _, _ := c.pods.GetByKey("a/web")
	if info, ok := obj.(*PodInfo); !ok || info.Pod.Ports[0].Name != "http" || info.Pod.IP != web || info.Pod.Labels["app"] != "web" {
		t.Errorf("informer keeps %#v", obj)
	}

	// A status heartbeat (conditions only) queues nothing.
	for n := -1; n != fw.n(); { // let the informers' initial events settle
		n = fw.n()
		time.Sleep(200 * time.Millisecond)
	}
	n := fw.n()
	p, _ := kube.CoreV1().Pods("a").Get(ctx, "client", metav1.GetOptions{})
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: "Custom", Status: corev1.ConditionTrue})
	_, _ = kube.CoreV1().Pods("a").UpdateStatus(ctx, p, metav1.UpdateOptions{})
	// A label change: "other" becomes a client. Only the set changes.
	o, _ := kube.CoreV1().Pods("a").Get(ctx, "other", metav1.GetOptions{})
	o.Labels = map[string]string{"role": "client"}
	_, _ = kube.CoreV1().Pods("a").Update(ctx, o, metav1.UpdateOptions{})
	waitFor(t, "the label change", func() bool {
		m := fw.last().Sets[setName]
		return m != nil && len(m.Members) == 2
	})
	if got := fw.n() - n; got != 1 {
		t.Errorf("%d syncs for a heartbeat and a label change, want 1", got)
	}
	if !reflect.DeepEqual(fw.last().Chains, st.Chains) {
		t.Error("chains changed after a label change")
	}

	// Deleting the policy un-isolates the pod; deleting the pod takes it out of Ready.
	_ = kube.NetworkingV1().NetworkPolicies("a").Delete(ctx, "allow-client", metav1.DeleteOptions{})
	waitFor(t, "the policy deletion", func() bool { return len(fw.last().Ingress) == 0 })
	_ = kube.CoreV1().Pods("a").Delete(ctx, "web", metav1.DeleteOptions{})
	waitFor(t, "the pod deletion", func() bool { return len(fw.last().Ready) == 0 })
}

// The CNI plugin's hint makes a new pod ready before the API has its address (both families: a dual-stack node).
func TestControllerHint(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}}}
	pending := kpod("new", "n1", "", map[string]string{"app": "web"})
	pending.Status = corev1.PodStatus{Phase: corev1.PodPending}
	kube := fake.NewClientset(node, pending, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a"}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory := informers.NewSharedInformerFactory(kube, 0)
	fw := &recordSyncer{}
	c := NewController(factory, kube, fw, "n1", Options{}, 0, slog.Default())
	factory.Start(ctx.Done())
	go c.Run(ctx)
	waitFor(t, "the first sync", func() bool { return fw.n() > 0 })

	if _, err := c.Hint("a", "Bad_Name", addr("10.244.1.7")); err == nil {
		t.Error("a malformed pod name was accepted")
	}
	outside, err := c.Hint("a", "new", addr("10.9.9.9")) // not this node's pod CIDR: ignored
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-outside:
		t.Fatal("an address outside the node's pod CIDR was made ready")
	case <-time.After(300 * time.Millisecond):
	}
	ch, err := c.Hint("a", "new", addr("10.244.1.7"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("the hinted pod was never programmed")
	}
	if !fw.last().Ready[addr("10.244.1.7")] {
		t.Error("hinted address not ready")
	}
	for _, bad := range [][]netip.Addr{nil, {addr("10.244.1.7"), addr("10.244.1.8")}, {addr("fe80::1%eth0")}, {addr("::ffff:10.244.1.7")}} {
		if _, err := c.Hint("a", "new", bad...); err == nil {
			t.Errorf("hint %v accepted", bad)
		}
	}
	outside6, err := c.Hint("a", "new", addr("fd00:99::7")) // not the node's IPv6 pod CIDR: ignored
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-outside6:
		t.Fatal("an IPv6 address outside the node's pod CIDR was made ready")
	case <-time.After(300 * time.Millisecond):
	}
	dual, err := c.Hint("a", "new", addr("10.244.1.7"), addr("fd00:10:244:1::7"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-dual:
	case <-time.After(5 * time.Second):
		t.Fatal("the hinted dual-stack pod was never programmed")
	}
	if st := fw.last(); !st.Ready[addr("10.244.1.7")] || !st.Ready[addr("fd00:10:244:1::7")] || st.Pods != 1 {
		t.Errorf("hinted dual-stack pod: ready %v, pods %d", st.Ready, st.Pods)
	}

	// Over the socket, as the plugin does it.
	sock := t.TempDir() + "/agent.sock"
	if err := c.ServeHints(ctx, sock, 2*time.Second, slog.Default()); err != nil {
		t.Fatal(err)
	}
	ask := func(msg string) string {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintln(conn, msg)
		line, _ := bufio.NewReader(conn).ReadString('\n')
		return strings.TrimSpace(line)
	}
	if got := ask(`{"namespace":"a","name":"new","ip":"10.244.1.8"}`); got != `{"programmed":true}` {
		t.Errorf("socket answer %s", got)
	}
	if got := ask(`{"namespace":"a","name":"new","ip":"10.244.1.8","ips":["10.244.1.8","fd00:10:244:1::8"]}`); got != `{"programmed":true}` {
		t.Errorf("socket answer to a dual-stack hint %s", got)
	}
	if st := fw.last(); !st.Ready[addr("fd00:10:244:1::8")] {
		t.Errorf("IPv6 address of a socket hint not ready: %v", st.Ready)
	}
	if got := ask(`{"namespace":"a","name":"new","ip":"nonsense"}`); !strings.Contains(got, `"programmed":false`) {
		t.Errorf("socket answer to a bad hint: %s", got)
	}

	// Once the API has the address, it wins and the hint is forgotten.
	p, _ := kube.CoreV1().Pods("a").Get(ctx, "new", metav1.GetOptions{})
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.9", PodIPs: []corev1.PodIP{{IP: "10.244.1.9"}, {IP: "fd00:10:244:1::9"}}}
	_, _ = kube.CoreV1().Pods("a").UpdateStatus(ctx, p, metav1.UpdateOptions{})
	waitFor(t, "the API addresses", func() bool {
		st := fw.last()
		return st.Ready[addr("10.244.1.9")] && st.Ready[addr("fd00:10:244:1::9")] && len(st.Ready) == 2
	})
	if ips := c.hinted("a/new", []netip.Prefix{pfx("::/0"), pfx("0.0.0.0/0")}); ips != nil {
		t.Error("hint kept after the API caught up")
	}
}

// TestPodInfoSharesLabels: pods with the same labels share one label map in the cache (model.InternLabels),
// and the PodInfo still reads as the pod.
func TestPodInfoSharesLabels(t *testing.T) {
	mk := func(name, tier string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{"app": "web", "tier": tier}},
			Spec:   corev1.PodSpec{NodeName: "n1"},
			Status: corev1.PodStatus{PodIP: "10.244.1.5"}}
	}
	get := func(p *corev1.Pod) *PodInfo { o, _ := ToPodInfo(p); return o.(*PodInfo) }
	a, b, c := get(mk("a", "web")), get(mk("b", "web")), get(mk("c", "db"))
	if reflect.ValueOf(a.Pod.Labels).UnsafePointer() != reflect.ValueOf(b.Pod.Labels).UnsafePointer() {
		t.Error("equal label sets are not shared")
	}
	if c.Pod.Labels["tier"] != "db" || a.Pod.Labels["tier"] != "web" || a.Pod.Name != "a" || a.Pod.Namespace != "ns" || a.Pod.NodeName != "n1" ||
		a.Pod.IP.String() != "10.244.1.5" {
		t.Errorf("PodInfo: %+v %+v", a, c)
	}
	// An informer that streams its first list runs the transform twice (see model.TestTransformTwice).
	if again, err := ToPodInfo(a); err != nil || again != any(a) {
		t.Errorf("ToPodInfo of a PodInfo: %v, %v; want it unchanged", again, err)
	}
	// The informer's keys and namespace index read it through meta.Accessor.
	if key, err := cache.MetaNamespaceKeyFunc(a); err != nil || key != "ns/a" {
		t.Errorf("key %q, %v", key, err)
	}
	if m, err := meta.Accessor(a); err != nil || m.GetLabels()["app"] != "web" {
		t.Errorf("meta.Accessor: %v, %v", m, err)
	}
	if cp := a.DeepCopyObject().(*PodInfo); !reflect.DeepEqual(cp, a) || reflect.ValueOf(cp.Pod.Labels).UnsafePointer() == reflect.ValueOf(a.Pod.Labels).UnsafePointer() {
		t.Errorf("DeepCopyObject: %+v", cp)
	}
}
