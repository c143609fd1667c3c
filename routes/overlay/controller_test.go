package overlay

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

// fakeKernel records what the controller applies.
type fakeKernel struct {
	mu      sync.Mutex
	local   netip.Addr
	peers   []Peer
	applies int
}

func (k *fakeKernel) LocalSubnet(ip netip.Addr) (netip.Prefix, error) {
	return netip.PrefixFrom(ip, 24).Masked(), nil
}
func (k *fakeKernel) Apply(ip netip.Addr, peers []Peer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.local, k.peers = ip, peers
	k.applies++
	return nil
}
func (k *fakeKernel) Remove() error { return nil }
func (k *fakeKernel) names() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return names(k.peers)
}

func kubeNode(name, ip, cidr string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)},
		Spec:   corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}}}
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestControllerFollowsNodes(t *testing.T) {
	client := fake.NewClientset(kubeNode("node1", "10.99.0.11", "10.244.1.0/24"), kubeNode("node2", "10.99.0.12", "10.244.2.0/24"),
		kubeNode("node5", "10.99.2.15", "10.244.5.0/24"))
	factory := informers.NewSharedInformerFactory(client, 0)
	k := &fakeKernel{}
	rec := record.NewFakeRecorder(10)
	c, err := NewController(Options{NodeName: "node1", Mode: ModeCrossSubnet, ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}},
		factory, k, rec, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go c.Run(ctx)
	peersNow := func(want string) func() error {
		return func() error {
			if got := k.names(); got != want {
				return fmt.Errorf("peers %q, want %q", got, want)
			}
			return nil
		}
	}
	waitFor(t, "node5 only (node2 shares the subnet)", peersNow("node5"))
	if k.local != addr("10.99.0.11") {
		t.Errorf("local %s", k.local)
	}
	nodes := client.CoreV1().Nodes()
	// A node joins in another subnet; a node with a bad pod CIDR gets an Event and no entries.
	if _, err := nodes.Create(ctx, kubeNode("node3", "10.99.1.13", "10.244.3.0/24"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes.Create(ctx, kubeNode("node9", "10.99.9.19", "10.55.0.0/24"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node3 joins", peersNow("node3,node5"))
	select {
	case ev := <-rec.Events:
		if !strings.Contains(ev, "InvalidOverlayNode") || !strings.Contains(ev, "outside the cluster CIDRs") {
			t.Errorf("event %q", ev)
		}
	case <-time.After(5 * time.Second):
		t.Error("no Event for node9")
	}
	// Deleting a node removes its entries.
	if err := nodes.Delete(ctx, "node5", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node5 leaves", peersNow("node3"))
	if got := c.Peers(); len(got) != 1 || got[0].Node != "node3" {
		t.Errorf("Peers() = %v", got)
	}
	// The same problem is reported once, not on every sync.
	if _, err := nodes.Create(ctx, kubeNode("node4", "10.99.1.14", "10.244.4.0/24"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node4 joins", peersNow("node3,node4"))
	select {
	case ev := <-rec.Events:
		t.Errorf("repeated event %q", ev)
	default:
	}
}

// dsNode is a Node with an address and a pod CIDR per family (either may be empty).
func dsNode(name, ip, ip6, cidr, cidr6 string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)}}
	for _, c := range []string{cidr, cidr6} {
		if c != "" {
			n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, c)
		}
	}
	if len(n.Spec.PodCIDRs) > 0 {
		n.Spec.PodCIDR = n.Spec.PodCIDRs[0]
	}
	for _, a := range []string{ip, ip6} {
		if a != "" {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
		}
	}
	return n
}

// Dual stack: the IPv4 underlay carries both families; a changed IPv6 pod CIDR moves its route and VTEP. An
// IPv6-only node tunnels over its IPv6 address.
func TestControllerDualStack(t *testing.T) {
	clusterDS := []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")}
	client := fake.NewClientset(dsNode("node1", "10.99.0.11", "fd00:99::11", "10.244.1.0/24", "fd00:10:244:1::/64"),
		dsNode("node2", "10.99.1.12", "fd00:99::12", "10.244.2.0/24", "fd00:10:244:2::/64"))
	factory := informers.NewSharedInformerFactory(client, 0)
	k := &fakeKernel{}
	c, err := NewController(Options{NodeName: "node1", Mode: ModeVXLAN, ClusterCIDRs: clusterDS}, factory, k, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go c.Run(ctx)
	peer := func(want string) func() error {
		return func() error {
			k.mu.Lock()
			defer k.mu.Unlock()
			var got []string
			for _, p := range k.peers {
				got = append(got, p.String())
			}
			if s := strings.Join(got, ";"); !strings.Contains(s, want) {
				return fmt.Errorf("peers %s (local %s), want %s", s, k.local, want)
			}
			return nil
		}
	}
	waitFor(t, "node2 with both families over IPv4", peer("node2 (10.99.1.12, vtep 10.244.2.0 fd00:10:244:2:: 02:cb:0a:63:01:0c, [10.244.2.0/24 fd00:10:244:2::/64])"))
	if k.local != addr("10.99.0.11") {
		t.Errorf("local %s, want the IPv4 address", k.local)
	}
	n2, _ := client.CoreV1().Nodes().Get(ctx, "node2", metav1.GetOptions{})
	n2.Spec.PodCIDRs[1] = "fd00:10:244:22::/64"
	if _, err := client.CoreV1().Nodes().Update(ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node2's new IPv6 pod CIDR", peer("vtep 10.244.2.0 fd00:10:244:22:: 02:cb:0a:63:01:0c, [10.244.2.0/24 fd00:10:244:22::/64]"))

	// node1 loses its IPv4 address (IPv6-only): the underlay is IPv6, peers by their IPv6 addresses.
	n1, _ := client.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{})
	n1.Status.Addresses = n1.Status.Addresses[1:]
	if _, err := client.CoreV1().Nodes().Update(ctx, n1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	m, _ := MAC(addr("fd00:99::12"))
	waitFor(t, "IPv6 underlay", peer("node2 (fd00:99::12, vtep 10.244.2.0 fd00:10:244:22:: "+m.String()))
	if k.local != addr("fd00:99::11") {
		t.Errorf("local %s, want the IPv6 address", k.local)
	}
}
