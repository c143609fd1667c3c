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
	prefixRules   = "CANOPY-PR-"
	prefixPodIn   = "CANOPY-PI-"
	prefixPodOut  = "CANOPY-PE-"
	prefixSet     = "CANOPY-S-"
	allowMark     = "0x10000/0x10000"
	clearMark     = "0x0/0x10000"
	defaultNFLOG  = 100
	logRateLimit  = "-m limit --limit 10/second --limit-burst 20"
	commentDenyIn = "canopy network policy: ingress denied"
)

// staticChains are written whenever their content changes; the dispatch chains (ChainIngress, ChainEgress)
// are edited line by line.
var staticChains = []string{ChainForward, ChainOutput, ChainPod, ChainDenyIn, ChainDenyOut, ChainUnready}

// Options shape the data path.
type Options struct {
	// PodCIDRs are this node's pod CIDRs: the addresses of its pods (IPv4 ones are policed).
	PodCIDRs []netip.Prefix
	// Reject answers denied packets (TCP reset, else ICMP port unreachable) instead of dropping them.
	Reject bool
	// Log is "" (off), "log" (kernel log) or "nflog" (NFLOG group NFLOGGroup, default 100); rate-limited.
	Log        string
	NFLOGGroup int
}

// Set is one ipset: its type and members, sorted (a member may carry " nomatch").
type Set struct {
	Type    string // hash:ip or hash:net
	Members []string
}

// State is the data path of one node, as plain data: what Firewall.Sync programs.
type State struct {
	Chains   map[string][]string   // chain -> rule specs (static, per-pod and per-policy chains)
	Ingress  map[netip.Addr]string // dispatch: pod IP -> its CANOPY-PI- chain
	Egress   map[netip.Addr]string // dispatch: pod IP -> its CANOPY-PE- chain
	Sets     map[string]*Set       // peer sets (CANOPY-S-*), plus SetLocal
	Ready    map[netip.Addr]bool   // local pod IPs whose rules exist (the rest are dropped)
	Conflict []netip.Addr          // addresses claimed by several local pods: kept unready
}

// LocalPod is a pod of this node as the data path sees it.
type LocalPod struct {
	Key string // namespace/name
	IP  netip.Addr
}

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

// Build turns Compute's result for this node's pods into the data path. Only IPv4 is programmed: IPv6 peers
// and pods are skipped (the cluster family this agent polices). Pods without an address get nothing (their
// traffic cannot exist yet); fws entries without a LocalPod are ignored.
func Build(fws map[string]*PodFirewall, pods []LocalPod, o Options) *State {
	st := &State{
		Chains: map[string][]string{}, Ingress: map[netip.Addr]string{}, Egress: map[netip.Addr]string{},
		Sets: map[string]*Set{}, Ready: map[netip.Addr]bool{},
	}
	st.static(o)
	owners := map[netip.Addr]int{}
	for _, p := range pods {
		if p.IP.Is4() {
			owners[p.IP]++
		}
	}
	for ip, n := range owners {
		if n > 1 {
			st.Conflict = append(st.Conflict, ip)
		}
	}
	slices.SortFunc(st.Conflict, netip.Addr.Compare)
	for _, p := range pods {
		if !p.IP.Is4() || owners[p.IP] > 1 {
			continue
		}
		fw := fws[p.Key]
		if fw == nil {
			continue // not policed (hostNetwork) or unknown to Compute
		}
		in, out := PodChains(p.Key)
		if fw.IngressIsolated {
			st.Chains[in] = st.podChain(p.Key, "ingress", fw.Ingress, ChainDenyIn, o)
			st.Ingress[p.IP] = in
		}
		if fw.EgressIsolated {
			st.Chains[out] = st.podChain(p.Key, "egress", fw.Egress, ChainDenyOut, o)
			st.Egress[p.IP] = out
		}
		st.Ready[p.IP] = true
	}
	return st
}

func (st *State) static(o Options) {
	var local []string
	for _, c := range o.PodCIDRs {
		if c.Addr().Is4() {
			local = append(local, c.Masked().String())
		}
	}
	slices.Sort(local)
	st.Sets[SetLocal] = &Set{Type: "hash:net", Members: slices.Compact(local)}
	toPod := []string{
		"-m set --match-set " + SetLocal + " src -j " + ChainPod,
		"-m set ! --match-set " + SetLocal + " src -m set --match-set " + SetLocal + " dst -j " + ChainPod,
	}
	st.Chains[ChainForward] = toPod
	st.Chains[ChainOutput] = append([]string{"-m addrtype --src-type LOCAL -j RETURN"}, toPod...)
	st.Chains[ChainPod] = []string{
		"-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
		"-m set --match-set " + SetLocal + " src -m set ! --match-set " + SetReady + " src -j " + ChainUnready,
		"-m set --match-set " + SetLocal + " dst -m set ! --match-set " + SetReady + " dst -j " + ChainUnready,
		"-m set --match-set " + SetLocal + " src -j " + ChainEgress,
		"-m set --match-set " + SetLocal + " dst -j " + ChainIngress,
		"-j MARK --set-xmark " + clearMark,
	}
	st.Chains[ChainUnready] = []string{
		comment("canopy network policy: pod has no rules yet") + " -j DROP",
	}
	st.Chains[ChainDenyIn] = denyChain(commentDenyIn, "canopy-policy-in: ", o)
	st.Chains[ChainDenyOut] = denyChain("canopy network policy: egress denied", "canopy-policy-out: ", o)
}

func denyChain(what, prefix string, o Options) []string {
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
			comment(what)+" -j REJECT --reject-with icmp-port-unreachable")
	}
	return append(r, comment(what)+" -j DROP")
}

func comment(s string) string { return "-m comment --comment " + quote(s) }

// quote quotes s for iptables-restore (which splits on spaces outside double quotes).
func quote(s string) string {
	return `"` + strings.NewReplacer(`"`, "'", "\n", " ").Replace(s) + `"`
}

// podChain returns a pod's chain for one direction and adds the per-policy chains and sets it uses.
func (st *State) podChain(key, dir string, rules []Rule, deny string, o Options) []string {
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
		body := st.policyRules(pol, dir, byPolicy[pol])
		if len(body) == 0 {
			continue // nothing this policy allows can be expressed for IPv4
		}
		name := prefixRules + hash16(dir+"\x00"+strings.Join(body, "\n"))
		st.Chains[name] = body
		lines = append(lines, "-j "+name, "-m mark --mark "+allowMark+" -j RETURN")
	}
	return append(lines, comment(key+" "+dir+" denied")+" -j "+deny)
}

// policyRules renders one policy's rules for one direction: every peer x port is one line setting the allow bit.
func (st *State) policyRules(policy, dir string, rules []Rule) []string {
	side := "src"
	cidrFlag := "-s"
	if dir == "egress" {
		side, cidrFlag = "dst", "-d"
	}
	var out []string
	for _, r := range rules {
		var peers []string
		for _, p := range r.Peers {
			m, ok := st.peerMatch(p, side, cidrFlag)
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

// peerMatch renders a peer for side ("src" for ingress, "dst" for egress); ok is false when the peer can
// match no IPv4 address.
func (st *State) peerMatch(p Peer, side, cidrFlag string) (string, bool) {
	switch {
	case p.Any:
		return "", true
	case p.CIDR.IsValid():
		if !p.CIDR.Addr().Is4() {
			return "", false
		}
		var excepts []netip.Prefix
		for _, e := range p.Except {
			if !e.Addr().Is4() || !p.CIDR.Overlaps(e) {
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
		name := SetName(p.Selector)
		if _, ok := st.Sets[name]; !ok {
			st.Sets[name] = &Set{Type: "hash:net", Members: netMembers(p.CIDR, excepts)}
		}
		return "-m set --match-set " + name + " " + side, true
	default:
		name := SetName(p.Selector)
		if _, ok := st.Sets[name]; ok {
			return "-m set --match-set " + name + " " + side, true
		}
		var m []string
		for _, ip := range p.PodIPs {
			if ip.Is4() {
				m = append(m, ip.String())
			}
		}
		slices.Sort(m)
		m = slices.Compact(m)
		st.Sets[name] = &Set{Type: "hash:ip", Members: m}
		return "-m set --match-set " + name + " " + side, true
	}
}

// netMembers are the hash:net entries of cidr minus excepts. hash:net cannot hold a /0: it is split in two /1s.
func netMembers(cidr netip.Prefix, excepts []netip.Prefix) []string {
	var m []string
	if cidr.Bits() == 0 {
		m = append(m, "0.0.0.0/1", "128.0.0.0/1")
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
