// Package proxy is Canopy's service proxy (kube-proxy's job): Services and EndpointSlices become a desired
// state per service port (pure functions, semantics.go), which a Backend (IPVS, or iptables where the kernel
// lacks IPVS) programs incrementally: an event changes only the service ports it touches.
package proxy

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
}

// Backend programs service ports into the kernel.
type Backend interface {
	// Sync makes the kernel match desired for the keys in changed only (a key absent from desired is
	// deleted). A full resync passes every key it has and every key it applied.
	Sync(desired map[string]*ServicePort, changed []string) error
	// Name says which back end this is ("ipvs", "iptables").
	Name() string
}
