package objects

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	kfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/bgp"
)

func ptr[T any](v T) *T { return &v }

func dur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

func noSecret(*v1alpha1.SecretKeyReference) (string, error) { return "", errors.New("no secrets here") }

func TestParsePeerGood(t *testing.T) {
	obj := &v1alpha1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "tor"}, Spec: v1alpha1.BGPPeerSpec{
		PeerAddress: "10.99.0.1", PeerASN: 65001,
		NodeSelector:      &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "r1"}},
		PasswordSecretRef: &v1alpha1.SecretKeyReference{Namespace: "kube-system", Name: "pw"},
		TTLSecurity:       ptr(true), HoldTime: dur(9 * time.Second), ConnectRetryTime: dur(time.Second),
		GracefulRestart: &v1alpha1.GracefulRestart{Enabled: false},
		BFD:             &v1alpha1.BFD{Enabled: true, MinRx: dur(100 * time.Millisecond), Multiplier: ptr(int32(5))},
		MaxPrefixes:     ptr(int64(50)), Port: 1179, AllowOwnAS: 1,
		Advertise: &v1alpha1.PeerAdvertise{ServiceVIPs: ptr(false)},
	}}
	p, err := parsePeer(obj, func(ref *v1alpha1.SecretKeyReference) (string, error) { return "s3cret", nil }, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	on := true
	want := bgp.PeerConfig{Address: netip.MustParseAddr("10.99.0.1"), ASN: 65001, Password: "s3cret", TTLSecurity: true,
		MaxPrefixes: 50, BFD: &on, Port: 1179, AllowOwnAS: 1, Source: "BGPPeer/tor",
		Timers:    bgp.PeerTimers{Hold: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second},
		GR:        bgp.GRSetting{Set: true},
		BFDTimers: bgp.BFDTimers{MinRx: 100 * time.Millisecond, Multiplier: 5}, NoVIPs: true}
	got := p.cfg
	if got.BFD == nil || !*got.BFD {
		t.Fatalf("bfd %v", got.BFD)
	}
	got.BFD, want.BFD = nil, nil
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if !p.selects("n1", map[string]string{"rack": "r1"}) || p.selects("n2", map[string]string{"rack": "r2"}) {
		t.Fatal("selector")
	}
}

func TestParsePeerRefusals(t *testing.T) {
	base := func() *v1alpha1.BGPPeer {
		return &v1alpha1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.BGPPeerSpec{PeerAddress: "10.99.0.1", PeerASN: 65001}}
	}
	for _, c := range []struct {
		name string
		edit func(*v1alpha1.BGPPeerSpec)
		want string
	}{
		{"bad address", func(s *v1alpha1.BGPPeerSpec) { s.PeerAddress = "10.99.0" }, "spec.peerAddress"},
		{"loopback", func(s *v1alpha1.BGPPeerSpec) { s.PeerAddress = "127.0.0.1" }, "cannot be a BGP peer"},
		{"ASN 0", func(s *v1alpha1.BGPPeerSpec) { s.PeerASN = 0 }, "spec.peerASN"},
		{"AS_TRANS", func(s *v1alpha1.BGPPeerSpec) { s.PeerASN = 23456 }, "reserved"},
		{"both selector styles", func(s *v1alpha1.BGPPeerSpec) {
			s.NodeNames = []string{"n1"}
			s.NodeSelector = &metav1.LabelSelector{}
		}, "mutually exclusive"},
		{"bad selector", func(s *v1alpha1.BGPPeerSpec) {
			s.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"bad key!": "x"}}
		}, "spec.nodeSelector"},
		{"ttl security multihop", func(s *v1alpha1.BGPPeerSpec) { s.MultihopTTL, s.TTLSecurity = ptr(int32(3)), ptr(true) }, "ttlSecurity"},
		{"hold 0", func(s *v1alpha1.BGPPeerSpec) { s.HoldTime = dur(0) }, "no hold timer"},
		{"hold fraction", func(s *v1alpha1.BGPPeerSpec) { s.HoldTime = dur(3500 * time.Millisecond) }, "spec.holdTime"},
		{"keepalive too long", func(s *v1alpha1.BGPPeerSpec) { s.HoldTime, s.KeepaliveTime = dur(9*time.Second), dur(4*time.Second) }, "a third of the hold time"},
		{"keepalive alone, flag hold", func(s *v1alpha1.BGPPeerSpec) { s.KeepaliveTime = dur(31 * time.Second) }, "a third of the hold time 1m30s"},
		{"bfd too fast", func(s *v1alpha1.BGPPeerSpec) { s.BFD = &v1alpha1.BFD{Enabled: true, MinTx: dur(time.Millisecond)} }, "spec.bfd.minTx"},
		{"bfd multihop", func(s *v1alpha1.BGPPeerSpec) { s.BFD, s.MultihopTTL = &v1alpha1.BFD{Enabled: true}, ptr(int32(2)) }, "single-hop"},
		{"max prefixes 0", func(s *v1alpha1.BGPPeerSpec) { s.MaxPrefixes = ptr(int64(0)) }, "spec.maxPrefixes"},
		{"allow own AS 11", func(s *v1alpha1.BGPPeerSpec) { s.AllowOwnAS = 11 }, "spec.allowOwnAS"},
		{"communities", func(s *v1alpha1.BGPPeerSpec) {
			s.Advertise = &v1alpha1.PeerAdvertise{Communities: []v1alpha1.Community{"64512:1"}}
		}, "not supported"},
		{"secret unreadable", func(s *v1alpha1.BGPPeerSpec) {
			s.PasswordSecretRef = &v1alpha1.SecretKeyReference{Namespace: "kube-system", Name: "x"}
		}, "no secrets here"},
	} {
		t.Run(c.name, func(t *testing.T) {
			obj := base()
			c.edit(&obj.Spec)
			_, err := parsePeer(obj, noSecret, 90*time.Second)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

func TestParseConfiguration(t *testing.T) {
	obj := &v1alpha1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 4}, Spec: v1alpha1.BGPConfigurationSpec{
		ClusterASN:                ptr(int64(65000)),
		NodeMesh:                  &v1alpha1.NodeMesh{Enabled: ptr(false), TTLSecurity: ptr(true)},
		Advertise:                 &v1alpha1.ServiceAdvertise{ClusterIP: ptr(true)},
		Communities:               []v1alpha1.Community{"64512:1", "no-export"},
		AllowedServiceCommunities: []v1alpha1.Community{"64512:100"},
		MaxPrefixes:               ptr(int64(0)),
		NodeStatus:                &v1alpha1.NodeStatusReporting{Enabled: ptr(false), MinInterval: dur(10 * time.Second)},
	}}
	s, err := parseConfiguration(obj, noSecret)
	if err != nil {
		t.Fatal(err)
	}
	if *s.cluster.ClusterASN != 65000 || *s.cluster.FullMesh || !*s.cluster.MeshTTLSecurity || *s.cluster.MaxPrefixes != 0 ||
		s.cluster.MeshPassword != nil || !*s.vips.AdvertiseClusterIP || s.vips.AdvertiseExternalIP != nil ||
		len(s.vips.Communities.Standard) != 2 || len(s.vips.AllowedCommunities.Standard) != 1 ||
		s.statusOn || s.statusPeriod != 10*time.Second || s.generation != 4 {
		t.Fatalf("%+v", s)
	}
	obj.Spec.Communities = []v1alpha1.Community{"blackhole"}
	obj.Spec.NodeMesh.PasswordSecretRef = &v1alpha1.SecretKeyReference{Namespace: "kube-system", Name: "mesh"}
	_, err = parseConfiguration(obj, noSecret)
	if err == nil || !strings.Contains(err.Error(), "BLACKHOLE") || !strings.Contains(err.Error(), "spec.nodeMesh.passwordSecretRef") {
		t.Fatalf("err %v", err)
	}
}

// The Source end to end on fake clients: a good BGPPeer is served, an invalid edit keeps the last good version
// and records one Event, a password comes from a Secret of the allowed namespace only, and a missing CRD leaves
// the Source synced and empty.
func TestSourceFollowsObjects(t *testing.T) {
	scheme := runtime.NewScheme() // objects stay unstructured, as from a real API server
	lists := map[schema.GroupVersionResource]string{
		v1alpha1.BGPPeersResource: "BGPPeerList", v1alpha1.BGPConfigurationsResource: "BGPConfigurationList",
	}
	peer := &v1alpha1.BGPPeer{TypeMeta: metav1.TypeMeta{APIVersion: "canopy.io/v1alpha1", Kind: "BGPPeer"},
		ObjectMeta: metav1.ObjectMeta{Name: "tor", Generation: 1},
		Spec: v1alpha1.BGPPeerSpec{PeerAddress: "10.99.0.1", PeerASN: 65001, NodeNames: []string{"n1"},
			PasswordSecretRef: &v1alpha1.SecretKeyReference{Namespace: "kube-system", Name: "pw", Key: "tor"}}}
	u, err := v1alpha1.ToUnstructured(peer)
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(scheme, lists, u)
	core := kfake.NewSimpleClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "pw"},
		Data: map[string][]byte{"tor": []byte("s3cret\n")}})
	rec := record.NewFakeRecorder(10)
	changes := make(chan struct{}, 10)
	src := New(Options{Client: dyn, Core: core, SecretNamespace: "kube-system", Recorder: rec,
		OnChange: func() { changes <- struct{}{} }, Retry: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Run(ctx)
	wait := func(what string, f func() bool) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); !f(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("timed out: %s", what)
			}
		}
	}
	n1 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	wait("the BGPPeer is served", func() bool {
		ps := src.PeersFor(n1)
		return src.HasSynced() && len(ps) == 1 && ps[0].Password == "s3cret" && ps[0].Source == "BGPPeer/tor"
	})
	if ps := src.PeersFor(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}}); len(ps) != 0 {
		t.Fatalf("n2 is not named: %+v", ps)
	}

	// An edit naming a Secret in another namespace is refused: the last good version stays, one Event.
	bad := peer.DeepCopy()
	bad.Spec.PasswordSecretRef.Namespace = "default"
	bu, _ := v1alpha1.ToUnstructured(bad)
	if _, err := dyn.Resource(v1alpha1.BGPPeersResource).Update(ctx, bu, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-rec.Events:
		if !strings.Contains(e, ReasonInvalidPeer) || !strings.Contains(e, "only in namespace") || !strings.Contains(e, "last good version stays") {
			t.Fatalf("event %q", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Event for the invalid edit")
	}
	if ps := src.PeersFor(n1); len(ps) != 1 || ps[0].Password != "s3cret" {
		t.Fatalf("last good version gone: %+v", ps)
	}

	// Deleted: gone.
	if err := dyn.Resource(v1alpha1.BGPPeersResource).Delete(ctx, "tor", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the deleted BGPPeer is gone", func() bool { return len(src.PeersFor(n1)) == 0 })
}

// Without the CRDs, or without the right to read them, the Source counts as synced and empty at once (BGP runs
// on flags and annotations; it never waits for objects that cannot come).
func TestSourceWithoutCRDs(t *testing.T) {
	for name, fail := range map[string]error{
		"not installed": apierrors.NewNotFound(schema.GroupResource{Group: "canopy.io", Resource: "bgppeers"}, ""),
		"forbidden":     apierrors.NewForbidden(schema.GroupResource{Group: "canopy.io", Resource: "bgppeers"}, "", errors.New("RBAC")),
	} {
		t.Run(name, func(t *testing.T) {
			dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
				v1alpha1.BGPPeersResource: "BGPPeerList", v1alpha1.BGPConfigurationsResource: "BGPConfigurationList"})
			dyn.PrependReactor("list", "*", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, fail })
			src := New(Options{Client: dyn, Core: kfake.NewSimpleClientset(), SecretNamespace: "kube-system", Retry: time.Hour})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go src.Run(ctx)
			for end := time.Now().Add(5 * time.Second); !src.HasSynced(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatal("never synced: BGP would wait for ever")
				}
			}
			if ps := src.PeersFor(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}); len(ps) != 0 {
				t.Fatal(ps)
			}
			if c := src.Cluster(); c.ClusterASN != nil || c.FullMesh != nil {
				t.Fatalf("%+v", c)
			}
		})
	}
}
