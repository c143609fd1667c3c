package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// NetworkPolicy end to end, in the style of upstream's test/e2e/network/netpol (see netpol_matrix_test.go for
// the pods, the probes and the truth tables). Every case creates its policies, checks the full matrix, and on
// the way out deletes them, puts labels back and waits until every pod reaches every other one again, so the
// next case starts clean.
func TestNetpol(t *testing.T) {
	e := setupNetpol(t)
	t0 := time.Now()
	cases := []struct {
		name string
		f    func(*testing.T, *netpolEnv)
	}{
		{"NoPoliciesAllowEverything", npNoPolicies},
		{"DefaultDenyIngress", npDefaultDenyIngress},
		{"DefaultDenyEgress", npDefaultDenyEgress},
		{"AllowFromSameNamespace", npAllowFromSameNamespace},
		{"IsolateNamespacesBothDirections", npIsolateNamespaces},
		{"NamespaceSelectorByLabel", npNamespaceSelector},
		{"PodAndNamespaceSelectorCombinedVsSeparate", npPodAndNamespaceSelector},
		{"IPBlockWithExceptIngress", npIPBlockIngress},
		{"IPBlockWithExceptEgress", npIPBlockEgress},
		{"NamedPortsIngress", npNamedPortsIngress},
		{"NamedPortsEgress", npNamedPortsEgress},
		{"EndPortAndProtocolOnly", npEndPort},
		{"EgressAndIngressBothMustAllow", npEgressAndIngress},
		{"SeveralPoliciesAddUp", npUnion},
		{"NodeTrafficAndIPBlockOfNodes", npNodes},
		{"EgressToExternalIPBlock", npEgressExternal},
		{"IngressThroughClusterIP", npIngressThroughService},
		{"EgressToDNSServiceOnly", npEgressToDNS},
		{"PolicyUpdateAndDeletion", npUpdateAndDelete},
		{"PodLabelChange", npPodLabelChange},
		{"NamespaceLabelChange", npNamespaceLabelChange},
		{"NoUnprotectedWindowForNewPod", npNoUnprotectedWindow},
		{"AgentRestartKeepsRulesAndCatchesUp", npAgentRestart},
		{"SCTP", npSCTP},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Cleanup(func() { e.clean(t) })
			c.f(t, e)
		})
	}
	t.Logf("the cases took %s", time.Since(t0).Round(100*time.Millisecond))
}

// clean deletes every policy in the suite's namespaces, puts the labels back and waits until every pod reaches
// every other one again.
func (e *netpolEnv) clean(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, ns := range npNamespaces {
		if err := e.l.Kube.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Errorf("delete the policies in %s: %v", ns, err)
		}
	}
	e.resetLabels(t)
	since := time.Now()
	if e.expect(t, "the case's policies deleted and labels back", since, allAllowed) < 0 {
		// Let a slow data path catch up, so the next case does not fail for this one's leftovers.
		for time.Since(since) < 10*time.Second {
			if _, n := e.diff(e.probeAll(ctx), allAllowed); n == 0 {
				t.Logf("clean %s after the change", time.Since(since).Round(time.Millisecond))
				return
			}
		}
	}
}

// create creates the policies (deleted when the test ends) and returns when the last one was created.
func (e *netpolEnv) create(t *testing.T, nps ...*networkingv1.NetworkPolicy) time.Time {
	t.Helper()
	for _, np := range nps {
		if _, err := e.l.Kube.NetworkingV1().NetworkPolicies(np.Namespace).Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create NetworkPolicy %s/%s: %v", np.Namespace, np.Name, err)
		}
		t.Cleanup(func() {
			err := e.l.Kube.NetworkingV1().NetworkPolicies(np.Namespace).Delete(context.Background(), np.Name, metav1.DeleteOptions{})
			if err != nil && !strings.Contains(err.Error(), "not found") {
				t.Errorf("delete NetworkPolicy %s/%s: %v", np.Namespace, np.Name, err)
			}
		})
	}
	return time.Now()
}

// Policy building blocks.

type npSpec = networkingv1.NetworkPolicySpec

var (
	npIngress = networkingv1.PolicyTypeIngress
	npEgress  = networkingv1.PolicyTypeEgress
)

func netpol(ns, name string, spec npSpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

// sel is a label selector from key, value pairs; sel() selects everything.
func sel(kv ...string) metav1.LabelSelector {
	s := metav1.LabelSelector{}
	for i := 0; i+1 < len(kv); i += 2 {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func selp(kv ...string) *metav1.LabelSelector { s := sel(kv...); return &s }

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func nsPodPeer(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func from(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyIngressRule {
	return []networkingv1.NetworkPolicyIngressRule{{From: peers}}
}

func to(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyEgressRule {
	return []networkingv1.NetworkPolicyEgressRule{{To: peers}}
}

// port is a numeric port (0: every port of proto; proto "": omitted, i.e. TCP).
func port(proto corev1.Protocol, p int) networkingv1.NetworkPolicyPort {
	np := networkingv1.NetworkPolicyPort{}
	if proto != "" {
		np.Protocol = &proto
	}
	if p != 0 {
		v := intstr.FromInt32(int32(p))
		np.Port = &v
	}
	return np
}

func portRange(proto corev1.Protocol, first, last int) networkingv1.NetworkPolicyPort {
	np := port(proto, first)
	end := int32(last)
	np.EndPort = &end
	return np
}

func namedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	np := networkingv1.NetworkPolicyPort{}
	if proto != "" {
		np.Protocol = &proto
	}
	v := intstr.FromString(name)
	np.Port = &v
	return np
}

var (
	tcp80 = npPort{80, corev1.ProtocolTCP}
	tcp81 = npPort{81, corev1.ProtocolTCP}
	udp80 = npPort{80, corev1.ProtocolUDP}
	udp81 = npPort{81, corev1.ProtocolUDP}
)

// The cases.

func npNoPolicies(t *testing.T, e *netpolEnv) {
	e.expect(t, "no policies", time.Now(), allAllowed)
}

func npDefaultDenyIngress(t *testing.T, e *netpolEnv) {
	since := e.create(t, netpol("x", "deny-ingress", npSpec{PolicyTypes: []networkingv1.PolicyType{npIngress}}))
	e.expect(t, "default deny ingress in x", since, func(from, to *npPod, _ npPort) bool { return to.NS != "x" })
}

func npDefaultDenyEgress(t *testing.T, e *netpolEnv) {
	since := e.create(t, netpol("x", "deny-egress", npSpec{PolicyTypes: []networkingv1.PolicyType{npEgress}}))
	e.expect(t, "default deny egress in x", since, func(from, to *npPod, _ npPort) bool { return from.NS != "x" })
}

func npAllowFromSameNamespace(t *testing.T, e *netpolEnv) {
	since := e.create(t, netpol("x", "same-ns", npSpec{Ingress: from(podPeer(selp()))}))
	e.expect(t, "x accepts only x", since, func(from, to *npPod, _ npPort) bool { return to.NS != "x" || from.NS == "x" })
}

// Every namespace isolated both ways, each allowing its own namespace in and out: only same-namespace traffic
// passes, which needs the sender's egress and the receiver's ingress rule.
func npIsolateNamespaces(t *testing.T, e *netpolEnv) {
	var nps []*networkingv1.NetworkPolicy
	for _, ns := range npNamespaces {
		nps = append(nps, netpol(ns, "own-ns-only", npSpec{
			Ingress: from(podPeer(selp())), Egress: to(podPeer(selp())),
			PolicyTypes: []networkingv1.PolicyType{npIngress, npEgress},
		}))
	}
	since := e.create(t, nps...)
	e.expect(t, "namespaces talk only within themselves", since, func(from, to *npPod, _ npPort) bool { return from.NS == to.NS })
}

func npNamespaceSelector(t *testing.T, e *netpolEnv) {
	notX := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"x"}}}}
	since := e.create(t,
		netpol("x", "a-from-other-ns", npSpec{PodSelector: sel("pod", "a"), Ingress: from(nsPeer(notX))}),
		netpol("x", "b-from-z", npSpec{PodSelector: sel("pod", "b"), Ingress: from(nsPeer(selp("ns", "z")))}),
		netpol("x", "c-from-not-a", npSpec{PodSelector: sel("pod", "c"), Ingress: from(podPeer(&metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pod", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"a"}}}}))}),
	)
	e.expect(t, "x/a from ns NotIn (x), x/b from ns=z, x/c from pods of x with pod NotIn (a)", since, func(from, to *npPod, _ npPort) bool {
		switch to.ID() {
		case "x/a":
			return from.NS != "x"
		case "x/b":
			return from.NS == "z"
		case "x/c":
			return from.ID() == "x/b"
		}
		return true
	})
}

// One peer with both selectors (pods b in namespace y) against two peers (namespace y, or pods c in x), and a
// pod selector with an empty namespace selector (pods b anywhere).
func npPodAndNamespaceSelector(t *testing.T, e *netpolEnv) {
	since := e.create(t,
		netpol("x", "combined", npSpec{PodSelector: sel("pod", "a"), Ingress: from(nsPodPeer(selp("ns", "y"), selp("pod", "b")))}),
		netpol("x", "separate", npSpec{PodSelector: sel("pod", "b"), Ingress: from(nsPeer(selp("ns", "y")), podPeer(selp("pod", "c")))}),
		netpol("x", "any-ns", npSpec{PodSelector: sel("pod", "c"), Ingress: from(nsPodPeer(selp(), selp("pod", "b")))}),
	)
	e.expect(t, "x/a from y/b; x/b from y/* or x/c; x/c from */b", since, func(from, to *npPod, _ npPort) bool {
		switch to.ID() {
		case "x/a":
			return from.ID() == "y/b"
		case "x/b":
			return from.NS == "y" || from.ID() == "x/c"
		case "x/c":
			return from.Name == "b"
		}
		return true
	})
}

func npIPBlockIngress(t *testing.T, e *netpolEnv) {
	yb := e.pod("y/b")
	cidr := yb.Node.PodCIDR.String()
	cluster := e.l.Config().ClusterCIDR.String()
	since := e.create(t,
		netpol("x", "a-from-block", npSpec{PodSelector: sel("pod", "a"), Ingress: from(blockPeer(cidr, yb.IP.String()+"/32"))}),
		// An address in one peer's except and in another peer's block is allowed (peers add up).
		netpol("x", "b-from-overlap", npSpec{PodSelector: sel("pod", "b"),
			Ingress: from(blockPeer(cluster, cidr), blockPeer(yb.IP.String()+"/32"))}),
	)
	e.expect(t, fmt.Sprintf("x/a from %s except y/b %s/32; x/b from %s except %s, or y/b", cidr, yb.IP, cluster, cidr), since, func(from, to *npPod, _ npPort) bool {
		switch to.ID() {
		case "x/a":
			return from.Node == yb.Node && from != yb
		case "x/b":
			return from.Node != yb.Node || from == yb
		}
		return true
	})
}

func npIPBlockEgress(t *testing.T, e *netpolEnv) {
	zc := e.pod("z/c")
	cluster := e.l.Config().ClusterCIDR.String()
	n0 := e.l.Nodes[0]
	since := e.create(t,
		netpol("x", "a-to-block", npSpec{PodSelector: sel("pod", "a"), PolicyTypes: []networkingv1.PolicyType{npEgress},
			Egress: to(blockPeer(cluster, zc.IP.String()+"/32"))}),
		netpol("x", "b-to-node1", npSpec{PodSelector: sel("pod", "b"), PolicyTypes: []networkingv1.PolicyType{npEgress},
			Egress: to(blockPeer(n0.PodCIDR.String()))}),
	)
	e.expect(t, fmt.Sprintf("x/a to %s except z/c; x/b to %s only", cluster, n0.PodCIDR), since, func(from, to *npPod, _ npPort) bool {
		switch from.ID() {
		case "x/a":
			return to != zc
		case "x/b":
			return to.Node == n0
		}
		return true
	})
}

// Named ports resolve against the target pod's container ports, by name and protocol; a named port whose
// protocol does not match allows nothing (it does not widen to every port).
func npNamedPortsIngress(t *testing.T, e *netpolEnv) {
	since := e.create(t,
		netpol("x", "a-named", npSpec{PodSelector: sel("pod", "a"), Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{namedPort(corev1.ProtocolTCP, "serve-81-tcp"), namedPort(corev1.ProtocolUDP, "serve-80-udp")}}}}),
		netpol("x", "b-named-wrong-proto", npSpec{PodSelector: sel("pod", "b"), Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{namedPort(corev1.ProtocolTCP, "serve-80-udp")}}}}),
		netpol("x", "c-named-default-proto", npSpec{PodSelector: sel("pod", "c"), Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{namedPort("", "serve-80-tcp")}}}}),
	)
	e.expect(t, "x/a on serve-81-tcp and serve-80-udp; x/b on TCP serve-80-udp (nothing); x/c on serve-80-tcp", since, func(from, to *npPod, p npPort) bool {
		switch to.ID() {
		case "x/a":
			return p == tcp81 || p == udp80
		case "x/b":
			return false
		case "x/c":
			return p == tcp80
		}
		return true
	})
}

// Egress named ports resolve against each destination pod's container ports.
func npNamedPortsEgress(t *testing.T, e *netpolEnv) {
	since := e.create(t, netpol("y", "a-out-named", npSpec{PodSelector: sel("pod", "a"), PolicyTypes: []networkingv1.PolicyType{npEgress},
		Egress: []networkingv1.NetworkPolicyEgressRule{{
			To:    []networkingv1.NetworkPolicyPeer{nsPeer(selp())},
			Ports: []networkingv1.NetworkPolicyPort{namedPort(corev1.ProtocolUDP, "serve-81-udp"), namedPort("", "serve-80-tcp")}}}}))
	e.expect(t, "y/a out on serve-81-udp and serve-80-tcp only", since, func(from, to *npPod, p npPort) bool {
		if from.ID() == "y/a" {
			return p == udp81 || p == tcp80
		}
		return true
	})
}

func npEndPort(t *testing.T, e *netpolEnv) {
	since := e.create(t,
		netpol("x", "a-ranges", npSpec{PodSelector: sel("pod", "a"), Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{portRange(corev1.ProtocolTCP, 81, 82), portRange(corev1.ProtocolUDP, 79, 80)}}}}),
		netpol("x", "b-all-udp", npSpec{PodSelector: sel("pod", "b"), Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, 0)}}}}),
		netpol("x", "c-out-tcp-range", npSpec{PodSelector: sel("pod", "c"), PolicyTypes: []networkingv1.PolicyType{npEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{portRange(corev1.ProtocolTCP, 80, 81)}}}}),
	)
	e.expect(t, "x/a on TCP 81-82 and UDP 79-80; x/b on all UDP; x/c out on TCP 80-81", since, func(from, to *npPod, p npPort) bool {
		ok := true
		switch to.ID() {
		case "x/a":
			ok = p == tcp81 || p == udp80
		case "x/b":
			ok = p.Proto == corev1.ProtocolUDP
		}
		if from.ID() == "x/c" {
			ok = ok && p.Proto == corev1.ProtocolTCP
		}
		return ok
	})
}

// x/a may send to namespace y on TCP 81 only; y/b accepts only namespace z: x/a → y/b is allowed by the
// sender's egress but denied by the receiver's ingress.
func npEgressAndIngress(t *testing.T, e *netpolEnv) {
	since := e.create(t,
		netpol("x", "a-out-to-y-81", npSpec{PodSelector: sel("pod", "a"), PolicyTypes: []networkingv1.PolicyType{npEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{nsPeer(selp("ns", "y"))},
				Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, 81)}}}}),
		netpol("y", "b-from-z", npSpec{PodSelector: sel("pod", "b"), Ingress: from(nsPeer(selp("ns", "z")))}),
	)
	e.expect(t, "x/a out to y on TCP 81; y/b in from z", since, func(from, to *npPod, p npPort) bool {
		ok := true
		if from.ID() == "x/a" {
			ok = to.NS == "y" && p == tcp81
		}
		if to.ID() == "y/b" {
			ok = ok && from.NS == "z"
		}
		return ok
	})
}

// Policies selecting one pod add up: traffic any of them allows passes (an empty ingress rule allows everything
// in, whatever a deny-all policy on the same pod says).
func npUnion(t *testing.T, e *netpolEnv) {
	e.create(t,
		netpol("x", "a-from-b", npSpec{PodSelector: sel("pod", "a"), Ingress: from(podPeer(selp("pod", "b")))}),
		netpol("x", "a-from-z-tcp80", npSpec{PodSelector: sel("pod", "a"), Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{nsPeer(selp("ns", "z"))}, Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, 80)}}}}),
	)
	since := e.create(t,
		netpol("x", "b-deny-all", npSpec{PodSelector: sel("pod", "b"), PolicyTypes: []networkingv1.PolicyType{npIngress, npEgress}}),
		netpol("x", "b-allow-all-in", npSpec{PodSelector: sel("pod", "b"), Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}),
	)
	e.expect(t, "x/a from x/b, and from z on TCP 80; x/b deny all, but allow all in", since, func(from, to *npPod, p npPort) bool {
		if from.ID() == "x/b" {
			return false
		}
		if to.ID() == "x/a" {
			return from.ID() == "x/b" || (from.NS == "z" && p == tcp80)
		}
		return true
	})
}

// Traffic from a pod's own node (kubelet probes) is always allowed; other nodes are just addresses: default deny
// ingress keeps them out, until an ipBlock of the fabric lets them in.
func npNodes(t *testing.T, e *netpolEnv) {
	since := e.create(t, netpol("x", "deny-ingress", npSpec{PolicyTypes: []networkingv1.PolicyType{npIngress}}))
	denyX := func(from, to *npPod, _ npPort) bool { return to.NS != "x" }
	e.expect(t, "default deny ingress in x", since, denyX)
	checks := func(fabricToA bool) []npCheck {
		var cs []npCheck
		for _, id := range []string{"x/a", "x/b", "x/c"} {
			p := e.pod(id)
			for _, n := range e.l.Nodes {
				for _, port := range []npPort{tcp80, udp81} {
					cs = append(cs, npCheck{&n.Host, p.IP, id, port, n == p.Node || (fabricToA && id == "x/a")})
				}
			}
		}
		return cs
	}
	e.expectChecks(t, "nodes to x under default deny ingress: only the pod's own node", since, checks(false))
	fabric := e.l.Config().FabricCIDR.String()
	since = e.create(t, netpol("x", "a-from-fabric", npSpec{PodSelector: sel("pod", "a"), Ingress: from(blockPeer(fabric))}))
	e.expectChecks(t, "nodes to x/a allowed by ipBlock "+fabric, since, checks(true))
	e.expect(t, "pods still denied into x/a", since, denyX)
}

// Egress to addresses outside the cluster is policed before the pod's traffic is masqueraded to the node.
func npEgressExternal(t *testing.T, e *netpolEnv) {
	ext := e.l.Ext
	proc, err := ext.Start("netpold-netpol", e.netpold, "-name", "ext", "-tcp", "80,81", "-udp", "80,81")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Kill() })
	extCIDR := e.l.Config().ExternalCIDR.String()
	var before []npCheck
	for _, id := range []string{"x/a", "x/b", "x/c"} {
		before = append(before, npCheck{&e.pod(id).Host, ext.IP, "ext", tcp80, true}, npCheck{&e.pod(id).Host, ext.IP, "ext", udp81, true})
	}
	eventually(t, 10*time.Second, "x reaches the external host before any policy", func(context.Context) error {
		if wrong := runChecks(before); len(wrong) > 0 {
			return errors.New(strings.Join(wrong, "; "))
		}
		return nil
	})
	since := e.create(t,
		netpol("x", "a-out-external-only", npSpec{PodSelector: sel("pod", "a"), PolicyTypes: []networkingv1.PolicyType{npEgress},
			Egress: to(blockPeer(extCIDR))}),
		netpol("x", "b-out-not-external", npSpec{PodSelector: sel("pod", "b"), PolicyTypes: []networkingv1.PolicyType{npEgress},
			Egress: to(blockPeer("0.0.0.0/0", extCIDR))}),
	)
	e.expect(t, "x/a out only to "+extCIDR+"; x/b out anywhere but "+extCIDR, since, func(from, to *npPod, _ npPort) bool { return from.ID() != "x/a" })
	var checks []npCheck
	for _, port := range npPorts {
		checks = append(checks, npCheck{&e.pod("x/a").Host, ext.IP, "ext", port, true},
			npCheck{&e.pod("x/b").Host, ext.IP, "ext", port, false},
			npCheck{&e.pod("x/c").Host, ext.IP, "ext", port, true})
	}
	e.expectChecks(t, "x/a and x/c reach the external host, x/b does not", since, checks)
}

// Through a ClusterIP the policy still sees the client pod's own address (the proxy's DNAT changes only the
// destination): x/a behind a Service accepts y/b only, also when reached through the Service.
func npIngressThroughService(t *testing.T, e *netpolEnv) {
	svc := createService(t, e.l, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "x"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"pod": "a"}, Ports: []corev1.ServicePort{
			{Name: "tcp", Port: 8080, TargetPort: intstr.FromString("serve-80-tcp"), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: 8080, TargetPort: intstr.FromString("serve-80-udp"), Protocol: corev1.ProtocolUDP}}}})
	vip := netip.MustParseAddr(svc.Spec.ClusterIP)
	checks := func(onlyYB bool) []npCheck {
		var cs []npCheck
		for _, p := range e.pods {
			if p.ID() == "x/a" { // hairpin through its own Service: not a policy question
				continue
			}
			for _, port := range []npPort{{8080, corev1.ProtocolTCP}, {8080, corev1.ProtocolUDP}} {
				cs = append(cs, npCheck{&p.Host, vip, "x/a", port, !onlyYB || p.ID() == "y/b"})
			}
		}
		return cs
	}
	eventually(t, 15*time.Second, "every pod reaches x/a through its ClusterIP "+vip.String(), func(context.Context) error {
		if wrong := runChecks(checks(false)); len(wrong) > 0 {
			return errors.New(strings.Join(wrong, "; "))
		}
		return nil
	})
	since := e.create(t, netpol("x", "a-from-yb", npSpec{PodSelector: sel("pod", "a"), Ingress: from(nsPodPeer(selp("ns", "y"), selp("pod", "b")))}))
	e.expect(t, "x/a from y/b", since, func(from, to *npPod, _ npPort) bool { return to.ID() != "x/a" || from.ID() == "y/b" })
	e.expectChecks(t, "only y/b reaches x/a through "+vip.String(), since, checks(true))
}

// Namespace x may send only to the DNS server (e2e/dnsd, port 53 UDP and TCP) in namespace netpol-dns, which the
// pods reach through its ClusterIP: the service proxy's DNAT happens before the filter, so the policy sees the
// DNS pod's address.
func npEgressToDNS(t *testing.T, e *netpolEnv) {
	ctx := context.Background()
	l := e.l
	const dnsNS, record, answer = "netpol-dns", "allowed.netpol.test", "192.0.2.53"
	if _, err := l.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: dnsNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Kube.CoreV1().Namespaces().Delete(context.Background(), dnsNS, metav1.DeleteOptions{}) })
	dnsPod := e.addPod(t, l.Nodes[1], dnsNS, "netpol-dns", map[string]string{"app": "dns"}, []corev1.ContainerPort{
		{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP}}, nil)
	if _, err := dnsPod.Start("dnsd", buildDNSD(t), "-listen", ":53", "-record", record+"="+answer); err != nil {
		t.Fatal(err)
	}
	e.startServer(t, dnsPod, dnsNS+"/dns") // TCP/UDP 80 and 81 on the same pod: not DNS, so not allowed
	svc := createService(t, l, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dns", Namespace: dnsNS},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "dns"}, Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(53), Protocol: corev1.ProtocolUDP},
			{Name: "dns-tcp", Port: 53, TargetPort: intstr.FromInt32(53), Protocol: corev1.ProtocolTCP}}}})
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "53")
	resolves := func(ctx context.Context, p *npPod, network string) error {
		got, err := dnsQuery(ctx, p.Pod, network, vip, record)
		if err == nil && got.String() != answer {
			err = fmt.Errorf("resolved %s to %s, want %s", record, got, answer)
		}
		return err
	}
	t0 := time.Now()
	eventually(t, 15*time.Second, "x/a resolves through the DNS ClusterIP before any policy", func(ctx context.Context) error {
		return resolves(ctx, e.pod("x/a"), "udp")
	})
	t.Logf("DNS service %s answers (after %s)", vip, time.Since(t0).Round(time.Millisecond))

	dnsOnly := []networkingv1.NetworkPolicyEgressRule{{
		To:    []networkingv1.NetworkPolicyPeer{nsPodPeer(selp(corev1.LabelMetadataName, dnsNS), selp("app", "dns"))},
		Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, 53), port(corev1.ProtocolTCP, 53)},
	}}
	since := e.create(t, netpol("x", "egress-dns-only", npSpec{PolicyTypes: []networkingv1.PolicyType{npEgress}, Egress: dnsOnly}))
	e.expect(t, "x sends only to DNS", since, func(from, to *npPod, _ npPort) bool { return from.NS != "x" })
	for _, id := range []string{"x/a", "x/b", "x/c"} {
		for _, network := range []string{"udp", "tcp"} {
			qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			if err := resolves(qctx, e.pod(id), network); err != nil {
				t.Errorf("%s: DNS over %s through ClusterIP %s, allowed by the policy: %v", id, network, vip, err)
			}
			cancel()
		}
	}
	dnsAddr := dnsPod.IP
	for _, p := range npPorts {
		if err := probeOne(ctx, &e.pod("x/a").Host, dnsAddr, p, dnsNS+"/dns", npDeniedAfter); err == nil {
			t.Errorf("x/a reached the DNS pod %s on %s, which the policy does not allow", dnsAddr, p)
		}
		if err := probeOne(ctx, &e.pod("y/a").Host, dnsAddr, p, dnsNS+"/dns", npDeniedAfter); err != nil {
			t.Errorf("y/a (no policy) cannot reach the DNS pod %s on %s: %v", dnsAddr, p, err)
		}
	}
}

// dnsQuery asks server (ip:port) for name's A record over network from inside the pod, waiting at most 1 s.
func dnsQuery(ctx context.Context, from *lab.Pod, network, server, name string) (netip.Addr, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	msg, err := m.Pack()
	if err != nil {
		return netip.Addr{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := from.Dial(ctx, network, server)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	d, _ := ctx.Deadline()
	_ = c.SetDeadline(d)
	var reply []byte
	if network == "udp" {
		if _, err := c.Write(msg); err != nil {
			return netip.Addr{}, err
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			return netip.Addr{}, err
		}
		reply = buf[:n]
	} else {
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)); err != nil {
			return netip.Addr{}, err
		}
		r := bufio.NewReader(c)
		var hdr [2]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return netip.Addr{}, err
		}
		reply = make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(r, reply); err != nil {
			return netip.Addr{}, err
		}
	}
	var resp dns.Msg
	if err := resp.Unpack(reply); err != nil {
		return netip.Addr{}, err
	}
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			addr, _ := netip.AddrFromSlice(a.A.To4())
			return addr, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no A record, rcode %s", dns.RcodeToString[resp.Rcode])
}

// npFollow is how soon after an update, a deletion or a label change the rules must follow (the issue: within a
// second); npNewPodAllowed how soon after a new pod's status is written an allowed client must get through.
const (
	npFollow        = time.Second
	npNewPodAllowed = 2 * time.Second
)

// A policy's update and its deletion reach the data path within npFollow (timed on one cell probed every
// 50 ms), and then the whole matrix is as expected.
func npUpdateAndDelete(t *testing.T, e *netpolEnv) {
	ctx := context.Background()
	xa, xb, xc, ya := e.pod("x/a"), e.pod("x/b"), e.pod("x/c"), e.pod("y/a")
	np := netpol("x", "a-from", npSpec{PodSelector: sel("pod", "a"), Ingress: from(podPeer(selp("pod", "b")))})
	since := e.create(t, np)
	e.expect(t, "x/a from x/b", since, func(from, to *npPod, _ npPort) bool { return to != xa || from == xb })

	cur, err := e.l.Kube.NetworkingV1().NetworkPolicies("x").Get(ctx, np.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Ingress = from(podPeer(selp("pod", "c")))
	if _, err := e.l.Kube.NetworkingV1().NetworkPolicies("x").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	since = time.Now()
	var d1, d2 time.Duration
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); d1 = e.waitCell(t, since, npFollow, xc, xa, tcp80, true) }()
	go func() { defer wg.Done(); d2 = e.waitCell(t, since, npFollow, xb, xa, udp80, false) }()
	wg.Wait()
	t.Logf("update (x/a from x/b → from x/c): x/c → x/a allowed after %s, x/b → x/a denied after %s", d1.Round(time.Millisecond), d2.Round(time.Millisecond))
	e.expect(t, "x/a from x/c after the update", since, func(from, to *npPod, _ npPort) bool { return to != xa || from == xc })

	if err := e.l.Kube.NetworkingV1().NetworkPolicies("x").Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	since = time.Now()
	d1 = e.waitCell(t, since, npFollow, ya, xa, tcp81, true)
	t.Logf("deletion: y/a → x/a allowed after %s", d1.Round(time.Millisecond))
	e.expect(t, "x/a open after the deletion", since, allAllowed)
}

// A pod gains the label a policy selects it by (as target, then as peer) and loses it again.
func npPodLabelChange(t *testing.T, e *netpolEnv) {
	xa, xb, ya, zc := e.pod("x/a"), e.pod("x/b"), e.pod("y/a"), e.pod("z/c")
	since := e.create(t,
		netpol("x", "isolate-marked", npSpec{PodSelector: sel("isolated", "yes"), PolicyTypes: []networkingv1.PolicyType{npIngress}}),
		netpol("x", "a-from-marked", npSpec{PodSelector: sel("pod", "a"), Ingress: from(nsPodPeer(selp(), selp("allowed", "yes")))}),
	)
	e.expect(t, "x/a from pods labelled allowed=yes (none yet)", since, func(from, to *npPod, _ npPort) bool { return to != xa })

	// Target: x/b gets isolated=yes.
	e.labelPod(t, xb, "isolated", "yes")
	since = time.Now()
	d := e.waitCell(t, since, npFollow, ya, xb, tcp80, false)
	t.Logf("x/b labelled isolated=yes: y/a → x/b denied after %s", d.Round(time.Millisecond))
	e.expect(t, "x/b isolated by its new label", since, func(from, to *npPod, _ npPort) bool { return to != xa && to != xb })

	// Peer: z/c gets allowed=yes.
	e.labelPod(t, zc, "allowed", "yes")
	since = time.Now()
	d = e.waitCell(t, since, npFollow, zc, xa, tcp80, true)
	t.Logf("z/c labelled allowed=yes: z/c → x/a allowed after %s", d.Round(time.Millisecond))
	e.expect(t, "z/c allowed into x/a by its new label", since, func(from, to *npPod, _ npPort) bool {
		return to != xb && (to != xa || from == zc)
	})

	// Both labels go away again.
	e.labelPod(t, xb, "isolated", "")
	e.labelPod(t, zc, "allowed", "")
	since = time.Now()
	d = e.waitCell(t, since, npFollow, zc, xa, tcp80, false)
	t.Logf("labels removed: z/c → x/a denied after %s", d.Round(time.Millisecond))
	e.expect(t, "labels removed", since, func(from, to *npPod, _ npPort) bool { return to != xa })
}

// A namespace gains the label a namespaceSelector looks for, and loses it again.
func npNamespaceLabelChange(t *testing.T, e *netpolEnv) {
	xa, ya := e.pod("x/a"), e.pod("y/a")
	since := e.create(t, netpol("x", "a-from-blue", npSpec{PodSelector: sel("pod", "a"), Ingress: from(nsPeer(selp("team", "blue")))}))
	e.expect(t, "x/a from namespaces labelled team=blue (none yet)", since, func(from, to *npPod, _ npPort) bool { return to != xa })
	e.labelNamespace(t, "y", "team", "blue")
	since = time.Now()
	d := e.waitCell(t, since, npFollow, ya, xa, udp81, true)
	t.Logf("namespace y labelled team=blue: y/a → x/a allowed after %s", d.Round(time.Millisecond))
	e.expect(t, "y allowed into x/a by its new label", since, func(from, to *npPod, _ npPort) bool { return to != xa || from.NS == "y" })
	e.labelNamespace(t, "y", "team", "")
	since = time.Now()
	d = e.waitCell(t, since, npFollow, ya, xa, udp81, false)
	t.Logf("label removed: y/a → x/a denied after %s", d.Round(time.Millisecond))
	e.expect(t, "label removed from y", since, func(from, to *npPod, _ npPort) bool { return to != xa })
}

// npNoUnprotectedWindow: a policy lets pods labelled pod=new in x talk only with pods labelled pod=a (any
// namespace), both ways. A new such pod is made the way the kubelet makes one (Pod object, CNI ADD, then
// status.podIPs, here 1 s after CNI ADD). From the moment CNI gives it an address, before any agent can know the
// address from the API, four disallowed clients (two on the new pod's node, two elsewhere) hammer it on TCP and
// UDP 80, and it hammers two disallowed servers itself, until 3 s after its status is written: not one
// connection, refusal (a refusal is the other side's kernel answering: the data path drops) or UDP reply may
// come back, and no server may log any of that traffic. The allowed peers get through, both ways, within
// npNewPodAllowed of the status update.
func npNoUnprotectedWindow(t *testing.T, e *netpolEnv) {
	const statusAfter, hammerFor = time.Second, 3 * time.Second
	node := e.l.Nodes[1]
	peerA := []networkingv1.NetworkPolicyPeer{nsPodPeer(selp(), selp("pod", "a"))}
	since := e.create(t, netpol("x", "new-only-with-a", npSpec{PodSelector: sel("pod", "new"),
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: peerA}},
		Egress:      []networkingv1.NetworkPolicyEgressRule{{To: peerA}},
		PolicyTypes: []networkingv1.PolicyType{npIngress, npEgress}}))
	// The policy must be in every agent before the pod appears; it selects no pod yet, so nothing shows it:
	// give the agents twice what the suite allows them for any change.
	time.Sleep(2*npFollow - time.Since(since))

	newPod := &npPod{NS: "x", Name: "new"}
	var flows []npFlow
	for _, id := range []string{"x/b", "z/c", "y/b", "z/b"} { // x/b and z/c share the new pod's node
		flows = append(flows, npFlow{e.pod(id), newPod, false})
	}
	for _, id := range []string{"x/b", "y/b"} {
		flows = append(flows, npFlow{newPod, e.pod(id), false})
	}
	for _, id := range []string{"x/a", "y/a", "z/a"} { // y/a shares the new pod's node
		flows = append(flows, npFlow{e.pod(id), newPod, true})
	}
	for _, id := range []string{"x/a", "y/a"} {
		flows = append(flows, npFlow{newPod, e.pod(id), true})
	}
	h := &hammer{stop: make(chan struct{}), firstOK: map[string]time.Time{}}
	var addrAt time.Time
	logFrom := map[*npPod]int64{} // where each disallowed server's log stood when the hammering began
	e.addPod(t, node, "x", "x-new", map[string]string{"pod": "new"}, npContainerPorts(), func(p *lab.Pod) {
		addrAt = time.Now()
		newPod.Pod = p
		for _, f := range flows {
			if !f.allowed && f.to != newPod {
				if fi, err := os.Stat(f.to.server.LogPath); err == nil {
					logFrom[f.to] = fi.Size()
				}
			}
		}
		for _, f := range flows {
			for _, port := range []npPort{tcp80, udp80} {
				h.run(f, port)
				if !f.allowed {
					h.run(f, port)
				}
			}
		}
		newPod.server = e.startServer(t, p, "x/new")
		// A kubelet writes the status some time after CNI ADD: keep the pod addressed but unknown a while.
		time.Sleep(statusAfter)
	})
	statusAt := time.Now()
	time.Sleep(hammerFor)
	close(h.stop)
	h.wg.Wait()
	t.Logf("new pod x/new %s on %s: CNI address at 0, status written at +%s; %d disallowed probes (in and out) over %s",
		newPod.IP, node.Name, statusAt.Sub(addrAt).Round(time.Millisecond), h.attempts, time.Since(addrAt).Round(time.Millisecond))
	for i, leak := range h.leaks {
		if i == 10 {
			t.Errorf("… %d more", len(h.leaks)-i)
			break
		}
		t.Errorf("disallowed traffic got through %+dms after the new pod's status was written: %s", leak.at.Sub(statusAt).Milliseconds(), leak.what)
	}
	// What the servers saw (the new pod's log is all new; the others' from where it stood at the start).
	bad := map[*npPod][]*npPod{}
	for _, f := range flows {
		if !f.allowed {
			bad[f.to] = append(bad[f.to], f.from)
		}
	}
	for srv, clients := range bad {
		if srv.server == nil {
			continue
		}
		b, err := os.ReadFile(srv.server.LogPath)
		if err != nil {
			t.Error(err)
			continue
		}
		off := logFrom[srv]
		if off > int64(len(b)) {
			off = 0
		}
		var lines []string
		for _, line := range strings.Split(string(b[off:]), "\n") {
			for _, c := range clients {
				if strings.Contains(line, " from "+c.IP.String()+":") {
					lines = append(lines, c.ID()+": "+line)
				}
			}
		}
		if len(lines) > 0 {
			t.Errorf("the server of %s logged %d connections or datagrams from disallowed clients, the first: %s", srv.ID(), len(lines), lines[0])
		}
	}
	for _, f := range flows {
		if !f.allowed {
			continue
		}
		for _, port := range []npPort{tcp80, udp80} {
			first, ok := h.firstOK[f.key(port)]
			switch {
			case !ok:
				t.Errorf("allowed %s never got through within %s of the status", f.key(port), hammerFor)
			case first.Sub(statusAt) > npNewPodAllowed:
				t.Errorf("allowed %s got through only %s after the status was written", f.key(port), first.Sub(statusAt).Round(time.Millisecond))
			default:
				t.Logf("allowed %s: first answer %+dms after the status", f.key(port), first.Sub(statusAt).Milliseconds())
			}
		}
	}
	// Finally the whole matrix with the new pod in it.
	e2 := *e
	e2.pods = append(append([]*npPod(nil), e.pods...), newPod)
	e2.expect(t, "with x/new", statusAt, func(from, to *npPod, _ npPort) bool {
		return (to != newPod || from.Name == "a") && (from != newPod || to.Name == "a")
	})
}

// npFlow is traffic the hammer sends.
type npFlow struct {
	from, to *npPod
	allowed  bool
}

func (f npFlow) key(port npPort) string {
	return f.from.ID() + " → " + f.to.ID() + " " + port.String()
}

type hammerLeak struct {
	at   time.Time
	what string
}

// hammer probes flows (300 ms timeouts, one after another per flow and port) until stop is closed; a disallowed
// flow's answers and refusals are leaks, an allowed flow's first answer is kept.
type hammer struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	attempts int
	leaks    []hammerLeak
	firstOK  map[string]time.Time
}

func (h *hammer) run(f npFlow, port npPort) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			select {
			case <-h.stop:
				return
			default:
			}
			err := probeOne(context.Background(), &f.from.Host, f.to.IP, port, "", 300*time.Millisecond)
			now := time.Now()
			h.mu.Lock()
			if f.allowed {
				if _, seen := h.firstOK[f.key(port)]; err == nil && !seen {
					h.firstOK[f.key(port)] = now
				}
			} else {
				h.attempts++
				if err == nil || reachedPod(err) {
					what := "answered"
					if err != nil {
						what = err.Error()
					}
					h.leaks = append(h.leaks, hammerLeak{now, fmt.Sprintf("%s (%s → %s): %s", f.key(port), f.from.IP, f.to.IP, what)})
				}
			}
			h.mu.Unlock()
			if err == nil || reachedPod(err) {
				time.Sleep(20 * time.Millisecond) // answered at once: do not spin
			}
		}
	}()
}

// The agent on x/a's node stops (SIGTERM) and starts again: its rules keep enforcing while it is away (four
// clients, disallowed before and after, hammer x/a all along), a policy created meanwhile (x/a opens to
// namespace y) is applied soon after it is back, and then the whole matrix is right.
func npAgentRestart(t *testing.T, e *netpolEnv) {
	xa := e.pod("x/a")
	node := xa.Node
	since := e.create(t, netpol("x", "deny-ingress", npSpec{PolicyTypes: []networkingv1.PolicyType{npIngress}}))
	e.expect(t, "default deny ingress in x", since, func(from, to *npPod, _ npPort) bool { return to.NS != "x" })

	h := &hammer{stop: make(chan struct{}), firstOK: map[string]time.Time{}}
	for _, id := range []string{"z/b", "z/a", "x/b", "x/c"} { // z/b shares x/a's node; none is in y
		for _, port := range []npPort{tcp80, udp80} {
			h.run(npFlow{e.pod(id), xa, false}, port)
		}
	}
	stopped := time.Now()
	if err := node.StopAgent(); err != nil {
		t.Error(err)
	}
	t.Cleanup(func() {
		if a := node.Agent(); a != nil {
			if exited, _ := a.Exited(); exited {
				if err := node.StartAgent(); err != nil {
					t.Errorf("restart the agent on %s: %v", node.Name, err)
				}
			}
		}
		waitConverged(t, e.l)
	})
	t.Logf("agent on %s stopped in %s", node.Name, time.Since(stopped).Round(time.Millisecond))
	// While it is away: x/a opens to namespace y.
	e.create(t, netpol("x", "a-from-y", npSpec{PodSelector: sel("pod", "a"), Ingress: from(nsPeer(selp("ns", "y")))}))
	time.Sleep(time.Second)
	if err := probeOne(context.Background(), &e.pod("y/a").Host, xa.IP, tcp80, "", 500*time.Millisecond); err == nil {
		t.Errorf("x/a let y/a in while its node's agent was stopped")
	}
	started := time.Now()
	if err := node.StartAgent(); err != nil {
		t.Fatal(err)
	}
	d := e.waitCell(t, started, 30*time.Second, e.pod("y/a"), xa, tcp80, true)
	t.Logf("agent on %s started again: the policy made while it was away applies %s after the start", node.Name, d.Round(time.Millisecond))
	close(h.stop)
	h.wg.Wait()
	t.Logf("%d disallowed probes into x/a from stop to catch-up (%s)", h.attempts, time.Since(stopped).Round(time.Millisecond))
	for i, leak := range h.leaks {
		if i == 10 {
			t.Errorf("… %d more", len(h.leaks)-i)
			break
		}
		t.Errorf("disallowed traffic into x/a got through %+dms after the agent's start: %s", leak.at.Sub(started).Milliseconds(), leak.what)
	}
	e.expect(t, "after the restart", started, func(from, to *npPod, _ npPort) bool {
		return to.NS != "x" || (to == xa && from.NS == "y")
	})
}

// SCTP is probed, not assumed: the lab kernel may lack it.
func npSCTP(t *testing.T, e *netpolEnv) {
	out, err := e.pod("x/a").Exec(context.Background(), e.netpold, "-check-sctp")
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 3 || strings.Contains(out, "protocol not supported") {
		t.Skipf("the lab kernel has no SCTP (%s): the SCTP matrix cannot run here", strings.TrimSpace(out))
	}
	if err != nil {
		t.Fatalf("netpold -check-sctp: %v: %s", err, out)
	}
	t.Skipf("the kernel supports SCTP (%s), but the suite has no SCTP server and probe yet", strings.TrimSpace(out))
}
