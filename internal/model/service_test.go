package model

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ---- builders ----

const node = "n1" // opt.NodeName in the tests

type svcOpt func(*corev1.Service)

// svc builds a ClusterIP service ns/name with clusterIP 10.96.0.10 and the given ports ("name/PROTO/port" or
// "name/PROTO/port/nodePort"; name may be empty).
func svc(ns, name string, ports []string, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
		},
	}
	for _, p := range ports {
		f := strings.Split(p, "/")
		sp := corev1.ServicePort{Name: f[0], Protocol: corev1.Protocol(f[1]), Port: atoi32(f[2])}
		if len(f) > 3 {
			sp.NodePort = atoi32(f[3])
		}
		s.Spec.Ports = append(s.Spec.Ports, sp)
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func atoi32(s string) int32 {
	var n int32
	fmt.Sscan(s, &n)
	return n
}

func withType(t corev1.ServiceType) svcOpt { return func(s *corev1.Service) { s.Spec.Type = t } }
func withClusterIPs(ip string, ips ...string) svcOpt {
	return func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ip, ips }
}
func withExternalIPs(ips ...string) svcOpt {
	return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
}
func withETPLocal(s *corev1.Service) {
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
}
func withITPLocal(s *corev1.Service) {
	p := corev1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &p
}
func withHCNodePort(p int32) svcOpt {
	return func(s *corev1.Service) { s.Spec.HealthCheckNodePort = p }
}
func withIngress(ing ...corev1.LoadBalancerIngress) svcOpt {
	return func(s *corev1.Service) { s.Status.LoadBalancer.Ingress = ing }
}
func withAnnotation(k, v string) svcOpt {
	return func(s *corev1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[k] = v
	}
}
func withAffinity(timeout *int32, cfg bool) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if cfg {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: timeout}}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// eport is an EndpointSlice port; name "-" = nil name, proto "" = nil protocol.
func eport(name, proto string, port int32) discoveryv1.EndpointPort {
	p := discoveryv1.EndpointPort{Port: &port}
	if name != "-" {
		p.Name = ptr(name)
	}
	if proto != "" {
		p.Protocol = ptr(corev1.Protocol(proto))
	}
	return p
}

// ep is an endpoint on node (empty = no nodeName) with conditions: R/r ready true/false, S/s serving,
// T/t terminating; a condition not mentioned is nil.
func ep(ip, nodeName, conds string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}}
	if nodeName != "" {
		e.NodeName = ptr(nodeName)
	}
	for _, c := range conds {
		switch c {
		case 'R', 'r':
			e.Conditions.Ready = ptr(c == 'R')
		case 'S', 's':
			e.Conditions.Serving = ptr(c == 'S')
		case 'T', 't':
			e.Conditions.Terminating = ptr(c == 'T')
		}
	}
	return e
}

// slice is an IPv4 EndpointSlice of service ns/name.
func slice(ns, svcName, sliceName string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: sliceName, Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func ports(p ...discoveryv1.EndpointPort) []discoveryv1.EndpointPort { return p }

// epStrings renders endpoints as "ip:port node LRST" with '-' for a false flag.
func epStrings(eps []Endpoint) []string {
	if eps == nil {
		return nil
	}
	out := make([]string, len(eps))
	for i, e := range eps {
		f := []byte("LRST")
		for j, b := range []bool{e.Local, e.Ready, e.Serving, e.Terminating} {
			if !b {
				f[j] = '-'
			}
		}
		out[i] = fmt.Sprintf("%s:%d %s %s", e.IP, e.Port, e.NodeName, f)
	}
	return out
}

func addrs(s ...string) []netip.Addr {
	if len(s) == 0 {
		return nil
	}
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

var ipvs = Options{NodeName: node, Schedulers: []string{"rr", "wrr", "lc", "sh", "mh"}}

// ---- service-level fields ----

// TestBuildServicePortsFields checks every field but the endpoints.
func TestBuildServicePortsFields(t *testing.T) {
	base := func(portName string, proto Protocol, port uint16) ServicePort {
		return ServicePort{Key: ServicePortKey("ns", "s", portName, proto), Namespace: "ns", Name: "s",
			PortName: portName, Protocol: proto, Port: port, ClusterIPs: addrs("10.96.0.10")}
	}
	mod := func(sp ServicePort, f func(*ServicePort)) ServicePort { f(&sp); return sp }
	three := int32(3)
	tests := []struct {
		name string
		svc  *corev1.Service
		opt  Options
		want []ServicePort
	}{
		{
			name: "ports in spec order, protocols, empty protocol defaults to TCP",
			svc:  svc("ns", "s", []string{"dns/UDP/53", "dns-tcp/TCP/53", "sctp/SCTP/9", "web//80"}),
			want: []ServicePort{base("dns", UDP, 53), base("dns-tcp", TCP, 53), base("sctp", SCTP, 9), base("web", TCP, 80)},
		},
		{
			name: "unnamed single port",
			svc:  svc("ns", "s", []string{"/TCP/80"}),
			want: []ServicePort{base("", TCP, 80)},
		},
		{
			name: "clusterIP used when clusterIPs is empty",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withClusterIPs("10.96.1.1")),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.ClusterIPs = addrs("10.96.1.1") })},
		},
		{
			name: "dual stack: IPv6 cluster IP skipped, either order",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withClusterIPs("fd00::10", "fd00::10", "10.96.0.7")),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.ClusterIPs = addrs("10.96.0.7") })},
		},
		{
			name: "IPv6-only service gives no ports",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withClusterIPs("fd00::10", "fd00::10")),
		},
		{
			name: "headless gives no ports",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withClusterIPs("None", "None")),
		},
		{
			name: "headless via clusterIP only",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withClusterIPs("None")),
		},
		{
			name: "ExternalName gives no ports",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withType(corev1.ServiceTypeExternalName), withClusterIPs("")),
		},
		{
			name: "ExternalName gives no ports even with a stray cluster IP",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withType(corev1.ServiceTypeExternalName)),
		},
		{
			name: "no ports",
			svc:  svc("ns", "s", nil),
		},
		{
			name: "NodePort service: node port; ETP Local on NodePort has no health check port",
			svc:  svc("ns", "s", []string{"a/TCP/80/30080"}, withType(corev1.ServiceTypeNodePort), withETPLocal, withHCNodePort(31000)),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.NodePort = 30080; sp.ExternalPolicyLocal = true })},
		},
		{
			name: "ClusterIP service: a stray node port is ignored; ETP Local without external IPs is not Local",
			svc:  svc("ns", "s", []string{"a/TCP/80/30080"}, withETPLocal),
			want: []ServicePort{base("a", TCP, 80)},
		},
		{
			name: "ClusterIP service with external IPs: IPv4 in order, deduplicated, IPv6 skipped; ETP Local applies",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withExternalIPs("192.0.2.2", "2001:db8::1", "192.0.2.1", "192.0.2.2"), withETPLocal),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) {
				sp.ExternalIPs = addrs("192.0.2.2", "192.0.2.1")
				sp.ExternalPolicyLocal = true
			})},
		},
		{
			name: "LoadBalancer: ingress IPs (IPv4, VIP mode, with IP), health check node port with ETP Local",
			svc: svc("ns", "s", []string{"a/TCP/80/30080", "b/UDP/81/30081"}, withType(corev1.ServiceTypeLoadBalancer), withETPLocal, withHCNodePort(31000),
				withIngress(
					corev1.LoadBalancerIngress{IP: "198.51.100.1"},
					corev1.LoadBalancerIngress{Hostname: "lb.example.com"},
					corev1.LoadBalancerIngress{IP: "198.51.100.2", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
					corev1.LoadBalancerIngress{IP: "198.51.100.3", IPMode: ptr(corev1.LoadBalancerIPModeVIP)},
					corev1.LoadBalancerIngress{IP: "2001:db8::5"},
				)),
			want: []ServicePort{
				mod(base("a", TCP, 80), func(sp *ServicePort) {
					sp.NodePort, sp.LoadBalancerIPs, sp.ExternalPolicyLocal, sp.HealthCheckNodePort = 30080, addrs("198.51.100.1", "198.51.100.3"), true, 31000
				}),
				mod(base("b", UDP, 81), func(sp *ServicePort) {
					sp.NodePort, sp.LoadBalancerIPs, sp.ExternalPolicyLocal, sp.HealthCheckNodePort = 30081, addrs("198.51.100.1", "198.51.100.3"), true, 31000
				}),
			},
		},
		{
			name: "LoadBalancer with ETP Cluster: no health check node port",
			svc:  svc("ns", "s", []string{"a/TCP/80/30080"}, withType(corev1.ServiceTypeLoadBalancer), withHCNodePort(31000), withIngress(corev1.LoadBalancerIngress{IP: "198.51.100.1"})),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.NodePort, sp.LoadBalancerIPs = 30080, addrs("198.51.100.1") })},
		},
		{
			name: "ingress IPs only for type LoadBalancer",
			svc:  svc("ns", "s", []string{"a/TCP/80/30080"}, withType(corev1.ServiceTypeNodePort), withIngress(corev1.LoadBalancerIngress{IP: "198.51.100.1"})),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.NodePort = 30080 })},
		},
		{
			name: "ITP Local",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withITPLocal),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.InternalPolicyLocal = true })},
		},
		{
			name: "affinity ClientIP without config: default timeout",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withAffinity(nil, false)),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.AffinityClientIP, sp.AffinityTimeout = true, 10800*time.Second })},
		},
		{
			name: "affinity ClientIP with nil timeout: default timeout",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withAffinity(nil, true)),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.AffinityClientIP, sp.AffinityTimeout = true, 3*time.Hour })},
		},
		{
			name: "affinity ClientIP with timeout",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withAffinity(&three, true)),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.AffinityClientIP, sp.AffinityTimeout = true, 3*time.Second })},
		},
		{
			name: "scheduler annotation, supported",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withAnnotation(SchedulerAnnotation, "mh")),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.Scheduler = "mh" })},
		},
		{
			name: "scheduler annotation, iptables",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withAnnotation(SchedulerAnnotation, "random")),
			opt:  Options{NodeName: node, Schedulers: []string{"random"}},
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) { sp.Scheduler = "random" })},
		},
		{
			name: "scheduler annotation, unknown: default",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withAnnotation(SchedulerAnnotation, "random")),
			want: []ServicePort{base("a", TCP, 80)},
		},
		{
			name: "legacy leading-zero IPv4 addresses read as decimal",
			svc:  svc("ns", "s", []string{"a/TCP/80"}, withClusterIPs("010.096.000.010", "010.096.000.010"), withExternalIPs("192.000.002.001")),
			want: []ServicePort{mod(base("a", TCP, 80), func(sp *ServicePort) {
				sp.ClusterIPs, sp.ExternalIPs = addrs("10.96.0.10"), addrs("192.0.2.1")
			})},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt := tc.opt
			if opt.NodeName == "" {
				opt = ipvs
			}
			got, _ := BuildServicePorts(tc.svc, nil, opt)
			var gotV []ServicePort
			for _, sp := range got {
				if sp.ClusterEndpoints != nil || sp.ExternalEndpoints != nil {
					t.Errorf("%s: endpoints without slices: %v %v", sp.Key, sp.ClusterEndpoints, sp.ExternalEndpoints)
				}
				gotV = append(gotV, *sp)
			}
			if !reflect.DeepEqual(gotV, tc.want) {
				t.Errorf("got\n%+v\nwant\n%+v", gotV, tc.want)
			}
		})
	}
}

// ---- endpoints ----

func TestBuildServicePortsEndpoints(t *testing.T) {
	web := ports(eport("web", "TCP", 8080))
	type want struct{ cluster, external []string } // per port, in spec order
	tests := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		opt    *Options
		want   []want
	}{
		{
			name: "no slices: no endpoints",
			svc:  svc("ns", "s", []string{"web/TCP/80"}),
			want: []want{{}},
		},
		{
			name: "sorted by IP then port, numerically",
			svc:  svc("ns", "s", []string{"web/TCP/80"}),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.10", "n2", "R"), ep("10.0.0.9", "n1", "R"), ep("10.0.0.100", "", "")),
				slice("ns", "s", "b", ports(eport("web", "TCP", 80)), ep("10.0.0.10", "n2", "R")),
			},
			want: []want{{cluster: []string{
				"10.0.0.9:8080 n1 LRS-", "10.0.0.10:80 n2 -RS-", "10.0.0.10:8080 n2 -RS-", "10.0.0.100:8080  -RS-",
			}}},
		},
		{
			name: "matching by name and protocol; nil name = \"\"; nil protocol = TCP",
			svc:  svc("ns", "s", []string{"dns/UDP/53", "dns/TCP/53", "/TCP/80"}),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "udp", ports(eport("dns", "UDP", 5353)), ep("10.0.0.1", "n2", "R")),
				slice("ns", "s", "tcp", ports(eport("dns", "", 5354)), ep("10.0.0.2", "n2", "R")),
				slice("ns", "s", "sctp", ports(eport("dns", "SCTP", 5355)), ep("10.0.0.3", "n2", "R")),
				slice("ns", "s", "unnamed", ports(eport("-", "TCP", 8080)), ep("10.0.0.4", "n2", "R")),
				slice("ns", "s", "other", ports(eport("metrics", "TCP", 9090)), ep("10.0.0.5", "n2", "R")),
				slice("ns", "s", "bothdns", ports(eport("dns", "TCP", 6000), eport("dns", "UDP", 6001)), ep("10.0.0.6", "n2", "R")),
				slice("ns", "s", "badproto", ports(eport("dns", "ICMP", 7)), ep("10.0.0.7", "n2", "R")),
			},
			want: []want{
				{cluster: []string{"10.0.0.1:5353 n2 -RS-", "10.0.0.6:6001 n2 -RS-"}},
				{cluster: []string{"10.0.0.2:5354 n2 -RS-", "10.0.0.6:6000 n2 -RS-"}},
				{cluster: []string{"10.0.0.4:8080 n2 -RS-"}},
			},
		},
		{
			name: "slice port without a port number, or an unparsable address, is skipped",
			svc:  svc("ns", "s", []string{"web/TCP/80"}),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", []discoveryv1.EndpointPort{{Name: ptr("web")}}, ep("10.0.0.1", "n2", "R")),
				slice("ns", "s", "b", ports(eport("web", "TCP", 0)), ep("10.0.0.2", "n2", "R")),
				slice("ns", "s", "c", web, ep("10.0.0.256", "n2", "R"), ep("bogus", "n2", "R"), ep("10.0.0.3", "n2", "R"),
					discoveryv1.Endpoint{NodeName: ptr("n2")}),
			},
			want: []want{{cluster: []string{"10.0.0.3:8080 n2 -RS-"}}},
		},
		{
			name: "only IPv4 slices of this service",
			svc:  svc("ns", "s", []string{"web/TCP/80"}),
			slices: []*discoveryv1.EndpointSlice{
				func() *discoveryv1.EndpointSlice {
					s := slice("ns", "s", "v6", web, ep("fd00::1", "n2", "R"))
					s.AddressType = discoveryv1.AddressTypeIPv6
					return s
				}(),
				func() *discoveryv1.EndpointSlice {
					s := slice("ns", "s", "fqdn", web, ep("example.com", "n2", "R"))
					s.AddressType = discoveryv1.AddressTypeFQDN
					return s
				}(),
				slice("ns", "s", "v4-with-v6", web, ep("fd00::2", "n2", "R"), ep("10.0.0.1", "n2", "R")),
				slice("other", "s", "wrong-ns", web, ep("10.0.0.2", "n2", "R")),
				slice("ns", "t", "wrong-svc", web, ep("10.0.0.3", "n2", "R")),
				nil,
			},
			want: []want{{cluster: []string{"10.0.0.1:8080 n2 -RS-"}}},
		},
		{
			name: "duplicates across slices appear once; the ready copy wins whatever the order",
			svc:  svc("ns", "s", []string{"web/TCP/80"}),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "n2", "rsT"), ep("10.0.0.2", "n2", "R")),
				slice("ns", "s", "b", web, ep("10.0.0.1", "n2", "RSt"), ep("10.0.0.2", "n2", "R")),
			},
			want: []want{{cluster: []string{"10.0.0.1:8080 n2 -RS-", "10.0.0.2:8080 n2 -RS-"}}},
		},
		{
			name: "conditions: nil ready/serving = true, nil terminating = false; not ready, not terminating dropped; terminating kept as draining",
			svc:  svc("ns", "s", []string{"web/TCP/80"}),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web,
					ep("10.0.0.1", "n2", ""),    // all nil: ready
					ep("10.0.0.2", "n2", "Rst"), // explicit ready
					ep("10.0.0.3", "n2", "rs"),  // not ready, not terminating: out
					ep("10.0.0.4", "n2", "rS"),  // serving but not ready, not terminating: out
					ep("10.0.0.5", "n2", "rST"), // serving terminating: draining
					ep("10.0.0.6", "n2", "rsT"), // not serving terminating: draining
					ep("10.0.0.7", "n2", "r T"), // serving nil = true: draining
					ep("10.0.0.8", "n2", "RST"), // ready and terminating (publishNotReadyAddresses): ready
				),
			},
			want: []want{{cluster: []string{
				"10.0.0.1:8080 n2 -RS-", "10.0.0.2:8080 n2 -R--", "10.0.0.5:8080 n2 --ST", "10.0.0.6:8080 n2 ---T",
				"10.0.0.7:8080 n2 --ST", "10.0.0.8:8080 n2 -RST",
			}}},
		},
		{
			name: "no ready endpoint: the serving terminating ones",
			svc:  svc("ns", "s", []string{"web/TCP/80"}),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "n2", "rST"), ep("10.0.0.2", "n2", "rsT"), ep("10.0.0.3", "n2", "rSt"), ep("10.0.0.4", "n1", "rT")),
			},
			want: []want{{cluster: []string{"10.0.0.1:8080 n2 --ST", "10.0.0.4:8080 n1 L-ST"}}},
		},
		{
			name: "no ready and no serving terminating endpoint: none",
			svc:  svc("ns", "s", []string{"web/TCP/80"}),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "n2", "rsT"), ep("10.0.0.2", "n2", "rS"), ep("10.0.0.3", "n1", "r")),
			},
			want: []want{{}},
		},
		{
			name: "ITP Local: ClusterEndpoints only local ones, ExternalEndpoints all",
			svc:  svc("ns", "s", []string{"web/TCP/80"}, withITPLocal),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "n1", "R"), ep("10.0.0.2", "n2", "R"), ep("10.0.0.3", "n1", "rST"), ep("10.0.0.4", "", "R")),
			},
			want: []want{{
				cluster:  []string{"10.0.0.1:8080 n1 LRS-", "10.0.0.3:8080 n1 L-ST"},
				external: []string{"10.0.0.1:8080 n1 LRS-", "10.0.0.2:8080 n2 -RS-", "10.0.0.3:8080 n1 L-ST", "10.0.0.4:8080  -RS-"},
			}},
		},
		{
			name: "ITP Local without local endpoints: none (reject), though remote ones are ready",
			svc:  svc("ns", "s", []string{"web/TCP/80"}, withITPLocal),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.2", "n2", "R"), ep("10.0.0.3", "n3", "R")),
			},
			want: []want{{external: []string{"10.0.0.2:8080 n2 -RS-", "10.0.0.3:8080 n3 -RS-"}}},
		},
		{
			name: "ETP Local on NodePort: ExternalEndpoints only local ones, ClusterEndpoints all",
			svc:  svc("ns", "s", []string{"web/TCP/80/30080"}, withType(corev1.ServiceTypeNodePort), withETPLocal),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "n1", "R"), ep("10.0.0.2", "n2", "R")),
			},
			want: []want{{
				cluster:  []string{"10.0.0.1:8080 n1 LRS-", "10.0.0.2:8080 n2 -RS-"},
				external: []string{"10.0.0.1:8080 n1 LRS-"},
			}},
		},
		{
			name: "ETP Local: readiness is judged among local endpoints (local serving terminating ones, though remote ones are ready)",
			svc:  svc("ns", "s", []string{"web/TCP/80/30080"}, withType(corev1.ServiceTypeLoadBalancer), withETPLocal),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "n1", "rST"), ep("10.0.0.2", "n2", "R"), ep("10.0.0.3", "n1", "rsT"), ep("10.0.0.4", "n2", "rST")),
			},
			want: []want{{
				cluster:  []string{"10.0.0.1:8080 n1 L-ST", "10.0.0.2:8080 n2 -RS-", "10.0.0.3:8080 n1 L--T", "10.0.0.4:8080 n2 --ST"},
				external: []string{"10.0.0.1:8080 n1 L-ST"},
			}},
		},
		{
			name: "ETP Local without local endpoints: none",
			svc:  svc("ns", "s", []string{"web/TCP/80/30080"}, withType(corev1.ServiceTypeLoadBalancer), withETPLocal),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.2", "n2", "R")),
			},
			want: []want{{cluster: []string{"10.0.0.2:8080 n2 -RS-"}}},
		},
		{
			name: "ETP Local on a plain ClusterIP service is ignored",
			svc:  svc("ns", "s", []string{"web/TCP/80"}, withETPLocal),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "n1", "R"), ep("10.0.0.2", "n2", "R")),
			},
			want: []want{{
				cluster:  []string{"10.0.0.1:8080 n1 LRS-", "10.0.0.2:8080 n2 -RS-"},
				external: []string{"10.0.0.1:8080 n1 LRS-", "10.0.0.2:8080 n2 -RS-"},
			}},
		},
		{
			name: "ITP and ETP Local",
			svc:  svc("ns", "s", []string{"web/TCP/80/30080"}, withType(corev1.ServiceTypeNodePort), withETPLocal, withITPLocal),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "n1", "R"), ep("10.0.0.2", "n2", "R")),
			},
			want: []want{{cluster: []string{"10.0.0.1:8080 n1 LRS-"}, external: []string{"10.0.0.1:8080 n1 LRS-"}}},
		},
		{
			name: "no node name: nothing is local",
			svc:  svc("ns", "s", []string{"web/TCP/80"}, withITPLocal),
			opt:  &Options{},
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", web, ep("10.0.0.1", "", "R")),
			},
			want: []want{{external: []string{"10.0.0.1:8080  -RS-"}}},
		},
		{
			name: "two ports, a slice per port",
			svc:  svc("ns", "s", []string{"http/TCP/80", "https/TCP/443"}),
			slices: []*discoveryv1.EndpointSlice{
				slice("ns", "s", "a", ports(eport("http", "TCP", 8080), eport("https", "TCP", 8443)), ep("10.0.0.1", "n1", "R")),
				slice("ns", "s", "b", ports(eport("https", "TCP", 9443)), ep("10.0.0.2", "n2", "R")),
			},
			want: []want{
				{cluster: []string{"10.0.0.1:8080 n1 LRS-"}},
				{cluster: []string{"10.0.0.1:8443 n1 LRS-", "10.0.0.2:9443 n2 -RS-"}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt := ipvs
			if tc.opt != nil {
				opt = *tc.opt
			}
			got, warns := BuildServicePorts(tc.svc, tc.slices, opt)
			if len(warns) != 0 {
				t.Errorf("warnings: %q", warns)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d ports, want %d", len(got), len(tc.want))
			}
			for i, w := range tc.want {
				if w.external == nil && w.cluster != nil && !got[i].InternalPolicyLocal && !got[i].ExternalPolicyLocal {
					w.external = w.cluster // same policy: same endpoints
				}
				if c := epStrings(got[i].ClusterEndpoints); !reflect.DeepEqual(c, w.cluster) {
					t.Errorf("%s ClusterEndpoints:\n got %q\nwant %q", got[i].Key, c, w.cluster)
				}
				if e := epStrings(got[i].ExternalEndpoints); !reflect.DeepEqual(e, w.external) {
					t.Errorf("%s ExternalEndpoints:\n got %q\nwant %q", got[i].Key, e, w.external)
				}
			}
			// The output does not depend on the order of the slices or of their endpoints.
			rng := rand.New(rand.NewPCG(1, 2))
			for range 5 {
				sh := shuffled(rng, tc.slices)
				again, _ := BuildServicePorts(tc.svc, sh, opt)
				if !reflect.DeepEqual(again, got) {
					t.Fatalf("shuffled slices give another result")
				}
			}
		})
	}
}

// shuffled copies slices in a random order, each with its endpoints in a random order.
func shuffled(rng *rand.Rand, in []*discoveryv1.EndpointSlice) []*discoveryv1.EndpointSlice {
	out := make([]*discoveryv1.EndpointSlice, len(in))
	for i, s := range in {
		if s != nil {
			s = s.DeepCopy()
			rng.Shuffle(len(s.Endpoints), func(a, b int) { s.Endpoints[a], s.Endpoints[b] = s.Endpoints[b], s.Endpoints[a] })
		}
		out[i] = s
	}
	rng.Shuffle(len(out), func(a, b int) { out[a], out[b] = out[b], out[a] })
	return out
}

// ---- warnings ----

func TestBuildServicePortsWarnings(t *testing.T) {
	tests := []struct {
		name  string
		svc   *corev1.Service
		opt   Options
		want  []string
		ports int
	}{
		{
			name:  "unknown scheduler",
			svc:   svc("ns", "s", []string{"a/TCP/80"}, withAnnotation(SchedulerAnnotation, "foo")),
			opt:   ipvs,
			want:  []string{`service ns/s: canopy.io/scheduler "foo" is not one of rr, wrr, lc, sh, mh (using the default)`},
			ports: 1,
		},
		{
			name:  "scheduler of the other back end",
			svc:   svc("ns", "s", []string{"a/TCP/80"}, withAnnotation(SchedulerAnnotation, "rr")),
			opt:   Options{NodeName: node, Schedulers: []string{"random"}},
			want:  []string{`service ns/s: canopy.io/scheduler "rr" is not one of random (using the default)`},
			ports: 1,
		},
		{
			name:  "back end without schedulers",
			svc:   svc("ns", "s", []string{"a/TCP/80"}, withAnnotation(SchedulerAnnotation, "rr")),
			opt:   Options{NodeName: node},
			want:  []string{`service ns/s: canopy.io/scheduler "rr" is not supported: the back end has no schedulers (using the default)`},
			ports: 1,
		},
		{
			name:  "empty scheduler is the default",
			svc:   svc("ns", "s", []string{"a/TCP/80"}, withAnnotation(SchedulerAnnotation, "")),
			opt:   ipvs,
			ports: 1,
		},
		{
			name: "bad external IP, bad ingress IP, unknown scheduler: the rest is built",
			svc: svc("ns", "s", []string{"a/TCP/80/30080"}, withType(corev1.ServiceTypeLoadBalancer),
				withAnnotation(SchedulerAnnotation, "foo"),
				withExternalIPs("192.0.2.1", "192.0.2.300", "", "2001:db8::1"),
				withIngress(corev1.LoadBalancerIngress{IP: "lb"}, corev1.LoadBalancerIngress{IP: "198.51.100.1"})),
			opt: ipvs,
			want: []string{
				`service ns/s: spec.externalIPs[1] "192.0.2.300" is not an IP address (ignored)`,
				`service ns/s: spec.externalIPs[2] "" is not an IP address (ignored)`,
				`service ns/s: status.loadBalancer.ingress[0].ip "lb" is not an IP address (ignored)`,
				`service ns/s: canopy.io/scheduler "foo" is not one of rr, wrr, lc, sh, mh (using the default)`,
			},
			ports: 1,
		},
		{
			name:  "bad ingress IP of a non-LoadBalancer service is not looked at",
			svc:   svc("ns", "s", []string{"a/TCP/80"}, withIngress(corev1.LoadBalancerIngress{IP: "lb"})),
			opt:   ipvs,
			ports: 1,
		},
		{
			name:  "unknown protocol: that port is skipped",
			svc:   svc("ns", "s", []string{"a/ICMP/80", "b/TCP/81"}),
			opt:   ipvs,
			want:  []string{`service ns/s: spec.ports[0] ("a") protocol "ICMP" is not TCP, UDP or SCTP (port ignored)`},
			ports: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, warns := BuildServicePorts(tc.svc, nil, tc.opt)
			if !reflect.DeepEqual(warns, tc.want) {
				t.Errorf("warnings:\n got %q\nwant %q", warns, tc.want)
			}
			if len(got) != tc.ports {
				t.Fatalf("got %d ports, want %d", len(got), tc.ports)
			}
			if got[0].Scheduler != "" && tc.svc.Annotations[SchedulerAnnotation] == "foo" {
				t.Errorf("scheduler %q, want the default", got[0].Scheduler)
			}
		})
	}
	// The built parts of the mixed case.
	s := svc("ns", "s", []string{"a/TCP/80/30080"}, withType(corev1.ServiceTypeLoadBalancer),
		withExternalIPs("192.0.2.1", "192.0.2.300"), withIngress(corev1.LoadBalancerIngress{IP: "lb"}, corev1.LoadBalancerIngress{IP: "198.51.100.1"}))
	got, _ := BuildServicePorts(s, nil, ipvs)
	if !reflect.DeepEqual(got[0].ExternalIPs, addrs("192.0.2.1")) || !reflect.DeepEqual(got[0].LoadBalancerIPs, addrs("198.51.100.1")) || got[0].NodePort != 30080 {
		t.Errorf("got %+v", got[0])
	}
}

// ---- helpers and invariants ----

func TestServicePortKey(t *testing.T) {
	for _, tc := range []struct {
		ns, name, port string
		proto          Protocol
		want           string
	}{
		{"default", "kubernetes", "https", TCP, "default/kubernetes:https/TCP"},
		{"kube-system", "kube-dns", "dns", UDP, "kube-system/kube-dns:dns/UDP"},
		{"ns", "s", "", SCTP, "ns/s:/SCTP"},
	} {
		if got := ServicePortKey(tc.ns, tc.name, tc.port, tc.proto); got != tc.want {
			t.Errorf("ServicePortKey(%q, %q, %q, %q) = %q, want %q", tc.ns, tc.name, tc.port, tc.proto, got, tc.want)
		}
	}
	got, _ := BuildServicePorts(svc("kube-system", "kube-dns", []string{"dns/UDP/53", "dns-tcp/TCP/53"}), nil, ipvs)
	if got[0].Key != "kube-system/kube-dns:dns/UDP" || got[1].Key != "kube-system/kube-dns:dns-tcp/TCP" {
		t.Errorf("keys %q %q", got[0].Key, got[1].Key)
	}
}

func TestParseIP(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" = invalid
	}{
		{"10.0.0.1", "10.0.0.1"},
		{"010.000.000.001", "10.0.0.1"},
		{"192.168.001.010", "192.168.1.10"},
		{"::ffff:10.0.0.1", "10.0.0.1"},
		{"fd00::1", "fd00::1"},
		{"10.0.0.256", ""},
		{"10.0.0", ""},
		{"10.0.0.1.1", ""},
		{"10.0.0.0001", ""},
		{"10.0.0.-1", ""},
		{"10.0.0.+1", ""},
		{"10.0..1", ""},
		{"", ""},
		{"10.0.0.1/32", ""},
		{" 10.0.0.1", ""},
	} {
		ip, ok := parseIP(tc.in)
		got := ""
		if ok {
			got = ip.String()
		}
		if got != tc.want {
			t.Errorf("parseIP(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSplitDraining(t *testing.T) {
	r := Endpoint{IP: netip.MustParseAddr("10.0.0.1"), Port: 1, Ready: true, Serving: true}
	d := Endpoint{IP: netip.MustParseAddr("10.0.0.2"), Port: 1, Serving: true, Terminating: true}
	for _, tc := range []struct {
		name                 string
		in, active, draining []Endpoint
	}{
		{"none", nil, nil, nil},
		{"all ready", []Endpoint{r, r}, []Endpoint{r, r}, nil},
		{"ready and terminating", []Endpoint{r, d}, []Endpoint{r}, []Endpoint{d}},
		{"only serving terminating: all active", []Endpoint{d, d}, []Endpoint{d, d}, nil},
	} {
		a, dr := SplitDraining(tc.in)
		if !reflect.DeepEqual(a, tc.active) || !reflect.DeepEqual(dr, tc.draining) {
			t.Errorf("%s: got %v, %v", tc.name, a, dr)
		}
	}
	// On built output.
	s := svc("ns", "s", []string{"web/TCP/80"})
	got, _ := BuildServicePorts(s, []*discoveryv1.EndpointSlice{slice("ns", "s", "a", ports(eport("web", "TCP", 80)),
		ep("10.0.0.1", "n2", "R"), ep("10.0.0.2", "n2", "rST"), ep("10.0.0.3", "n2", "rsT"))}, ipvs)
	a, dr := SplitDraining(got[0].ClusterEndpoints)
	if fmt.Sprint(epStrings(a), epStrings(dr)) != "[10.0.0.1:80 n2 -RS-] [10.0.0.2:80 n2 --ST 10.0.0.3:80 n2 ---T]" {
		t.Errorf("got %q %q", epStrings(a), epStrings(dr))
	}
}

// TestBuildServicePortsDoesNotModifyInputs: the inputs are informer cache objects, shared and read-only.
func TestBuildServicePortsDoesNotModifyInputs(t *testing.T) {
	s := svc("ns", "s", []string{"web/TCP/80/30080", "dns/UDP/53/30053"}, withType(corev1.ServiceTypeLoadBalancer), withETPLocal, withHCNodePort(31000),
		withExternalIPs("192.0.2.2", "192.0.2.1"), withIngress(corev1.LoadBalancerIngress{IP: "198.51.100.1"}), withAnnotation(SchedulerAnnotation, "sh"))
	sl := []*discoveryv1.EndpointSlice{
		slice("ns", "s", "b", ports(eport("dns", "UDP", 53), eport("web", "TCP", 8080)), ep("10.0.0.9", "n1", "R"), ep("10.0.0.1", "n2", "rST")),
		slice("ns", "s", "a", ports(eport("web", "TCP", 8080)), ep("10.0.0.9", "n1", "R"), ep("10.0.0.5", "n2", "R")),
	}
	s0 := s.DeepCopy()
	sl0 := []*discoveryv1.EndpointSlice{sl[0].DeepCopy(), sl[1].DeepCopy()}
	got, _ := BuildServicePorts(s, sl, ipvs)
	if !reflect.DeepEqual(s, s0) || !reflect.DeepEqual(sl, sl0) {
		t.Error("inputs modified")
	}
	if len(got) != 2 || len(got[0].ClusterEndpoints) != 3 || len(got[0].ExternalEndpoints) != 1 || got[0].Scheduler != "sh" {
		t.Errorf("got %+v", got)
	}
}

// ---- scale ----

// bigService is a service with n endpoints in slices of 100 (the EndpointSlice controller's default), a
// few percent of them terminating and a few local.
func bigService(n int) (*corev1.Service, []*discoveryv1.EndpointSlice) {
	s := svc("ns", "big", []string{"web/TCP/80/30080"}, withType(corev1.ServiceTypeLoadBalancer), withETPLocal)
	var out []*discoveryv1.EndpointSlice
	for i := 0; i < n; i += 100 {
		sl := slice("ns", "big", fmt.Sprintf("big-%d", i/100), ports(eport("web", "TCP", 8080)))
		for j := i; j < i+100 && j < n; j++ {
			ip := fmt.Sprintf("10.%d.%d.%d", 1+j>>16, (j>>8)&255, j&255)
			conds := "RSt"
			if j%50 == 7 {
				conds = "rST"
			}
			sl.Endpoints = append(sl.Endpoints, ep(ip, fmt.Sprintf("n%d", j%100), conds))
		}
		out = append(out, sl)
	}
	return s, out
}

func TestBuild10kEndpoints(t *testing.T) {
	s, sl := bigService(10000)
	got, _ := BuildServicePorts(s, sl, ipvs)
	if n := len(got[0].ClusterEndpoints); n != 10000 {
		t.Errorf("ClusterEndpoints %d, want 10000", n)
	}
	if n := len(got[0].ExternalEndpoints); n != 100 { // n1, n101, ...
		t.Errorf("ExternalEndpoints %d, want 100", n)
	}
	for i := 1; i < len(got[0].ClusterEndpoints); i++ {
		if got[0].ClusterEndpoints[i-1].IP.Compare(got[0].ClusterEndpoints[i].IP) >= 0 {
			t.Fatalf("not sorted at %d", i)
		}
	}
}

func BenchmarkBuild10kEndpoints(b *testing.B) {
	s, sl := bigService(10000)
	b.ReportAllocs()
	for b.Loop() {
		BuildServicePorts(s, sl, ipvs)
	}
}
