// Package services decides which Service VIPs this node announces over BGP, and with which attributes: host
// routes (/32 for IPv4, /128 for IPv6) for ClusterIPs, ExternalIPs and LoadBalancer ingress IPs (or the service
// CIDR aggregates instead of the ClusterIPs), opted in or out per Service by annotation, following the Services'
// traffic policies, with BGP communities and AS-path prepending from the Node's and the Service's annotations.
//
// Everything here is a pure function of its inputs: no I/O, no clock, inputs never modified, output sorted and
// deterministic. Both families, as the service proxy: each family's VIPs follow the rules on their own, with that
// family's endpoints (the proxy sends a family's VIP traffic to that family's endpoints only), so an IPv6 VIP of
// an externalTrafficPolicy Local Service is announced only from a node with a local IPv6 endpoint. A Service
// has an IPv6 side only when the Service model builds one (model.Options.IPv6: the proxy serves IPv6).
package services

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"canopy.io/canopy/internal/model"
)

// Annotations on a Service (and, for communities and prepend, on the Node).
const (
	// AnnotationAdvertise selects which VIPs of a Service are announced, overriding the node's flags for that
	// Service: a comma-separated subset of cluster-ip, external-ip, loadbalancer-ip, or "none".
	AnnotationAdvertise = "canopy.io/advertise"
	// AnnotationCommunities lists BGP communities for the VIPs (see ParseCommunities). On the Node they apply to
	// every VIP the node announces; on a Service they are added to the Node's for that Service's VIPs.
	AnnotationCommunities = "canopy.io/communities"
	// AnnotationASPathPrepend is how many extra times (0..10) to prepend our AS number to the VIPs' AS path.
	// A Service's value replaces the Node's for that Service's VIPs.
	AnnotationASPathPrepend = "canopy.io/as-path-prepend"
)

// Advertisement kinds.
const (
	KindClusterIP      = "cluster-ip"
	KindExternalIP     = "external-ip"
	KindLoadBalancerIP = "loadbalancer-ip"
	KindServiceCIDR    = "service-cidr"
)

// kindRank orders kinds for Merge: when services announce one prefix as different kinds, the lowest rank names it.
var kindRank = map[string]int{KindClusterIP: 1, KindExternalIP: 2, KindLoadBalancerIP: 3, KindServiceCIDR: 4}

// compareKinds orders the known kinds by rank, then any others by name.
func compareKinds(a, b string) int {
	ra, rb := kindRank[a], kindRank[b]
	if ra == 0 {
		ra = len(kindRank) + 1
	}
	if rb == 0 {
		rb = len(kindRank) + 1
	}
	if ra != rb {
		return cmp.Compare(ra, rb)
	}
	return strings.Compare(a, b)
}

// Options are the node-level inputs: flags and the Node's annotations.
type Options struct {
	// Which VIP kinds are announced for a Service without a canopy.io/advertise annotation
	// (flag defaults: false, true, true).
	AdvertiseClusterIP, AdvertiseExternalIP, AdvertiseLoadBalancerIP bool
	// --loadbalancer-ip-range: LoadBalancer ingress IPs outside these are not announced (empty = none is).
	LoadBalancerIPRanges []netip.Prefix
	// --advertise-service-cidr: announce the ServiceCIDRs (both families) as aggregates
	// (ServiceCIDRAdvertisements) instead of one host route per ClusterIP; see Build for the ClusterIPs still
	// announced as host routes.
	AdvertiseServiceCIDR bool
	ServiceCIDRs         []netip.Prefix
	// From the Node's canopy.io/communities and canopy.io/as-path-prepend (ParseCommunities, ParsePrepend).
	NodeCommunities Communities
	NodePrepend     uint8
	// --service-communities-allowed: the communities a Service's canopy.io/communities may ask for (others are
	// refused with a warning; empty = none).
	AllowedCommunities Communities
}

// Advertisement is one prefix to announce.
type Advertisement struct {
	Prefix      netip.Prefix // a /32 or /128, or a service CIDR aggregate
	Kind        string       // KindClusterIP, KindExternalIP, KindLoadBalancerIP or KindServiceCIDR
	Communities Communities
	Prepend     uint8    // extra copies of our AS number on the AS path
	Services    []string // "namespace/name" of the Services that want it, sorted; nil for a service CIDR
}

// kinds is the set of VIP kinds announced for one Service.
type kinds struct{ clusterIP, externalIP, loadBalancerIP bool }

// Build returns what this node announces for svc, given its ports from model.BuildServicePorts with this
// node's name (which has already applied the traffic policies and marked the local endpoints), sorted by
// prefix, one Advertisement per prefix (a VIP that is both an ExternalIP and a LoadBalancer IP is announced
// once, named by the kind Merge would pick). Each family (the ports' IPv4 fields, and their IPv6 side when the
// model built one) goes through the rules below on its own, with its own endpoints and service CIDRs.
//
// Which kinds: the Service's canopy.io/advertise annotation if it is valid, else the flags of opt (with
// AdvertiseServiceCIDR counting as AdvertiseClusterIP, see below). Then:
//
//   - ClusterIPs: each as a host route (/32, /128). With internalTrafficPolicy Local, only when this node has
//     a local endpoint of that family that is ready or serving in the ClusterEndpoints of some port (other
//     nodes would drop it). With opt.AdvertiseServiceCIDR the aggregates (ServiceCIDRAdvertisements) replace
//     the host routes, except for two that stay because the aggregate alone would send traffic where it
//     cannot be served: the ClusterIPs of an internalTrafficPolicy Local service, from the nodes with a local
//     endpoint (the more specific route wins at the ToR, as Calico does), and ClusterIPs outside every
//     opt.ServiceCIDRs (e.g. from a ServiceCIDR object the flag does not list).
//   - ExternalIPs: those the Service model admitted (internal/model.Admission: inside
//     --service-external-ip-range, not a node's or the API server's, claimed first; the model warns about the
//     others). With externalTrafficPolicy Local only from a node with a ready or serving local endpoint of the
//     VIP's family in the ExternalEndpoints of some port.
//   - LoadBalancer ingress IPs (type LoadBalancer only; ingress points with ipMode Proxy are skipped by the
//     proxy): as ExternalIPs, within opt.LoadBalancerIPRanges.
//
// With policy Cluster every node announces, even when the service has no endpoint at all: the proxy on
// whichever node the ToR picks rejects the connection at once (ICMP unreachable / TCP reset), which is
// quicker for clients than a route that comes and goes with the endpoints. Headless and ExternalName
// services, and services without ports, give nothing.
//
// Communities are the node's plus the Service's canopy.io/communities; the prepend is the Service's
// canopy.io/as-path-prepend if set, else the node's. warnings are user-facing problems, each meant as a
// Kubernetes Event on the Service, and do not depend on the endpoints (so every node says the same): VIPs
// outside the allowed ranges, and bad annotation values (naming the annotation and the value), which are
// ignored as a whole: a bad canopy.io/advertise means the flags apply, bad communities or prepend mean the
// node's. The Advertisements own their slices.
func Build(svc *corev1.Service, ports []*model.ServicePort, opt Options) (ads []Advertisement, warnings []string) {
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil
	}
	ports = slices.DeleteFunc(slices.Clone(ports), func(p *model.ServicePort) bool { return p == nil })
	if len(ports) == 0 {
		return nil, nil // headless, no (valid) ports, or no ClusterIP the model serves: BuildServicePorts built none
	}
	name := svc.Namespace + "/" + svc.Name
	warnf := func(format string, args ...any) {
		warnings = append(warnings, "service "+name+": "+fmt.Sprintf(format, args...))
	}

	allowed := kinds{
		clusterIP:      opt.AdvertiseClusterIP || opt.AdvertiseServiceCIDR,
		externalIP:     opt.AdvertiseExternalIP,
		loadBalancerIP: opt.AdvertiseLoadBalancerIP,
	}
	want := allowed
	if v := strings.TrimSpace(svc.Annotations[AnnotationAdvertise]); v != "" {
		if k, err := parseAdvertise(v); err != nil {
			warnf("annotation %s %q: %v; using the node's defaults", AnnotationAdvertise, v, err)
		} else {
			// The annotation narrows what the flags allow; it never widens it.
			want = kinds{clusterIP: k.clusterIP && allowed.clusterIP, externalIP: k.externalIP && allowed.externalIP,
				loadBalancerIP: k.loadBalancerIP && allowed.loadBalancerIP}
			if want != k {
				warnf("annotation %s %q asks for kinds the operator does not announce (--advertise-cluster-ip, --advertise-external-ip, --advertise-loadbalancer-ip); only the allowed ones are announced", AnnotationAdvertise, v)
			}
		}
	}
	var svcComms Communities
	if v, ok := svc.Annotations[AnnotationCommunities]; ok {
		parsed, err := ParseCommunities(v)
		if err != nil {
			warnf("annotation %s %q: %v; ignored", AnnotationCommunities, v, err)
		} else {
			var refused Communities
			svcComms, refused = Split(parsed, opt.AllowedCommunities)
			if !refused.IsZero() {
				warnf("annotation %s: %s not in --service-communities-allowed; ignored", AnnotationCommunities, refused)
			}
		}
	}
	comms := Union(opt.NodeCommunities, svcComms)
	prepend := opt.NodePrepend
	if v := svc.Annotations[AnnotationASPathPrepend]; strings.TrimSpace(v) != "" {
		if p, err := ParsePrepend(v); err != nil {
			warnf("annotation %s %q: %v; ignored", AnnotationASPathPrepend, v, err)
		} else {
			prepend = p
		}
	}

	add := func(ip netip.Addr, kind string) {
		ads = append(ads, Advertisement{
			Prefix:      netip.PrefixFrom(ip, ip.BitLen()),
			Kind:        kind,
			Communities: Communities{Standard: slices.Clone(comms.Standard), Large: slices.Clone(comms.Large)},
			Prepend:     prepend,
			Services:    []string{name},
		})
	}
	for _, v6 := range []bool{false, true} {
		// The ports as this family's back end sees them (ForFamily): its addresses and its endpoints only (the
		// IPv4 view without its IPv6 side, whose endpoints would count as local ones too).
		fam := make([]*model.ServicePort, 0, len(ports))
		for _, p := range ports {
			f := p.ForFamily(v6)
			if f != nil && f.IPv6 != nil {
				c := *f
				c.IPv6 = nil
				f = &c
			}
			if f != nil {
				fam = append(fam, f)
			}
		}
		if len(fam) == 0 {
			continue // no ClusterIP of this family: the proxy serves none of its addresses
		}
		buildFamily(svc, fam, opt, want, add, warnf)
	}
	if len(ads) == 0 {
		return nil, warnings
	}
	slices.SortFunc(ads, compareAds)
	return slices.CompactFunc(ads, func(a, b Advertisement) bool { return a.Prefix == b.Prefix }), warnings
}

// buildFamily adds the advertisements of one family of a Service: ports are that family's views
// (ServicePort.ForFamily), so every address and endpoint in them is of the family.
func buildFamily(svc *corev1.Service, ports []*model.ServicePort, opt Options, want kinds, add func(netip.Addr, string), warnf func(string, ...any)) {
	sp := ports[0] // the service-wide fields are the same in every port
	if want.clusterIP && (!sp.InternalPolicyLocal || model.HasLocalEndpoint(ports, false)) {
		var aggregates []netip.Prefix // the ClusterIPs these cover are not announced as host routes
		if opt.AdvertiseServiceCIDR && !sp.InternalPolicyLocal {
			aggregates = validPrefixes(opt.ServiceCIDRs)
		}
		for _, ip := range sp.ClusterIPs {
			if ip = ip.Unmap(); !inRanges(ip, aggregates) { // else the aggregate covers it
				add(ip, KindClusterIP)
			}
		}
	}
	external := !sp.ExternalPolicyLocal || model.HasLocalEndpoint(ports, true)
	if want.externalIP && external {
		for _, ip := range sp.ExternalIPs {
			add(ip.Unmap(), KindExternalIP)
		}
	}
	if want.loadBalancerIP && svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ip := range sp.LoadBalancerIPs {
			ip = ip.Unmap()
			if !inRanges(ip, opt.LoadBalancerIPRanges) {
				warnf("load balancer IP %s is outside --loadbalancer-ip-range (%s); not announced", ip, formatRanges(opt.LoadBalancerIPRanges))
				continue
			}
			if external {
				add(ip, KindLoadBalancerIP)
			}
		}
	}
}

// compareAds orders by prefix, then by kind rank (so that compacting keeps the kind Merge would pick).
func compareAds(a, b Advertisement) int {
	if c := a.Prefix.Compare(b.Prefix); c != 0 {
		return c
	}
	return compareKinds(a.Kind, b.Kind)
}

// parseAdvertise parses a non-empty canopy.io/advertise value.
func parseAdvertise(v string) (kinds, error) {
	var k kinds
	none := false
	var unknown []string
	n := 0
	for item := range strings.SplitSeq(v, ",") {
		item = strings.ToLower(strings.TrimSpace(item))
		if item == "" {
			continue
		}
		n++
		switch item {
		case "none":
			none = true
		case KindClusterIP:
			k.clusterIP = true
		case KindExternalIP:
			k.externalIP = true
		case KindLoadBalancerIP:
			k.loadBalancerIP = true
		default:
			unknown = append(unknown, fmt.Sprintf("%q", item))
		}
	}
	switch {
	case len(unknown) > 0:
		return kinds{}, fmt.Errorf("unknown kind %s (want a list of %s, %s, %s, or none)",
			strings.Join(unknown, ", "), KindClusterIP, KindExternalIP, KindLoadBalancerIP)
	case none && n > 1:
		return kinds{}, fmt.Errorf("\"none\" cannot be combined with other kinds")
	case n == 0:
		return kinds{}, fmt.Errorf("no kind listed (want a list of %s, %s, %s, or none)", KindClusterIP, KindExternalIP, KindLoadBalancerIP)
	}
	return k, nil
}

func inRanges(ip netip.Addr, ranges []netip.Prefix) bool {
	for _, r := range ranges {
		if r.Contains(ip) {
			return true
		}
	}
	return false
}

func formatRanges(ranges []netip.Prefix) string {
	if len(ranges) == 0 {
		return "none set"
	}
	s := make([]string, len(ranges))
	for i, r := range ranges {
		s[i] = r.String()
	}
	return strings.Join(s, ", ")
}

// validPrefixes returns the valid IPv4 and IPv6 prefixes of ps (not IPv4-mapped IPv6 ones), masked, sorted
// (IPv4 first), each once.
func validPrefixes(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.IsValid() && !p.Addr().Is4In6() {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return slices.Compact(out)
}

// ServiceCIDRAdvertisements returns the service CIDR aggregates to announce when opt.AdvertiseServiceCIDR is
// set (else nil): one per prefix of opt.ServiceCIDRs of either family (masked, each once, sorted, IPv4 first),
// Kind KindServiceCIDR, with the node's communities and prepend. They depend on no Service: the caller adds them once, e.g. as one
// more element of Merge's input. A Service's canopy.io/advertise cannot withdraw them.
func ServiceCIDRAdvertisements(opt Options) []Advertisement {
	if !opt.AdvertiseServiceCIDR {
		return nil
	}
	var ads []Advertisement
	for _, p := range validPrefixes(opt.ServiceCIDRs) {
		ads = append(ads, Advertisement{
			Prefix:      p,
			Kind:        KindServiceCIDR,
			Communities: Union(opt.NodeCommunities, Communities{}),
			Prepend:     opt.NodePrepend,
		})
	}
	return ads
}

// Merge combines the advertisements of all services (Build's results, and ServiceCIDRAdvertisements) into one
// per prefix, sorted by prefix. When several Services announce one prefix, one Service's attributes never leak
// onto the others': only the communities every one of them asks for (the node's always are), and the smallest
// prepend. The services are united and sorted, and the kind is the lowest rank (cluster-ip, external-ip,
// loadbalancer-ip, service-cidr) when they differ.
// Invalid prefixes are dropped. The result does not depend on the order of the input and shares no memory
// with it. O(n log n) in the number of advertisements.
func Merge(perService [][]Advertisement) []Advertisement {
	n := 0
	for _, ads := range perService {
		n += len(ads)
	}
	all := make([]*Advertisement, 0, n)
	for _, ads := range perService {
		for i := range ads {
			if ads[i].Prefix.IsValid() {
				all = append(all, &ads[i])
			}
		}
	}
	if len(all) == 0 {
		return nil
	}
	slices.SortFunc(all, func(a, b *Advertisement) int { return a.Prefix.Compare(b.Prefix) })
	out := make([]Advertisement, 0, len(all))
	for i := 0; i < len(all); {
		j := i + 1
		for j < len(all) && all[j].Prefix == all[i].Prefix {
			j++
		}
		out = append(out, mergeGroup(all[i:j]))
		i = j
	}
	return slices.Clip(out)
}

// mergeGroup merges advertisements of one prefix.
func mergeGroup(g []*Advertisement) Advertisement {
	m := Advertisement{Prefix: g[0].Prefix, Kind: g[0].Kind, Prepend: g[0].Prepend}
	nsvc := 0
	for _, a := range g {
		nsvc += len(a.Services)
	}
	if nsvc > 0 {
		m.Services = make([]string, 0, nsvc)
	}
	comms := normalize(Communities{Standard: slices.Clone(g[0].Communities.Standard), Large: slices.Clone(g[0].Communities.Large)})
	for _, a := range g {
		if compareKinds(a.Kind, m.Kind) < 0 {
			m.Kind = a.Kind
		}
		comms = Intersect(comms, a.Communities)
		m.Prepend = min(m.Prepend, a.Prepend)
		m.Services = append(m.Services, a.Services...)
	}
	m.Communities = comms
	slices.Sort(m.Services)
	m.Services = slices.Clip(slices.Compact(m.Services))
	return m
}
