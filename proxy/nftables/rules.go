package nftables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/model"
)

// TableName is the nftables table the back end owns (one per family); Cleanup deletes it whole.
const TableName = "canopy"

// Shared objects of the table (they exist whatever services do).
const (
	// Maps, verdicts by destination.
	MapServiceIPs          = "service-ips"           // daddr . proto . port: goto svc-/ext- (cluster, external, LB IPs)
	MapServiceNodePorts    = "service-nodeports"     // proto . port: goto ext- (node ports on node addresses)
	MapNoEndpointServices  = "no-endpoint-services"  // daddr . proto . port: goto reject-chain, or drop
	MapNoEndpointNodePorts = "no-endpoint-nodeports" // proto . port: goto reject-chain, or drop
	SetNodePortIPs         = "nodeport-ips"          // node addresses (or prefixes) that take node ports

	ChainServices       = "services"            // nat dispatch: vmap @service-ips, then node ports
	ChainEndpointsCheck = "endpoints-check"     // filter: vmap @no-endpoint-services / nodeports
	ChainReject         = "reject-chain"        // TCP reset, else ICMP port unreachable
	ChainMarkMasq       = "mark-for-masquerade" // sets MasqMark
	ChainMasquerading   = "masquerading"        // from nat-postrouting: masquerades marked packets

	// MasqMark is the packet mark bit that mark-for-masquerade sets and masquerading masquerades (the
	// iptables back end's and kube-proxy's bit).
	MasqMark = "0x4000"

	// Per service port and per endpoint, see SVCChain, EXTChain, SEPChain, AffinitySet.
	prefixSVC = "svc-"
	prefixEXT = "ext-"
	prefixSEP = "sep-"
	prefixAff = "aff-"

	// maxCascade is the most endpoints a service port spreads over with one rule each (more: a numgen vmap).
	maxCascade = 16

	// maxNameLen bounds chain and set names (the kernel's NFT_NAME_MAXLEN is 256 with the NUL).
	maxNameLen = 255
)

// perServiceChain and affinitySet recognise the names of per-service objects (hash of 8 base32 characters).
var (
	perServiceChain = regexp.MustCompile(`^(svc|ext|sep)-[A-Z2-7]{8}-`)
	affinitySet     = regexp.MustCompile(`^aff-[A-Z2-7]{8}-`)
)

// family is what differs between the ip and ip6 tables.
type family struct {
	nft      knftables.Family
	ip       string // "ip": the payload keyword (ip saddr)
	addrType string // "ipv4_addr"
	loopback string // excluded from node ports when they listen on every local address
	is       func(netip.Addr) bool
}

var (
	ipv4 = family{nft: knftables.IPv4Family, ip: "ip", addrType: "ipv4_addr", loopback: "127.0.0.0/8", is: netip.Addr.Is4}
	ipv6 = family{nft: knftables.IPv6Family, ip: "ip6", addrType: "ipv6_addr", loopback: "::1", is: is6}
)

// is6 reports whether a is an IPv6 address that is not an IPv4-mapped one.
func is6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }

// hash8 names an object after s: the first 8 base32 characters of SHA-256 (40 bits; the readable part of a
// name may be sanitised or truncated, the hash keeps names of different keys apart).
func hash8(s string) string {
	h := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(h[:])[:8]
}

// readable turns a service port key ("ns/name:port/TCP") into characters nft takes in a name
// ([A-Za-z0-9/_.-]): ':' becomes '/', anything else unexpected '_'.
func readable(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '/', r == '_', r == '.', r == '-':
			return r
		case r == ':':
			return '/'
		}
		return '_'
	}, s)
}

// objName is prefix + hash of id + "-" + the readable part, truncated to maxNameLen (deterministic).
func objName(prefix, id, human string) string {
	n := prefix + hash8(id) + "-" + readable(human)
	if len(n) > maxNameLen {
		n = n[:maxNameLen-3] + "..."
	}
	return n
}

func epString(ip netip.Addr, port uint16) string { return netip.AddrPortFrom(ip, port).String() }

// SVCChain, EXTChain and SEPChain name a service port's chains: the cluster chain (traffic to the cluster
// IPs), the external chain (node ports, external and load balancer IPs) and one chain per endpoint (DNAT).
func SVCChain(key string) string { return objName(prefixSVC, key, key) }
func EXTChain(key string) string { return objName(prefixEXT, key, key) }
func SEPChain(key string, ip netip.Addr, port uint16) string {
	return objName(prefixSEP, key+"|"+epString(ip, port), key+"__"+ip.String()+"/"+strconv.Itoa(int(port)))
}

// AffinitySet names the ClientIP affinity set of an endpoint of a service port. The timeout is part of the
// name: a set's timeout cannot be changed in place, a new timeout makes a new set.
func AffinitySet(key string, ip netip.Addr, port uint16, timeout time.Duration) string {
	return objName(prefixAff, key+"|"+epString(ip, port)+"|"+timeout.String(), key+"__"+ip.String()+"/"+strconv.Itoa(int(port)))
}

// chainPlan is one chain and its rules.
type chainPlan struct {
	name  string
	rules []string
}

// elemPlan is one map element.
type elemPlan struct {
	m     string
	key   []string
	value string
}

// id identifies the element in the table (map and key).
func (e elemPlan) id() string { return e.m + " " + strings.Join(e.key, " . ") }

// setPlan is one affinity set.
type setPlan struct {
	name    string
	timeout time.Duration
}

// plan is what one service port contributes: its chains, its affinity sets and its map elements, and what
// conntrack cleanup needs to know.
type plan struct {
	chains []chainPlan
	sets   []setPlan
	elems  []elemPlan
	ct     ctInfo
}

// ctInfo is the part of a service port conntrack cleanup needs: for UDP, flows to its VIPs and node port that
// were NATed to an endpoint that went away must go, or they keep going to it.
type ctInfo struct {
	udp      bool
	vips     []netip.Addr
	port     uint16
	nodePort uint16
	eps      []netip.Addr
}

// usable picks the endpoints that take new connections (model.SplitDraining: the ready ones, or if none is
// ready the serving and terminating ones), of the family, each (IP, port) once.
func (p *Proxier) usable(eps []model.Endpoint) []model.Endpoint {
	active, _ := model.SplitDraining(eps)
	var out []model.Endpoint
	for _, e := range active {
		if !(e.Ready || (e.Serving && e.Terminating)) || !p.fam.is(e.IP) || e.Port == 0 {
			continue
		}
		if slices.ContainsFunc(out, func(o model.Endpoint) bool { return o.IP == e.IP && o.Port == e.Port }) {
			continue
		}
		out = append(out, e)
	}
	return out
}

func (p *Proxier) addrs(in []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range in {
		if a = a.Unmap(); p.fam.is(a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func sameEndpoints(a, b []model.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y model.Endpoint) bool { return x.IP == y.IP && x.Port == y.Port })
}

// anySet writes one value as itself and several as an anonymous set "{ a, b }".
func anySet[T fmt.Stringer](vs []T) string {
	if len(vs) == 1 {
		return vs[0].String()
	}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.String()
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

// build turns a service port into its plan (nil: nothing to program, e.g. no cluster IP of the family). The
// semantics are the iptables back end's (proxy/iptables/rules.go), chain for chain.
func (p *Proxier) build(sp *model.ServicePort) *plan {
	if sp == nil || sp.Port == 0 {
		return nil
	}
	proto := strings.ToLower(string(sp.Protocol))
	switch proto {
	case "tcp", "udp", "sctp":
	default:
		return nil
	}
	cips := p.addrs(sp.ClusterIPs)
	if len(cips) == 0 {
		return nil
	}
	extIPs, lbIPs := p.addrs(sp.ExternalIPs), p.addrs(sp.LoadBalancerIPs)
	clusterEps, extEps := p.usable(sp.ClusterEndpoints), p.usable(sp.ExternalEndpoints)
	hasEps := len(clusterEps) > 0 || len(extEps) > 0
	hasExtDst := sp.NodePort != 0 || len(extIPs) > 0 || len(lbIPs) > 0
	ipx := p.fam.ip

	svcChain, extChain := SVCChain(sp.Key), EXTChain(sp.Key)
	pl := &plan{ct: ctInfo{udp: sp.Protocol == model.UDP, port: sp.Port, nodePort: sp.NodePort}}
	pl.ct.vips = slices.Concat(cips, extIPs, lbIPs)

	timeout := sp.AffinityTimeout
	if timeout <= 0 {
		timeout = model.DefaultAffinityTimeout
	}
	timeout = timeout.Truncate(time.Second)
	sep := func(e model.Endpoint) string { return SEPChain(sp.Key, e.IP, e.Port) }
	aff := func(e model.Endpoint) string { return AffinitySet(sp.Key, e.IP, e.Port, timeout) }
	// balance spreads new connections over eps at random, after the ClientIP affinity checks: up to
	// maxCascade endpoints as the iptables back end does (endpoint i of n is taken with probability
	// 1/(n-i) if the ones before were not), more through one numgen vmap (O(1) per packet, but an anonymous
	// set: the kernel names those in time linear in the sets of the table, so 10,000 of them cost seconds).
	balance := func(rules []string, eps []model.Endpoint) []string {
		if sp.AffinityClientIP {
			for _, e := range eps {
				rules = append(rules, ipx+" saddr @"+aff(e)+" goto "+sep(e))
			}
		}
		if len(eps) <= maxCascade {
			for i, e := range eps[:len(eps)-1] {
				rules = append(rules, fmt.Sprintf("numgen random mod %d == 0 goto %s", len(eps)-i, sep(e)))
			}
			return append(rules, "goto "+sep(eps[len(eps)-1]))
		}
		var b strings.Builder
		fmt.Fprintf(&b, "numgen random mod %d vmap { ", len(eps))
		for i, e := range eps {
			if i > 0 {
				b.WriteString(" , ")
			}
			fmt.Fprintf(&b, "%d : goto %s", i, sep(e))
		}
		b.WriteString(" }")
		return append(rules, b.String())
	}

	// svc-: traffic to the cluster IPs, masqueraded unless it comes from a pod (or always, MasqueradeAll).
	if len(clusterEps) > 0 {
		var rules []string
		switch {
		case p.cfg.MasqueradeAll:
			rules = append(rules, ipx+" daddr "+anySet(cips)+" jump "+ChainMarkMasq)
		case len(p.podCIDRs) > 0:
			rules = append(rules, ipx+" daddr "+anySet(cips)+" "+ipx+" saddr != "+anySet(p.podCIDRs)+" jump "+ChainMarkMasq)
		}
		pl.chains = append(pl.chains, chainPlan{svcChain, balance(rules, clusterEps)})
	}

	// ext-: node ports, external IPs, load balancer IPs.
	if hasExtDst && hasEps {
		var rules []string
		if !sp.ExternalPolicyLocal {
			rules = append(rules, "jump "+ChainMarkMasq)
			if len(extEps) > 0 {
				if sameEndpoints(extEps, clusterEps) {
					rules = append(rules, "goto "+svcChain)
				} else {
					rules = balance(rules, extEps)
				}
			}
		} else {
			// Pods and the node itself reach the service through any endpoint (kube-proxy's short cuts);
			// everyone else only through local ones, keeping the client's address.
			if len(clusterEps) > 0 {
				if len(p.podCIDRs) > 0 {
					rules = append(rules, ipx+" saddr "+anySet(p.podCIDRs)+" goto "+svcChain)
				}
				rules = append(rules, "fib saddr type local jump "+ChainMarkMasq, "fib saddr type local goto "+svcChain)
			}
			if len(extEps) > 0 {
				rules = balance(rules, extEps)
			}
		}
		pl.chains = append(pl.chains, chainPlan{extChain, rules})
	}

	// sep-: one per endpoint, DNAT (and the hairpin mark); aff-: its ClientIP affinity set.
	// (Endpoints only an ext- chain could use count when there is one: no destination, no chain.)
	used := clusterEps
	if hasExtDst {
		used = slices.Concat(clusterEps, extEps)
	}
	var seps []model.Endpoint
	for _, e := range used {
		if !slices.ContainsFunc(seps, func(o model.Endpoint) bool { return o.IP == e.IP && o.Port == e.Port }) {
			seps = append(seps, e)
			if !slices.Contains(pl.ct.eps, e.IP) {
				pl.ct.eps = append(pl.ct.eps, e.IP)
			}
		}
	}
	for _, e := range seps {
		rules := []string{ipx + " saddr " + e.IP.String() + " jump " + ChainMarkMasq}
		if sp.AffinityClientIP {
			rules = append(rules, "update @"+aff(e)+" { "+ipx+" saddr }")
			pl.sets = append(pl.sets, setPlan{aff(e), timeout})
		}
		rules = append(rules, "meta l4proto "+proto+" dnat to "+epString(e.IP, e.Port))
		pl.chains = append(pl.chains, chainPlan{sep(e), rules})
	}

	// Dispatch elements. A key appears once per plan (an external IP equal to a cluster IP: the first wins).
	port, nodePort := strconv.Itoa(int(sp.Port)), strconv.Itoa(int(sp.NodePort))
	seen := map[string]bool{}
	add := func(m string, value string, key ...string) {
		e := elemPlan{m: m, key: key, value: value}
		if id := e.id(); !seen[id] {
			seen[id] = true
			pl.elems = append(pl.elems, e)
		}
	}
	if hasEps {
		if len(clusterEps) > 0 {
			for _, ip := range cips {
				add(MapServiceIPs, "goto "+svcChain, ip.String(), proto, port)
			}
		}
		for _, ip := range slices.Concat(extIPs, lbIPs) {
			add(MapServiceIPs, "goto "+extChain, ip.String(), proto, port)
		}
		if sp.NodePort != 0 {
			add(MapServiceNodePorts, "goto "+extChain, proto, nodePort)
		}
	}
	// Filter: reject when there are no endpoints at all, drop when there are none for this kind of traffic
	// (internal/externalTrafficPolicy Local without local endpoints).
	reject := "goto " + ChainReject
	intVerdict, extVerdict := "", ""
	switch {
	case !hasEps:
		intVerdict, extVerdict = reject, reject
	default:
		if len(clusterEps) == 0 {
			intVerdict = "drop"
		}
		if len(extEps) == 0 {
			extVerdict = "drop"
		}
	}
	if intVerdict != "" {
		for _, ip := range cips {
			add(MapNoEndpointServices, intVerdict, ip.String(), proto, port)
		}
	}
	if extVerdict != "" {
		for _, ip := range slices.Concat(extIPs, lbIPs) {
			add(MapNoEndpointServices, extVerdict, ip.String(), proto, port)
		}
		if sp.NodePort != 0 {
			add(MapNoEndpointNodePorts, extVerdict, proto, nodePort)
		}
	}
	return pl
}

// nodePortMatch is the destination match of node port traffic: the node's addresses inside NodePortAddresses
// if given (set nodeport-ips holds the prefixes), else the NodeIPs if given (nodeport-ips holds them), else any
// local address but loopback. ok is false when no address of the family takes node ports (only prefixes of
// the other family were given). elems are the members of nodeport-ips.
func (p *Proxier) nodePortMatch() (match string, elems []string, ok bool) {
	ipx := p.fam.ip
	if len(p.cfg.NodePortAddresses) > 0 {
		for _, pf := range p.cfg.NodePortAddresses {
			if !p.fam.is(pf.Addr().Unmap()) {
				continue
			}
			pf = pf.Masked()
			if pf.Bits() == 0 {
				return "fib daddr type local", nil, true
			}
			if !slices.Contains(elems, pf.String()) {
				elems = append(elems, pf.String())
			}
		}
		if len(elems) == 0 {
			return "", nil, false
		}
		return ipx + " daddr @" + SetNodePortIPs + " fib daddr type local", elems, true
	}
	for _, ip := range p.addrs(p.cfg.NodeIPs) {
		elems = append(elems, ip.String())
	}
	if len(elems) > 0 {
		return ipx + " daddr @" + SetNodePortIPs, elems, true
	}
	return "fib daddr type local " + ipx + " daddr != " + p.fam.loopback, nil, true
}

// baseChain is a chain attached to a hook, with the one rule that jumps to our regular chain.
type baseChain struct {
	name     string
	typ      knftables.BaseChainType
	hook     knftables.BaseChainHook
	priority knftables.BaseChainPriority
	rule     string
}

// baseChains: nat as kube-proxy's nftables mode; the filter chains run at the filter priority, after DNAT in
// every hook (as the iptables back end's filter table), so traffic that was DNATed to an endpoint is never
// checked against the service's VIPs.
var baseChains = []baseChain{
	{"nat-prerouting", knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority, "jump " + ChainServices},
	{"nat-output", knftables.NATType, knftables.OutputHook, knftables.DNATPriority, "jump " + ChainServices},
	{"nat-postrouting", knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority, "jump " + ChainMasquerading},
	{"filter-input", knftables.FilterType, knftables.InputHook, knftables.FilterPriority, "ct state new jump " + ChainEndpointsCheck},
	{"filter-forward", knftables.FilterType, knftables.ForwardHook, knftables.FilterPriority, "ct state new jump " + ChainEndpointsCheck},
	{"filter-output", knftables.FilterType, knftables.OutputHook, knftables.FilterPriority, "ct state new jump " + ChainEndpointsCheck},
}

var sharedMaps = []string{MapServiceIPs, MapServiceNodePorts, MapNoEndpointServices, MapNoEndpointNodePorts}

// staticChains returns the regular shared chains and their rules (the base chains are in baseChains).
func (p *Proxier) staticChains() []chainPlan {
	ipx := p.fam.ip
	services := []string{ipx + " daddr . meta l4proto . th dport vmap @" + MapServiceIPs}
	check := []string{ipx + " daddr . meta l4proto . th dport vmap @" + MapNoEndpointServices}
	if match, _, ok := p.nodePortMatch(); ok {
		services = append(services, match+" meta l4proto . th dport vmap @"+MapServiceNodePorts)
		check = append(check, match+" meta l4proto . th dport vmap @"+MapNoEndpointNodePorts)
	}
	return []chainPlan{
		{ChainServices, services},
		{ChainEndpointsCheck, check},
		{ChainReject, []string{"meta l4proto tcp reject with tcp reset", "reject"}},
		{ChainMarkMasq, []string{"meta mark set meta mark or " + MasqMark}},
		// Clear the bit so a packet traversing postrouting again (e.g. through a bridge) is not re-masqueraded.
		{ChainMasquerading, []string{"meta mark & " + MasqMark + " == 0 return", "meta mark set meta mark xor " + MasqMark, "masquerade fully-random"}},
	}
}

// isStaticChain reports whether name is one of the shared chains.
func (p *Proxier) isStaticChain(name string) bool {
	if slices.ContainsFunc(baseChains, func(b baseChain) bool { return b.name == name }) {
		return true
	}
	return slices.ContainsFunc(p.static, func(c chainPlan) bool { return c.name == name })
}

// addStatic writes the table and its shared objects into tx: the maps and sets are only added (their
// elements stay), the shared chains are rewritten (flush and add, atomic with the rest of tx). The first
// base chain's rule carries staticHash in its comment (see inventory).
func (p *Proxier) addStatic(tx *knftables.Transaction) { p.writeStatic(tx, true) }

// hashStatic is the hash of what addStatic writes (but the comment that carries it). The transaction is a fake's:
// the same text, and no nft run. A real one would make nftCmd create knftables, whose checks run nft, which
// reads the whole ruleset each time: 0.15 s per table with 20,000 chains on an idle machine, 0.8 s for the
// four tables of Shards in a restart at 10,000 Services, before the back end could start reading them.
func (p *Proxier) hashStatic() uint64 {
	tx := knftables.NewFake(p.fam.nft, p.table).NewTransaction()
	p.writeStatic(tx, false)
	return hashRules([]string{tx.String()})
}

func (p *Proxier) writeStatic(tx *knftables.Transaction, comment bool) {
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("canopy service proxy")})
	addr := p.fam.addrType
	for _, m := range []struct{ name, typ string }{
		{MapServiceIPs, addr + " . inet_proto . inet_service : verdict"},
		{MapServiceNodePorts, "inet_proto . inet_service : verdict"},
		{MapNoEndpointServices, addr + " . inet_proto . inet_service : verdict"},
		{MapNoEndpointNodePorts, "inet_proto . inet_service : verdict"},
	} {
		tx.Add(&knftables.Map{Name: m.name, Type: m.typ})
	}
	np := &knftables.Set{Name: SetNodePortIPs, Type: addr, Flags: []knftables.SetFlag{knftables.IntervalFlag}}
	tx.Add(np)
	tx.Flush(np)
	_, elems, _ := p.nodePortMatch()
	for _, e := range elems {
		tx.Add(&knftables.Element{Set: SetNodePortIPs, Key: []string{e}})
	}
	// Regular chains first: the base chains jump to them.
	for _, c := range p.static {
		ch := &knftables.Chain{Name: c.name}
		tx.Add(ch)
		tx.Flush(ch)
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Chain: c.name, Rule: r})
		}
	}
	for _, b := range baseChains {
		ch := &knftables.Chain{Name: b.name, Type: knftables.PtrTo(b.typ), Hook: knftables.PtrTo(b.hook), Priority: knftables.PtrTo(b.priority)}
		tx.Add(ch)
		tx.Flush(ch)
		r := &knftables.Rule{Chain: b.name, Rule: b.rule}
		if comment && b.name == baseChains[0].name {
			r.Comment = knftables.PtrTo(hashComment(p.staticHash, 1))
		}
		tx.Add(r)
	}
}
