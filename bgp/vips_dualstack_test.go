package bgp

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"canopy.io/canopy/bgp/services"
	"canopy.io/canopy/internal/model"
)

// dualLB is a dual-stack LoadBalancer Service default/lb with one ingress IP per family.
func dualLB() *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "lb"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.5", ClusterIPs: []string{"10.96.0.5", "fd00:96::5"},
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(80), Protocol: corev1.ProtocolTCP}}},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "10.200.0.5"}, {IP: "fd00:200::5"}}}},
	}
}

var dualVIPOptions = services.Options{AdvertiseClusterIP: true, AdvertiseExternalIP: true, AdvertiseLoadBalancerIP: true,
	LoadBalancerIPRanges: []netip.Prefix{pfx("10.200.0.0/24"), pfx("fd00:200::/64")}}

// startVIPController runs a VIPController for node n1 on kube with a tracker that builds the IPv6 side when ipv6.
func startVIPController(t *testing.T, kube *fake.Clientset, mgr *Manager, opts services.Options, ipv6 bool) {
	t.Helper()
	factory := informers.NewSharedInformerFactory(kube, 0)
	rec := record.NewFakeRecorder(100)
	warn := &model.ServiceEvents{Recorder: rec, Log: quiet}
	tracker := model.NewServiceTracker(factory, model.Options{NodeName: "n1", IPv6: ipv6}, model.Admission{}, warn, quiet)
	c := NewVIPController("n1", opts, factory, tracker, mgr, warn, rec, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	go tracker.Run(ctx)
	go c.Run(ctx)
}

func pathStrings(m map[netip.Prefix]Path) map[string]string {
	out := map[string]string{}
	for p, path := range m {
		out[p.String()] = path.NextHop.String()
	}
	return out
}

func sameStrings(got, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// TestVIPControllerDualStack: each VIP's next hop is the node's address of its family (a /32 through its IPv4
// InternalIP, a /128 through its IPv6 one); a node that loses its IPv6 address withdraws the IPv6 VIPs and
// keeps the IPv4 ones, and announces them again when the address is back.
func TestVIPControllerDualStack(t *testing.T) {
	kube := fake.NewSimpleClientset(dualNode("n1", "10.99.0.11", "fd00:99::11", "10.244.1.0/24", "fd00:10:244:1::/64"))
	mgr, _ := startManager(t, nil)
	mgr.SetIdentity(Identity{ASN: 64512, RouterID: addr("10.99.0.11"), NodeIP: addr("10.99.0.11")})
	startVIPController(t, kube, mgr, dualVIPOptions, true)
	ctx := context.Background()
	if _, err := kube.CoreV1().Services("default").Create(ctx, dualLB(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	both := map[string]string{"10.96.0.5/32": "10.99.0.11", "10.200.0.5/32": "10.99.0.11",
		"fd00:96::5/128": "fd00:99::11", "fd00:200::5/128": "fd00:99::11"}
	var got map[string]string
	eventually(t, "both families announced, each through the node's address of its family", func() bool {
		got = pathStrings(mgr.AppliedPaths(GroupVIPs))
		return sameStrings(got, both)
	})
	for _, p := range mgr.AppliedPaths(GroupVIPs) {
		if !p.VIP {
			t.Fatalf("path %+v is not marked VIP", p)
		}
	}

	// The node loses its IPv6 InternalIP: no IPv6 next hop, so the IPv6 VIPs go (skipped, not an error).
	n, err := kube.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = n.Status.Addresses[:1]
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "IPv6 VIPs withdrawn, IPv4 ones kept", func() bool {
		return sameStrings(pathStrings(mgr.AppliedPaths(GroupVIPs)), map[string]string{"10.96.0.5/32": "10.99.0.11", "10.200.0.5/32": "10.99.0.11"})
	})
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00:99::11"})
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "IPv6 VIPs back", func() bool { return sameStrings(pathStrings(mgr.AppliedPaths(GroupVIPs)), both) })
}

// TestVIPControllerIPv6ServiceCIDR: --advertise-service-cidr announces the IPv6 service CIDR through the node's
// IPv6 address where the proxy serves IPv6, and leaves it out where it does not (IPVS): nothing there would
// answer its traffic.
func TestVIPControllerIPv6ServiceCIDR(t *testing.T) {
	opts := dualVIPOptions
	opts.AdvertiseServiceCIDR = true
	opts.ServiceCIDRs = []netip.Prefix{pfx("10.96.0.0/16"), pfx("fd00:96::/108")}
	for _, c := range []struct {
		name string
		ipv6 bool
		want map[string]string
	}{
		{"proxy serves IPv6", true, map[string]string{"10.96.0.0/16": "10.99.0.11", "fd00:96::/108": "fd00:99::11"}},
		{"proxy serves IPv4 only", false, map[string]string{"10.96.0.0/16": "10.99.0.11"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			kube := fake.NewSimpleClientset(dualNode("n1", "10.99.0.11", "fd00:99::11", "10.244.1.0/24", "fd00:10:244:1::/64"))
			mgr, _ := startManager(t, nil)
			mgr.SetIdentity(Identity{ASN: 64512, RouterID: addr("10.99.0.11"), NodeIP: addr("10.99.0.11")})
			startVIPController(t, kube, mgr, opts, c.ipv6)
			eventually(t, "the aggregates", func() bool { return sameStrings(pathStrings(mgr.AppliedPaths(GroupVIPs)), c.want) })
			time.Sleep(200 * time.Millisecond)
			if got := pathStrings(mgr.AppliedPaths(GroupVIPs)); !sameStrings(got, c.want) {
				t.Fatalf("paths %v, want %v", got, c.want)
			}
		})
	}
}

// TestVIPControllerDualStackGoBGP runs the VIP controller on a real GoBGP speaker (both families, as a dual-stack
// node's) with an in-process router peering over IPv4: the router receives the IPv4 VIPs as /32s through the
// node's IPv4 address and the IPv6 ones as /128s in MP_REACH_NLRI through its IPv6 address, and both are
// withdrawn with the Service.
func TestVIPControllerDualStackGoBGP(t *testing.T) {
	const nodeIP, nodeIP6, tor = "127.0.0.1", "fd00:99::11", "127.0.0.2"
	port := freePort(t, nodeIP)
	start := func(ctx context.Context, cfg GlobalConfig) (Router, error) { return StartGoBGP(ctx, cfg, quiet) }
	sessions := NewSessions(quiet)
	m := NewManager(GlobalConfig{ListenPort: port, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second,
		Families: []AddressFamily{IPv4Unicast, IPv6Unicast}}, start, sessions, quiet, sessions.Reset)
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	t.Cleanup(func() { cancel(); m.Shutdown(true) })
	m.SetIdentity(Identity{ASN: 64512, RouterID: addr(nodeIP), NodeIP: addr(nodeIP)})
	eventually(t, "the speaker runs", func() bool { _, ok := m.Running(); return ok })
	peer := startMPPeer(t, tor, 64500, nodeIP, port, 64512)
	m.SetPeers([]PeerSpec{{Address: addr(tor), ASN: 64500, Port: uint16(peer.port), Kind: PeerKindExternal, Name: "tor"}})

	kube := fake.NewSimpleClientset(dualNode("n1", nodeIP, nodeIP6, "10.244.1.0/24", "fd00:10:244:1::/64"))
	startVIPController(t, kube, m, dualVIPOptions, true)
	t0 := time.Now()
	if _, err := kube.CoreV1().Services("default").Create(ctx, dualLB(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the router has both families' VIPs, each through the node's address of its family", func() bool {
		return sameStrings(peer.received(), map[string]string{"10.96.0.5/32": nodeIP, "10.200.0.5/32": nodeIP}) &&
			sameStrings(peer.received6(), map[string]string{"fd00:96::5/128": nodeIP6, "fd00:200::5/128": nodeIP6})
	})
	t.Logf("IPv6 VIPs at the router %s after the Service was created (session coming up included)", time.Since(t0).Round(time.Millisecond))
	if err := kube.CoreV1().Services("default").Delete(ctx, "lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both families withdrawn at the router", func() bool { return len(peer.received()) == 0 && len(peer.received6()) == 0 })
}
