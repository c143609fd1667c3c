package services

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"canopy.io/canopy/internal/model"
)

// ---- builders ----

const nodeName = "node-a" // this node

var pfx = netip.MustParsePrefix

type svcOpt func(*corev1.Service)

// service builds shop/web: type ClusterIP, clusterIP 10.96.0.10, ports http TCP 80 and metrics TCP 9090.
func service(opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80},
				{Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9090},
			},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func named(ns, name string) svcOpt {
	return func(s *corev1.Service) { s.Namespace, s.Name = ns, name }
}
func withClusterIPs(ips ...string) svcOpt {
	return func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}
func withExternalIPs(ips ...string) svcOpt {
	return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
}

// loadBalancer makes the service type LoadBalancer (node ports 30080, 30090) with these ingress IPs.
func loadBalancer(ips ...string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		for i := range s.Spec.Ports {
			s.Spec.Ports[i].NodePort = 30080 + int32(i)*10
		}
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
		}
	}
}
func withIngress(ing ...corev1.LoadBalancerIngress) svcOpt {
	return func(s *corev1.Service) { s.Status.LoadBalancer.Ingress = ing }
}
func withType(t corev1.ServiceType) svcOpt { return func(s *corev1.Service) { s.Spec.Type = t } }
func etpLocal(s *corev1.Service) {
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
}
func itpLocal(s *corev1.Service) {
	p := corev1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &p
}
func annotate(k, v string) svcOpt {
	return func(s *corev1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[k] = v
	}
}

func ptr[T any](v T) *T { return &v }

// ep is an endpoint on node with conditions: R/r ready true/false, S/s serving, T/t terminating; a condition
// not mentioned is nil (ready and serving default to true, terminating to false).
func ep(ip, node, conds string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr(node)}
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

// epSlice is an EndpointSlice of shop/web for one port ("http" 8080 or "metrics" 9100).
func epSlice(port string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	num := map[string]int32{"http": 8080, "metrics": 9100}[port]
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "web-" + port, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr(port), Protocol: ptr(corev1.ProtocolTCP), Port: &num}},
		Endpoints:   eps,
	}
}

var (
	localReady    = epSlice("http", ep("10.244.1.5", nodeName, ""), ep("10.244.2.5", "node-b", ""))
	remoteOnly    = epSlice("http", ep("10.244.2.5", "node-b", ""), ep("10.244.3.5", "node-c", ""))
	localServTerm = epSlice("http", ep("10.244.1.5", nodeName, "rST"), ep("10.244.2.5", "node-b", "rsT"))
	// A local endpoint draining (terminating, no longer serving) while a remote one is ready: it is in
	// ClusterEndpoints (weight 0) but takes no new connections.
	localDraining = epSlice("http", ep("10.244.1.5", nodeName, "rsT"), ep("10.244.2.5", "node-b", ""))
	localNotReady = epSlice("http", ep("10.244.1.5", nodeName, "rs"), ep("10.244.2.5", "node-b", ""))

	// The IPv6 side: the same endpoints in IPv6 EndpointSlices.
	localReady6 = epSlice6("http", ep("fd00:10:244:1::5", nodeName, ""), ep("fd00:10:244:2::5", "node-b", ""))
	remoteOnly6 = epSlice6("http", ep("fd00:10:244:2::5", "node-b", ""), ep("fd00:10:244:3::5", "node-c", ""))
	localDrain6 = epSlice6("http", ep("fd00:10:244:1::5", nodeName, "rsT"), ep("fd00:10:244:2::5", "node-b", ""))
)

// epSlice6 is epSlice for IPv6 endpoints (its own name: a Service has a slice per family).
func epSlice6(port string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := epSlice(port, eps...)
	s.Name += "-v6"
	s.AddressType = discoveryv1.AddressTypeIPv6
	return s
}

// dual makes the Service dual-stack: cluster IPs 10.96.0.10 and fd00:96::10.
var dual = withClusterIPs("10.96.0.10", "fd00:96::10")

func defaultOptions() Options {
	return Options{
		AdvertiseExternalIP:     true,
		AdvertiseLoadBalancerIP: true,
		LoadBalancerIPRanges:    []netip.Prefix{pfx("198.51.100.0/24"), pfx("192.0.2.0/25"), pfx("2001:db8:100::/64")},
		ServiceCIDRs:            []netip.Prefix{pfx("10.96.0.0/16"), pfx("fd00:96::/108")},
		AllowedCommunities:      mustCommunities("64512:7,64512:100,no-export,large:64512:1:2,large:1:2:3"),
	}
}

func mustCommunities(s string) Communities {
	c, err := ParseCommunities(s)
	if err != nil {
		panic(err)
	}
	return c
}

// build runs the proxy semantics for this node (a dual-stack one: the model builds the IPv6 side), then Build.
func build(t testing.TB, svc *corev1.Service, slices []*discoveryv1.EndpointSlice, opt Options) ([]Advertisement, []string) {
	t.Helper()
	return buildWith(t, svc, slices, opt, true)
}

// buildWith is build; ipv6 false is a node whose proxy serves IPv4 only (the model builds no IPv6 side).
func buildWith(t testing.TB, svc *corev1.Service, slices []*discoveryv1.EndpointSlice, opt Options, ipv6 bool) ([]Advertisement, []string) {
	t.Helper()
	ports, pwarn := model.BuildServicePorts(svc, slices, model.Options{NodeName: nodeName, IPv6: ipv6})
	if len(pwarn) > 0 {
		t.Fatalf("proxy warnings: %q", pwarn)
	}
	return Build(svc, ports, opt)
}

// adString renders an advertisement as "prefix kind", plus " c=communities" and " p=prepend" when set, plus
// " s=services" when it is not exactly shop/web.
func adString(a Advertisement) string {
	s := a.Prefix.String() + " " + a.Kind
	if !a.Communities.IsZero() {
		s += " c=" + a.Communities.String()
	}
	if a.Prepend != 0 {
		s += fmt.Sprintf(" p=%d", a.Prepend)
	}
	if !slices.Equal(a.Services, []string{"shop/web"}) {
		s += " s=" + strings.Join(a.Services, ",")
	}
	return s
}

func adStrings(ads []Advertisement) []string {
	if ads == nil {
		return nil
	}
	out := make([]string, len(ads))
	for i, a := range ads {
		out[i] = adString(a)
	}
	return out
}

// ---- Build ----

func TestBuild(t *testing.T) {
	type tc struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		opt    func(*Options)
		want   []string
		warn   []string // each a substring of the warning at that index
		v4Only bool     // the node's proxy serves IPv4 only: the model builds no IPv6 side
	}
	clusterOn := func(o *Options) { o.AdvertiseClusterIP = true }
	aggregate := func(o *Options) { o.AdvertiseServiceCIDR = true }
	allOff := func(o *Options) {
		*o = Options{LoadBalancerIPRanges: o.LoadBalancerIPRanges}
	}
	lb := loadBalancer("198.51.100.7")
	cases := []tc{
		// ClusterIP
		{name: "cluster-ip off by default", svc: service(), slices: sl(localReady)},
		{name: "cluster-ip on", svc: service(), slices: sl(localReady), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "cluster-ip on, no endpoints at all (policy Cluster still announces)", svc: service(), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "cluster-ip dual-stack: a /32 and a /128", svc: service(dual), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip", "fd00:96::10/128 cluster-ip"}},
		{name: "cluster-ip dual-stack, IPv6 first in spec.clusterIPs", svc: service(withClusterIPs("fd00:96::10", "10.96.0.10")), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip", "fd00:96::10/128 cluster-ip"}},
		{name: "IPv6-only cluster IP: a /128", svc: service(withClusterIPs("fd00:96::10")), opt: clusterOn,
			want: []string{"fd00:96::10/128 cluster-ip"}},
		{name: "proxy serves IPv4 only: dual-stack cluster IP gives the /32 only", svc: service(dual), opt: clusterOn, v4Only: true,
			want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "proxy serves IPv4 only: IPv6-only cluster IP gives nothing", svc: service(withClusterIPs("fd00:96::10")), opt: clusterOn, v4Only: true},
		{name: "ITP Local, local ready endpoint", svc: service(itpLocal), slices: sl(localReady), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "ITP Local, only remote endpoints", svc: service(itpLocal), slices: sl(remoteOnly), opt: clusterOn},
		{name: "ITP Local, no endpoints", svc: service(itpLocal), opt: clusterOn},
		{name: "ITP Local, local serving+terminating only", svc: service(itpLocal), slices: sl(localServTerm), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "ITP Local, local draining only", svc: service(itpLocal), slices: sl(localDraining), opt: clusterOn},
		{name: "ITP Local, local not ready", svc: service(itpLocal), slices: sl(localNotReady), opt: clusterOn},
		{name: "ITP Local, local endpoint on the second port only", svc: service(itpLocal),
			slices: sl(epSlice("http", ep("10.244.2.5", "node-b", "")), epSlice("metrics", ep("10.244.1.9", nodeName, ""))),
			opt:    clusterOn, want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "ITP Local dual-stack, local IPv4 endpoint only: the /32 only", svc: service(dual, itpLocal), slices: sl(localReady, remoteOnly6), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "ITP Local dual-stack, local IPv6 endpoint only: the /128 only", svc: service(dual, itpLocal), slices: sl(remoteOnly, localReady6), opt: clusterOn,
			want: []string{"fd00:96::10/128 cluster-ip"}},
		{name: "ITP Local dual-stack, local endpoints of both families", svc: service(dual, itpLocal), slices: sl(localReady, localReady6), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip", "fd00:96::10/128 cluster-ip"}},
		{name: "ITP Local dual-stack, local IPv6 endpoint draining", svc: service(dual, itpLocal), slices: sl(remoteOnly, localDrain6), opt: clusterOn},
		{name: "ITP Local IPv6-only, local endpoint", svc: service(withClusterIPs("fd00:96::10"), itpLocal), slices: sl(localReady6), opt: clusterOn,
			want: []string{"fd00:96::10/128 cluster-ip"}},
		{name: "ITP Local does not gate external IPs", svc: service(itpLocal, withExternalIPs("203.0.113.9")), slices: sl(remoteOnly), opt: clusterOn,
			want: []string{"203.0.113.9/32 external-ip"}},

		// service CIDR aggregate
		{name: "aggregate replaces the /32", svc: service(), slices: sl(localReady), opt: func(o *Options) { o.AdvertiseClusterIP = true; o.AdvertiseServiceCIDR = true }},
		{name: "aggregate alone (cluster-ip flag off) replaces the /32", svc: service(), opt: aggregate},
		{name: "aggregate: ITP Local keeps the /32 from a node with a local endpoint", svc: service(itpLocal), slices: sl(localReady), opt: aggregate,
			want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "aggregate: ITP Local, no local endpoint", svc: service(itpLocal), slices: sl(remoteOnly), opt: aggregate},
		{name: "aggregate: cluster IP outside the service CIDRs is a /32", svc: service(withClusterIPs("10.97.0.10")), opt: aggregate,
			want: []string{"10.97.0.10/32 cluster-ip"}},
		{name: "aggregate dual-stack: both host routes replaced", svc: service(dual), opt: aggregate},
		{name: "aggregate, IPv4 service CIDR only: the IPv6 cluster IP stays a /128", svc: service(dual),
			opt:  func(o *Options) { o.AdvertiseServiceCIDR = true; o.ServiceCIDRs = []netip.Prefix{pfx("10.96.0.0/16")} },
			want: []string{"fd00:96::10/128 cluster-ip"}},
		{name: "aggregate: IPv6 cluster IP outside the IPv6 service CIDR is a /128", svc: service(withClusterIPs("10.96.0.10", "fd00:97::10")), opt: aggregate,
			want: []string{"fd00:97::10/128 cluster-ip"}},
		{name: "aggregate dual-stack: ITP Local keeps the host route of the family with a local endpoint", svc: service(dual, itpLocal),
			slices: sl(remoteOnly, localReady6), opt: aggregate, want: []string{"fd00:96::10/128 cluster-ip"}},
		{name: "aggregate: annotation without cluster-ip drops the ITP Local /32", svc: service(itpLocal, annotate(AnnotationAdvertise, "external-ip")),
			slices: sl(localReady), opt: aggregate},

		// ExternalIPs
		{name: "external IP inside the range", svc: service(withExternalIPs("203.0.113.9")),
			want: []string{"203.0.113.9/32 external-ip"}},
		{name: "external IP flag off: neither announced nor range-checked", svc: service(withExternalIPs("203.0.113.9", "192.0.2.200")),
			opt: func(o *Options) { o.AdvertiseExternalIP = false }},
		{name: "external IP, ETP Local, local endpoint", svc: service(etpLocal, withExternalIPs("203.0.113.9")), slices: sl(localReady),
			want: []string{"203.0.113.9/32 external-ip"}},
		{name: "external IP, ETP Local, no local endpoint", svc: service(etpLocal, withExternalIPs("203.0.113.9")), slices: sl(remoteOnly)},
		{name: "external IP, ETP Cluster, no endpoints", svc: service(withExternalIPs("203.0.113.9")),
			want: []string{"203.0.113.9/32 external-ip"}},
		{name: "external IP, ETP Local, local endpoint, ITP Local without: cluster IP withheld", svc: service(etpLocal, itpLocal, withExternalIPs("203.0.113.9")),
			slices: sl(epSlice("http", ep("10.244.1.5", nodeName, ""))), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip", "203.0.113.9/32 external-ip"}},

		{name: "IPv6 external IP", svc: service(dual, withExternalIPs("203.0.113.9", "2001:db8:5::9")),
			want: []string{"203.0.113.9/32 external-ip", "2001:db8:5::9/128 external-ip"}},
		{name: "IPv6 external IP of an IPv4-only Service: not served, not announced", svc: service(withExternalIPs("203.0.113.9", "2001:db8:5::9")),
			want: []string{"203.0.113.9/32 external-ip"}},
		{name: "IPv6 external IP, proxy serves IPv4 only", svc: service(dual, withExternalIPs("203.0.113.9", "2001:db8:5::9")), v4Only: true,
			want: []string{"203.0.113.9/32 external-ip"}},
		{name: "external IPs dual-stack, ETP Local, local IPv6 endpoint only: the /128 only", svc: service(dual, etpLocal, withExternalIPs("203.0.113.9", "2001:db8:5::9")),
			slices: sl(remoteOnly, localReady6), want: []string{"2001:db8:5::9/128 external-ip"}},
		{name: "external IPs dual-stack, ETP Local, local IPv4 endpoint only: the /32 only", svc: service(dual, etpLocal, withExternalIPs("203.0.113.9", "2001:db8:5::9")),
			slices: sl(localReady, remoteOnly6), want: []string{"203.0.113.9/32 external-ip"}},

		// LoadBalancer IPs
		{name: "LB IP inside the range", svc: service(lb), want: []string{"198.51.100.7/32 loadbalancer-ip"}},
		{name: "LB IP inside the second range", svc: service(loadBalancer("192.0.2.7")), want: []string{"192.0.2.7/32 loadbalancer-ip"}},
		{name: "LB IP outside the ranges", svc: service(loadBalancer("198.51.100.7", "192.0.2.200")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"},
			warn: []string{"service shop/web: load balancer IP 192.0.2.200 is outside --loadbalancer-ip-range (198.51.100.0/24, 192.0.2.0/25, 2001:db8:100::/64); not announced"}},
		{name: "LB IP with no range configured", svc: service(lb), opt: func(o *Options) { o.LoadBalancerIPRanges = nil },
			warn: []string{"load balancer IP 198.51.100.7 is outside --loadbalancer-ip-range (none set); not announced"}},
		{name: "LB ingress on a non-LoadBalancer service is ignored", svc: service(withIngress(corev1.LoadBalancerIngress{IP: "198.51.100.7"}))},
		{name: "LB ingress on a NodePort service is ignored", svc: service(lb, withType(corev1.ServiceTypeNodePort))},
		{name: "LB ingress with ipMode Proxy is ignored", svc: service(lb,
			withIngress(corev1.LoadBalancerIngress{IP: "198.51.100.7", IPMode: ptr(corev1.LoadBalancerIPModeProxy)}, corev1.LoadBalancerIngress{IP: "198.51.100.8"})),
			want: []string{"198.51.100.8/32 loadbalancer-ip"}},
		{name: "LB ingress hostname only", svc: service(lb, withIngress(corev1.LoadBalancerIngress{Hostname: "lb.example.com"}))},
		{name: "LB flag off", svc: service(lb), opt: func(o *Options) { o.AdvertiseLoadBalancerIP = false }},
		{name: "LB, ETP Local, local endpoint", svc: service(lb, etpLocal), slices: sl(localReady),
			want: []string{"198.51.100.7/32 loadbalancer-ip"}},
		{name: "LB, ETP Local, local endpoint on the second port only", svc: service(lb, etpLocal),
			slices: sl(epSlice("http", ep("10.244.2.5", "node-b", "")), epSlice("metrics", ep("10.244.1.9", nodeName, ""))),
			want:   []string{"198.51.100.7/32 loadbalancer-ip"}},
		{name: "LB, ETP Local, only remote endpoints", svc: service(lb, etpLocal), slices: sl(remoteOnly)},
		{name: "LB, ETP Local, local serving+terminating", svc: service(lb, etpLocal), slices: sl(localServTerm),
			want: []string{"198.51.100.7/32 loadbalancer-ip"}},
		{name: "LB, ETP Local, local draining", svc: service(lb, etpLocal), slices: sl(localDraining)},
		{name: "LB, ETP Local: cluster IP still announced (ITP Cluster)", svc: service(lb, etpLocal), slices: sl(remoteOnly), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "LB, ETP Cluster, no endpoints", svc: service(lb), want: []string{"198.51.100.7/32 loadbalancer-ip"}},
		{name: "everything", svc: service(loadBalancer("198.51.100.7", "198.51.100.8"), withExternalIPs("203.0.113.9", "203.0.113.1")), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip", "198.51.100.7/32 loadbalancer-ip", "198.51.100.8/32 loadbalancer-ip", "203.0.113.1/32 external-ip", "203.0.113.9/32 external-ip"}},
		{name: "LB dual-stack: both ingress IPs inside the ranges", svc: service(dual, loadBalancer("198.51.100.7", "2001:db8:100::7")),
			want: []string{"198.51.100.7/32 loadbalancer-ip", "2001:db8:100::7/128 loadbalancer-ip"}},
		{name: "LB IPv6-only", svc: service(withClusterIPs("fd00:96::10"), loadBalancer("2001:db8:100::7")),
			want: []string{"2001:db8:100::7/128 loadbalancer-ip"}},
		{name: "LB IPv6 ingress outside the ranges", svc: service(dual, loadBalancer("198.51.100.7", "2001:db8:200::7")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"},
			warn: []string{"load balancer IP 2001:db8:200::7 is outside --loadbalancer-ip-range (198.51.100.0/24, 192.0.2.0/25, 2001:db8:100::/64); not announced"}},
		{name: "LB dual-stack, ETP Local, local IPv6 endpoint only", svc: service(dual, etpLocal, loadBalancer("198.51.100.7", "2001:db8:100::7")),
			slices: sl(remoteOnly, localReady6), opt: clusterOn,
			want: []string{"10.96.0.10/32 cluster-ip", "2001:db8:100::7/128 loadbalancer-ip", "fd00:96::10/128 cluster-ip"}},
		{name: "one IP both external and LB: announced once", svc: service(loadBalancer("198.51.100.7"), withExternalIPs("198.51.100.7")),
			want: []string{"198.51.100.7/32 external-ip"}},

		// nothing to announce
		{name: "headless", svc: service(withClusterIPs("None"), withExternalIPs("203.0.113.9")), opt: clusterOn},
		{name: "ExternalName", svc: service(withType(corev1.ServiceTypeExternalName), withClusterIPs(""), withExternalIPs("203.0.113.9")), opt: clusterOn},
		{name: "no ports", svc: service(func(s *corev1.Service) { s.Spec.Ports = nil }, withExternalIPs("203.0.113.9")), opt: clusterOn},

		// canopy.io/advertise
		{name: "annotation none", svc: service(lb, withExternalIPs("203.0.113.9"), annotate(AnnotationAdvertise, "none")), opt: clusterOn},
		{name: "annotation none (case, spaces)", svc: service(lb, annotate(AnnotationAdvertise, " None ")), opt: clusterOn},
		{name: "annotation none skips the range checks", svc: service(loadBalancer("192.0.2.200"), annotate(AnnotationAdvertise, "none"))},
		{name: "annotation cannot opt in to cluster-ip when the flag is off", svc: service(lb, withExternalIPs("203.0.113.9"), annotate(AnnotationAdvertise, "cluster-ip")),
			warn: []string{`annotation canopy.io/advertise "cluster-ip" asks for kinds the operator does not announce`}},
		{name: "annotation opts in to cluster-ip when the flag allows it", svc: service(lb, withExternalIPs("203.0.113.9"), annotate(AnnotationAdvertise, "cluster-ip")),
			opt: clusterOn, want: []string{"10.96.0.10/32 cluster-ip"}},
		{name: "annotation subset", svc: service(lb, withExternalIPs("203.0.113.9"), annotate(AnnotationAdvertise, "loadbalancer-ip, Cluster-IP,")),
			opt: clusterOn, want: []string{"10.96.0.10/32 cluster-ip", "198.51.100.7/32 loadbalancer-ip"}},
		{name: "annotation never widens what the flags allow", svc: service(lb, withExternalIPs("203.0.113.9"), annotate(AnnotationAdvertise, "cluster-ip,external-ip,loadbalancer-ip")),
			opt:  allOff,
			warn: []string{`annotation canopy.io/advertise "cluster-ip,external-ip,loadbalancer-ip" asks for kinds the operator does not announce`}},
		{name: "annotation narrows to an allowed kind", svc: service(lb, withExternalIPs("203.0.113.9"), annotate(AnnotationAdvertise, "cluster-ip,loadbalancer-ip")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"},
			warn: []string{"asks for kinds the operator does not announce"}},
		{name: "annotation opt-in still follows ETP Local", svc: service(lb, etpLocal, annotate(AnnotationAdvertise, "loadbalancer-ip")),
			slices: sl(remoteOnly)},
		{name: "a service community not allowed", svc: service(lb, annotate(AnnotationCommunities, "64512:100,64999:1")),
			want: []string{"198.51.100.7/32 loadbalancer-ip c=64512:100"},
			warn: []string{"annotation canopy.io/communities: 64999:1 not in --service-communities-allowed; ignored"}},
		{name: "annotation with an unknown kind: flags apply", svc: service(lb, annotate(AnnotationAdvertise, "cluster-ip,node-ip")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"},
			warn: []string{`service shop/web: annotation canopy.io/advertise "cluster-ip,node-ip": unknown kind "node-ip"`}},
		{name: "annotation service-cidr is not a per-service kind", svc: service(lb, annotate(AnnotationAdvertise, "service-cidr")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"},
			warn: []string{`canopy.io/advertise "service-cidr": unknown kind "service-cidr"`}},
		{name: "annotation none combined with a kind", svc: service(lb, annotate(AnnotationAdvertise, "none,cluster-ip")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"},
			warn: []string{`canopy.io/advertise "none,cluster-ip": "none" cannot be combined`}},
		{name: "annotation of only commas", svc: service(lb, annotate(AnnotationAdvertise, ",")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"},
			warn: []string{`canopy.io/advertise ",": no kind listed`}},
		{name: "empty annotation: flags apply, no warning", svc: service(lb, annotate(AnnotationAdvertise, "")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"}},

		// communities and prepend
		{name: "dual-stack: communities and prepend on both families", svc: service(dual, loadBalancer("198.51.100.7", "2001:db8:100::7"),
			annotate(AnnotationCommunities, "64512:100"), annotate(AnnotationASPathPrepend, "2")),
			want: []string{"198.51.100.7/32 loadbalancer-ip c=64512:100 p=2", "2001:db8:100::7/128 loadbalancer-ip c=64512:100 p=2"}},
		{name: "dual-stack: annotation none withdraws both families", svc: service(dual, loadBalancer("198.51.100.7", "2001:db8:100::7"),
			annotate(AnnotationAdvertise, "none")), opt: clusterOn},
		{name: "node communities and prepend", svc: service(lb), opt: func(o *Options) {
			o.NodeCommunities = Communities{Standard: []uint32{64512<<16 | 7}}
			o.NodePrepend = 2
		}, want: []string{"198.51.100.7/32 loadbalancer-ip c=64512:7 p=2"}},
		{name: "service communities united with the node's, service prepend replaces the node's",
			svc: service(lb, annotate(AnnotationCommunities, "64512:100, no-export,large:64512:1:2,64512:7"), annotate(AnnotationASPathPrepend, "1")),
			opt: func(o *Options) {
				o.NodeCommunities = Communities{Standard: []uint32{64512<<16 | 7}}
				o.NodePrepend = 3
			}, want: []string{"198.51.100.7/32 loadbalancer-ip c=64512:7,64512:100,no-export,large:64512:1:2 p=1"}},
		{name: "service prepend 0 overrides the node's", svc: service(lb, annotate(AnnotationASPathPrepend, "0")),
			opt:  func(o *Options) { o.NodePrepend = 3 },
			want: []string{"198.51.100.7/32 loadbalancer-ip"}},
		{name: "empty service prepend: the node's", svc: service(lb, annotate(AnnotationASPathPrepend, " ")),
			opt:  func(o *Options) { o.NodePrepend = 3 },
			want: []string{"198.51.100.7/32 loadbalancer-ip p=3"}},
		{name: "bad service communities: ignored, node's kept, prepend still applied",
			svc:  service(lb, annotate(AnnotationCommunities, "64512:100,64512:99999"), annotate(AnnotationASPathPrepend, "4")),
			opt:  func(o *Options) { o.NodeCommunities = Communities{Standard: []uint32{CommunityNoExport}} },
			want: []string{"198.51.100.7/32 loadbalancer-ip c=no-export p=4"},
			warn: []string{`service shop/web: annotation canopy.io/communities "64512:100,64512:99999": community "64512:99999": 99999 is outside 0..65535; ignored`}},
		{name: "blackhole refused", svc: service(lb, annotate(AnnotationCommunities, "blackhole")),
			want: []string{"198.51.100.7/32 loadbalancer-ip"},
			warn: []string{`annotation canopy.io/communities "blackhole": community "blackhole": the BLACKHOLE community`}},
		{name: "bad service prepend: ignored, node's kept, communities still applied",
			svc:  service(lb, annotate(AnnotationCommunities, "64512:100"), annotate(AnnotationASPathPrepend, "11")),
			opt:  func(o *Options) { o.NodePrepend = 2 },
			want: []string{"198.51.100.7/32 loadbalancer-ip c=64512:100 p=2"},
			warn: []string{`service shop/web: annotation canopy.io/as-path-prepend "11": 11 is too many prepends (at most 10); ignored`}},
		{name: "bad annotations warn even when nothing is announced",
			svc:    service(lb, etpLocal, annotate(AnnotationAdvertise, "lb"), annotate(AnnotationCommunities, "x"), annotate(AnnotationASPathPrepend, "-1")),
			slices: sl(remoteOnly),
			warn:   []string{`canopy.io/advertise "lb"`, `canopy.io/communities "x": community "x"`, `canopy.io/as-path-prepend "-1": "-1" is not a whole number from 0 to 10`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opt := defaultOptions()
			if c.opt != nil {
				c.opt(&opt)
			}
			ads, warns := buildWith(t, c.svc, c.slices, opt, !c.v4Only)
			if got := adStrings(ads); !reflect.DeepEqual(got, c.want) {
				t.Errorf("advertisements:\n got %q\nwant %q", got, c.want)
			}
			if len(warns) != len(c.warn) {
				t.Fatalf("warnings: got %q, want %d like %q", warns, len(c.warn), c.warn)
			}
			for i := range warns {
				if !strings.Contains(warns[i], c.warn[i]) {
					t.Errorf("warning %d: got %q, want it to contain %q", i, warns[i], c.warn[i])
				}
			}
			for _, a := range ads {
				if !slices.Equal(a.Services, []string{"shop/web"}) || a.Prefix.Bits() != a.Prefix.Addr().BitLen() {
					t.Errorf("advertisement %+v: want a host route (/32, /128) for service shop/web", a)
				}
			}
		})
	}
}

func sl(s ...*discoveryv1.EndpointSlice) []*discoveryv1.EndpointSlice { return s }

func TestBuildEdgeInputs(t *testing.T) {
	if ads, w := Build(nil, nil, defaultOptions()); ads != nil || w != nil {
		t.Fatal(ads, w)
	}
	// nil ports in the list are skipped; the service-wide fields come from the first real one.
	svc := service(withExternalIPs("203.0.113.9"))
	ports, _ := model.BuildServicePorts(svc, nil, model.Options{NodeName: nodeName})
	ads, _ := Build(svc, append([]*model.ServicePort{nil}, ports...), defaultOptions())
	if got := adStrings(ads); !reflect.DeepEqual(got, []string{"203.0.113.9/32 external-ip"}) {
		t.Fatal(got)
	}
	if ads, w := Build(svc, []*model.ServicePort{nil}, defaultOptions()); ads != nil || w != nil {
		t.Fatal(ads, w)
	}
}

// Build does not modify its inputs and its results share no memory with them.
func TestBuildDoesNotAlias(t *testing.T) {
	opt := defaultOptions()
	opt.NodeCommunities = Communities{Standard: []uint32{3, 1, 2}} // unsorted on purpose
	svc := service(loadBalancer("198.51.100.7", "198.51.100.8"))
	ads, _ := build(t, svc, nil, opt)
	if len(ads) != 2 || !slices.Equal(ads[0].Communities.Standard, []uint32{1, 2, 3}) {
		t.Fatalf("%+v", ads)
	}
	if !slices.Equal(opt.NodeCommunities.Standard, []uint32{3, 1, 2}) {
		t.Fatalf("Build sorted the caller's node communities: %v", opt.NodeCommunities.Standard)
	}
	ads[0].Communities.Standard[0] = 99
	ads[0].Services[0] = "x/y"
	if ads[1].Communities.Standard[0] != 1 || ads[1].Services[0] != "shop/web" {
		t.Fatal("advertisements share memory")
	}
}

func TestServiceCIDRAdvertisements(t *testing.T) {
	opt := defaultOptions()
	if got := ServiceCIDRAdvertisements(opt); got != nil {
		t.Fatalf("without the flag: %+v", got)
	}
	opt.AdvertiseServiceCIDR = true
	opt.ServiceCIDRs = []netip.Prefix{pfx("10.98.0.0/16"), pfx("fd00:96::/108"), pfx("10.96.1.2/16"), pfx("10.96.0.0/16"), {}}
	opt.NodeCommunities = Communities{Standard: []uint32{CommunityNoExport}}
	opt.NodePrepend = 2
	got := ServiceCIDRAdvertisements(opt)
	want := []string{"10.96.0.0/16 service-cidr c=no-export p=2 s=", "10.98.0.0/16 service-cidr c=no-export p=2 s=",
		"fd00:96::/108 service-cidr c=no-export p=2 s="}
	if !reflect.DeepEqual(adStrings(got), want) {
		t.Fatalf("got %q\nwant %q", adStrings(got), want)
	}
	// Build with the aggregate announces no /32 for ordinary ClusterIPs; the caller adds these once.
	ads, _ := build(t, service(), nil, opt)
	if ads != nil {
		t.Fatalf("%+v", ads)
	}
}

// ---- Merge ----

func TestMergeSharedVIP(t *testing.T) {
	opt := defaultOptions()
	opt.AdvertiseClusterIP = true
	opt.NodeCommunities = Communities{Standard: []uint32{64512<<16 | 1}}
	opt.NodePrepend = 1
	// MetalLB-style IP sharing: two services, one LB IP, different ports.
	a := service(named("shop", "web"), loadBalancer("198.51.100.7"),
		annotate(AnnotationCommunities, "64512:100,large:1:2:3"), annotate(AnnotationASPathPrepend, "3"))
	b := service(named("blog", "api"), withClusterIPs("10.96.0.20"), loadBalancer("198.51.100.7"),
		annotate(AnnotationCommunities, "no-export,64512:100"))
	adsA, _ := build(t, a, nil, opt)
	adsB, _ := build(t, b, nil, opt)
	opt.AdvertiseServiceCIDR = true
	got := Merge([][]Advertisement{adsB, ServiceCIDRAdvertisements(opt), adsA})
	// The shared VIP gets only what both Services ask for (the node's community and 64512:100) and the smaller
	// prepend: neither Service's own attributes leak onto the other's traffic.
	want := []string{
		"10.96.0.0/16 service-cidr c=64512:1 p=1 s=",
		"10.96.0.10/32 cluster-ip c=64512:1,64512:100,large:1:2:3 p=3",
		"10.96.0.20/32 cluster-ip c=64512:1,64512:100,no-export p=1 s=blog/api",
		"198.51.100.7/32 loadbalancer-ip c=64512:1,64512:100 p=1 s=blog/api,shop/web",
		"fd00:96::/108 service-cidr c=64512:1 p=1 s=",
	}
	if !reflect.DeepEqual(adStrings(got), want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(adStrings(got), "\n"), strings.Join(want, "\n"))
	}
}

func TestMerge(t *testing.T) {
	ad := func(p, kind string, prepend uint8, std []uint32, svcs ...string) Advertisement {
		return Advertisement{Prefix: pfx(p), Kind: kind, Prepend: prepend, Communities: Communities{Standard: std}, Services: svcs}
	}
	in := [][]Advertisement{
		{ad("203.0.113.9/32", KindExternalIP, 0, []uint32{5}, "b/b"), ad("10.96.0.10/32", KindClusterIP, 0, nil, "b/b")},
		nil,
		{ad("203.0.113.9/32", KindLoadBalancerIP, 2, []uint32{5, 1}, "a/a"), {}}, // zero prefix: dropped
		{ad("203.0.113.9/32", KindClusterIP, 1, []uint32{5}, "c/c", "a/a")},
	}
	want := []string{
		"10.96.0.10/32 cluster-ip s=b/b",
		"203.0.113.9/32 cluster-ip c=0:5 s=a/a,b/b,c/c",
	}
	orig := fmt.Sprintf("%+v", in)
	got := Merge(in)
	if !reflect.DeepEqual(adStrings(got), want) {
		t.Fatalf("got %q\nwant %q", adStrings(got), want)
	}
	if fmt.Sprintf("%+v", in) != orig {
		t.Fatal("Merge modified its input")
	}
	got[1].Communities.Standard[0] = 42
	got[0].Services[0] = "x/x"
	if fmt.Sprintf("%+v", in) != orig {
		t.Fatal("Merge's result aliases its input")
	}
	if Merge(nil) != nil || Merge([][]Advertisement{{}, nil}) != nil {
		t.Fatal("empty input: want nil")
	}
}

// Merge's result does not depend on the order of its input.
func TestMergeOrderIndependent(t *testing.T) {
	per := manyServices(500)
	want := Merge(per)
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		shuffled := slices.Clone(per)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		for i := range shuffled {
			s := slices.Clone(shuffled[i])
			r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
			shuffled[i] = s
		}
		if got := Merge(shuffled); !reflect.DeepEqual(got, want) {
			t.Fatal("Merge depends on the input order")
		}
	}
	if !slices.IsSortedFunc(want, func(a, b Advertisement) int { return a.Prefix.Compare(b.Prefix) }) {
		t.Fatal("not sorted")
	}
}

func TestMergeTenThousand(t *testing.T) {
	got := Merge(manyServices(10000))
	// 10000 cluster IPs, 1000 shared LB IPs (10 services each), 10000 external IPs.
	if len(got) != 21000 {
		t.Fatalf("%d advertisements", len(got))
	}
	for _, a := range got {
		if a.Kind == KindLoadBalancerIP && len(a.Services) != 10 {
			t.Fatalf("%+v", a)
		}
	}
}

// manyServices builds n services through Build: each with its own cluster IP and external IP, and an LB IP
// shared by ten services, with communities and prepends varying.
func manyServices(n int) [][]Advertisement {
	opt := defaultOptions()
	opt.AdvertiseClusterIP = true
	opt.ServiceCIDRs = []netip.Prefix{pfx("10.96.0.0/12")}
	opt.NodeCommunities = Communities{Standard: []uint32{CommunityNoExport}}
	per := make([][]Advertisement, n)
	for i := range n {
		svc := service(named(fmt.Sprintf("ns%d", i%37), fmt.Sprintf("svc%d", i)),
			withClusterIPs(fmt.Sprintf("10.96.%d.%d", i/256, i%256)),
			withExternalIPs(fmt.Sprintf("100.64.%d.%d", i/256, i%256)),
			loadBalancer(fmt.Sprintf("198.51.100.%d", i/10%256)),
			annotate(AnnotationCommunities, fmt.Sprintf("64512:%d", i%7)),
			annotate(AnnotationASPathPrepend, fmt.Sprint(i%4)))
		if i/10 >= 256 {
			svc.Status.LoadBalancer.Ingress[0].IP = fmt.Sprintf("192.0.2.%d", i/10%128)
			if i/10 >= 384 {
				svc.Status.LoadBalancer.Ingress[0].IP = fmt.Sprintf("198.18.%d.%d", i/10/256, i/10%256)
			}
		}
		ports, _ := model.BuildServicePorts(svc, nil, model.Options{NodeName: nodeName})
		lbRanges := []netip.Prefix{pfx("198.51.100.0/24"), pfx("192.0.2.0/25"), pfx("198.18.0.0/15")}
		o := opt
		o.LoadBalancerIPRanges = lbRanges
		per[i], _ = Build(svc, ports, o)
	}
	return per
}

func BenchmarkMerge10k(b *testing.B) {
	per := manyServices(10000)
	b.ResetTimer()
	for b.Loop() {
		Merge(per)
	}
}

func BenchmarkBuild(b *testing.B) {
	svc := service(loadBalancer("198.51.100.7"), withExternalIPs("203.0.113.9"), etpLocal,
		annotate(AnnotationCommunities, "64512:100,no-export"), annotate(AnnotationASPathPrepend, "2"))
	ports, _ := model.BuildServicePorts(svc, sl(localReady), model.Options{NodeName: nodeName})
	opt := defaultOptions()
	opt.AdvertiseClusterIP = true
	for b.Loop() {
		Build(svc, ports, opt)
	}
}

// ---- parsing ----

func TestParseCommunities(t *testing.T) {
	good := []struct {
		in   string
		want Communities
	}{
		{"", Communities{}},
		{" , ", Communities{}},
		{"64512:100", Communities{Standard: []uint32{64512<<16 | 100}}},
		{"0:0,65535:65535", Communities{Standard: []uint32{0, 0xFFFFFFFF}}},
		{"4227858532", Communities{Standard: []uint32{64512<<16 | 100}}},
		{"no-export, NO-ADVERTISE,no-export-subconfed", Communities{Standard: []uint32{CommunityNoExport, CommunityNoAdvertise, CommunityNoExportSubconfed}}},
		{"64512:100,no-export,large:64512:1:2", Communities{Standard: []uint32{64512<<16 | 100, CommunityNoExport}, Large: [][3]uint32{{64512, 1, 2}}}},
		{"large:4294967295:0:4294967295, 64512:1:1, Large:1:2:3", Communities{Large: [][3]uint32{{1, 2, 3}, {64512, 1, 1}, {4294967295, 0, 4294967295}}}},
		{"64512:100,64512:100,4227858532,large:1:1:1,1:1:1", Communities{Standard: []uint32{64512<<16 | 100}, Large: [][3]uint32{{1, 1, 1}}}},
		{"65535:0", Communities{Standard: []uint32{0xFFFF0000}}}, // graceful shutdown is fine
	}
	for _, g := range good {
		got, err := ParseCommunities(g.in)
		if err != nil || !reflect.DeepEqual(got, g.want) {
			t.Errorf("ParseCommunities(%q) = %+v, %v; want %+v", g.in, got, err, g.want)
			continue
		}
		// String round-trips.
		if again, err := ParseCommunities(got.String()); err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("round trip of %q via %q: %+v, %v", g.in, got.String(), again, err)
		}
	}
	bad := map[string][]string{
		"64512:70000":           {`community "64512:70000": 70000 is outside 0..65535`},
		"70000:1":               {`community "70000:1": 70000 is outside 0..65535`},
		"64512:":                {`community "64512:": "" is not a number from 0 to 65535`},
		":":                     {`community ":"`},
		"-1:5":                  {`community "-1:5": "-1" is not a number`},
		"64512:+5":              {`community "64512:+5": "+5" is not a number`},
		"4294967296":            {`community "4294967296": 4294967296 is outside 0..4294967295`},
		"99999999999999999999":  {`community "99999999999999999999": 99999999999999999999 is outside 0..4294967295`},
		"no-expert":             {`community "no-expert": not AA:NN, a 32-bit number, large:A:B:C or one of no-export`},
		"1:2:3:4":               {`community "1:2:3:4": 4 colon-separated parts`},
		"large:1:2":             {`community "large:1:2": a large community has three parts`},
		"large:1:2:4294967296":  {`community "large:1:2:4294967296": 4294967296 is outside 0..4294967295`},
		"large:a:2:3":           {`community "large:a:2:3": "a" is not a number`},
		"blackhole":             {`community "blackhole": the BLACKHOLE community (RFC 7999) is refused`},
		"BlackHole":             {`community "BlackHole": the BLACKHOLE`},
		"65535:666":             {`community "65535:666": the BLACKHOLE`},
		"4294902426":            {`community "4294902426": the BLACKHOLE`},
		"64512:1,x,64512:2,1:y": {`community "x"`, `community "1:y": "y" is not a number`},
	}
	for in, wants := range bad {
		got, err := ParseCommunities(in)
		if err == nil || !got.IsZero() {
			t.Errorf("ParseCommunities(%q) = %+v, %v; want an error", in, got, err)
			continue
		}
		for _, w := range wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ParseCommunities(%q): error %q, want it to contain %q", in, err, w)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseCommunities(%q): multi-line error %q", in, err)
		}
	}
}

func TestUnion(t *testing.T) {
	a := Communities{Standard: []uint32{3, 1}, Large: [][3]uint32{{1, 2, 3}}}
	b := Communities{Standard: []uint32{2, 3}, Large: [][3]uint32{{1, 2, 3}, {0, 9, 9}}}
	got := Union(a, b)
	want := Communities{Standard: []uint32{1, 2, 3}, Large: [][3]uint32{{0, 9, 9}, {1, 2, 3}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%+v", got)
	}
	if !slices.Equal(a.Standard, []uint32{3, 1}) {
		t.Fatal("Union modified its input")
	}
	if z := Union(Communities{}, Communities{Standard: []uint32{}}); z.Standard != nil || z.Large != nil || !z.IsZero() {
		t.Fatalf("%+v", z)
	}
}

func TestParsePrepend(t *testing.T) {
	for in, want := range map[string]uint8{"": 0, " ": 0, "0": 0, "3": 3, " 10 ": 10, "007": 7} {
		if got, err := ParsePrepend(in); got != want || err != nil {
			t.Errorf("ParsePrepend(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"11":    "11 is too many prepends (at most 10)",
		"256":   "256 is too many prepends (at most 10)",
		"99999": "99999 is too many prepends",
		"-1":    `"-1" is not a whole number from 0 to 10`,
		"two":   `"two" is not a whole number from 0 to 10`,
		"1.5":   `"1.5" is not a whole number`,
		"+3":    `"+3" is not a whole number`,
	} {
		if _, err := ParsePrepend(in); err == nil || err.Error() != want && !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePrepend(%q): error %v, want %q", in, err, want)
		}
	}
}

// Build counts only local endpoints that take new connections, whatever produced the ports (with
// model.BuildServicePorts a Local policy never leaves a lone draining local endpoint, so hand-built ports).
func TestBuildDrainingLocalEndpointDoesNotCount(t *testing.T) {
	svc := service(loadBalancer("198.51.100.7"), etpLocal, itpLocal)
	opt := defaultOptions()
	opt.AdvertiseClusterIP = true
	for _, c := range []struct {
		e    model.Endpoint
		want []string
	}{
		{model.Endpoint{Local: true, Terminating: true}, nil},
		{model.Endpoint{Local: true, Ready: false, Serving: true, Terminating: true}, []string{"10.96.0.10/32 cluster-ip", "198.51.100.7/32 loadbalancer-ip"}},
		{model.Endpoint{Local: true, Ready: true, Serving: true}, []string{"10.96.0.10/32 cluster-ip", "198.51.100.7/32 loadbalancer-ip"}},
		{model.Endpoint{Local: false, Ready: true, Serving: true}, nil},
	} {
		c.e.IP, c.e.Port = netip.MustParseAddr("10.244.1.5"), 8080
		p := &model.ServicePort{
			Namespace: "shop", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			LoadBalancerIPs:     []netip.Addr{netip.MustParseAddr("198.51.100.7")},
			ExternalPolicyLocal: true, InternalPolicyLocal: true,
			ClusterEndpoints: []model.Endpoint{c.e}, ExternalEndpoints: []model.Endpoint{c.e},
		}
		ads, _ := Build(svc, []*model.ServicePort{p}, opt)
		if got := adStrings(ads); !reflect.DeepEqual(got, c.want) {
			t.Errorf("endpoint %+v: got %q, want %q", c.e, got, c.want)
		}
	}
}
