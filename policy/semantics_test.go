package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ---- builders ----

func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	for i := 0; i+1 < len(kv); i += 2 {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func np(ns, name string, podSel *metav1.LabelSelector, types []networkingv1.PolicyType,
	in []networkingv1.NetworkPolicyIngressRule, eg []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *podSel, PolicyTypes: types, Ingress: in, Egress: eg,
		},
	}
}

var (
	tIn   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	tEg   = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	tBoth = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

func from(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return peers }

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}
func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}
func bothPeer(pod, ns *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: pod, NamespaceSelector: ns}
}
func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func ports(ps ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort { return ps }

// port builds a policy port: proto "" = omitted; p is int, string (named) or nil; end 0 = no endPort.
func port(proto corev1.Protocol, p any, end int32) networkingv1.NetworkPolicyPort {
	var pp networkingv1.NetworkPolicyPort
	if proto != "" {
		pp.Protocol = &proto
	}
	switch v := p.(type) {
	case int:
		x := intstr.FromInt32(int32(v))
		pp.Port = &x
	case string:
		x := intstr.FromString(v)
		pp.Port = &x
	}
	if end != 0 {
		pp.EndPort = &end
	}
	return pp
}

func ingRule(peers []networkingv1.NetworkPolicyPeer, ps []networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyIngressRule {
	return []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ps}}
}
func egRule(peers []networkingv1.NetworkPolicyPeer, ps []networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyEgressRule {
	return []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: ps}}
}

// ---- fixture ----

func fixture() ([]*Pod, []*Namespace) {
	ip := netip.MustParseAddr
	pods := []*Pod{
		{Namespace: "prod", Name: "web", IP: ip("10.0.0.1"), Labels: map[string]string{"app": "web"}, NodeName: "n1",
			Ports: []NamedPort{{Name: "http", Port: 8080}}},
		{Namespace: "prod", Name: "db", IP: ip("10.0.0.2"), Labels: map[string]string{"app": "db"}, NodeName: "n1",
			Ports: []NamedPort{{Name: "pg", Port: 5432, Protocol: corev1.ProtocolTCP}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}},
		{Namespace: "prod", Name: "client", IP: ip("10.0.0.3"), Labels: map[string]string{"app": "client"}, NodeName: "n1"},
		{Namespace: "dev", Name: "client", IP: ip("10.0.1.3"), Labels: map[string]string{"app": "client"}, NodeName: "n1"},
		{Namespace: "dev", Name: "web", IP: ip("10.0.1.1"), Labels: map[string]string{"app": "web"}, NodeName: "n2",
			Ports: []NamedPort{{Name: "http", Port: 9090}}},
		{Namespace: "mon", Name: "prom", IP: ip("10.0.2.1"), Labels: map[string]string{"app": "prom"}, NodeName: "n1"},
		{Namespace: "prod", Name: "hostnet", IP: ip("192.168.0.10"), Labels: map[string]string{"app": "web"}, NodeName: "n1",
			HostNetwork: true, Ports: []NamedPort{{Name: "http", Port: 8080}}},
		{Namespace: "prod", Name: "pending", Labels: map[string]string{"app": "web"}, NodeName: "n1"}, // no IP yet
	}
	nss := []*Namespace{
		{Name: "prod", Labels: map[string]string{"team": "a"}},
		{Name: "dev", Labels: map[string]string{"team": "b"}},
		{Name: "mon", Labels: map[string]string{"team": "a", "purpose": "monitoring"}},
	}
	return pods, nss
}

const (
	prodWeb    = "10.0.0.1"
	prodDB     = "10.0.0.2"
	prodClient = "10.0.0.3"
	devClient  = "10.0.1.3"
	devWeb     = "10.0.1.1"
	monProm    = "10.0.2.1"
	hostNet    = "192.168.0.10"
	external   = "8.8.8.8"
)

// ---- evaluator: how the data path is expected to interpret a PodFirewall ----

func allowed(fw *PodFirewall, ingress bool, peer string, proto corev1.Protocol, p uint16) bool {
	isolated, rules := fw.IngressIsolated, fw.Ingress
	if !ingress {
		isolated, rules = fw.EgressIsolated, fw.Egress
	}
	if !isolated {
		return true
	}
	ip := netip.MustParseAddr(peer)
	for _, r := range rules {
		if peerMatches(r.Peers, ip) && portMatches(r.Ports, proto, p) {
			return true
		}
	}
	return false
}

func peerMatches(peers []Peer, ip netip.Addr) bool {
	for _, pe := range peers {
		switch {
		case pe.Any:
			return true
		case pe.CIDR.IsValid():
			if pe.CIDR.Contains(ip) && !slices.ContainsFunc(pe.Except, func(e netip.Prefix) bool { return e.Contains(ip) }) {
				return true
			}
		default:
			if _, ok := slices.BinarySearchFunc(pe.PodIPs, ip, netip.Addr.Compare); ok {
				return true
			}
		}
	}
	return false
}

func portMatches(ps []PortRule, proto corev1.Protocol, p uint16) bool {
	if len(ps) == 0 {
		return true
	}
	for _, pr := range ps {
		if pr.Protocol == proto && (pr.Port == 0 || (p >= pr.Port && p <= pr.EndPort)) {
			return true
		}
	}
	return false
}

type check struct {
	pod     string // ns/name
	ingress bool
	peer    string
	proto   corev1.Protocol
	port    uint16
	want    bool
}

func in(pod, peer string, p uint16, want bool) check {
	return check{pod, true, peer, corev1.ProtocolTCP, p, want}
}
func out(pod, peer string, p uint16, want bool) check {
	return check{pod, false, peer, corev1.ProtocolTCP, p, want}
}
func withProto(c check, proto corev1.Protocol) check { c.proto = proto; return c }

func TestCompute(t *testing.T) {
	tests := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		checks   []check
		// isolation expectations: pod -> [ingress, egress]
		isolated map[string][2]bool
	}{
		{
			name: "no policies: default allow",
			checks: []check{
				in("prod/web", devClient, 80, true), out("prod/web", external, 443, true),
				in("mon/prom", hostNet, 9100, true),
			},
			isolated: map[string][2]bool{"prod/web": {false, false}, "dev/web": {false, false}, "prod/pending": {false, false}},
		},
		{
			name:     "default deny ingress",
			policies: []*networkingv1.NetworkPolicy{np("prod", "deny", sel(), tIn, nil, nil)},
			checks: []check{
				in("prod/web", prodClient, 8080, false), in("prod/db", external, 5432, false),
				out("prod/web", external, 443, true), in("dev/web", prodClient, 9090, true),
			},
			isolated: map[string][2]bool{"prod/web": {true, false}, "prod/pending": {true, false}, "dev/web": {false, false}},
		},
		{
			name:     "default deny egress",
			policies: []*networkingv1.NetworkPolicy{np("prod", "deny", sel(), tEg, nil, nil)},
			checks: []check{
				out("prod/web", prodDB, 5432, false), out("prod/web", external, 53, false),
				in("prod/web", devClient, 8080, true), out("dev/client", prodWeb, 8080, true),
			},
			isolated: map[string][2]bool{"prod/web": {false, true}, "dev/client": {false, false}},
		},
		{
			name: "allow from same namespace",
			policies: []*networkingv1.NetworkPolicy{np("prod", "same-ns", sel(), nil,
				ingRule(from(podPeer(sel())), nil), nil)},
			checks: []check{
				in("prod/web", prodClient, 8080, true), in("prod/web", prodDB, 1, true),
				in("prod/web", devClient, 8080, false), in("prod/web", monProm, 8080, false),
				in("prod/web", hostNet, 8080, false), in("prod/web", external, 8080, false),
			},
		},
		{
			name: "namespaceSelector by label",
			policies: []*networkingv1.NetworkPolicy{np("prod", "team-a", sel("app", "web"), nil,
				ingRule(from(nsPeer(sel("team", "a"))), nil), nil)},
			checks: []check{
				in("prod/web", monProm, 8080, true), in("prod/web", prodClient, 8080, true),
				in("prod/web", devClient, 8080, false), in("prod/db", devClient, 5432, true),
			},
		},
		{
			name: "namespaceSelector on implied metadata.name label",
			policies: []*networkingv1.NetworkPolicy{np("prod", "from-dev", sel("app", "web"), nil,
				ingRule(from(nsPeer(sel("kubernetes.io/metadata.name", "dev"))), nil), nil)},
			checks: []check{in("prod/web", devClient, 80, true), in("prod/web", devWeb, 80, true), in("prod/web", prodClient, 80, false)},
		},
		{
			name: "pod AND namespace selector in one peer",
			policies: []*networkingv1.NetworkPolicy{np("prod", "and", sel("app", "web"), nil,
				ingRule(from(bothPeer(sel("app", "client"), sel("team", "b"))), nil), nil)},
			checks: []check{
				in("prod/web", devClient, 80, true),   // client in team=b
				in("prod/web", prodClient, 80, false), // client, but team=a
				in("prod/web", devWeb, 80, false),     // team=b, but not client
				in("prod/web", monProm, 80, false),
			},
		},
		{
			name: "pod OR namespace selector as separate peers",
			policies: []*networkingv1.NetworkPolicy{np("prod", "or", sel("app", "web"), nil,
				ingRule(from(podPeer(sel("app", "client")), nsPeer(sel("team", "b"))), nil), nil)},
			checks: []check{
				in("prod/web", devClient, 80, true),  // team=b
				in("prod/web", prodClient, 80, true), // client in the policy namespace
				in("prod/web", devWeb, 80, true),     // team=b
				in("prod/web", monProm, 80, false),   // neither
			},
		},
		{
			name: "ipBlock with except",
			policies: []*networkingv1.NetworkPolicy{np("prod", "block", sel("app", "web"), tBoth,
				ingRule(from(blockPeer("10.0.0.0/16", "10.0.1.0/24")), nil),
				egRule(from(blockPeer("8.8.8.0/24")), nil))},
			checks: []check{
				in("prod/web", prodClient, 80, true), in("prod/web", monProm, 80, true),
				in("prod/web", devClient, 80, false), in("prod/web", external, 80, false),
				out("prod/web", external, 53, true), out("prod/web", prodDB, 5432, false),
			},
		},
		{
			name: "named port on target pod",
			policies: []*networkingv1.NetworkPolicy{np("prod", "http", sel(), nil,
				ingRule(nil, ports(port("", "http", 0))), nil)},
			checks: []check{
				in("prod/web", devClient, 8080, true), in("prod/web", devClient, 80, false),
				withProto(in("prod/web", devClient, 8080, false), corev1.ProtocolUDP),
				// db has no "http" port: rule gives nothing, db is isolated and denies all
				in("prod/db", devClient, 5432, false), in("prod/db", devClient, 8080, false),
			},
			isolated: map[string][2]bool{"prod/db": {true, false}},
		},
		{
			name: "named port protocol must match",
			policies: []*networkingv1.NetworkPolicy{np("prod", "dns", sel("app", "db"), nil,
				ingRule(nil, ports(port(corev1.ProtocolUDP, "dns", 0), port(corev1.ProtocolUDP, "pg", 0))), nil)},
			checks: []check{
				withProto(in("prod/db", prodClient, 53, true), corev1.ProtocolUDP),
				in("prod/db", prodClient, 53, false), in("prod/db", prodClient, 5432, false),
				withProto(in("prod/db", prodClient, 5432, false), corev1.ProtocolUDP),
			},
		},
		{
			name: "egress named port resolved per destination pod",
			policies: []*networkingv1.NetworkPolicy{np("prod", "to-web", sel("app", "client"), tEg, nil,
				egRule(from(bothPeer(sel("app", "web"), sel())), ports(port("", "http", 0), port(corev1.ProtocolUDP, 53, 0))))},
			checks: []check{
				out("prod/client", prodWeb, 8080, true), out("prod/client", prodWeb, 9090, false),
				out("prod/client", devWeb, 9090, true), out("prod/client", devWeb, 8080, false),
				out("prod/client", hostNet, 8080, false), out("prod/client", prodDB, 8080, false),
				withProto(out("prod/client", devWeb, 53, true), corev1.ProtocolUDP),
				withProto(out("prod/client", external, 53, false), corev1.ProtocolUDP),
			},
		},
		{
			name: "egress named port with ipBlock resolves against pods in the block",
			policies: []*networkingv1.NetworkPolicy{np("prod", "to-block", sel("app", "client"), tEg, nil,
				egRule(from(blockPeer("10.0.0.0/8", "10.0.0.0/24")), ports(port("", "http", 0))))},
			checks: []check{
				out("prod/client", devWeb, 9090, true), out("prod/client", prodWeb, 8080, false),
				out("prod/client", "10.9.9.9", 8080, false),
			},
		},
		{
			name: "endPort ranges and protocol-only ports",
			policies: []*networkingv1.NetworkPolicy{np("prod", "range", sel("app", "web"), nil,
				ingRule(nil, ports(port("", 8000, 8100), port(corev1.ProtocolUDP, nil, 0), port(corev1.ProtocolSCTP, 9000, 0))), nil)},
			checks: []check{
				in("prod/web", external, 8000, true), in("prod/web", external, 8080, true), in("prod/web", external, 8100, true),
				in("prod/web", external, 7999, false), in("prod/web", external, 8101, false),
				withProto(in("prod/web", external, 12345, true), corev1.ProtocolUDP),
				withProto(in("prod/web", external, 9000, true), corev1.ProtocolSCTP),
				withProto(in("prod/web", external, 9001, false), corev1.ProtocolSCTP),
				withProto(in("prod/web", external, 8080, false), corev1.ProtocolSCTP),
			},
		},
		{
			name: "policyTypes defaulting",
			policies: []*networkingv1.NetworkPolicy{
				// no types, egress rules -> Ingress+Egress
				np("prod", "a", sel("app", "web"), nil, nil, egRule(from(podPeer(sel("app", "db"))), nil)),
				// no types, no egress rules -> Ingress only
				np("prod", "b", sel("app", "db"), nil, nil, nil),
				// explicit Ingress: egress rules ignored
				np("prod", "c", sel("app", "client"), tIn, nil, egRule(from(podPeer(sel("app", "db"))), nil)),
			},
			checks: []check{
				out("prod/web", prodDB, 5432, true), out("prod/web", external, 443, false), in("prod/web", prodClient, 8080, false),
				in("prod/db", prodWeb, 5432, false), out("prod/db", external, 443, true),
				in("prod/client", prodWeb, 1, false), out("prod/client", external, 443, true),
			},
			isolated: map[string][2]bool{"prod/web": {true, true}, "prod/db": {true, false}, "prod/client": {true, false}},
		},
		{
			name: "hostNetwork pods are neither policed nor pod peers",
			policies: []*networkingv1.NetworkPolicy{np("prod", "web", sel("app", "web"), nil,
				ingRule(from(podPeer(sel("app", "web"))), nil), nil)},
			checks: []check{
				in("prod/web", hostNet, 80, false), in("prod/web", prodClient, 80, false),
			},
			isolated: map[string][2]bool{"prod/web": {true, false}, "prod/pending": {true, false}},
		},
		{
			name: "two policies union",
			policies: []*networkingv1.NetworkPolicy{
				np("prod", "z-clients", sel("app", "web"), nil, ingRule(from(podPeer(sel("app", "client"))), ports(port("", 8080, 0))), nil),
				np("prod", "a-monitoring", sel("app", "web"), nil, ingRule(from(nsPeer(sel("purpose", "monitoring"))), ports(port("", 9100, 0))), nil),
				np("dev", "other-ns", sel(), nil, nil, nil), // does not select prod pods
			},
			checks: []check{
				in("prod/web", prodClient, 8080, true), in("prod/web", prodClient, 9100, false),
				in("prod/web", monProm, 9100, true), in("prod/web", monProm, 8080, false),
				in("prod/web", devClient, 8080, false),
			},
		},
		{
			name: "empty rule allows everything",
			policies: []*networkingv1.NetworkPolicy{np("prod", "all", sel(), tBoth,
				[]networkingv1.NetworkPolicyIngressRule{{}}, []networkingv1.NetworkPolicyEgressRule{{}})},
			checks: []check{
				in("prod/web", external, 1, true), in("prod/web", hostNet, 65535, true), out("prod/web", external, 443, true),
			},
			isolated: map[string][2]bool{"prod/web": {true, true}},
		},
		{
			name: "selector peer matching nothing allows nothing",
			policies: []*networkingv1.NetworkPolicy{np("prod", "none", sel("app", "web"), nil,
				ingRule(from(podPeer(sel("app", "nope"))), nil), nil)},
			checks:   []check{in("prod/web", prodClient, 80, false), in("prod/web", external, 80, false)},
			isolated: map[string][2]bool{"prod/web": {true, false}},
		},
	}
	pods, nss := fixture()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Compute(tc.policies, pods, nss, "")
			if _, ok := got["prod/hostnet"]; ok {
				t.Errorf("hostNetwork pod must not be policed")
			}
			if len(got) != 7 {
				t.Errorf("got %d firewalls, want 7", len(got))
			}
			for _, fw := range got {
				for _, r := range slices.Concat(fw.Ingress, fw.Egress) {
					if len(r.Peers) == 0 {
						t.Errorf("rule with no peers: %+v", r)
					}
					for _, pe := range r.Peers {
						if slices.Contains(pe.PodIPs, netip.MustParseAddr(hostNet)) {
							t.Errorf("hostNetwork IP in peer %+v", pe)
						}
						if !slices.IsSortedFunc(pe.PodIPs, netip.Addr.Compare) {
							t.Errorf("unsorted PodIPs %v", pe.PodIPs)
						}
					}
				}
			}
			for pod, iso := range tc.isolated {
				fw := got[pod]
				if fw == nil {
					t.Fatalf("no firewall for %s", pod)
				}
				if fw.IngressIsolated != iso[0] || fw.EgressIsolated != iso[1] {
					t.Errorf("%s isolation = (in %v, eg %v), want (in %v, eg %v)", pod, fw.IngressIsolated, fw.EgressIsolated, iso[0], iso[1])
				}
			}
			for _, c := range tc.checks {
				fw := got[c.pod]
				if fw == nil {
					t.Fatalf("no firewall for %s", c.pod)
				}
				dir := "egress to"
				if c.ingress {
					dir = "ingress from"
				}
				if a := allowed(fw, c.ingress, c.peer, c.proto, c.port); a != c.want {
					t.Errorf("%s %s %s %s/%d: allowed=%v, want %v\nfirewall: %+v", c.pod, dir, c.peer, c.proto, c.port, a, c.want, fw)
				}
			}
		})
	}
}

func TestComputeStructure(t *testing.T) {
	pods, nss := fixture()
	pols := []*networkingv1.NetworkPolicy{
		np("prod", "b", sel("app", "web"), nil, ingRule(from(podPeer(sel("app", "client"))), ports(port("", "http", 0))), nil),
		np("prod", "a", sel("app", "web"), nil, ingRule(from(blockPeer("10.0.0.0/16", "10.0.3.0/24", "10.0.1.0/24")), nil), nil),
		np("prod", "c", sel("app", "client"), tEg, nil, egRule(from(nsPeer(sel())), ports(port("", "http", 0)))),
	}
	got := Compute(pols, pods, nss, "n1")
	if _, ok := got["dev/web"]; ok {
		t.Errorf("dev/web is on n2 and must not be computed for n1")
	}
	if len(got) != 6 {
		t.Errorf("got %d firewalls for n1, want 6", len(got))
	}
	want := &PodFirewall{
		IngressIsolated: true,
		Ingress: []Rule{
			{Policy: "prod/a", Peers: []Peer{{
				CIDR:     netip.MustParsePrefix("10.0.0.0/16"),
				Except:   []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("10.0.3.0/24")},
				Selector: "cidr(10.0.0.0/16 -10.0.1.0/24 -10.0.3.0/24)",
			}}},
			{Policy: "prod/b", Peers: []Peer{{PodIPs: []netip.Addr{netip.MustParseAddr(prodClient)}, Selector: "ns=prod/pod(app=client)"}},
				Ports: []PortRule{{Protocol: corev1.ProtocolTCP, Port: 8080, EndPort: 8080}}},
		},
	}
	if !reflect.DeepEqual(got["prod/web"], want) {
		t.Errorf("prod/web:\n got %+v\nwant %+v", got["prod/web"], want)
	}
	// Pending pod (no IP) is selected: the a rule applies, the named port resolves to nothing.
	if fw := got["prod/pending"]; !fw.IngressIsolated || len(fw.Ingress) != 1 || fw.Ingress[0].Policy != "prod/a" {
		t.Errorf("prod/pending: %+v", fw)
	}
	// Egress named port: all pods exposing "http" (computed cluster wide, not only on n1), one rule per port.
	wantEg := []Rule{
		{Policy: "prod/c", Peers: []Peer{{PodIPs: []netip.Addr{netip.MustParseAddr(prodWeb)}, Selector: "named(prod/c/egress0/TCP:8080)"}},
			Ports: []PortRule{{Protocol: corev1.ProtocolTCP, Port: 8080, EndPort: 8080}}},
		{Policy: "prod/c", Peers: []Peer{{PodIPs: []netip.Addr{netip.MustParseAddr(devWeb)}, Selector: "named(prod/c/egress0/TCP:9090)"}},
			Ports: []PortRule{{Protocol: corev1.ProtocolTCP, Port: 9090, EndPort: 9090}}},
	}
	if fw := got["prod/client"]; !fw.EgressIsolated || !reflect.DeepEqual(fw.Egress, wantEg) {
		t.Errorf("prod/client egress:\n got %+v\nwant %+v", fw.Egress, wantEg)
	}
}

func TestComputeDeterministic(t *testing.T) {
	pods, nss := fixture()
	pols := []*networkingv1.NetworkPolicy{
		np("prod", "x", sel(), nil, ingRule(from(nsPeer(sel())), ports(port("", "http", 0), port("", 80, 0))),
			egRule(from(podPeer(sel()), nsPeer(sel("team", "a"))), ports(port("", "http", 0), port("", "pg", 0)))),
		np("prod", "y", sel("app", "web"), nil, ingRule(from(podPeer(sel("app", "client"))), nil), nil),
		np("mon", "z", sel(), tBoth, nil, nil),
	}
	base := Compute(pols, pods, nss, "")
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20; i++ {
		p2, n2, pol2 := slices.Clone(pods), slices.Clone(nss), slices.Clone(pols)
		r.Shuffle(len(p2), func(i, j int) { p2[i], p2[j] = p2[j], p2[i] })
		r.Shuffle(len(n2), func(i, j int) { n2[i], n2[j] = n2[j], n2[i] })
		r.Shuffle(len(pol2), func(i, j int) { pol2[i], pol2[j] = pol2[j], pol2[i] })
		if got := Compute(pol2, p2, n2, ""); !reflect.DeepEqual(got, base) {
			t.Fatalf("non-deterministic result on shuffle %d", i)
		}
	}
}

// ---- benchmark ----

func benchInput() ([]*networkingv1.NetworkPolicy, []*Pod, []*Namespace) {
	const nNS, nPods, nPolicies, nApps = 50, 5000, 1000, 100
	var nss []*Namespace
	for i := range nNS {
		nss = append(nss, &Namespace{Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i%5)}})
	}
	var pods []*Pod
	for i := range nPods {
		pods = append(pods, &Pod{
			Namespace: fmt.Sprintf("ns%d", i%nNS), Name: fmt.Sprintf("pod%d", i),
			IP:       netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
			Labels:   map[string]string{"app": fmt.Sprintf("app%d", i%nApps), "tier": fmt.Sprintf("tier%d", i%3)},
			NodeName: fmt.Sprintf("node%d", i%50),
			Ports:    []NamedPort{{Name: "http", Port: uint16(8000 + i%10)}, {Name: "metrics", Port: 9100}},
		})
	}
	var pols []*networkingv1.NetworkPolicy
	for i := range nPolicies {
		ns := fmt.Sprintf("ns%d", i%nNS)
		pols = append(pols, np(ns, fmt.Sprintf("pol%d", i), sel("app", fmt.Sprintf("app%d", i%nApps)), nil,
			[]networkingv1.NetworkPolicyIngressRule{
				{From: from(podPeer(sel("app", fmt.Sprintf("app%d", (i+1)%nApps)))), Ports: ports(port("", "http", 0), port("", 443, 0))},
				{From: from(bothPeer(sel("tier", "tier1"), sel("team", fmt.Sprintf("t%d", i%5))), blockPeer("192.168.0.0/16", "192.168.1.0/24")),
					Ports: ports(port("", 8000, 8100))},
			},
			[]networkingv1.NetworkPolicyEgressRule{
				{To: from(bothPeer(sel("app", fmt.Sprintf("app%d", (i+2)%nApps)), sel())), Ports: ports(port("", "metrics", 0), port(corev1.ProtocolUDP, 53, 0))},
			}))
	}
	return pols, pods, nss
}

func BenchmarkCompute1000Policies5000Pods(b *testing.B) {
	pols, pods, nss := benchInput()
	b.ReportAllocs()
	for b.Loop() {
		Compute(pols, pods, nss, "")
	}
}

func BenchmarkCompute1000Policies5000PodsOneNode(b *testing.B) {
	pols, pods, nss := benchInput()
	b.ReportAllocs()
	for b.Loop() {
		Compute(pols, pods, nss, "node7")
	}
}

// TestComputeScale checks the benchmark's input computes to a firewall per pod (speed lives in the benchmark).
func TestComputeScale(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	pols, pods, nss := benchInput()
	got := Compute(pols, pods, nss, "")
	if len(got) != 5000 {
		t.Errorf("got %d firewalls", len(got))
	}
}
