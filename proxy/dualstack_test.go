package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"canopy.io/canopy/internal/model"
)

type failingBackend struct {
	recordingBackend
	fail bool
}

func (f *failingBackend) Sync(desired map[string]*model.ServicePort, changed []string) error {
	if f.fail {
		f.mu.Lock()
		f.syncs = append(f.syncs, slices.Clone(changed))
		f.mu.Unlock()
		return errors.New("boom")
	}
	return f.recordingBackend.Sync(desired, changed)
}

func dsPort(key string, v4, v6 string) *model.ServicePort {
	sp := &model.ServicePort{Key: key, Protocol: model.TCP, Port: 80}
	if v4 != "" {
		sp.ClusterIPs = []netip.Addr{netip.MustParseAddr(v4)}
		sp.ClusterEndpoints = []model.Endpoint{{IP: netip.MustParseAddr("10.0.0.1"), Port: 8080, Ready: true}}
	}
	if v6 != "" {
		sp.IPv6 = &model.Family{ClusterIPs: []netip.Addr{netip.MustParseAddr(v6)},
			ClusterEndpoints: []model.Endpoint{{IP: netip.MustParseAddr("fd00::1"), Port: 8080, Ready: true}}}
	}
	return sp
}

// Each family's back end gets its own view: a dual-stack port both, an IPv4-only port only IPv4, an IPv6-only
// port only IPv6 (with the IPv6 addresses and endpoints in the plain fields); a change of IPv4-only ports does
// not call the IPv6 back end; a failed family retries its keys.
func TestDualStackSync(t *testing.T) {
	v4, v6 := &recordingBackend{}, &failingBackend{}
	d := NewDualStack(v4, v6)
	desired := map[string]*model.ServicePort{
		"a": dsPort("a", "10.96.0.1", "fd00:96::1"),
		"b": dsPort("b", "10.96.0.2", ""),
		"c": dsPort("c", "", "fd00:96::3"),
	}
	if err := d.Sync(desired, []string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]*model.ServicePort) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	if got := keys(v4.have); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("IPv4 back end has %v", got)
	}
	if got := keys(v6.have); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("IPv6 back end has %v", got)
	}
	if got := v6.have["c"]; got.ClusterIPs[0] != netip.MustParseAddr("fd00:96::3") || got.ClusterEndpoints[0].IP != netip.MustParseAddr("fd00::1") || got.IPv6 != nil {
		t.Errorf("IPv6 view %+v", got)
	}
	if v4.have["a"] != desired["a"] {
		t.Error("the IPv4 back end does not get the port itself")
	}
	for _, sp := range v4.have {
		for _, e := range sp.ClusterEndpoints {
			if !e.IP.Is4() {
				t.Errorf("IPv6 endpoint %v in the IPv4 back end", e.IP)
			}
		}
	}
	// An IPv4-only change: the IPv6 back end is not called.
	n6 := len(v6.syncs)
	desired["b"] = dsPort("b", "10.96.0.22", "")
	if err := d.Sync(desired, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if len(v6.syncs) != n6 {
		t.Errorf("IPv6 back end called for an IPv4-only change: %v", v6.syncs[n6:])
	}
	// A dual-stack port loses its IPv6 side: the IPv6 back end deletes it.
	desired["a"] = dsPort("a", "10.96.0.1", "")
	if err := d.Sync(desired, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if got := keys(v6.have); !slices.Equal(got, []string{"c"}) {
		t.Errorf("IPv6 back end has %v after a lost its IPv6 side", got)
	}
	// The IPv6 back end fails: its keys come back with the next sync, whatever that names.
	v6.fail = true
	desired["d"] = dsPort("d", "", "fd00:96::4")
	if err := d.Sync(desired, []string{"d"}); err == nil {
		t.Fatal("no error")
	}
	v6.fail = false
	if err := d.Sync(desired, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if got := keys(v6.have); !slices.Equal(got, []string{"c", "d"}) {
		t.Errorf("IPv6 back end has %v after the retry", got)
	}
	// A full sync reaches both, even with nothing of a family.
	n4, n6 := len(v4.syncs), len(v6.syncs)
	if err := d.Sync(map[string]*model.ServicePort{}, nil); err != nil {
		t.Fatal(err)
	}
	if len(v4.syncs) != n4+1 || len(v6.syncs) != n6+1 {
		t.Error("an empty full sync did not reach both back ends")
	}
}

// From the API to the back ends: a dual-stack Service with an IPv4 and an IPv6 EndpointSlice, and an IPv6-only
// Service, through the tracker (model.Options.IPv6) and the controller into a DualStack: each family's back end
// gets only its family's cluster IP and endpoints; an IPv6 slice change reaches only the IPv6 back end.
func TestDualStackFromTheAPI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dual := testService("default", "web", "10.96.0.10")
	dual.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
	only6 := testService("default", "six", "fd00:96::11")
	s6 := testSlice("default", "web", "fd00:244:1::2", "fd00:244:2::2")
	s6.Name, s6.AddressType = "web-v6", discoveryv1.AddressTypeIPv6
	o6 := testSlice("default", "six", "fd00:244:1::3")
	o6.AddressType = discoveryv1.AddressTypeIPv6
	kube := fake.NewSimpleClientset(dual, only6, testSlice("default", "web", "10.244.1.2"), s6, o6)
	v4, v6 := &recordingBackend{}, &recordingBackend{}
	factory := informers.NewSharedInformerFactory(kube, 0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tracker := model.NewServiceTracker(factory, model.Options{NodeName: "n1", IPv6: true}, model.Admission{}, nil, log)
	c := NewController(tracker, NewDualStack(v4, v6), nil, 0, log)
	factory.Start(ctx.Done())
	go tracker.Run(ctx)
	go c.Run(ctx)
	wait := func(what string, f func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !f() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	eps := func(sp *model.ServicePort) []string {
		var out []string
		for _, e := range sp.ClusterEndpoints {
			out = append(out, e.IP.String())
		}
		return out
	}
	wait("both families programmed", func() bool { _, n4 := v4.last(); _, n6 := v6.last(); return n4 == 1 && n6 == 2 })
	v4.mu.Lock()
	w4 := v4.have["default/web:http/TCP"]
	v4.mu.Unlock()
	v6.mu.Lock()
	w6, x6 := v6.have["default/web:http/TCP"], v6.have["default/six:http/TCP"]
	v6.mu.Unlock()
	if w4 == nil || w4.ClusterIPs[0].String() != "10.96.0.10" || !slices.Equal(eps(w4), []string{"10.244.1.2"}) {
		t.Errorf("IPv4 back end: %+v", w4)
	}
	if w6 == nil || w6.ClusterIPs[0].String() != "fd00:96::10" || !slices.Equal(eps(w6), []string{"fd00:244:1::2", "fd00:244:2::2"}) {
		t.Errorf("IPv6 back end, dual-stack service: %+v", w6)
	}
	if x6 == nil || x6.ClusterIPs[0].String() != "fd00:96::11" || !slices.Equal(eps(x6), []string{"fd00:244:1::3"}) {
		t.Errorf("IPv6 back end, IPv6-only service: %+v", x6)
	}
	// An IPv6 endpoint goes: the IPv6 back end gets the change. (The IPv4 back end gets the key too, its
	// IPv4 view unchanged: the tracker reports Services, not families.)
	s6.Endpoints = s6.Endpoints[:1]
	if _, err := kube.DiscoveryV1().EndpointSlices("default").Update(ctx, s6, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the IPv6 endpoint change", func() bool {
		v6.mu.Lock()
		defer v6.mu.Unlock()
		return len(v6.have["default/web:http/TCP"].ClusterEndpoints) == 1
	})
	v4.mu.Lock()
	if got := eps(v4.have["default/web:http/TCP"]); !slices.Equal(got, []string{"10.244.1.2"}) {
		t.Errorf("IPv4 endpoints after the IPv6 change: %v", got)
	}
	v4.mu.Unlock()
}

// IPv4Only: the back end sees IPv4 views only, an IPv6-only port not at all; its schedulers stay.
func TestIPv4Only(t *testing.T) {
	rb := &recordingBackend{}
	be := IPv4Only(rb)
	desired := map[string]*model.ServicePort{"a": dsPort("a", "10.96.0.1", "fd00:96::1"), "c": dsPort("c", "", "fd00:96::3")}
	if err := be.Sync(desired, []string{"a", "c"}); err != nil {
		t.Fatal(err)
	}
	if len(rb.have) != 1 || rb.have["a"] != desired["a"] || !slices.Equal(be.Schedulers(), rb.Schedulers()) || be.Name() != rb.Name() {
		t.Errorf("have %v, schedulers %v", rb.have, be.Schedulers())
	}
}
