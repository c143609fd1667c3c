package bgp

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/bgp/services"
	"canopy.io/canopy/internal/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

func TestVIPControllerAnnouncesAndWithdraws(t *testing.T) {
	kube := fake.NewSimpleClientset(node("n1", "10.99.0.11", "10.244.1.0/24", map[string]string{services.AnnotationCommunities: "64512:9"}))
	mgr, _ := startManager(t, nil)
	mgr.SetIdentity(Identity{ASN: 64512, RouterID: addr("10.99.0.11"), NodeIP: addr("10.99.0.11")})
	factory := informers.NewSharedInformerFactory(kube, 0)
	rec := record.NewFakeRecorder(10)
	warn := &model.ServiceEvents{Recorder: rec, Log: quiet}
	tracker := model.NewServiceTracker(factory, model.Options{NodeName: "n1"}, model.Admission{}, warn, quiet)
	c := NewVIPController("n1", services.Options{AdvertiseExternalIP: true, AdvertiseLoadBalancerIP: true,
		LoadBalancerIPRanges: []netip.Prefix{pfx("10.200.0.0/24")}}, factory, tracker, mgr, warn, rec, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go tracker.Run(ctx)
	go c.Run(ctx)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "lb"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.5", ClusterIPs: []string{"10.96.0.5"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(80), Protocol: corev1.ProtocolTCP}}},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "10.200.0.5"}, {IP: "192.0.2.1"}}}},
	}
	if _, err := kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var paths map[string]Path
	eventually(t, "the LB IP inside the range is announced with the node's community", func() bool {
		paths = map[string]Path{}
		for p, path := range mgr.AppliedPaths(GroupVIPs) {
			paths[p.String()] = path
		}
		return len(paths) == 1
	})
	p := paths["10.200.0.5/32"]
	if !p.VIP || p.NextHop != addr("10.99.0.11") || !slices.Equal(p.Communities, []uint32{64512<<16 | 9}) {
		t.Fatalf("path %+v", p)
	}
	select {
	case ev := <-rec.Events:
		if !strings.Contains(ev, "192.0.2.1") {
			t.Fatalf("event %q", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the LB IP outside the range")
	}
	if err := kube.CoreV1().Services("default").Delete(ctx, "lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "withdrawn", func() bool { return len(mgr.AppliedPaths(GroupVIPs)) == 0 })
}
