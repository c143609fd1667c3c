package model

// The Kubernetes semantics of a Service and its EndpointSlices, as kube-proxy implements them
// (pkg/proxy: serviceport.go, endpointslicecache.go, topology.go), as pure functions: no I/O, no clock,
// inputs never modified, output a deterministic function of the inputs.

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// SchedulerAnnotation selects the back end's load-balancing scheduler for a Service.
const SchedulerAnnotation = "canopy.io/scheduler"

// DefaultAffinityTimeout is the ClientIP session affinity timeout when the Service sets none
// (corev1.DefaultClientIPServiceAffinitySeconds, 3 hours).
const DefaultAffinityTimeout = time.Duration(corev1.DefaultClientIPServiceAffinitySeconds) * time.Second

// Options are the node-level inputs of the semantics.
type Options struct {
	NodeName string
	// Schedulers the back end supports (e.g. {"rr","wrr","lc","sh","mh"} for IPVS, {"random"} for iptables).
	Schedulers []string
	// IPv6 builds the IPv6 side of Services too (ServicePort.IPv6: IPv6 cluster IPs, ExternalIPs, load
	// balancer IPs and the endpoints of IPv6 EndpointSlices), and the ports of IPv6-only Services. Off: IPv4
	// only, IPv6 ignored.
	IPv6 bool
}

// ServicePortKey is "namespace/name:portname/protocol".
func ServicePortKey(namespace, name, portName string, proto Protocol) string {
	return namespace + "/" + name + ":" + portName + "/" + string(proto)
}

// BuildServicePorts returns the desired state of every port of svc, given all EndpointSlices of svc
// (discovery/v1, label kubernetes.io/service-name). Headless (clusterIP None) and ExternalName services give
// none, and so does a service without an IPv4 ClusterIP unless opt.IPv6 is set (then a service needs a
// ClusterIP of either family). Slices of another namespace or service, FQDN slices, and IPv6 slices unless
// opt.IPv6, are ignored. With opt.IPv6 each port's IPv6 side (ServicePort.IPv6, nil without an IPv6 cluster
// IP) is built the same way from the IPv6 addresses and slices: endpoints of one family only ever serve that
// family's addresses.
//
// Problems the user must hear about (an unknown canopy.io/scheduler value, an unparsable IP in
// spec.externalIPs or status.loadBalancer.ingress, an unknown port protocol) are returned as warnings naming
// the service and the field; the rest of the service is still built (unknown scheduler → default "").
//
// Endpoint conditions follow the discovery/v1 API doc and kube-proxy: ready nil = true, serving nil = true,
// terminating nil = false. For each traffic class (ClusterEndpoints with internalTrafficPolicy applied,
// ExternalEndpoints with externalTrafficPolicy applied) the candidates are the endpoints in scope (all, or
// only those on opt.NodeName for policy Local), and:
//   - if any candidate is Ready: the Ready ones, plus every terminating not-ready one as draining
//     (Ready=false, Terminating=true): a back end gives it no new connections but lets existing ones finish
//     (IPVS: weight 0), see SplitDraining;
//   - else (upstream ProxyTerminatingEndpoints): the Serving && Terminating ones, all taking new connections;
//   - else nil: no endpoint; the back end rejects the traffic (upstream rejects, except that it drops
//     external traffic under externalTrafficPolicy Local when other nodes have endpoints, which a ServicePort
//     cannot tell yet).
//
// Endpoints are sorted by IP then port, each (IP, port) once. The returned values are read-only: the ports
// of one service share their ClusterIPs, ExternalIPs and LoadBalancerIPs, and when both policies select the
// same endpoints ClusterEndpoints and ExternalEndpoints share one backing array.
func BuildServicePorts(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, opt Options) (ports []*ServicePort, warnings []string) {
	sl := make([]*Slice, 0, len(endpointSlices))
	for _, s := range endpointSlices {
		if s != nil {
			sl = append(sl, NewSlice(s))
		}
	}
	return buildServicePorts(svc, sl, opt)
}

// buildServicePorts is BuildServicePorts from the model's own slices (what the tracker caches).
func buildServicePorts(svc *corev1.Service, endpointSlices []*Slice, opt Options) (ports []*ServicePort, warnings []string) {
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName || len(svc.Spec.Ports) == 0 {
		return nil, nil
	}
	ns, name := svc.Namespace, svc.Name
	warnf := func(format string, args ...any) {
		warnings = append(warnings, fmt.Sprintf("service %s/%s: ", ns, name)+fmt.Sprintf(format, args...))
	}

	clusterIPs := serviceClusterIPs(svc, false)
	var clusterIPs6 []netip.Addr
	if opt.IPv6 {
		clusterIPs6 = serviceClusterIPs(svc, true)
	}
	if len(clusterIPs) == 0 && len(clusterIPs6) == 0 {
		return nil, nil // headless, not yet allocated, or IPv6 only (without opt.IPv6)
	}

	var s ServicePort // the fields every port shares
	s.Namespace, s.Name = ns, name
	s.ClusterIPs = clusterIPs
	s.ExternalIPs = parseIPv4List(svc.Spec.ExternalIPs, func(i int, v string) {
		warnf("spec.externalIPs[%d] %q is not an IP address (ignored)", i, v)
	})
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		s.LoadBalancerIPs = loadBalancerIPs(svc, warnf, false)
	}
	var fam6 Family // the IPv6 side every port shares (addresses; endpoints are per port)
	if len(clusterIPs6) > 0 {
		fam6.ClusterIPs = clusterIPs6
		fam6.ExternalIPs = parseIPList(svc.Spec.ExternalIPs, true, nil)
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			fam6.LoadBalancerIPs = loadBalancerIPs(svc, func(string, ...any) {}, true)
		}
	}
	externallyAccessible := svc.Spec.Type == corev1.ServiceTypeLoadBalancer ||
		svc.Spec.Type == corev1.ServiceTypeNodePort ||
		(svc.Spec.Type == corev1.ServiceTypeClusterIP && len(svc.Spec.ExternalIPs) > 0)
	s.ExternalPolicyLocal = externallyAccessible && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	s.InternalPolicyLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer && s.ExternalPolicyLocal {
		s.HealthCheckNodePort = port16(svc.Spec.HealthCheckNodePort)
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.AffinityClientIP = true
		s.AffinityTimeout = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			s.AffinityTimeout = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	if v, ok := svc.Annotations[SchedulerAnnotation]; ok && v != "" {
		if slices.Contains(opt.Schedulers, v) {
			s.Scheduler = v
		} else if len(opt.Schedulers) == 0 {
			warnf("%s %q is not supported: the back end has no schedulers (using the default)", SchedulerAnnotation, v)
		} else {
			warnf("%s %q is not one of %s (using the default)", SchedulerAnnotation, v, strings.Join(opt.Schedulers, ", "))
		}
	}
	hasNodePort := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer

	parsed := parseSlices(svc, endpointSlices, opt.NodeName, false)
	var parsed6 []parsedSlice
	if len(clusterIPs6) > 0 {
		parsed6 = parseSlices(svc, endpointSlices, opt.NodeName, true)
	}
	ports = make([]*ServicePort, 0, len(svc.Spec.Ports))
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		proto, ok := protocol(p.Protocol)
		if !ok {
			warnf("spec.ports[%d] (%q) protocol %q is not TCP, UDP or SCTP (port ignored)", i, p.Name, p.Protocol)
			continue
		}
		sp := s // copy; the shared slices are read-only
		sp.Key = ServicePortKey(ns, name, p.Name, proto)
		sp.PortName = p.Name
		sp.Protocol = proto
		sp.Port = port16(p.Port)
		if hasNodePort {
			sp.NodePort = port16(p.NodePort)
		}
		if len(clusterIPs) > 0 {
			sp.ClusterEndpoints, sp.ExternalEndpoints = policyEndpoints(collectEndpoints(parsed, p.Name, proto), sp.InternalPolicyLocal, sp.ExternalPolicyLocal)
		}
		if len(clusterIPs6) > 0 {
			f := fam6
			f.ClusterEndpoints, f.ExternalEndpoints = policyEndpoints(collectEndpoints(parsed6, p.Name, proto), sp.InternalPolicyLocal, sp.ExternalPolicyLocal)
			sp.IPv6 = &f
		}
		ports = append(ports, &sp)
	}
	return ports, warnings
}

// policyEndpoints applies the internal and external traffic policies to all (sharing one result when they are
// the same policy).
func policyEndpoints(all []Endpoint, internalLocal, externalLocal bool) (cluster, external []Endpoint) {
	cluster = selectEndpoints(all, internalLocal)
	if externalLocal == internalLocal {
		return cluster, cluster
	}
	return cluster, selectEndpoints(all, externalLocal)
}

// SplitDraining splits a ClusterEndpoints or ExternalEndpoints list into the endpoints that take new
// connections and the draining ones (terminating: keep existing connections, IPVS weight 0). When no
// endpoint of the list is Ready, every endpoint of it (Serving and Terminating, see BuildServicePorts)
// takes new connections. The results alias eps when nothing is draining.
func SplitDraining(eps []Endpoint) (active, draining []Endpoint) {
	nready := 0
	for i := range eps {
		if eps[i].Ready {
			nready++
		}
	}
	if nready == 0 || nready == len(eps) {
		return eps, nil
	}
	active = make([]Endpoint, 0, nready)
	draining = make([]Endpoint, 0, len(eps)-nready)
	for _, e := range eps {
		if e.Ready {
			active = append(active, e)
		} else {
			draining = append(draining, e)
		}
	}
	return active, draining
}

// serviceClusterIPs returns the IPv4 (v6: IPv6) addresses of spec.clusterIPs (spec.clusterIP when that is
// empty); none for a headless service.
func serviceClusterIPs(svc *corev1.Service, v6 bool) []netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	if len(ips) == 0 || ips[0] == corev1.ClusterIPNone {
		return nil
	}
	return parseIPList(ips, v6, nil)
}

// parseIPv4List parses addresses, keeping the IPv4 ones in order, each once; bad is called for each
// unparsable one (IPv6 ones are skipped silently: IPv4 only for now).
func parseIPv4List(addrs []string, bad func(i int, v string)) []netip.Addr {
	return parseIPList(addrs, false, bad)
}

// parseIPList parses addresses, keeping those of one family (v6: IPv6, else IPv4) in order, each once; bad is
// called for each unparsable one.
func parseIPList(addrs []string, v6 bool, bad func(i int, v string)) []netip.Addr {
	var out []netip.Addr
	for i, a := range addrs {
		ip, ok := parseIP(a)
		if !ok {
			if bad != nil {
				bad(i, a)
			}
			continue
		}
		if ip.Is4() != v6 && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

// loadBalancerIPs returns the IPv4 (v6: IPv6) VIPs of status.loadBalancer.ingress: as upstream, ingress points with
// ipMode Proxy (the load balancer delivers to the node's or pod's IP, not to the VIP) and hostname-only ones
// are skipped.
func loadBalancerIPs(svc *corev1.Service, warnf func(string, ...any), v6 bool) []netip.Addr {
	var out []netip.Addr
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy) {
			continue
		}
		ip, ok := parseIP(ing.IP)
		if !ok {
			warnf("status.loadBalancer.ingress[%d].ip %q is not an IP address (ignored)", i, ing.IP)
			continue
		}
		if ip.Is4() != v6 && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

// parseIP parses an IP address as Kubernetes does (ParseIPSloppy): IPv4 octets with leading zeros, which
// older API servers accepted and stored, are read as decimal. An IPv4-mapped IPv6 address is IPv4.
func parseIP(s string) (netip.Addr, bool) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return ip.Unmap(), true
	}
	var b [4]byte
	rest := s
	for i := range 4 {
		var part string
		if i < 3 {
			var ok bool
			if part, rest, ok = strings.Cut(rest, "."); !ok {
				return netip.Addr{}, false
			}
		} else {
			part = rest
		}
		if len(part) == 0 || len(part) > 3 || strings.Trim(part, "0123456789") != "" {
			return netip.Addr{}, false
		}
		n, err := strconv.Atoi(part)
		if err != nil || n > 255 {
			return netip.Addr{}, false
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), true
}

func protocol(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case "", corev1.ProtocolTCP: // "" is the API default
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	case corev1.ProtocolSCTP:
		return SCTP, true
	}
	return "", false
}

// port16 returns p as a port number, 0 when out of range.
func port16(p int32) uint16 {
	if p <= 0 || p > 65535 {
		return 0
	}
	return uint16(p)
}

// parsedSlice is a Slice with its endpoints of one family, for all service ports.
type parsedSlice struct {
	ports []SlicePort
	eps   []parsedEndpoint
}

type parsedEndpoint struct {
	ip                          netip.Addr
	node                        string
	local                       bool
	ready, serving, terminating bool
}

// parseSlices keeps svc's IPv4 (v6: IPv6) slices and their endpoints; an endpoint whose first address (the
// API: addresses are fungible, consumers may use the first) is not an address of that family is skipped.
func parseSlices(svc *corev1.Service, in []*Slice, nodeName string, v6 bool) []parsedSlice {
	want := discoveryv1.AddressTypeIPv4
	if v6 {
		want = discoveryv1.AddressTypeIPv6
	}
	out := make([]parsedSlice, 0, len(in))
	for _, sl := range in {
		if sl == nil || sl.AddressType != want || sl.Namespace != svc.Namespace || sl.Service != svc.Name || len(sl.Ports) == 0 {
			continue
		}
		ps := parsedSlice{ports: sl.Ports, eps: make([]parsedEndpoint, 0, len(sl.Endpoints))}
		for _, e := range sl.Endpoints {
			if !e.IP.IsValid() || e.IP.Is4() == v6 {
				continue
			}
			ps.eps = append(ps.eps, parsedEndpoint{ip: e.IP, node: e.Node, local: nodeName != "" && e.Node == nodeName,
				ready: e.Ready, serving: e.Serving, terminating: e.Terminating})
		}
		if len(ps.eps) > 0 {
			out = append(out, ps)
		}
	}
	return out
}

// collectEndpoints returns the endpoints of the service port named portName, sorted by IP then port, each
// (IP, port) once. A slice port matches by name (nil = "") and protocol (nil = TCP, the API default); a
// slice port without a valid port number is skipped, as upstream. When the same IP and port appear more than
// once (an endpoint moving between slices), the best-conditioned copy wins (ready, serving, not terminating,
// local, then node name), so the result does not depend on the order of the slices.
func collectEndpoints(parsed []parsedSlice, portName string, proto Protocol) []Endpoint {
	n := 0
	match := make([]uint16, len(parsed)) // the matched slice port, 0 = none
	for i := range parsed {
		for _, p := range parsed[i].ports { // (only usable ones: NewSlice)
			if p.Name == portName && p.Protocol == proto {
				match[i] = p.Port
				n += len(parsed[i].eps)
				break
			}
		}
	}
	if n == 0 {
		return nil
	}
	all := make([]Endpoint, 0, n)
	for i := range parsed {
		if match[i] == 0 {
			continue
		}
		for _, pe := range parsed[i].eps {
			all = append(all, Endpoint{IP: pe.ip, Port: match[i], NodeName: pe.node, Local: pe.local,
				Ready: pe.ready, Serving: pe.serving, Terminating: pe.terminating})
		}
	}
	slices.SortFunc(all, func(a, b Endpoint) int {
		if c := a.IP.Compare(b.IP); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Port, b.Port); c != 0 {
			return c
		}
		return compareCondition(a, b)
	})
	all = slices.CompactFunc(all, func(a, b Endpoint) bool { return a.IP == b.IP && a.Port == b.Port })
	return slices.Clip(all)
}

// compareCondition orders a before b when a is the better copy of one endpoint.
func compareCondition(a, b Endpoint) int {
	bit := func(b bool, v int) int {
		if b {
			return v
		}
		return 0
	}
	rank := func(e Endpoint) int {
		return bit(e.Ready, 8) | bit(e.Serving, 4) | bit(!e.Terminating, 2) | bit(e.Local, 1)
	}
	if c := cmp.Compare(rank(b), rank(a)); c != 0 {
		return c
	}
	return cmp.Compare(a.NodeName, b.NodeName)
}

// selectEndpoints applies a traffic policy (localOnly for Local) and the readiness rules of
// BuildServicePorts to all. It returns all itself (clipped) when it keeps every endpoint.
func selectEndpoints(all []Endpoint, localOnly bool) []Endpoint {
	var ready, servingTerminating, keep int
	for i := range all {
		e := &all[i]
		if localOnly && !e.Local {
			continue
		}
		switch {
		case e.Ready:
			ready++
		case e.Serving && e.Terminating:
			servingTerminating++
		}
	}
	var want func(e *Endpoint) bool
	switch {
	case ready > 0:
		want = func(e *Endpoint) bool { return e.Ready || e.Terminating }
	case servingTerminating > 0:
		want = func(e *Endpoint) bool { return e.Serving && e.Terminating }
	default:
		return nil
	}
	for i := range all {
		if e := &all[i]; (!localOnly || e.Local) && want(e) {
			keep++
		}
	}
	if keep == len(all) {
		return all
	}
	out := make([]Endpoint, 0, keep)
	for i := range all {
		if e := &all[i]; (!localOnly || e.Local) && want(e) {
			out = append(out, *e)
		}
	}
	return out
}
