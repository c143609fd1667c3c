package model

import (
	"context"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

func slice6(ns, svcName, sliceName string, ps []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := slice(ns, svcName, sliceName, ps, eps...)
	s.AddressType = discoveryv1.AddressTypeIPv6
	return s
}

var dual = Options{NodeName: node, IPv6: true}

// A dual-stack Service: with opt.IPv6 the IPv4 side is exactly what it is without, and the IPv6 side holds the
// IPv6 cluster IP, external IPs, ingress IPs and the endpoints of the IPv6 slices only.
func TestBuildServicePortsDualStack(t *testing.T) {
	web := ports(eport("web", "TCP", 8080))
	s := svc("ns", "s", []string{"web/TCP/80/30080"}, withType(corev1.ServiceTypeLoadBalancer),
		withClusterIPs("fd00:96::10", "fd00:96::10", "10.96.0.10"),
		withExternalIPs("192.0.2.1", "2001:db8::1", "2001:db8::1"),
		withIngress(corev1.LoadBalancerIngress{IP: "198.51.100.1"}, corev1.LoadBalancerIngress{IP: "2001:db8:1::5"},
			corev1.LoadBalancerIngress{IP: "2001:db8:1::6", IPMode: ptr(corev1.LoadBalancerIPModeProxy)}))
	sl := []*discoveryv1.EndpointSlice{
		slice("ns", "s", "v4", web, ep("10.0.0.1", node, "R"), ep("10.0.0.2", "n2", "R")),
		slice6("ns", "s", "v6", web, ep("fd00:244::2", "n2", "R"), ep("fd00:244::1", node, "R"), ep("10.0.0.9", node, "R")),
		slice6("other", "s", "v6-other-ns", web, ep("fd00:244::7", node, "R")),
	}
	v4only, _ := BuildServicePorts(s, sl, Options{NodeName: node})
	got, warns := BuildServicePorts(s, sl, dual)
	if len(warns) > 0 || len(got) != 1 || len(v4only) != 1 {
		t.Fatalf("ports %v warnings %v", got, warns)
	}
	sp := got[0]
	if v4only[0].IPv6 != nil {
		t.Errorf("IPv6 side built without opt.IPv6: %+v", v4only[0].IPv6)
	}
	four := *sp
	four.IPv6 = nil
	if !reflect.DeepEqual(&four, v4only[0]) {
		t.Errorf("IPv4 side differs with opt.IPv6:\n%+v\n%+v", &four, v4only[0])
	}
	f := sp.IPv6
	if f == nil {
		t.Fatal("no IPv6 side")
	}
	if !slices.Equal(f.ClusterIPs, addrs("fd00:96::10")) || !slices.Equal(f.ExternalIPs, addrs("2001:db8::1")) ||
		!slices.Equal(f.LoadBalancerIPs, addrs("2001:db8:1::5")) {
		t.Errorf("IPv6 addresses %v %v %v", f.ClusterIPs, f.ExternalIPs, f.LoadBalancerIPs)
	}
	want6 := []string{"fd00:244::1:8080 n1 LRS-", "fd00:244::2:8080 n2 -RS-"}
	if g := epStrings(f.ClusterEndpoints); !slices.Equal(g, want6) {
		t.Errorf("IPv6 cluster endpoints %v, want %v (never an IPv4 one)", g, want6)
	}
	if g := epStrings(sp.ClusterEndpoints); !slices.Equal(g, []string{"10.0.0.1:8080 n1 LRS-", "10.0.0.2:8080 n2 -RS-"}) {
		t.Errorf("IPv4 cluster endpoints %v (never an IPv6 one)", g)
	}
	if sp.LocalEndpoints(false) != 2 || v4only[0].LocalEndpoints(false) != 1 {
		t.Errorf("local endpoints %d (both families), %d (IPv4 only)", sp.LocalEndpoints(false), v4only[0].LocalEndpoints(false))
	}
	// The per-family views.
	if sp.ForFamily(false) != sp {
		t.Error("ForFamily(IPv4) is not the port itself")
	}
	v6 := sp.ForFamily(true)
	if v6 == nil || !slices.Equal(v6.ClusterIPs, f.ClusterIPs) || !reflect.DeepEqual(v6.ClusterEndpoints, f.ClusterEndpoints) ||
		v6.IPv6 != nil || v6.Key != sp.Key || v6.NodePort != 30080 || !slices.Equal(v6.LoadBalancerIPs, f.LoadBalancerIPs) {
		t.Errorf("ForFamily(IPv6) = %+v", v6)
	}
	if sp.ClusterIPs[0] != netip.MustParseAddr("10.96.0.10") {
		t.Error("ForFamily modified the port")
	}
	if v4only[0].ForFamily(true) != nil {
		t.Error("an IPv4-only port has an IPv6 view")
	}

	// ETP Local: the IPv6 external endpoints are the local IPv6 ones.
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	got, _ = BuildServicePorts(s, sl, dual)
	if g := epStrings(got[0].IPv6.ExternalEndpoints); !slices.Equal(g, []string{"fd00:244::1:8080 n1 LRS-"}) {
		t.Errorf("IPv6 external endpoints with ETP Local %v", g)
	}
}

// An IPv6-only Service gives ports with opt.IPv6 (no IPv4 side, no IPv4 view), none without.
func TestBuildServicePortsIPv6Only(t *testing.T) {
	web := ports(eport("web", "UDP", 53))
	s := svc("ns", "s", []string{"web/UDP/53"}, withClusterIPs("fd00:96::a", "fd00:96::a"))
	sl := []*discoveryv1.EndpointSlice{slice6("ns", "s", "v6", web, ep("fd00:244::3", "n2", "R"))}
	if got, _ := BuildServicePorts(s, sl, Options{NodeName: node}); got != nil {
		t.Fatalf("IPv6-only service without opt.IPv6: %v", got)
	}
	got, _ := BuildServicePorts(s, sl, dual)
	if len(got) != 1 {
		t.Fatalf("ports %v", got)
	}
	sp := got[0]
	if len(sp.ClusterIPs) != 0 || sp.ClusterEndpoints != nil || sp.ForFamily(false) != nil {
		t.Errorf("IPv4 side of an IPv6-only service: %v %v", sp.ClusterIPs, sp.ClusterEndpoints)
	}
	v6 := sp.ForFamily(true)
	if v6 == nil || !slices.Equal(v6.ClusterIPs, addrs("fd00:96::a")) || !slices.Equal(epStrings(v6.ClusterEndpoints), []string{"fd00:244::3:53 n2 -RS-"}) {
		t.Errorf("IPv6 view %+v", v6)
	}
	// Headless stays headless.
	if got, _ := BuildServicePorts(svc("ns", "s", []string{"web/UDP/53"}, withClusterIPs("None", "None")), sl, dual); got != nil {
		t.Errorf("headless: %v", got)
	}
}

// ExternalIPs and LoadBalancer IPs of the IPv6 side are admitted by the same rules as IPv4: inside
// --service-external-ip-range (per family: an IPv4 range admits no IPv6 address), never a node's or the API
// server's address, never inside the pod or service networks, the oldest claim wins.
func TestTrackerAdmitsIPv6ExternalIPs(t *testing.T) {
	t0 := time.Now().Add(-time.Hour)
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.99.0.11"},
			{Type: corev1.NodeInternalIP, Address: "2001:db8:99::11"}}}}
	apiSlice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "kubernetes-v6", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv6, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"2001:db8:99::100"}}}}
	dualSvc := func(name string, created time.Time, ips ...string) *corev1.Service {
		s := extService(name, created, ips...)
		s.Spec.ClusterIPs = []string{"10.96.0.50", "fd00:96::50"}
		return s
	}
	a := dualSvc("a", t0, "10.201.0.5", "2001:db8:99::5", "2001:db8:99::11", "2001:db8:99::100", "2001:db8:77::1", "fd00:244::5", "fd00:96::9")
	a.Spec.Type = corev1.ServiceTypeLoadBalancer
	a.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "2001:db8:99::11"}, {IP: "2001:db8:200::9"}}
	b := dualSvc("b", t0.Add(time.Minute), "2001:db8:99::5", "2001:db8:99::6")
	kube := fake.NewSimpleClientset(n, apiSlice, a, b)
	factory := informers.NewSharedInformerFactory(kube, 0)
	w := &recWarner{}
	adm := Admission{ExternalIPRanges: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:99::/64"),
		netip.MustParsePrefix("fd00::/16")},
		Reserved: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56"), netip.MustParsePrefix("fd00:96::/108")}}
	tr := NewServiceTracker(factory, Options{NodeName: "n1", IPv6: true}, adm, w, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go tr.Run(ctx)

	ext6 := func(p []*ServicePort) []netip.Addr {
		if len(p) == 0 || p[0].IPv6 == nil {
			return nil
		}
		return p[0].IPv6.ExternalIPs
	}
	pa := waitPorts(t, tr, "t/a", func(p []*ServicePort) bool { return len(p) == 1 && p[0].IPv6 != nil })
	if got := ext6(pa); !slices.Equal(got, addrs("2001:db8:99::5")) {
		t.Errorf("a's IPv6 external IPs %v, want only 2001:db8:99::5", got)
	}
	if got := externalIPs(pa); !slices.Equal(got, []string{"10.201.0.5"}) {
		t.Errorf("a's IPv4 external IPs %v", got)
	}
	if got := pa[0].IPv6.LoadBalancerIPs; !slices.Equal(got, addrs("2001:db8:200::9")) {
		t.Errorf("a's IPv6 LB IPs %v, want only 2001:db8:200::9 (not the node's address)", got)
	}
	pb := waitPorts(t, tr, "t/b", func(p []*ServicePort) bool { return len(p) == 1 && p[0].IPv6 != nil })
	if got := ext6(pb); !slices.Equal(got, addrs("2001:db8:99::6")) {
		t.Errorf("b's IPv6 external IPs %v, want only 2001:db8:99::6 (a claimed 2001:db8:99::5 first)", got)
	}
	for _, want := range []string{
		"external IP 2001:db8:99::11 is refused (not programmed, not announced): it is the address of node n1",
		"external IP 2001:db8:99::100 is refused (not programmed, not announced): it is an address of the Kubernetes API server",
		"external IP 2001:db8:77::1 is refused (not programmed, not announced): it is outside --service-external-ip-range",
		"external IP fd00:244::5 is refused (not programmed, not announced): it is inside fd00:244::/56",
		"external IP fd00:96::9 is refused (not programmed, not announced): it is inside fd00:96::/108",
		"load balancer IP 2001:db8:99::11 is refused",
		"service t/b: external IP 2001:db8:99::5 is refused (not programmed, not announced): it is already claimed by Service t/a"} {
		if !w.has(want) {
			t.Errorf("no warning %q in %q", want, w.msgs)
		}
	}
	// The first claimant goes: the next one gets the address.
	if err := kube.CoreV1().Services("t").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPorts(t, tr, "t/b", func(p []*ServicePort) bool { return slices.Equal(ext6(p), addrs("2001:db8:99::5", "2001:db8:99::6")) })
}
