package e2e

// The canopy.io CRDs (manifests/crds, generated from api/v1alpha1) on the lab's real kube-apiserver: they are
// accepted and become Established, good objects are stored with their defaults (and pass a server-side dry run
// that stores nothing), bad ones are refused with a message naming the problem, and kubectl prints the columns.
// Everything the test creates, the CRDs included, is deleted at the end.

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/e2e/lab"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

// crdResource is the CustomResourceDefinition resource (through the dynamic client: the main module does not
// depend on k8s.io/apiextensions-apiserver).
var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func TestCRD(t *testing.T) {
	l := needLab(t)
	dyn := dynamic.NewForConfigOrDie(l.RestConfig())
	crdInstall(t, dyn)
	top := t

	// The objects made in the subtests are deleted when TestCRD ends (deleting the CRDs would delete them too).
	t.Run("Good", func(t *testing.T) { crdGoodObjects(t, l, dyn, top) })
	t.Run("Bad", func(t *testing.T) { crdBadObjects(t, dyn) })
	t.Run("NodeStatus", func(t *testing.T) { crdNodeStatus(t, l, dyn, top) })
	t.Run("Kubectl", func(t *testing.T) { crdKubectl(t, l) })
	t.Run("DocExamples", func(t *testing.T) { crdDocExamples(t, dyn) })
}

// crdInstall checks that every CRD of manifests/crds is Established: TestMain installed them before the agents
// started (installCRDs), as an install does, and they stay for the agents (TestBGPObjects).
func crdInstall(t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	files, err := filepath.Glob("../manifests/crds/*.yaml")
	if err != nil || len(files) != 3 {
		t.Fatalf("manifests/crds: want 3 CRDs, have %v (%v)", files, err)
	}
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var meta struct {
			Metadata struct{ Name string }
		}
		if err := yaml.Unmarshal(b, &meta); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		names = append(names, meta.Metadata.Name)
		if err := crdEstablished(context.Background(), dyn, meta.Metadata.Name); err != nil {
			t.Errorf("CRD %s (%s): %v", meta.Metadata.Name, filepath.Base(f), err)
		}
	}
	t.Logf("%d CRDs Established: %s", len(names), strings.Join(names, ", "))
}

// crdObject converts a typed object for the dynamic client.
func crdObject(t *testing.T, obj runtime.Object) *unstructured.Unstructured {
	t.Helper()
	u, err := v1alpha1.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func crdPtr[T any](v T) *T { return &v }

// crdGoodPeers are three peers, one for each way of choosing nodes. Their addresses are documentation
// addresses (RFC 5737, RFC 3849), so an agent that one day reads BGPPeers only tries to reach nowhere.
func crdGoodPeers(l *lab.Lab) []*v1alpha1.BGPPeer {
	var nodes []string
	for _, n := range l.Nodes {
		nodes = append(nodes, n.Name)
	}
	return []*v1alpha1.BGPPeer{
		{ObjectMeta: metav1.ObjectMeta{Name: "crd-e2e-rack1"}, Spec: v1alpha1.BGPPeerSpec{
			PeerAddress: "192.0.2.1", PeerASN: 65001,
			NodeSelector:      &metav1.LabelSelector{MatchLabels: map[string]string{"topology.canopy.io/rack": "r1"}},
			PasswordSecretRef: &v1alpha1.SecretKeyReference{Namespace: "kube-system", Name: "bgp-passwords"},
			MultihopTTL:       crdPtr(int32(1)), TTLSecurity: crdPtr(true),
			HoldTime: &metav1.Duration{Duration: 9 * time.Second}, KeepaliveTime: &metav1.Duration{Duration: 3 * time.Second},
			ConnectRetryTime: &metav1.Duration{Duration: 5 * time.Second},
			GracefulRestart:  &v1alpha1.GracefulRestart{Enabled: true, RestartTime: &metav1.Duration{Duration: 120 * time.Second}},
			BFD: &v1alpha1.BFD{Enabled: true, MinRx: &metav1.Duration{Duration: 300 * time.Millisecond},
				MinTx: &metav1.Duration{Duration: 300 * time.Millisecond}, Multiplier: crdPtr(int32(3))},
			MaxPrefixes: crdPtr(int64(1000)),
			Advertise: &v1alpha1.PeerAdvertise{ServiceVIPs: crdPtr(false),
				Communities: []v1alpha1.Community{"64512:100", "large:64512:1:2", "no-export", "4200000000:7:8"}},
			Port: 1179,
		}},
		{ObjectMeta: metav1.ObjectMeta{Name: "crd-e2e-names"}, Spec: v1alpha1.BGPPeerSpec{
			PeerAddress: "2001:db8::1", PeerASN: 4200000000, NodeNames: nodes, MultihopTTL: crdPtr(int32(3)),
		}},
		{ObjectMeta: metav1.ObjectMeta{Name: "crd-e2e-all"}, Spec: v1alpha1.BGPPeerSpec{
			PeerAddress: "192.0.2.3", PeerASN: 65002,
		}},
	}
}

func crdGoodConfiguration() *v1alpha1.BGPConfiguration {
	return &v1alpha1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: v1alpha1.BGPConfigurationSpec{
		ClusterASN: crdPtr(int64(64512)),
		NodeMesh: &v1alpha1.NodeMesh{PasswordSecretRef: &v1alpha1.SecretKeyReference{Namespace: "kube-system", Name: "bgp-mesh",
			Key: "mesh-password"}},
		Advertise:                 &v1alpha1.ServiceAdvertise{ClusterIP: crdPtr(false), LoadBalancerIP: crdPtr(true)},
		Communities:               []v1alpha1.Community{"64512:1"},
		AllowedServiceCommunities: []v1alpha1.Community{"64512:100", "64512:200", "large:64512:0:1", "NO-EXPORT"},
		MaxPrefixes:               crdPtr(int64(0)),
		NodeStatus:                &v1alpha1.NodeStatusReporting{MinInterval: &metav1.Duration{Duration: 10 * time.Second}},
	}}
}

// crdGoodObjects: every good object passes a server-side dry run that stores nothing, then is created, and
// reads back (through v1alpha1.FromUnstructured) with the CRD's defaults filled in.
func crdGoodObjects(t *testing.T, l *lab.Lab, dyn dynamic.Interface, top *testing.T) {
	ctx := context.Background()
	type good struct {
		res schema.GroupVersionResource
		obj runtime.Object
	}
	var goods []good
	for _, p := range crdGoodPeers(l) {
		goods = append(goods, good{v1alpha1.BGPPeersResource, p})
	}
	goods = append(goods, good{v1alpha1.BGPConfigurationsResource, crdGoodConfiguration()},
		good{v1alpha1.BGPNodeStatusesResource, &v1alpha1.BGPNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: "crd-e2e-dry-run"}}})

	strict := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}
	dry := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict, DryRun: []string{metav1.DryRunAll}}
	for _, g := range goods {
		u := crdObject(t, g.obj)
		out, err := dyn.Resource(g.res).Create(ctx, u, dry)
		if err != nil {
			t.Errorf("dry run of %s %s: %v", u.GetKind(), u.GetName(), err)
			continue
		}
		if out.GetUID() == "" {
			t.Errorf("dry run of %s %s: no object returned", u.GetKind(), u.GetName())
		}
		if _, err := dyn.Resource(g.res).Get(ctx, u.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the dry run stored %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	for _, g := range goods[:len(goods)-1] {
		u := crdObject(t, g.obj)
		if _, err := dyn.Resource(g.res).Create(ctx, u, strict); err != nil {
			t.Errorf("create %s %s: %v", u.GetKind(), u.GetName(), err)
			continue
		}
		name := u.GetName()
		res := g.res
		top.Cleanup(func() { _ = dyn.Resource(res).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}

	// Read back: what was given stays, the defaults are filled in.
	get := func(res schema.GroupVersionResource, name string) *unstructured.Unstructured {
		t.Helper()
		u, err := dyn.Resource(res).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get %s %s: %v", res.Resource, name, err)
		}
		return u
	}
	all, err := v1alpha1.PeerFromUnstructured(get(v1alpha1.BGPPeersResource, "crd-e2e-all"))
	if err != nil {
		t.Fatal(err)
	}
	if a := all.Spec.Advertise; all.Spec.Port != 179 || a == nil || a.PodCIDRs == nil || !*a.PodCIDRs || a.ServiceVIPs == nil || !*a.ServiceVIPs {
		t.Errorf("crd-e2e-all: want the defaults port 179, advertise podCIDRs and serviceVIPs true; have port %d, advertise %s",
			all.Spec.Port, crdJSON(all.Spec.Advertise))
	}
	if ok, err := all.Spec.SelectsNode(l.Nodes[0].Name, nil); !ok || err != nil {
		t.Errorf("crd-e2e-all does not select %s: %v", l.Nodes[0].Name, err)
	}
	rack, err := v1alpha1.PeerFromUnstructured(get(v1alpha1.BGPPeersResource, "crd-e2e-rack1"))
	if err != nil {
		t.Fatal(err)
	}
	want := crdGoodPeers(l)[0].Spec
	want.PasswordSecretRef.Key = "password"                // defaulted
	want.Advertise.PodCIDRs = crdPtr(true)                 // defaulted
	if g, w := crdJSON(rack.Spec), crdJSON(want); g != w { // durations read back as written
		t.Errorf("crd-e2e-rack1 reads back as\n%s\nwant\n%s", g, w)
	}
	if ok, _ := rack.Spec.SelectsNode("x", map[string]string{"topology.canopy.io/rack": "r2"}); ok {
		t.Error("crd-e2e-rack1 selects a node of rack r2")
	}
	cfg, err := v1alpha1.ConfigurationFromUnstructured(get(v1alpha1.BGPConfigurationsResource, "default"))
	if err != nil {
		t.Fatal(err)
	}
	if m, s := cfg.Spec.NodeMesh, cfg.Spec.NodeStatus; m == nil || m.Enabled == nil || !*m.Enabled || m.TTLSecurity == nil || !*m.TTLSecurity ||
		s == nil || s.Enabled == nil || !*s.Enabled || s.MinInterval == nil || s.MinInterval.Duration != 10*time.Second {
		t.Errorf("BGPConfiguration default: want nodeMesh enabled and ttlSecurity (defaults), nodeStatus enabled (default) "+
			"every 10s; have nodeMesh %s, nodeStatus %s", crdJSON(m), crdJSON(s))
	}
	if cfg.Spec.MaxPrefixes == nil || *cfg.Spec.MaxPrefixes != 0 {
		t.Errorf("BGPConfiguration default: maxPrefixes 0 (no limit) lost: %v", cfg.Spec.MaxPrefixes)
	}
	// An empty BGPConfiguration gets every default (dry run: "default" exists now).
	empty := &unstructured.Unstructured{Object: map[string]any{"apiVersion": v1alpha1.SchemeGroupVersion.String(),
		"kind": "BGPConfiguration", "metadata": map[string]any{"name": "default"}}}
	out, err := dyn.Resource(v1alpha1.BGPConfigurationsResource).Update(ctx, withVersion(empty, get(v1alpha1.BGPConfigurationsResource, "default")),
		metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatalf("dry-run update to an empty BGPConfiguration: %v", err)
	}
	spec, _, _ := unstructured.NestedMap(out.Object, "spec")
	if g, w := crdJSON(spec), `{"nodeMesh":{"enabled":true,"ttlSecurity":true},"nodeStatus":{"enabled":true,"minInterval":"5s"}}`; g != w {
		t.Errorf("an empty BGPConfiguration's spec is %s, want the defaults %s", g, w)
	}
}

// withVersion returns u with cur's resourceVersion (for an update).
func withVersion(u, cur *unstructured.Unstructured) *unstructured.Unstructured {
	u = u.DeepCopy()
	u.SetResourceVersion(cur.GetResourceVersion())
	return u
}

func crdJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// crdBadObjects: each bad object is refused (a dry run would be too: validation runs first) with a message that
// names the problem.
func crdBadObjects(t *testing.T, dyn dynamic.Interface) {
	ctx := context.Background()
	peer := func(name string, edit func(spec map[string]any)) *unstructured.Unstructured {
		spec := map[string]any{"peerAddress": "192.0.2.9", "peerASN": int64(65009)}
		edit(spec)
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": v1alpha1.SchemeGroupVersion.String(),
			"kind": "BGPPeer", "metadata": map[string]any{"name": name}, "spec": spec}}
	}
	config := func(name string, spec map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": v1alpha1.SchemeGroupVersion.String(),
			"kind": "BGPConfiguration", "metadata": map[string]any{"name": name}, "spec": spec}}
	}
	set := func(k string, v any) func(map[string]any) { return func(s map[string]any) { s[k] = v } }
	communities := func(c ...any) func(map[string]any) {
		return set("advertise", map[string]any{"communities": c})
	}
	cases := []struct {
		what string
		obj  *unstructured.Unstructured
		want []string // every one must be in the error
	}{
		{"ASN 0", peer("bad-asn-0", set("peerASN", int64(0))), []string{"spec.peerASN", "greater than or equal to 1"}},
		{"ASN 23456", peer("bad-asn-trans", set("peerASN", int64(23456))), []string{"spec.peerASN", "peerASN 23456 (AS_TRANS) and 65535 are reserved"}},
		{"ASN 65535", peer("bad-asn-65535", set("peerASN", int64(65535))), []string{"spec.peerASN", "reserved"}},
		{"ASN 4294967295", peer("bad-asn-max", set("peerASN", int64(4294967295))), []string{"spec.peerASN", "less than or equal to 4294967294"}},
		{"no ASN", peer("bad-asn-missing", func(s map[string]any) { delete(s, "peerASN") }), []string{"spec.peerASN", "Required value"}},
		{"address 10.0.0.999", peer("bad-addr-v4", set("peerAddress", "10.0.0.999")), []string{"spec.peerAddress", "peerAddress must be an IPv4 or IPv6 address"}},
		{"address fe80::zz", peer("bad-addr-v6", set("peerAddress", "fe80::zz")), []string{"spec.peerAddress", "peerAddress must be an IPv4 or IPv6 address"}},
		{"address with a prefix length", peer("bad-addr-cidr", set("peerAddress", "192.0.2.0/24")), []string{"peerAddress must be an IPv4 or IPv6 address"}},
		{"loopback address", peer("bad-addr-lo", set("peerAddress", "127.0.0.1")), []string{"peerAddress cannot be an unspecified, loopback or multicast address"}},
		{"multicast address", peer("bad-addr-mc", set("peerAddress", "ff02::5")), []string{"peerAddress cannot be an unspecified, loopback or multicast address"}},
		{"both selector styles", peer("bad-both-selectors", func(s map[string]any) {
			s["nodeSelector"] = map[string]any{"matchLabels": map[string]any{"rack": "r1"}}
			s["nodeNames"] = []any{"node1"}
		}), []string{"spec.nodeNames", "nodeSelector and nodeNames are mutually exclusive"}},
		{"a selector operator that does not exist", peer("bad-selector-op", set("nodeSelector", map[string]any{
			"matchExpressions": []any{map[string]any{"key": "rack", "operator": "Near", "values": []any{"r1"}}}})),
			[]string{"spec.nodeSelector", "the operator must be In, NotIn, Exists or DoesNotExist"}},
		{"In without values", peer("bad-selector-in", set("nodeSelector", map[string]any{
			"matchExpressions": []any{map[string]any{"key": "rack", "operator": "In"}}})),
			[]string{"spec.nodeSelector", "In and NotIn need values"}},
		{"empty nodeNames", peer("bad-empty-names", set("nodeNames", []any{})), []string{"spec.nodeNames", "at least 1 item"}},
		{"ttlSecurity with multihopTTL 3", peer("bad-gtsm-multihop", func(s map[string]any) {
			s["ttlSecurity"], s["multihopTTL"] = true, int64(3)
		}), []string{"spec.ttlSecurity", "ttlSecurity is for directly connected peers"}},
		{"multihopTTL 256", peer("bad-ttl", set("multihopTTL", int64(256))), []string{"spec.multihopTTL", "less than or equal to 255"}},
		{"keepalive > holdTime/3", peer("bad-keepalive", func(s map[string]any) {
			s["holdTime"], s["keepaliveTime"] = "90s", "31s"
		}), []string{"spec.keepaliveTime", "keepaliveTime must be at most a third of holdTime"}},
		{"holdTime 2s", peer("bad-hold", set("holdTime", "2s")), []string{"spec.holdTime", "holdTime must be 0 or whole seconds from 3s to 65535s"}},
		{"holdTime without a unit", peer("bad-hold-unit", set("holdTime", "90")), []string{"spec.holdTime", "holdTime must be a duration"}},
		{"negative keepalive", peer("bad-keepalive-neg", set("keepaliveTime", "-30s")), []string{"spec.keepaliveTime", "keepaliveTime must be a duration"}},
		{"connectRetryTime 500ms", peer("bad-retry", set("connectRetryTime", "500ms")), []string{"spec.connectRetryTime", "from 1s to 65535s"}},
		{"restartTime 5000s", peer("bad-gr", set("gracefulRestart", map[string]any{"enabled": true, "restartTime": "5000s"})),
			[]string{"spec.gracefulRestart.restartTime", "restartTime must be whole seconds from 1s to 4095s"}},
		{"gracefulRestart without enabled", peer("bad-gr-enabled", set("gracefulRestart", map[string]any{"restartTime": "60s"})),
			[]string{"spec.gracefulRestart.enabled", "Required value"}},
		{"BFD multiplier 0, minRx 1ms", peer("bad-bfd", set("bfd", map[string]any{"enabled": true, "multiplier": int64(0), "minRx": "1ms"})),
			[]string{"spec.bfd.multiplier", "greater than or equal to 1", "spec.bfd.minRx", "minRx must be from 10ms to 1h"}},
		{"maxPrefixes 0", peer("bad-maxprefixes", set("maxPrefixes", int64(0))), []string{"spec.maxPrefixes", "greater than or equal to 1"}},
		{"maxPrefixes 2^24+1", peer("bad-maxprefixes-big", set("maxPrefixes", int64(1<<24+1))), []string{"spec.maxPrefixes", "less than or equal to 16777216"}},
		{"port 0", peer("bad-port", set("port", int64(0))), []string{"spec.port", "greater than or equal to 1"}},
		{"blackhole community 65535:666", peer("bad-blackhole", communities("64512:1", "65535:666")),
			[]string{"spec.advertise.communities[1]", "the BLACKHOLE community (65535:666, RFC 7999) is refused"}},
		{"blackhole community by name", peer("bad-blackhole-name", communities("BlackHole")), []string{"BLACKHOLE community"}},
		{"blackhole community as a number", peer("bad-blackhole-num", communities("4294902426")), []string{"BLACKHOLE community"}},
		{"community part out of range", peer("bad-community-range", communities("64512:70000")),
			[]string{"spec.advertise.communities[0]", `community "64512:70000" has a number out of range`}},
		{"malformed community", peer("bad-community-syntax", communities("large:1:2")),
			[]string{"spec.advertise.communities[0]", `community "large:1:2" is not AA:NN, large:A:B:C`}},
		{"a password in the object", peer("bad-password", set("password", "s3cret")), []string{`unknown field "spec.password"`}},
		{"BGPConfiguration not named default", config("cluster", map[string]any{}),
			[]string{"BGPConfiguration is a singleton: metadata.name must be 'default'"}},
		{"BGPConfiguration clusterASN 23456", config("default", map[string]any{"clusterASN": int64(23456)}),
			[]string{"spec.clusterASN", "clusterASN 23456 (AS_TRANS) and 65535 are reserved"}},
		{"BGPConfiguration blackhole community", config("default", map[string]any{"allowedServiceCommunities": []any{"65535:666"}}),
			[]string{"spec.allowedServiceCommunities[0]", "BLACKHOLE community"}},
		{"BGPConfiguration nodeStatus every 100ms", config("default", map[string]any{"nodeStatus": map[string]any{"minInterval": "100ms"}}),
			[]string{"spec.nodeStatus.minInterval", "minInterval must be from 1s to 1h"}},
		{"BGPConfiguration maxPrefixes -1", config("default", map[string]any{"maxPrefixes": int64(-1)}),
			[]string{"spec.maxPrefixes", "greater than or equal to 0"}},
	}
	opts := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}
	for _, c := range cases {
		res := v1alpha1.BGPPeersResource
		if c.obj.GetKind() == "BGPConfiguration" {
			res = v1alpha1.BGPConfigurationsResource
			// "default" exists (the Good subtest made it): refuse an update to it instead.
			if cur, err := dyn.Resource(res).Get(ctx, c.obj.GetName(), metav1.GetOptions{}); err == nil {
				_, err := dyn.Resource(res).Update(ctx, withVersion(c.obj, cur), metav1.UpdateOptions{FieldValidation: metav1.FieldValidationStrict})
				crdCheckRefused(t, c.what, err, c.want)
				continue
			}
		}
		_, err := dyn.Resource(res).Create(ctx, c.obj, opts)
		if err == nil {
			_ = dyn.Resource(res).Delete(ctx, c.obj.GetName(), metav1.DeleteOptions{})
		}
		crdCheckRefused(t, c.what, err, c.want)
	}
}

func crdCheckRefused(t *testing.T, what string, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: accepted", what)
		return
	}
	if !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) {
		t.Errorf("%s: refused, but not as invalid: %v", what, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: the refusal does not say %q: %v", what, w, err)
		}
	}
	t.Logf("%s: %v", what, err)
}

// crdNodeStatus: a BGPNodeStatus is created, its status written through the status subresource (and not
// through the object), and a status whose counts lie is refused.
func crdNodeStatus(t *testing.T, l *lab.Lab, dyn dynamic.Interface, top *testing.T) {
	ctx := context.Background()
	ri := dyn.Resource(v1alpha1.BGPNodeStatusesResource)
	node := "crd-e2e-status" // not a node's name: the agents write their own nodes' objects
	ns := &v1alpha1.BGPNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: node}}
	now := metav1.Now().Rfc3339Copy()
	sessions := []v1alpha1.BGPSession{
		{PeerAddress: l.Nodes[2].IP.String(), PeerASN: 64512, Source: v1alpha1.SourceMesh, State: v1alpha1.SessionEstablished,
			Since: &now, PrefixesReceived: 1, PrefixesAccepted: 1, PrefixesAdvertised: 1},
		{PeerAddress: l.Nodes[1].IP.String(), PeerASN: 64512, Source: v1alpha1.SourceMesh, State: v1alpha1.SessionEstablished,
			Since: &now, PrefixesReceived: 1, PrefixesAccepted: 1, PrefixesAdvertised: 1},
		{PeerAddress: "192.0.2.3", PeerASN: 65002, Source: v1alpha1.PeerSource("crd-e2e-all"), State: v1alpha1.SessionActive,
			LastError: "dial tcp 192.0.2.3:179: connect: network is unreachable", BFDState: v1alpha1.BFDDown},
	}
	ns.Status.SetSessions(sessions, now)
	ns.Status.ASN, ns.Status.RouterID, ns.Status.ObservedGeneration = 64512, l.Nodes[0].IP.String(), 1
	ns.Status.Conditions = []metav1.Condition{{Type: "ConfigConflict", Status: metav1.ConditionFalse, Reason: "NoConflict",
		Message: "flags, annotations and objects agree", LastTransitionTime: now}}

	// Through the object, the status is dropped (status subresource).
	created, err := ri.Create(ctx, crdObject(t, ns), metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict})
	if err != nil {
		t.Fatal(err)
	}
	top.Cleanup(func() { _ = ri.Delete(context.Background(), node, metav1.DeleteOptions{}) })
	if st, ok, _ := unstructured.NestedMap(created.Object, "status"); ok && len(st) > 0 {
		t.Errorf("create wrote the status: %v", st)
	}
	u := withVersion(crdObject(t, ns), created)
	updated, err := ri.UpdateStatus(ctx, u, metav1.UpdateOptions{FieldValidation: metav1.FieldValidationStrict})
	if err != nil {
		t.Fatalf("update status: %v", err)
	}
	back, err := v1alpha1.NodeStatusFromUnstructured(updated)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := crdJSON(back.Status), crdJSON(ns.Status); g != w {
		t.Errorf("status reads back as\n%s\nwant\n%s", g, w)
	}
	if got := crdSessionAddrs(back.Status.Sessions); back.Status.Summary != "2/3" || got != l.Nodes[1].IP.String()+" "+l.Nodes[2].IP.String()+" 192.0.2.3" {
		t.Errorf("summary %q, sessions %s: want 2/3, sorted by address", back.Status.Summary, got)
	}

	// A status whose counts do not match its sessions, or a session from an unknown source, is refused.
	lie := back.DeepCopy()
	lie.Status.Established, lie.Status.Summary = 3, "3/3"
	_, err = ri.UpdateStatus(ctx, withVersion(crdObject(t, lie), updated), metav1.UpdateOptions{})
	crdCheckRefused(t, "a status that counts 3 established of 2", err, []string{"configured and established must count the sessions"})
	odd := back.DeepCopy()
	odd.Status.Sessions[0].Source, odd.Status.Sessions[0].State = "gossip", "Up"
	_, err = ri.UpdateStatus(ctx, withVersion(crdObject(t, odd), updated), metav1.UpdateOptions{})
	crdCheckRefused(t, "a session from source gossip in state Up", err, []string{"status.sessions[0].source", "status.sessions[0].state", `"Up"`})
}

func crdSessionAddrs(ss []v1alpha1.BGPSession) string {
	var a []string
	for _, s := range ss {
		a = append(a, s.PeerAddress)
	}
	return strings.Join(a, " ")
}

// crdKubectl: kubectl get prints the printer columns.
func crdKubectl(t *testing.T, l *lab.Lab) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := []string{"ADDRESS", "ASN", "SELECTOR", "NODES", "AGE", "ESTABLISHED", "UPDATED", "CLUSTER-ASN", "MESH",
		"crd-e2e-all", "192.0.2.3", "65002", "2001:db8::1", "4200000000", "2/3", "64512"}
	var out string
	var missing []string
	for {
		var err error
		out, err = l.Kubectl(ctx, "get", "bgppeers,bgpnodestatuses,bgpconfigurations")
		missing = missing[:0]
		for _, w := range want {
			if !strings.Contains(out, w) {
				missing = append(missing, w)
			}
		}
		if err == nil && len(missing) == 0 {
			break
		}
		if ctx.Err() != nil { // kubectl's discovery may lag the CRDs a moment
			t.Fatalf("kubectl get bgppeers,bgpnodestatuses,bgpconfigurations (%v): no %q in\n%s", err, missing, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("kubectl get bgppeers,bgpnodestatuses,bgpconfigurations:\n%s", out)
	wide, err := l.Kubectl(ctx, "get", "bgpnodestatuses", "-o", "wide")
	if err != nil || !strings.Contains(wide, "ROUTER-ID") || !strings.Contains(wide, l.Nodes[0].IP.String()) {
		t.Errorf("kubectl get bgpnodestatuses -o wide: no ROUTER-ID column with %s (%v):\n%s", l.Nodes[0].IP, err, wide)
	}
	t.Logf("kubectl get bgpnodestatuses -o wide:\n%s", wide)
}

// crdDocExamples: every example object in docs/crds.md passes a server-side dry run (an update where the object
// exists, and for a BGPNodeStatus also of its status).
func crdDocExamples(t *testing.T, dyn dynamic.Interface) {
	ctx := context.Background()
	b, err := os.ReadFile("../docs/crds.md")
	if err != nil {
		t.Fatal(err)
	}
	resources := map[string]schema.GroupVersionResource{"BGPPeer": v1alpha1.BGPPeersResource,
		"BGPConfiguration": v1alpha1.BGPConfigurationsResource, "BGPNodeStatus": v1alpha1.BGPNodeStatusesResource}
	seen := map[string]int{}
	blocks := strings.Split(string(b), "```yaml\n")[1:]
	for _, blk := range blocks {
		blk = blk[:strings.Index(blk, "```")]
		for _, doc := range strings.Split(blk, "\n---\n") {
			j, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("docs/crds.md: %v\n%s", err, doc)
			}
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(j); err != nil {
				t.Fatalf("docs/crds.md: %v\n%s", err, doc)
			}
			what := u.GetKind() + " " + u.GetName()
			ri := dyn.Resource(resources[u.GetKind()])
			seen[u.GetKind()]++
			dry := metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict}
			cur, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				_, err = ri.Create(ctx, u, metav1.CreateOptions{DryRun: dry.DryRun, FieldValidation: dry.FieldValidation})
			case err == nil:
				_, err = ri.Update(ctx, withVersion(u, cur), dry)
				if err == nil && u.GetKind() == "BGPNodeStatus" {
					_, err = ri.UpdateStatus(ctx, withVersion(u, cur), dry)
				}
			}
			if err != nil {
				t.Errorf("docs/crds.md: %s: %v", what, err)
				continue
			}
			t.Logf("docs/crds.md: %s passes a dry run", what)
		}
	}
	if seen["BGPPeer"] == 0 || seen["BGPConfiguration"] == 0 || seen["BGPNodeStatus"] == 0 {
		t.Errorf("docs/crds.md: examples of %v; want every kind", seen)
	}
}
