package model

import (
	"net/netip"
	"reflect"
	"testing"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"
)

func TestTransformNode(t *testing.T) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "u1", ResourceVersion: "7",
			Labels:        map[string]string{"canopy.io/route-reflector": "1.1.1.1", "zone": "a"},
			Annotations:   map[string]string{"canopy.io/peers": "[]", "canopy.io/node-asn": "65001", "node.alpha.kubernetes.io/ttl": "0"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00::/64"}, ProviderID: "x"},
		Status: corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.99.0.11"}},
			Images:     []corev1.ContainerImage{{Names: []string{"img"}}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			NodeInfo:   corev1.NodeSystemInfo{KernelVersion: "6.1"},
		},
	}
	out, err := Transform(n.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Node)
	if got.Name != "n1" || got.UID != "u1" || got.ResourceVersion != "7" || len(got.ManagedFields) != 0 {
		t.Errorf("meta: %+v", got.ObjectMeta)
	}
	if len(got.Labels) != 2 || len(got.Annotations) != 2 || got.Annotations["canopy.io/peers"] != "[]" || got.Annotations["canopy.io/node-asn"] != "65001" {
		t.Errorf("labels %v annotations %v", got.Labels, got.Annotations)
	}
	if NodeIP(got) != NodeIP(n) || len(PodCIDRs(got)) != 2 || len(got.Status.Images)+len(got.Status.Conditions) != 0 || got.Status.NodeInfo.KernelVersion != "" {
		t.Errorf("node: %+v", got)
	}
	if NodeChanged(n, got) {
		t.Error("NodeChanged sees a difference between a Node and its slim copy")
	}
}

func TestTransformSliceAndOthers(t *testing.T) {
	node, zone := "n1", "a"
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "s", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kcm"}}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, NodeName: &node, Zone: &zone,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "p"}}}}
	out, _ := Transform(s)
	got := out.(*Slice)
	if len(got.Endpoints) != 1 || got.Endpoints[0].Node != "n1" || got.Endpoints[0].IP != netip.MustParseAddr("10.244.1.5") {
		t.Errorf("slice: %+v", got)
	}
	mkSvc := func() *corev1.Service {
		single, cluster := corev1.IPFamilyPolicySingleStack, corev1.ServiceInternalTrafficPolicyCluster
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x", Annotations: map[string]string{"a": "b"}, Labels: map[string]string{"l": "v"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "x"}, Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.1",
				ClusterIPs: []string{"10.96.0.1"}, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}, IPFamilyPolicy: &single,
				InternalTrafficPolicy: &cluster, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	}
	svc := mkSvc()
	want := mkSvc()
	want.ManagedFields, want.Spec.Selector = nil, nil
	out, _ = Transform(svc)
	g := out.(*corev1.Service)
	if !reflect.DeepEqual(g, want) {
		t.Errorf("service\n%+v, want\n%+v (only managedFields and the selector dropped)", g, want)
	}
	out2, _ := Transform(mkSvc())
	if g2 := out2.(*corev1.Service); g.Spec.IPFamilyPolicy != g2.Spec.IPFamilyPolicy || g.Spec.InternalTrafficPolicy != g2.Spec.InternalTrafficPolicy ||
		unsafe.StringData(g.Spec.Ports[0].Name) != unsafe.StringData(g2.Spec.Ports[0].Name) {
		t.Error("a Service's policies and port names are not shared with another's")
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "x", Obj: svc}
	if out, err := Transform(tomb); err != nil || out.(cache.DeletedFinalStateUnknown).Key != "x" {
		t.Errorf("tombstone: %v %v", out, err)
	}
}

// TestTransformSlice: a cached EndpointSlice is a Slice: its Service, address type, the ports a consumer can
// use (defaults applied) and each endpoint's first address, node and conditions (the API's defaults applied),
// node and port names shared between slices; and it serves as an informer's object (key, meta, copy).
func TestTransformSlice(t *testing.T) {
	mk := func(name, node string) *discoveryv1.EndpointSlice {
		yes, no, port, http, tcp, udp, sctp9, bad := true, false, int32(8080), "http", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.Protocol("ICMP"), int32(70000)
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", GenerateName: "svc-",
			Labels:          map[string]string{discoveryv1.LabelServiceName: "svc", discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"},
			Annotations:     map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "x"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "svc"}}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: &http, Port: &port, Protocol: &tcp}, {Port: &port, Protocol: &udp},
				{Port: &port}, {Name: &http, Port: &port, Protocol: &sctp9}, {Port: &bad}, {Name: &http}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.244.1.5", "10.244.1.6"}, NodeName: &node,
					Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no}},
				{Addresses: []string{"10.244.2.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &no, Terminating: &yes}},
				{Addresses: []string{"not-an-ip"}},
				{}, // no address: left out
			}}
	}
	a, _ := Transform(mk("a", "n1"))
	b, _ := Transform(mk("b", "n1"))
	sa, sb := a.(*Slice), b.(*Slice)
	want := &Slice{Namespace: "ns", Name: "a", Service: "svc", AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []SlicePort{{Name: "http", Protocol: TCP, Port: 8080}, {Protocol: UDP, Port: 8080}, {Protocol: TCP, Port: 8080}},
		Endpoints: []SliceEndpoint{{IP: netip.MustParseAddr("10.244.1.5"), Node: "n1", Ready: true, Serving: true},
			{IP: netip.MustParseAddr("10.244.2.5"), Serving: true, Terminating: true}, {Ready: true, Serving: true}}}
	if !reflect.DeepEqual(sa, want) {
		t.Errorf("slice\n%+v, want\n%+v", sa, want)
	}
	if unsafe.StringData(sa.Endpoints[0].Node) != unsafe.StringData(sb.Endpoints[0].Node) ||
		unsafe.StringData(sa.Ports[0].Name) != unsafe.StringData(sb.Ports[0].Name) || sa.ServiceKey() != "ns/svc" {
		t.Error("node and port names not shared between slices")
	}
	if k, err := cache.MetaNamespaceKeyFunc(sa); err != nil || k != "ns/a" {
		t.Errorf("key %q, %v", k, err)
	}
	if m, err := meta.Accessor(sa); err != nil || m.GetName() != "a" || m.GetNamespace() != "ns" {
		t.Errorf("meta.Accessor: %v, %v", m, err)
	}
	if c := sa.DeepCopyObject().(*Slice); !reflect.DeepEqual(c, sa) || &c.Endpoints[0] == &sa.Endpoints[0] {
		t.Errorf("DeepCopyObject: %+v", c)
	}
	if (&Slice{Namespace: "ns"}).ServiceKey() != "" {
		t.Error("a slice without a Service has a key")
	}
}

func TestTransformPolicyAndLabels(t *testing.T) {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns",
		Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"}}}
	out, _ := Transform(np)
	if g := out.(*networkingv1.NetworkPolicy); g.Annotations != nil || g.Name != "p" {
		t.Errorf("policy: %+v", g.ObjectMeta)
	}
	l1 := InternLabels(map[string]string{"app": "a", "tier": "web"})
	l2 := InternLabels(map[string]string{"tier": "web", "app": "a"})
	l3 := InternLabels(map[string]string{"app": "a", "tier": "db"})
	if reflect.ValueOf(l1).UnsafePointer() != reflect.ValueOf(l2).UnsafePointer() || l3["tier"] != "db" || len(l1) != 2 || l1["tier"] != "web" {
		t.Errorf("InternLabels: %v %v %v", l1, l2, l3)
	}
	if InternLabels(nil) != nil {
		t.Error("InternLabels(nil) is not nil")
	}
}

// TestTransformTwice: an informer that streams its first list (client-go's WatchListClient, on by default since
// 1.35, with an API server of 1.34 or later on etcd 3.5.13 or later) runs the transform on each object twice:
// into its temporary store, then again in Replace. The second run must leave the first one's result as it is.
func TestTransformTwice(t *testing.T) {
	node, zone := "n1", "a"
	single := corev1.IPFamilyPolicySingleStack
	objs := []any{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"zone": "a"},
			Annotations: map[string]string{"canopy.io/node-asn": "65001", "x": "y"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
			Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.99.0.11"}},
				Images: []corev1.ContainerImage{{Names: []string{"img"}}}, Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns", Annotations: map[string]string{"a": "b"}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "x"}, Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.1",
				ClusterIPs: []string{"10.96.0.1"}, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}, IPFamilyPolicy: &single,
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: map[string]string{"team": "a"}, Annotations: map[string]string{"x": "y"}}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Annotations: map[string]string{"x": "y"}}},
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "s-1", Namespace: "ns", Labels: map[string]string{discoveryv1.LabelServiceName: "s"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, NodeName: &node, Zone: &zone}}},
	}
	for _, o := range objs {
		once, err := Transform(o)
		if err != nil {
			t.Fatalf("%T: %v", o, err)
		}
		before := once.(runtime.Object).DeepCopyObject()
		twice, err := Transform(once)
		if err != nil {
			t.Fatalf("%T, transformed again: %v", o, err)
		}
		if !reflect.DeepEqual(twice, before) {
			t.Errorf("%T transformed again:\n%+v\nwant it as after the first time:\n%+v", o, twice, before)
		}
	}
}
