package model

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testNode() *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"rack": "a"},
			Annotations: map[string]string{"canopy.io/node-asn": "65001", "other.io/x": "1"}},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:1::/64"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: "n1"},
			{Type: corev1.NodeInternalIP, Address: "fd00::11"},
			{Type: corev1.NodeInternalIP, Address: "10.0.0.11"},
			{Type: corev1.NodeExternalIP, Address: "192.0.2.11"},
		}},
	}
}

func TestNodeHelpers(t *testing.T) {
	n := testNode()
	if got := NodeIP(n); got != netip.MustParseAddr("10.0.0.11") {
		t.Errorf("NodeIP = %s, want the IPv4 InternalIP", got)
	}
	if got := NodeAddresses(n); len(got) != 3 {
		t.Errorf("NodeAddresses = %v", got)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:1::/64")}
	if got := PodCIDRs(n); !slices.Equal(got, want) {
		t.Errorf("PodCIDRs = %v", got)
	}
	n.Spec.PodCIDRs = nil
	if got := PodCIDRs(n); !slices.Equal(got, want[:1]) {
		t.Errorf("PodCIDRs from spec.podCIDR = %v", got)
	}
	if NodeIP(nil).IsValid() || PodCIDRs(nil) != nil {
		t.Error("nil node")
	}
}

func TestNodeChanged(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(*corev1.Node)
		want   bool
	}{
		{"heartbeat", func(n *corev1.Node) {
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, LastHeartbeatTime: metav1.Now()}}
			n.ResourceVersion = "2"
		}, false},
		{"foreign annotation", func(n *corev1.Node) { n.Annotations["other.io/x"] = "2" }, false},
		{"canopy annotation", func(n *corev1.Node) { n.Annotations["canopy.io/node-asn"] = "65002" }, true},
		{"canopy annotation added", func(n *corev1.Node) { n.Annotations["canopy.io/peers"] = "[]" }, true},
		{"label", func(n *corev1.Node) { n.Labels["rack"] = "b" }, true},
		{"address", func(n *corev1.Node) { n.Status.Addresses[2].Address = "10.0.0.12" }, true},
		{"pod CIDRs", func(n *corev1.Node) { n.Spec.PodCIDRs = n.Spec.PodCIDRs[:1] }, true},
		{"deleting", func(n *corev1.Node) { now := metav1.Now(); n.DeletionTimestamp = &now }, true},
	} {
		o, n := testNode(), testNode()
		c.change(n)
		if got := NodeChanged(o, n); got != c.want {
			t.Errorf("%s: NodeChanged = %v, want %v", c.name, got, c.want)
		}
	}
}
