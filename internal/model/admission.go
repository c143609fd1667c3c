package model

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// ReasonExternalIPRefused is the Event reason for a Service address Canopy will neither program nor announce.
const ReasonExternalIPRefused = "ExternalIPRefused"

// Admission is the operator's rule for the addresses a Service may make this node serve: a tenant's Service may
// narrow, never widen, what the flags allow. An ExternalIP must lie inside ExternalIPRanges (none set: no
// ExternalIP at all; 0.0.0.0/0 must be written to allow every address), and neither an ExternalIP nor a
// LoadBalancer IP may be an address the cluster itself needs: a node's, the API server's (the endpoints of
// default/kubernetes), one inside Reserved (the pod and service networks), or an ExternalIP another Service
// claimed first (the oldest Service wins; a tie goes to the smaller namespace/name). Refused addresses are
// neither programmed by the proxy nor announced, and the Service gets an Event saying why.
type Admission struct {
	ExternalIPRanges []netip.Prefix
	Reserved         []netip.Prefix
}

// addressBook is what admission checks against: the addresses the cluster needs and who claims which
// ExternalIP. Only the tracker's sync goroutine uses it.
type addressBook struct {
	nodes        map[netip.Addr]string // node address -> node name
	controlPlane map[netip.Addr]bool
	claims       map[netip.Addr][]claim // sorted, first wins
	claimed      map[string][]netip.Addr
}

type claim struct {
	key     string
	created time.Time
}

func (c claim) compare(d claim) int {
	if x := c.created.Compare(d.created); x != 0 {
		return x
	}
	return cmp.Compare(c.key, d.key)
}

func newAddressBook() *addressBook {
	return &addressBook{nodes: map[netip.Addr]string{}, controlPlane: map[netip.Addr]bool{},
		claims: map[netip.Addr][]claim{}, claimed: map[string][]netip.Addr{}}
}

// setClaims records the ExternalIPs key claims now and returns the keys of the other Services that claim an
// address whose claimants changed (their admission may change too).
func (b *addressBook) setClaims(key string, created time.Time, ips []netip.Addr) (affected []string) {
	old := b.claimed[key]
	touched := map[netip.Addr]bool{}
	for _, ip := range old {
		if !slices.Contains(ips, ip) {
			b.claims[ip] = slices.DeleteFunc(b.claims[ip], func(c claim) bool { return c.key == key })
			if len(b.claims[ip]) == 0 {
				delete(b.claims, ip)
			}
			touched[ip] = true
		}
	}
	for _, ip := range ips {
		if slices.Contains(old, ip) {
			continue
		}
		c := claim{key: key, created: created}
		i, _ := slices.BinarySearchFunc(b.claims[ip], c, claim.compare)
		b.claims[ip] = slices.Insert(b.claims[ip], i, c)
		touched[ip] = true
	}
	if len(ips) == 0 {
		delete(b.claimed, key)
	} else {
		b.claimed[key] = slices.Clone(ips)
	}
	for ip := range touched {
		for _, c := range b.claims[ip] {
			if c.key != key && !slices.Contains(affected, c.key) {
				affected = append(affected, c.key)
			}
		}
	}
	return affected
}

// owner returns the Service that holds ip (the first claimant), "" if none.
func (b *addressBook) owner(ip netip.Addr) string {
	if cs := b.claims[ip]; len(cs) > 0 {
		return cs[0].key
	}
	return ""
}

// refuse says why ip may not be served for the Service key ("" = it may). external: an ExternalIP (ranges and
// claims apply); else a LoadBalancer IP.
func (a Admission) refuse(b *addressBook, key string, ip netip.Addr, external bool) string {
	if external && !inPrefixes(ip, a.ExternalIPRanges) {
		if len(a.ExternalIPRanges) == 0 {
			return "no --service-external-ip-range is set, so no ExternalIP is allowed"
		}
		return fmt.Sprintf("it is outside --service-external-ip-range (%s)", joinPrefixes(a.ExternalIPRanges))
	}
	if n, ok := b.nodes[ip]; ok {
		return "it is the address of node " + n
	}
	if b.controlPlane[ip] {
		return "it is an address of the Kubernetes API server (endpoints of default/kubernetes)"
	}
	for _, p := range a.Reserved {
		if p.Contains(ip) {
			return fmt.Sprintf("it is inside %s, the cluster's pod or service network", p)
		}
	}
	if external {
		if o := b.owner(ip); o != "" && o != key {
			return "it is already claimed by Service " + o + " (the oldest claim wins)"
		}
	}
	return ""
}

// inRangeExternalIPs returns the ExternalIPs that pass the range check (what key claims).
func (a Admission) inRangeExternalIPs(ips []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if inPrefixes(ip, a.ExternalIPRanges) {
			out = append(out, ip)
		}
	}
	return out
}

// admit filters the ExternalIPs and LoadBalancer IPs of a Service's ports (they share both lists) and returns the
// warnings for what it refused.
func (a Admission) admit(b *addressBook, key string, ports []*ServicePort) (warnings []string) {
	if len(ports) == 0 {
		return nil
	}
	filter := func(ips []netip.Addr, external bool, what string) []netip.Addr {
		var keep []netip.Addr
		for _, ip := range ips {
			if why := a.refuse(b, key, ip, external); why != "" {
				warnings = append(warnings, fmt.Sprintf("service %s: %s %s is refused (not programmed, not announced): %s", key, what, ip, why))
				continue
			}
			keep = append(keep, ip)
		}
		return keep
	}
	ext := filter(ports[0].ExternalIPs, true, "external IP")
	lb := filter(ports[0].LoadBalancerIPs, false, "load balancer IP")
	for _, p := range ports {
		p.ExternalIPs, p.LoadBalancerIPs = ext, lb
	}
	// The IPv6 side, by the same rules (ranges, node and API server addresses, pod and service networks and
	// claims are per address, so per family): the ports share its address lists too.
	if f := ports[0].IPv6; f != nil {
		ext6 := filter(f.ExternalIPs, true, "external IP")
		lb6 := filter(f.LoadBalancerIPs, false, "load balancer IP")
		for _, p := range ports {
			if p.IPv6 != nil {
				p.IPv6.ExternalIPs, p.IPv6.LoadBalancerIPs = ext6, lb6
			}
		}
	}
	return warnings
}

func inPrefixes(ip netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
