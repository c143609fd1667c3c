package policy

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Dual-stack semantics: a selected pod is a peer with every address it has; a named port resolves per address;
// an ipBlock's pods are reached only at their addresses inside it; FromPod keeps one address per family.
func TestComputeDualStack(t *testing.T) {
	pods := []*Pod{
		{Namespace: "a", Name: "web", IP: addr("10.244.1.10"), IPs: []netip.Addr{addr("10.244.1.10"), addr("fd00:1::10")}, NodeName: "n1",
			Labels: map[string]string{"app": "web"}, Ports: []NamedPort{{Name: "http", Port: 8080}}},
		{Namespace: "a", Name: "client", IP: addr("10.244.2.5"), IPs: []netip.Addr{addr("10.244.2.5"), addr("fd00:2::5")}, NodeName: "n2",
			Labels: map[string]string{"role": "client"}},
		{Namespace: "a", Name: "v6only", IP: addr("fd00:2::6"), NodeName: "n2", Labels: map[string]string{"role": "client"},
			Ports: []NamedPort{{Name: "http", Port: 9090}}},
	}
	nss := []*Namespace{{Name: "a"}}
	pols := []*networkingv1.NetworkPolicy{
		np("a", "in", sel("app", "web"), tIn, ingRule(from(podPeer(sel("role", "client"))), ports(port(corev1.ProtocolTCP, 80, 0))), nil),
		np("a", "out", sel("app", "web"), tEg, nil, egRule(from(blockPeer("fd00:2::/64")), ports(port(corev1.ProtocolTCP, "http", 0)))),
	}
	fw := Compute(pols, pods, nss, "n1")["a/web"]
	if fw == nil || !fw.IngressIsolated || !fw.EgressIsolated {
		t.Fatalf("web firewall %+v", fw)
	}
	want := []netip.Addr{addr("10.244.2.5"), addr("fd00:2::5"), addr("fd00:2::6")}
	if got := fw.Ingress[0].Peers[0].PodIPs; !slices.Equal(got, want) {
		t.Errorf("selector peer %v, want every address of both clients %v", got, want)
	}
	// The named port "http" inside fd00:2::/64: only v6only exposes it, at its IPv6 address (client has no
	// such port; web's own IPv4 address is outside the block).
	if len(fw.Egress) != 1 || !slices.Equal(fw.Egress[0].Peers[0].PodIPs, []netip.Addr{addr("fd00:2::6")}) || fw.Egress[0].Ports[0].Port != 9090 {
		t.Errorf("named-port egress %+v", fw.Egress)
	}

	p := FromPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "x"}, Status: corev1.PodStatus{
		PodIPs: []corev1.PodIP{{IP: "fd00:1::7"}, {IP: "10.244.1.7"}, {IP: "fd00:1::8"}, {IP: "::ffff:10.244.1.9"}}}})
	if p.IP != addr("10.244.1.7") || !slices.Equal(p.Addrs(), []netip.Addr{addr("fd00:1::7"), addr("10.244.1.7")}) {
		t.Errorf("FromPod dual-stack: IP %s, addresses %v", p.IP, p.Addrs())
	}
	p = FromPod(&corev1.Pod{Status: corev1.PodStatus{PodIP: "fd00:1::7"}})
	if p.IP != addr("fd00:1::7") || len(p.Addrs()) != 1 {
		t.Errorf("FromPod IPv6-only: IP %s, addresses %v", p.IP, p.Addrs())
	}
}
