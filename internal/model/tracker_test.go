package model

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

type recWarner struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recWarner) Warn(svc *corev1.Service, reason, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, reason+": "+msg)
}

func (r *recWarner) has(sub string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.msgs, func(m string) bool { return strings.Contains(m, sub) })
}

func extService(name string, created time.Time, ips ...string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "t", Name: name, CreationTimestamp: metav1.NewTime(created)},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.50", ClusterIPs: []string{"10.96.0.50"},
			ExternalIPs: ips, Ports: []corev1.ServicePort{{Name: "http", Port: 443, Protocol: corev1.ProtocolTCP}}},
	}
}

func waitPorts(t *testing.T, tr *ServiceTracker, key string, want func([]*ServicePort) bool) []*ServicePort {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p := tr.Ports(key)
		if want(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: ports %+v", key, p)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func externalIPs(p []*ServicePort) []string {
	if len(p) == 0 {
		return nil
	}
	var out []string
	for _, a := range p[0].ExternalIPs {
		out = append(out, a.String())
	}
	return out
}

// A tenant's Service cannot make the node serve an address the cluster needs, or one outside the operator's
// range, or one another Service claimed first; when the first claimant goes, the next one gets the address.
func TestTrackerAdmitsExternalIPs(t *testing.T) {
	t0 := time.Now().Add(-time.Hour)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.99.0.11"}}}}
	apiSlice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.99.0.100"}}}}
	a := extService("a", t0, "10.201.0.5", "10.99.0.11", "10.99.0.100", "192.0.2.1", "10.244.1.5")
	a.Spec.Type = corev1.ServiceTypeLoadBalancer
	a.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "10.99.0.11"}, {IP: "10.200.0.9"}}
	b := extService("b", t0.Add(time.Minute), "10.201.0.5", "10.201.0.6")
	kube := fake.NewSimpleClientset(node, apiSlice, a, b)
	factory := informers.NewSharedInformerFactory(kube, 0)
	w := &recWarner{}
	adm := Admission{ExternalIPRanges: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Reserved: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/16")}}
	tr := NewServiceTracker(factory, Options{NodeName: "n1"}, adm, w, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go tr.Run(ctx)

	pa := waitPorts(t, tr, "t/a", func(p []*ServicePort) bool { return len(p) == 1 })
	if got := externalIPs(pa); !slices.Equal(got, []string{"10.201.0.5"}) {
		t.Errorf("a's external IPs %v, want only 10.201.0.5", got)
	}
	if got := pa[0].LoadBalancerIPs; !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.200.0.9")}) {
		t.Errorf("a's LB IPs %v, want only 10.200.0.9 (not the node's address)", got)
	}
	pb := waitPorts(t, tr, "t/b", func(p []*ServicePort) bool { return len(p) == 1 })
	if got := externalIPs(pb); !slices.Equal(got, []string{"10.201.0.6"}) {
		t.Errorf("b's external IPs %v, want only 10.201.0.6 (a claimed 10.201.0.5 first)", got)
	}
	for _, want := range []string{"10.99.0.11 is refused (not programmed, not announced): it is the address of node n1",
		"10.99.0.100 is refused (not programmed, not announced): it is an address of the Kubernetes API server",
		"192.0.2.1 is refused (not programmed, not announced): it is outside --service-external-ip-range (10.0.0.0/8)",
		"10.244.1.5 is refused (not programmed, not announced): it is inside 10.244.0.0/16",
		"load balancer IP 10.99.0.11 is refused",
		"service t/b: external IP 10.201.0.5 is refused (not programmed, not announced): it is already claimed by Service t/a"} {
		if !w.has(ReasonExternalIPRefused+": ") || !w.has(want) {
			t.Errorf("no warning %q in %q", want, w.msgs)
		}
	}
	// The first claimant goes: the next one gets the address.
	if err := kube.CoreV1().Services("t").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPorts(t, tr, "t/b", func(p []*ServicePort) bool { return slices.Equal(externalIPs(p), []string{"10.201.0.5", "10.201.0.6"}) })
	// A node takes an address a Service holds: the Service loses it.
	node2 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.201.0.6"}}}}
	if _, err := kube.CoreV1().Nodes().Create(ctx, node2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPorts(t, tr, "t/b", func(p []*ServicePort) bool { return slices.Equal(externalIPs(p), []string{"10.201.0.5"}) })
}

// TestTrackerFollowsSlices: with the agent's informers (slices cached as Slice), a Service's ports have the
// endpoints of every slice of the first list, and follow a slice that changes, moves to another Service or
// goes.
func TestTrackerFollowsSlices(t *testing.T) {
	slice := func(name, svc string, ips ...string) *discoveryv1.EndpointSlice {
		port, http := int32(8080), "http"
		s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "t", Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: &http, Port: &port}}}
		for _, ip := range ips {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}})
		}
		return s
	}
	a, b := extService("a", time.Now()), extService("b", time.Now())
	b.Spec.ClusterIP, b.Spec.ClusterIPs = "10.96.0.51", []string{"10.96.0.51"}
	kube := fake.NewSimpleClientset(a, b, slice("a-1", "a", "10.244.1.1"), slice("a-2", "a", "10.244.1.2"))
	factory := NewInformerFactory(kube)
	tr := NewServiceTracker(factory, Options{NodeName: "n1"}, Admission{}, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go tr.Run(ctx)
	eps := func(p []*ServicePort) string {
		if len(p) == 0 {
			return "-"
		}
		var out []string
		for _, e := range p[0].ClusterEndpoints {
			out = append(out, e.IP.String())
		}
		return strings.Join(out, ",")
	}
	is := func(key, want string) {
		t.Helper()
		waitPorts(t, tr, key, func(p []*ServicePort) bool { return eps(p) == want })
	}
	for !tr.HasSynced() {
		time.Sleep(10 * time.Millisecond)
	}
	if got := eps(tr.Ports("t/a")); got != "10.244.1.1,10.244.1.2" {
		t.Errorf("after the first sync a has %s, want both slices' endpoints", got)
	}
	is("t/b", "")
	sl := kube.DiscoveryV1().EndpointSlices("t")
	if _, err := sl.Update(ctx, slice("a-2", "a", "10.244.1.3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	is("t/a", "10.244.1.1,10.244.1.3")
	if _, err := sl.Update(ctx, slice("a-2", "b", "10.244.1.3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	is("t/a", "10.244.1.1")
	is("t/b", "10.244.1.3")
	if err := sl.Delete(ctx, "a-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	is("t/a", "")
	tr.smu.Lock()
	defer tr.smu.Unlock()
	if _, ok := tr.slicesOf["t/a"]; ok || len(tr.slicesOf["t/b"]) != 1 {
		t.Errorf("slices by Service: %v", tr.slicesOf)
	}
}
