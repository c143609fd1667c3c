// Package model is the cluster as Canopy's consumers see it, computed once and shared: a Service with its
// EndpointSlices becomes ServicePorts (the Kubernetes semantics of kube-proxy, as pure functions, and a change
// tracker that hands each consumer the Services that changed), and a Node becomes its address, pod CIDRs and
// the annotations Canopy reads. The service proxy and the VIP announcer read the same ServicePorts; BGP,
// routes, CNI setup and policy read the same Node helpers. No consumer imports another to reach a model.
package model

import (
	"net/netip"
	"time"
)

// Protocol of a service port.
type Protocol string

const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Endpoint is one backend of a service port.
type Endpoint struct {
	IP          netip.Addr
	Port        uint16
	NodeName    string
	Local       bool // on this node
	Ready       bool
	Serving     bool
	Terminating bool
}

// ServicePort is the desired proxy state of one port of one Service: everything a back end needs, nothing
// it must look up. Keys are "namespace/name:portname/protocol" (portname may be empty).
type ServicePort struct {
	Key       string
	Namespace string
	Name      string
	PortName  string
	Protocol  Protocol

	ClusterIPs      []netip.Addr // empty for headless (such ports are never built)
	Port            uint16       // the service port
	NodePort        uint16       // 0 = none
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr // status.loadBalancer.ingress[].ip

	ExternalPolicyLocal bool   // externalTrafficPolicy: Local
	InternalPolicyLocal bool   // internalTrafficPolicy: Local
	HealthCheckNodePort uint16 // for Local LoadBalancer services

	AffinityClientIP bool
	AffinityTimeout  time.Duration

	// Scheduler from the canopy.io/scheduler annotation (rr, wrr, lc, sh, mh; "random" on iptables); "" = default.
	Scheduler string

	// Endpoints for traffic to the ClusterIPs (internalTrafficPolicy applied) and for traffic from outside
	// (NodePort, ExternalIPs, LoadBalancer IPs; externalTrafficPolicy applied). Sorted by IP, port. Endpoints
	// with Ready=false and Terminating=true are draining: a back end keeps existing connections (IPVS weight 0)
	// but sends no new ones, unless no ready endpoint exists, when serving+terminating ones are used.
	ClusterEndpoints  []Endpoint
	ExternalEndpoints []Endpoint

	// IPv6 is the port's IPv6 side (Options.IPv6: a dual-stack or IPv6-only Service); nil when the Service has no
	// IPv6 cluster IP. The fields above are then IPv4 only (an IPv6-only Service has no ClusterIPs there), and
	// endpoints of a family serve that family's addresses only. See Family and ForFamily.
	IPv6 *Family
}

// Family is one IP family's addresses and endpoints of a ServicePort: cluster IPs from spec.clusterIPs,
// admitted ExternalIPs, load balancer ingress IPs, endpoints from that family's EndpointSlices.
type Family struct {
	ClusterIPs        []netip.Addr
	ExternalIPs       []netip.Addr
	LoadBalancerIPs   []netip.Addr
	ClusterEndpoints  []Endpoint
	ExternalEndpoints []Endpoint
}

// ForFamily returns the port as a single-family back end sees it: for IPv4 (v6 false) the port itself, for
// IPv6 a copy with the IPv6 side in the address and endpoint fields (and IPv6 nil); nil when the port has no
// cluster IP of that family (nothing to program).
func (sp *ServicePort) ForFamily(v6 bool) *ServicePort {
	if sp == nil {
		return nil
	}
	if !v6 {
		if len(sp.ClusterIPs) == 0 {
			return nil
		}
		return sp
	}
	f := sp.IPv6
	if f == nil || len(f.ClusterIPs) == 0 {
		return nil
	}
	c := *sp
	c.ClusterIPs, c.ExternalIPs, c.LoadBalancerIPs = f.ClusterIPs, f.ExternalIPs, f.LoadBalancerIPs
	c.ClusterEndpoints, c.ExternalEndpoints = f.ClusterEndpoints, f.ExternalEndpoints
	c.IPv6 = nil
	return &c
}

// TakesTraffic reports whether a local endpoint of a ClusterEndpoints or ExternalEndpoints list takes traffic on
// this node: ready, or serving while terminating (the lists hold those only when no endpoint is ready).
// Draining endpoints (terminating, not serving) do not.
func (e Endpoint) TakesTraffic() bool { return e.Ready || e.Serving }

// LocalEndpoints counts the endpoints on this node that take traffic among the port's ExternalEndpoints
// (external) or ClusterEndpoints: what a health check node port reports, and what decides whether a node with
// a Local traffic policy announces the Service.
// Both families count (the IPv6 side's endpoints too).
func (sp *ServicePort) LocalEndpoints(external bool) int {
	eps := sp.ClusterEndpoints
	if external {
		eps = sp.ExternalEndpoints
	}
	n := countLocal(eps)
	if f := sp.IPv6; f != nil {
		if external {
			n += countLocal(f.ExternalEndpoints)
		} else {
			n += countLocal(f.ClusterEndpoints)
		}
	}
	return n
}

func countLocal(eps []Endpoint) int {
	n := 0
	for i := range eps {
		if eps[i].Local && eps[i].TakesTraffic() {
			n++
		}
	}
	return n
}

// HasLocalEndpoint reports whether some port of a Service has a local endpoint that takes traffic.
func HasLocalEndpoint(ports []*ServicePort, external bool) bool {
	for _, p := range ports {
		if p != nil && p.LocalEndpoints(external) > 0 {
			return true
		}
	}
	return false
}
