package policy

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// The data path's chains (filter table) and sets. Everything is named CANOPY-POL-* (fixed) or
// CANOPY-P{R,I,E}-<hash> / CANOPY-S-<hash> (content- or pod-addressed), so cleanup finds exactly what is ours.
//
//	FORWARD ─▶ CANOPY-POL-FORWARD ─┬ src or dst a local pod ─▶ CANOPY-POL-POD
//	OUTPUT  ─▶ CANOPY-POL-OUTPUT ──┘ (only with a non-local source: IPVS-forwarded pod traffic)
//
//	CANOPY-POL-POD: replies/established ─▶ RETURN
//	                local pod not in CANOPY-POL-READY (no rules yet) ─▶ CANOPY-POL-UNREADY (DROP)
//	                src local pod ─▶ CANOPY-POL-EGRESS (one line per egress-isolated pod: -s IP ─▶ CANOPY-PE-<pod>)
//	                dst local pod ─▶ CANOPY-POL-INGRESS (one line per ingress-isolated pod: -d IP ─▶ CANOPY-PI-<pod>)
//	CANOPY-PI/PE-<pod>: clear the allow bit, jump to each policy chain that selects the pod, RETURN as soon as
//	                one set the bit, else ─▶ CANOPY-POL-DENY-IN/OUT (count, optional log, DROP or REJECT)
//	CANOPY-PR-<hash>: one policy's rules for one direction (peers as ipsets, ports inline); a match sets the
//	                allow bit. Named after its content, so pods with the same resolved rules share it.
//
// Allowed traffic falls through (RETURN) to the rest of FORWARD/OUTPUT: the policy never accepts on
// others' behalf. Traffic from the node itself (kubelet probes) leaves through OUTPUT with a local
// source and is never policed; hostNetwork pods have node addresses and are never policed.
//
// Both families: IPv4 pods are policed in iptables, IPv6 pods in ip6tables with the same chains (same names,
// the other family's filter table), and sets of family inet6 (CANOPY-POL-READY6, CANOPY-POL-LOCAL6,
// CANOPY-S6-<hash>; set names are shared by both families, chain names are not). Each address is policed in its
// own family only: a dual-stack pod has its chains in both tables, each with its own family's peers (an ipBlock
// of one family, a selected pod's address of that family), so it is isolated in both. The IPv6 family is built
// only on a node with an IPv6 pod CIDR. ICMPv6 neighbour discovery (router solicitation/advertisement, neighbour
// solicitation/advertisement: types 133-136) is never policed: it is not connection-tracked (the kernel marks it
// untracked, so no RELATED/ESTABLISHED rule lets it through), and without it a pod cannot resolve its
// neighbours on the bridge, not even to answer what its policies allow. CANOPY-POL-POD returns it before
// the unready and isolation checks, only with hop limit 255 (the only value RFC 4861 accepts: on-link, never
// routed), so it opens nothing else.
const (
	ChainForward  = "CANOPY-POL-FORWARD"
	ChainOutput   = "CANOPY-POL-OUTPUT"
	ChainPod      = "CANOPY-POL-POD"
	ChainIngress  = "CANOPY-POL-INGRESS"
	ChainEgress   = "CANOPY-POL-EGRESS"
	ChainDenyIn   = "CANOPY-POL-DENY-IN"
	ChainDenyOut  = "CANOPY-POL-DENY-OUT"
	ChainUnready  = "CANOPY-POL-UNREADY"
	SetReady      = "CANOPY-POL-READY"
	SetLocal      = "CANOPY-POL-LOCAL"
	SetReady6     = "CANOPY-POL-READY6" // IPv6: the local pod addresses whose rules exist
	SetLocal6     = "CANOPY-POL-LOCAL6" // IPv6: the node's IPv6 pod CIDRs
	prefixRules   = "CANOPY-PR-"
	prefixPodIn   = "CANOPY-PI-"
	prefixPodOut  = "CANOPY-PE-"
	prefixSet     = "CANOPY-S-"
	prefixSet6    = "CANOPY-S6-"
	prefixTmp     = "CANOPY-T-"
	prefixTmp6    = "CANOPY-T6-"
	allowMark     = "0x10000/0x10000"
	clearMark     = "0x0/0x10000"
	defaultNFLOG  = 100
	logRateLimit  = "-m limit --limit 10/second --limit-burst 20"
	commentDenyIn = "canopy network policy: ingress denied"
)

// staticChains are written whenever their content changes; the dispatch chains (ChainIngress, ChainEgress)
// are edited line by line.
var staticChains = []string{ChainForward, ChainOutput, ChainPod, ChainDenyIn, ChainDenyOut, ChainUnready}

// family is what differs between the IPv4 and the IPv6 data path.
type family struct {
	v6                   bool
	name                 string // "IPv4", "IPv6"
	inet                 string // ipset family
	ready, local         string // the fixed sets
	setPrefix, tmpPrefix string // peer sets, temporary sets of a full sync
	hostBits             int
	unreachable          string // REJECT --reject-with for all but TCP
	all                  []string
}

var (
	v4 = &family{name: "IPv4", inet: "inet", ready: SetReady, local: SetLocal, setPrefix: prefixSet, tmpPrefix: prefixTmp,
		hostBits: 32, unreachable: "icmp-port-unreachable", all: []string{"0.0.0.0/1", "128.0.0.0/1"}}
	v6 = &family{v6: true, name: "IPv6", inet: "inet6", ready: SetReady6, local: SetLocal6, setPrefix: prefixSet6, tmpPrefix: prefixTmp6,
		hostBits: 128, unreachable: "icmp6-port-unreachable", all: []string{"::/1", "8000::/1"}}
	families = []*family{v4, v6}
)

// has says whether a is of the family (IPv4-mapped IPv6 addresses are of neither).
func (f *family) has(a netip.Addr) bool {
	if f.v6 {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4()
}

// ownSet says whether a set name is one of the family's peer or temporary sets.
func (f *family) ownSet(n string) bool {
	return strings.HasPrefix(n, f.setPrefix) || strings.HasPrefix(n, f.tmpPrefix)
}

// Options shape the data path.
type Options struct {
	// PodCIDRs are this node's pod CIDRs: the addresses of its pods (both families are policed; IPv6 only on
	// a node with an IPv6 pod CIDR).
	PodCIDRs []netip.Prefix
	// Reject answers denied packets (TCP reset, else ICMP port unreachable) instead of dropping them.
	Reject bool
	// Log is "" (off), "log" (kernel log) or "nflog" (NFLOG group NFLOGGroup, default 100); rate-limited.
	Log        string
	NFLOGGroup int
}

// Set is one ipset: its type, family and members, sorted (a member may carry " nomatch").
type Set struct {
	Type    string // hash:ip or hash:net
	Family  string // inet ("" too) or inet6
	Members []string
}

// State is the data path of one node, as plain data: what Firewall.Sync programs. Maps keyed by address hold
// both families; each address is programmed in its own.
type State struct {
	Chains   map[string][]string   // IPv4 (iptables): chain -> rule specs (static, per-pod and per-policy chains)
	Chains6  map[string][]string   // IPv6 (ip6tables), the same layout; empty on a node without an IPv6 pod CIDR
	Ingress  map[netip.Addr]string // dispatch: pod IP -> its CANOPY-PI- chain
	Egress   map[netip.Addr]string // dispatch: pod IP -> its CANOPY-PE- chain
	Sets     map[string]*Set       // peer sets (CANOPY-S-*, CANOPY-S6-*), plus SetLocal (and SetLocal6)
	Ready    map[netip.Addr]bool   // local pod IPs whose rules exist (the rest are dropped)
	Conflict []netip.Addr          // addresses claimed by several local pods: kept unready
	Pods     int                   // local pods with at least one ready address
}

// chains returns the family's chains.
func (st *State) chains(f *family) map[string][]string {
	if f.v6 {
		return st.Chains6
	}
	return st.Chains
}

// LocalPod is one address of a pod of this node as the data path sees it (a dual-stack pod is two LocalPods
// with the same Key).
type LocalPod struct {
	Key string // namespace/name
	IP  netip.Addr
}

// SetName6 names the IPv6 ipset of a peer selector.
func SetName6(selector string) string { return prefixSet6 + hash16(selector) }

func hash16(s string) string {
	h := fnv.New64a()
	h.Write([]byte(s))
	return fmt.Sprintf("%016X", h.Sum64())
}

// PodChains names a pod's ingress and egress chains.
func PodChains(key string) (in, out string) {
	h := hash16(key)
	return prefixPodIn + h, prefixPodOut + h
}

// SetName names the ipset of a peer selector (Peer.Selector).
func SetName(selector string) string { return prefixSet + hash16(selector) }

// Build turns Compute's result for this node's pods into the data path, per family: each pod address gets
// its chains in its own family's table, with its rules' peers of that family (IPv6 only on a node with an IPv6
// pod CIDR: otherwise IPv6 addresses are skipped). Pods without an address get nothing (their traffic cannot
// exist yet); fws entries without a LocalPod are ignored.
func Build(fws map[string]*PodFirewall, pods []LocalPod, o Options) *State {
	st := &State{
		Chains: map[string][]string{}, Chains6: map[string][]string{}, Ingress: map[netip.Addr]string{},
		Egress: map[netip.Addr]string{}, Sets: map[string]*Set{}, Ready: map[netip.Addr]bool{},
	}
	active := map[*family]bool{v4: true}
	for _, c := range o.PodCIDRs {
		if v6.has(c.Addr()) {
			active[v6] = true
		}
	}
	for _, f := range families {
		if active[f] {
			st.static(f, o)
		}
	}
	owners := map[netip.Addr]int{}
	for _, p := range pods {
		if f := familyOf(p.IP); f != nil && active[f] {
			owners[p.IP]++
		}
	}
	for ip, n := range owners {
		if n > 1 {
			st.Conflict = append(st.Conflict, ip)
		}
	}
	slices.SortFunc(st.Conflict, netip.Addr.Compare)
	ready := map[string]bool{}
	for _, p := range pods {
		f := familyOf(p.IP)
		if f == nil || !active[f] || owners[p.IP] > 1 {
			continue
		}
		fw := fws[p.Key]
		if fw == nil {
			continue // not policed (hostNetwork) or unknown to Compute
		}
		in, out := PodChains(p.Key)
		chains := st.chains(f)
		if fw.IngressIsolated {
			chains[in] = st.podChain(f, p.Key, "ingress", fw.Ingress, ChainDenyIn)
			st.Ingress[p.IP] = in
		}
		if fw.EgressIsolated {
			chains[out] = st.podChain(f, p.Key, "egress", fw.Egress, ChainDenyOut)
			st.Egress[p.IP] = out
		}
		st.Ready[p.IP] = true
		ready[p.Key] = true
	}
	st.Pods = len(ready)
	return st
}

// familyOf returns an address's family (nil for an invalid or IPv4-mapped address).
func familyOf(a netip.Addr) *family {
	for _, f := range families {
		if f.has(a) {
			return f
		}
	}
	return nil
}

// ndTypes are the ICMPv6 neighbour discovery messages the IPv6 data path never polices (see the chain layout).
var ndTypes = []int{133, 134, 135, 136}

func (st *State) static(f *family, o Options) {
	var local []string
	for _, c := range o.PodCIDRs {
		if f.has(c.Addr()) {
			local = append(local, c.Masked().String())
		}
	}
	slices.Sort(local)
	st.Sets[f.local] = &Set{Type: "hash:net", Family: f.inet, Members: slices.Compact(local)}
	toPod := []string{
		"-m set --match-set " + f.local + " src -j " + ChainPod,
		"-m set ! --match-set " + f.local + " src -m set --match-set " + f.local + " dst -j " + ChainPod,
	}
	chains := st.chains(f)
	chains[ChainForward] = toPod
	chains[ChainOutput] = append([]string{"-m addrtype --src-type LOCAL -j RETURN"}, toPod...)
	pod := []string{"-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"}
	if f.v6 {
		for _, t := range ndTypes {
			pod = append(pod, fmt.Sprintf("-p ipv6-icmp -m icmp6 --icmpv6-type %d -m hl --hl-eq 255 %s -j RETURN", t,
				comment("canopy network policy: neighbour discovery")))
		}
	}
	chains[ChainPod] = append(pod,
		"-m set --match-set "+f.local+" src -m set ! --match-set "+f.ready+" src -j "+ChainUnready,
		"-m set --match-set "+f.local+" dst -m set ! --match-set "+f.ready+" dst -j "+ChainUnready,
		"-m set --match-set "+f.local+" src -j "+ChainEgress,
		"-m set --match-set "+f.local+" dst -j "+ChainIngress,
		"-j MARK --set-xmark "+clearMark,
	)
	chains[ChainUnready] = []string{
		comment("canopy network policy: pod has no rules yet") + " -j DROP",
	}
	chains[ChainDenyIn] = denyChain(f, commentDenyIn, "canopy-policy-in: ", o)
	chains[ChainDenyOut] = denyChain(f, "canopy network policy: egress denied", "canopy-policy-out: ", o)
}

func denyChain(f *family, what, prefix string, o Options) []string {
	var r []string
	switch o.Log {
	case "log":
		r = append(r, logRateLimit+" -j LOG --log-prefix "+quote(prefix))
	case "nflog":
		g := o.NFLOGGroup
		if g == 0 {
			g = defaultNFLOG
		}
		r = append(r, fmt.Sprintf("%s -j NFLOG --nflog-group %d --nflog-prefix %s", logRateLimit, g, quote(strings.TrimSuffix(prefix, " "))))
	}
	if o.Reject {
		return append(r, "-p tcp "+comment(what)+" -j REJECT --reject-with tcp-reset",
			comment(what)+" -j REJECT --reject-with "+f.unreachable)
	}
	return append(r, comment(what)+" -j DROP")
}

func comment(s string) string { return "-m comment --comment " + quote(s) }

// quote quotes s for iptables-restore (which splits on spaces outside double quotes).
func quote(s string) string {
	return `"` + strings.NewReplacer(`"`, "'", "\n", " ").Replace(s) + `"`
}

// podChain returns a pod's chain for one direction in family f and adds the per-policy chains and sets it uses.
func (st *State) podChain(f *family, key, dir string, rules []Rule, deny string) []string {
	lines := []string{"-j MARK --set-xmark " + clearMark}
	// Rules keep Compute's order; group them per policy, keeping the first appearance order.
	var order []string
	byPolicy := map[string][]Rule{}
	for _, r := range rules {
		if _, ok := byPolicy[r.Policy]; !ok {
			order = append(order, r.Policy)
		}
		byPolicy[r.Policy] = append(byPolicy[r.Policy], r)
	}
	for _, pol := range order {
		body := st.policyRules(f, pol, dir, byPolicy[pol])
		if len(body) == 0 {
			continue // nothing this policy allows is of this family
		}
		name := prefixRules + hash16(dir+"\x00"+strings.Join(body, "\n"))
		st.chains(f)[name] = body
		lines = append(lines, "-j "+name, "-m mark --mark "+allowMark+" -j RETURN")
	}
	return append(lines, comment(key+" "+dir+" denied")+" -j "+deny)
}

// policyRules renders one policy's rules for one direction: every peer x port is one line setting the allow bit.
func (st *State) policyRules(f *family, policy, dir string, rules []Rule) []string {
	side := "src"
	cidrFlag := "-s"
	if dir == "egress" {
		side, cidrFlag = "dst", "-d"
	}
	var out []string
	for _, r := range rules {
		var peers []string
		for _, p := range r.Peers {
			m, ok := st.peerMatch(f, p, side, cidrFlag)
			if ok {
				peers = append(peers, m)
			}
		}
		ports := []string{""}
		if len(r.Ports) > 0 {
			ports = ports[:0]
			for _, pr := range r.Ports {
				ports = append(ports, portMatch(pr))
			}
		}
		for _, pm := range peers {
			for _, port := range ports {
				out = append(out, strings.Join(nonEmpty(pm, port, comment(policy), "-j MARK --set-xmark "+allowMark), " "))
			}
		}
	}
	return slices.Compact(out)
}

func nonEmpty(s ...string) []string {
	return slices.DeleteFunc(s, func(x string) bool { return x == "" })
}

// peerMatch renders a peer for side ("src" for ingress, "dst" for egress) in family f; ok is false when the
// peer can match no address of the family.
func (st *State) peerMatch(f *family, p Peer, side, cidrFlag string) (string, bool) {
	setName := SetName
	if f.v6 {
		setName = SetName6
	}
	switch {
	case p.Any:
		return "", true
	case p.CIDR.IsValid():
		if !f.has(p.CIDR.Addr()) {
			return "", false
		}
		var excepts []netip.Prefix
		for _, e := range p.Except {
			if !f.has(e.Addr()) || !p.CIDR.Overlaps(e) {
				continue
			}
			if e.Bits() <= p.CIDR.Bits() {
				return "", false // the except covers the whole block
			}
			excepts = append(excepts, e)
		}
		if len(excepts) == 0 {
			if p.CIDR.Bits() == 0 {
				return "", true
			}
			return cidrFlag + " " + p.CIDR.String(), true
		}
		name := setName(p.Selector)
		if _, ok := st.Sets[name]; !ok {
			st.Sets[name] = &Set{Type: "hash:net", Family: f.inet, Members: netMembers(f, p.CIDR, excepts)}
		}
		return "-m set --match-set " + name + " " + side, true
	default:
		name := setName(p.Selector)
		if _, ok := st.Sets[name]; ok {
			return "-m set --match-set " + name + " " + side, true
		}
		var m []string
		for _, ip := range p.PodIPs {
			if f.has(ip) {
				m = append(m, ip.String())
			}
		}
		slices.Sort(m)
		m = slices.Compact(m)
		// A selector with no pod of this family still gets its (empty) set: the rule stays, so the set fills
		// when such a pod appears without a chain being rewritten.
		st.Sets[name] = &Set{Type: "hash:ip", Family: f.inet, Members: m}
		return "-m set --match-set " + name + " " + side, true
	}
}

// netMembers are the hash:net entries of cidr minus excepts. hash:net cannot hold a /0: it is split in two /1s.
func netMembers(f *family, cidr netip.Prefix, excepts []netip.Prefix) []string {
	var m []string
	if cidr.Bits() == 0 {
		m = append(m, f.all...)
	} else {
		m = append(m, cidr.Masked().String())
	}
	for _, e := range excepts {
		m = append(m, e.Masked().String()+" nomatch")
	}
	slices.Sort(m)
	return slices.Compact(m)
}

func portMatch(pr PortRule) string {
	proto := strings.ToLower(string(cmp.Or(pr.Protocol, corev1.ProtocolTCP)))
	switch {
	case pr.Port == 0:
		return "-p " + proto
	case pr.EndPort > pr.Port:
		return fmt.Sprintf("-p %s --dport %d:%d", proto, pr.Port, pr.EndPort)
	default:
		return fmt.Sprintf("-p %s --dport %d", proto, pr.Port)
	}
}
