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
