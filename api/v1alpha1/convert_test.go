package v1alpha1_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/api/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

func ptr[T any](v T) *T { return &v }

func TestUnstructuredRoundTrip(t *testing.T) {
	peer := &v1alpha1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "tor1"}, Spec: v1alpha1.BGPPeerSpec{
		PeerAddress: "192.0.2.1", PeerASN: 4200000000,
		NodeSelector:      &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "r1"}},
		PasswordSecretRef: &v1alpha1.SecretKeyReference{Namespace: "kube-system", Name: "bgp", Key: "tor1"},
		HoldTime:          &metav1.Duration{Duration: 9 * time.Second},
		BFD:               &v1alpha1.BFD{Enabled: true, Multiplier: ptr(int32(3))},
		Advertise:         &v1alpha1.PeerAdvertise{PodCIDRs: ptr(false), Communities: []v1alpha1.Community{"64512:1"}},
		Port:              179,
	}}
	u, err := v1alpha1.ToUnstructured(peer)
	if err != nil {
		t.Fatal(err)
	}
	if u.GetAPIVersion() != "canopy.io/v1alpha1" || u.GetKind() != "BGPPeer" {
		t.Errorf("apiVersion %q kind %q", u.GetAPIVersion(), u.GetKind())
	}
	if v, _, _ := unstructured.NestedString(u.Object, "spec", "holdTime"); v != "9s" {
		t.Errorf("holdTime is %q on the wire, want 9s", v)
	}
	back, err := v1alpha1.PeerFromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	peer.TypeMeta = back.TypeMeta
	if a, b := mustJSON(t, peer), mustJSON(t, back); a != b {
		t.Errorf("round trip:\n%s\n%s", a, b)
	}
	obj, err := v1alpha1.FromUnstructured(u)
	if _, ok := obj.(*v1alpha1.BGPPeer); !ok || err != nil {
		t.Errorf("FromUnstructured: %T, %v", obj, err)
	}

	// Fields of a newer version are ignored; a wrong kind or version is an error.
	u.Object["spec"].(map[string]any)["fromTheFuture"] = true
	if _, err := v1alpha1.PeerFromUnstructured(u); err != nil {
		t.Errorf("an unknown field: %v", err)
	}
	if _, err := v1alpha1.ConfigurationFromUnstructured(u); err == nil || !strings.Contains(err.Error(), "not a BGPConfiguration") {
		t.Errorf("a BGPPeer as a BGPConfiguration: %v", err)
	}
	u.SetAPIVersion("canopy.io/v1")
	if _, err := v1alpha1.PeerFromUnstructured(u); err == nil {
		t.Error("canopy.io/v1 accepted as v1alpha1")
	}
	u.SetAPIVersion("canopy.io/v1alpha1")
	u.Object["spec"].(map[string]any)["peerASN"] = "many"
	if _, err := v1alpha1.PeerFromUnstructured(u); err == nil {
		t.Error("a string peerASN converted")
	}
	if _, err := v1alpha1.FromUnstructured(nil); err == nil {
		t.Error("nil converted")
	}
	if _, err := v1alpha1.ToUnstructured(&metav1.Status{}); err == nil {
		t.Error("a Status converted")
	}

	ns := &v1alpha1.BGPNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: "node1"}}
	ns.Status.SetSessions([]v1alpha1.BGPSession{{PeerAddress: "10.0.0.2", PeerASN: 64512, Source: "mesh", State: "Idle"}},
		metav1.Unix(1700000000, 0))
	u, err = v1alpha1.ToUnstructured(ns)
	if err != nil {
		t.Fatal(err)
	}
	nsBack, err := v1alpha1.NodeStatusFromUnstructured(u)
	if err != nil || nsBack.Status.Summary != "0/1" || !nsBack.Status.Updated.Equal(ns.Status.Updated) {
		t.Errorf("BGPNodeStatus round trip: %+v, %v", nsBack, err)
	}
	cfg := &v1alpha1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ConfigurationName},
		Spec: v1alpha1.BGPConfigurationSpec{ClusterASN: ptr(int64(64512))}}
	if u, err = v1alpha1.ToUnstructured(cfg); err != nil {
		t.Fatal(err)
	}
	if c, err := v1alpha1.ConfigurationFromUnstructured(u); err != nil || *c.Spec.ClusterASN != 64512 {
		t.Errorf("BGPConfiguration round trip: %+v, %v", c, err)
	}
}

func TestSelectsNode(t *testing.T) {
	rack1 := map[string]string{"rack": "r1"}
	cases := []struct {
		what string
		spec v1alpha1.BGPPeerSpec
		node string
		lbls map[string]string
		want bool
		err  bool
	}{
		{"neither: every node", v1alpha1.BGPPeerSpec{}, "n1", nil, true, false},
		{"empty selector: every node", v1alpha1.BGPPeerSpec{NodeSelector: &metav1.LabelSelector{}}, "n1", nil, true, false},
		{"matching labels", v1alpha1.BGPPeerSpec{NodeSelector: &metav1.LabelSelector{MatchLabels: rack1}}, "n1", rack1, true, false},
		{"other labels", v1alpha1.BGPPeerSpec{NodeSelector: &metav1.LabelSelector{MatchLabels: rack1}}, "n1",
			map[string]string{"rack": "r2"}, false, false},
		{"expression", v1alpha1.BGPPeerSpec{NodeSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "rack", Operator: metav1.LabelSelectorOpIn, Values: []string{"r1", "r3"}}}}}, "n1", rack1, true, false},
		{"bad operator", v1alpha1.BGPPeerSpec{NodeSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "rack", Operator: "Near"}}}}, "n1", rack1, false, true},
		{"listed", v1alpha1.BGPPeerSpec{NodeNames: []string{"n0", "n1"}}, "n1", nil, true, false},
		{"not listed", v1alpha1.BGPPeerSpec{NodeNames: []string{"n0"}}, "n1", rack1, false, false},
		{"both styles", v1alpha1.BGPPeerSpec{NodeNames: []string{"n1"}, NodeSelector: &metav1.LabelSelector{}}, "n1", nil, false, true},
	}
	for _, c := range cases {
		got, err := c.spec.SelectsNode(c.node, c.lbls)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("%s: %v, %v; want %v, error %v", c.what, got, err, c.want, c.err)
		}
	}
}

func TestSetSessions(t *testing.T) {
	var s v1alpha1.NodeBGPState
	in := []v1alpha1.BGPSession{
		{PeerAddress: "10.0.0.10", State: v1alpha1.SessionEstablished},
		{PeerAddress: "2001:db8::1", State: v1alpha1.SessionActive},
		{PeerAddress: "10.0.0.9", State: v1alpha1.SessionEstablished},
	}
	now := metav1.Unix(1700000000, 0)
	s.SetSessions(in, now)
	var order []string
	for _, x := range s.Sessions {
		order = append(order, x.PeerAddress)
	}
	if strings.Join(order, " ") != "10.0.0.9 10.0.0.10 2001:db8::1" {
		t.Errorf("order %v: want by address", order)
	}
	if in[0].PeerAddress != "10.0.0.10" {
		t.Error("SetSessions sorted its argument")
	}
	if s.Configured != 3 || s.Established != 2 || s.Summary != "2/3" || !s.Updated.Equal(&now) {
		t.Errorf("counts %d/%d summary %q updated %v", s.Established, s.Configured, s.Summary, s.Updated)
	}
	s.SetSessions(nil, now)
	if s.Configured != 0 || s.Established != 0 || s.Summary != "0/0" {
		t.Errorf("no sessions: %d/%d %q", s.Established, s.Configured, s.Summary)
	}
}

func TestScheme(t *testing.T) {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"BGPPeer", "BGPPeerList", "BGPConfiguration", "BGPConfigurationList", "BGPNodeStatus", "BGPNodeStatusList"} {
		if _, err := s.New(v1alpha1.SchemeGroupVersion.WithKind(kind)); err != nil {
			t.Errorf("%s: %v", kind, err)
		}
	}
	if r := v1alpha1.Resource("bgppeers"); r.String() != "bgppeers.canopy.io" {
		t.Errorf("Resource: %s", r)
	}
	// DeepCopy copies pointers.
	p := &v1alpha1.BGPPeer{Spec: v1alpha1.BGPPeerSpec{MaxPrefixes: ptr(int64(5)), NodeNames: []string{"a"}}}
	c := p.DeepCopy()
	*c.Spec.MaxPrefixes, c.Spec.NodeNames[0] = 6, "b"
	if *p.Spec.MaxPrefixes != 5 || p.Spec.NodeNames[0] != "a" {
		t.Error("DeepCopy shares memory")
	}
}

// TestCRDManifests: the generated CRDs are what the package says: the resources of its GroupVersionResource
// variables, cluster-scoped, a status subresource only for BGPNodeStatus, v1alpha1 served and stored.
func TestCRDManifests(t *testing.T) {
	type crd struct {
		Metadata struct{ Name string }
		Spec     struct {
			Group    string
			Names    struct{ Kind, Plural string }
			Scope    string
			Versions []struct {
				Name                     string
				Served, Storage          bool
				Subresources             map[string]any
				AdditionalPrinterColumns []struct{ Name string }
			}
		}
	}
	want := map[string]struct {
		kind    string
		status  bool
		columns string
	}{
		v1alpha1.BGPPeersResource.Resource:          {"BGPPeer", false, "Address ASN Selector Nodes Age"},
		v1alpha1.BGPConfigurationsResource.Resource: {"BGPConfiguration", false, "Cluster-ASN Mesh Node-Status Age"},
		v1alpha1.BGPNodeStatusesResource.Resource:   {"BGPNodeStatus", true, "Established ASN Router-ID Updated Age"},
	}
	files, _ := filepath.Glob("../../manifests/crds/*.yaml")
	if len(files) != len(want) {
		t.Fatalf("manifests/crds: %v", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var c crd
		if err := yaml.Unmarshal(b, &c); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		w, ok := want[c.Spec.Names.Plural]
		if !ok || c.Metadata.Name != c.Spec.Names.Plural+"."+v1alpha1.GroupName || c.Spec.Group != v1alpha1.GroupName ||
			c.Spec.Names.Kind != w.kind || c.Spec.Scope != "Cluster" || len(c.Spec.Versions) != 1 {
			t.Errorf("%s: %+v", f, c)
			continue
		}
		v := c.Spec.Versions[0]
		var cols []string
		for _, pc := range v.AdditionalPrinterColumns {
			cols = append(cols, pc.Name)
		}
		_, status := v.Subresources["status"]
		if v.Name != "v1alpha1" || !v.Served || !v.Storage || status != w.status || strings.Join(cols, " ") != w.columns {
			t.Errorf("%s: version %s served %v storage %v status %v columns %v", f, v.Name, v.Served, v.Storage, status, cols)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
