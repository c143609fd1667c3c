package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Pod is the subset of a core/v1 Pod that NetworkPolicy semantics depend on.
type Pod struct {
	Namespace, Name string
	// IP is the pod's primary IP (its IPv4 address when it has one). An invalid (zero) IP means "not assigned
	// yet": the pod still gets a firewall entry (so it can be protected before its first packet) but never
	// appears as a peer.
	IP netip.Addr
	// IPs are all of a dual-stack pod's addresses (one per family, IP among them); empty means IP alone.
	IPs         []netip.Addr
	Labels      map[string]string
	HostNetwork bool
	NodeName    string
	// Ports are the container ports of all containers; only named ones matter (named-port resolution).
	Ports []NamedPort
}

// NamedPort is one container port. An empty Protocol means TCP.
type NamedPort struct {
	Name     string
	Port     uint16
	Protocol corev1.Protocol
}

// Namespace is the subset of a core/v1 Namespace that NetworkPolicy semantics depend on. The
// kubernetes.io/metadata.name label is implied (as the apiserver sets it) if missing. Pods whose
// namespace is not in the list are treated as living in a namespace with only that implied label.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// PortRule is one allowed protocol + port range, already resolved to numbers (named ports included).
// Port == 0 means all ports of Protocol; otherwise the range is Port..EndPort inclusive (EndPort ==
// Port for a single port). Protocol is never empty (TCP when the policy omitted it).
type PortRule struct {
	Protocol      corev1.Protocol
	Port, EndPort uint16
}

// Peer is one allowed remote side of a rule. Exactly one of the following holds:
//   - Any: every address (the rule had an empty from/to);
//   - CIDR is valid: addresses in CIDR but in none of Except (ipBlock);
//   - PodIPs is non-empty: exactly those pod IPs (sorted, deduplicated; from pod/namespace selectors,
//     or from named-port expansion of egress rules, see Rule).
//
// Selector is a canonical, stable description of where the peer came from (for selector peers e.g.
// `ns(team=a)/pod(app=db)`, for named-port expansions `named(ns/policy/egressN/TCP:53)`), suitable to name or share an ipset between rules and pods. Peers with
// equal Selector have equal PodIPs within one Compute result. Slices may be shared between
// results and must be treated as read-only.
type Peer struct {
	PodIPs   []netip.Addr
	CIDR     netip.Prefix
	Except   []netip.Prefix
	Any      bool
	Selector string
}

// Rule allows traffic to/from any of Peers on any of Ports.
//
// Peers is never empty: a rule whose peers all select nothing is dropped, and "everyone" is an
// explicit Peer{Any: true}. Ports empty means all ports and protocols; a policy rule whose ports all
// fail named-port resolution is dropped (it allows nothing, it does not widen to all ports).
//
// Named ports: for ingress they are resolved against the target (selected) pod's container ports
// (name and protocol must match). For egress they must be resolved against each destination pod, so a
// rule with named ports is split: numeric ports keep the rule's peers, and every named port becomes
// one Rule per resolved (protocol, number) whose single Peer lists the destination pod IPs (of the
// rule's peers) that expose that name. Destinations are pods only: an ipBlock peer resolves against
// the known pods inside the block (minus excepts), an empty `to` against all pods; addresses that are
// not pods never match a named port.
type Rule struct {
	Peers  []Peer
	Ports  []PortRule
	Policy string // namespace/name of the NetworkPolicy, for counters/logging
}

// PodFirewall is what the data path programs for one pod. When a direction is not isolated all
// traffic of that direction is allowed and its rule list is empty; when it is isolated only traffic
// matching one of the rules (a union, there are no deny rules) is allowed.
type PodFirewall struct {
	IngressIsolated, EgressIsolated bool
	Ingress, Egress                 []Rule
}

const nsNameLabel = "kubernetes.io/metadata.name"

// Compute returns the firewall of every non-hostNetwork pod on nodeName (of every non-hostNetwork pod
// when nodeName == ""), keyed by "namespace/name". Pods selected by no policy get an entry with no
// isolation. Policies are applied in namespace/name order and rules keep their order inside a policy,
// so the result is deterministic. Inputs are not modified; nil entries are ignored.
func Compute(policies []*networkingv1.NetworkPolicy, pods []*Pod, namespaces []*Namespace, nodeName string) map[string]*PodFirewall {
	ix := newIndex(pods, namespaces, nodeName)
	out := make(map[string]*PodFirewall, len(ix.policed))
	for _, p := range ix.policed {
		out[podKey(p)] = &PodFirewall{}
	}

	pols := make([]*networkingv1.NetworkPolicy, 0, len(policies))
	for _, np := range policies {
		if np != nil {
			pols = append(pols, np)
		}
	}
	slices.SortFunc(pols, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})

	for _, np := range pols {
		targets := ix.targets(np.Namespace, &np.Spec.PodSelector)
		if len(targets) == 0 {
			continue
		}
		ingress, egress := policyTypes(np)
		name := np.Namespace + "/" + np.Name

		if ingress {
			rules := make([]ingressRule, 0, len(np.Spec.Ingress))
			for _, r := range np.Spec.Ingress {
				peers, ok := ix.peers(np.Namespace, r.From)
				if !ok {
					continue
				}
				rules = append(rules, ingressRule{peers: peers, ports: r.Ports})
			}
			for _, t := range targets {
				fw := out[podKey(t)]
				fw.IngressIsolated = true
				for _, r := range rules {
					ports, ok := resolvePorts(r.ports, t)
					if !ok {
						continue
					}
					fw.Ingress = append(fw.Ingress, Rule{Peers: r.peers, Ports: ports, Policy: name})
				}
			}
		}
		if egress {
			var rules []Rule
			for i, r := range np.Spec.Egress {
				rules = append(rules, ix.egressRules(np.Namespace, name, i, r)...)
			}
			for _, t := range targets {
				fw := out[podKey(t)]
				fw.EgressIsolated = true
				fw.Egress = append(fw.Egress, rules...)
			}
		}
	}
	return out
}

type ingressRule struct {
	peers []Peer
	ports []networkingv1.NetworkPolicyPort
}

// policyTypes applies the API defaulting: Ingress always, Egress when the policy has egress rules.
func policyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func podKey(p *Pod) string { return p.Namespace + "/" + p.Name }

// Addrs returns every address of the pod: IPs, or IP alone (none while it has no address).
func (p *Pod) Addrs() []netip.Addr {
	if len(p.IPs) > 0 {
		return p.IPs
	}
	if p.IP.IsValid() {
		return []netip.Addr{p.IP}
	}
	return nil
}

// podSet is a cached selector result: pods sorted by IP, and their distinct IPs (every family's).
type podSet struct {
	pods []*Pod
	ips  []netip.Addr
}

type index struct {
	policed    []*Pod                // pods that get a firewall
	policedNS  map[string][]*Pod     // policed pods by namespace
	peersNS    map[string][]*Pod     // pods usable as peers (not hostNetwork, valid IP), by namespace
	allPeers   []*Pod                // all peer pods, sorted by IP
	nsLabels   map[string]labels.Set // namespace labels (including implied name label)
	nsNames    []string              // sorted
	targetMemo map[string][]*Pod
	peerMemo   map[string]*podSet
	nsMemo     map[string][]string
}

func newIndex(pods []*Pod, namespaces []*Namespace, nodeName string) *index {
	ix := &index{
		policedNS:  map[string][]*Pod{},
		peersNS:    map[string][]*Pod{},
		nsLabels:   map[string]labels.Set{},
		targetMemo: map[string][]*Pod{},
		peerMemo:   map[string]*podSet{},
		nsMemo:     map[string][]string{},
	}
	for _, ns := range namespaces {
		if ns == nil {
			continue
		}
		set := make(labels.Set, len(ns.Labels)+1)
		for k, v := range ns.Labels {
			set[k] = v
		}
		if _, ok := set[nsNameLabel]; !ok {
			set[nsNameLabel] = ns.Name
		}
		ix.nsLabels[ns.Name] = set
	}
	for _, p := range pods {
		if p == nil || p.HostNetwork {
			continue
		}
		if _, ok := ix.nsLabels[p.Namespace]; !ok {
			ix.nsLabels[p.Namespace] = labels.Set{nsNameLabel: p.Namespace}
		}
		if nodeName == "" || p.NodeName == nodeName {
			ix.policed = append(ix.policed, p)
			ix.policedNS[p.Namespace] = append(ix.policedNS[p.Namespace], p)
		}
		if p.IP.IsValid() {
			ix.peersNS[p.Namespace] = append(ix.peersNS[p.Namespace], p)
			ix.allPeers = append(ix.allPeers, p)
		}
	}
	sortPods(ix.allPeers)
	for ns := range ix.nsLabels {
		ix.nsNames = append(ix.nsNames, ns)
	}
	sort.Strings(ix.nsNames)
	return ix
}

func sortPods(ps []*Pod) {
	slices.SortFunc(ps, func(a, b *Pod) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}

// selector converts a LabelSelector; an invalid one (rejected by API validation anyway) selects nothing.
func selector(ls *metav1.LabelSelector) labels.Selector {
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return labels.Nothing()
	}
	return s
}

func selectorKey(s labels.Selector) string {
	if s.Empty() {
		return "*"
	}
	if str := s.String(); str != "" {
		return str
	}
	return "<none>" // labels.Nothing()
}

// targets returns the policed pods of namespace ns selected by the policy's podSelector.
func (ix *index) targets(ns string, ls *metav1.LabelSelector) []*Pod {
	sel := selector(ls)
	key := ns + "\x00" + selectorKey(sel)
	if r, ok := ix.targetMemo[key]; ok {
		return r
	}
	var r []*Pod
	for _, p := range ix.policedNS[ns] {
		if sel.Matches(labels.Set(p.Labels)) {
			r = append(r, p)
		}
	}
	ix.targetMemo[key] = r
	return r
}

// namespacesMatching returns the sorted names of namespaces whose labels match sel.
func (ix *index) namespacesMatching(sel labels.Selector, key string) []string {
	if r, ok := ix.nsMemo[key]; ok {
		return r
	}
	var r []string
	for _, ns := range ix.nsNames {
		if sel.Matches(ix.nsLabels[ns]) {
			r = append(r, ns)
		}
	}
	ix.nsMemo[key] = r
	return r
}

// selectPods resolves a selector peer. nsSel == nil means "the policy namespace only"; podSel == nil
// means all pods of the selected namespaces.
func (ix *index) selectPods(policyNS string, podSel, nsSel *metav1.LabelSelector) (*podSet, string) {
	var nss []string
	var nsKey string
	if nsSel == nil {
		nss = []string{policyNS}
		nsKey = "ns=" + policyNS
	} else {
		s := selector(nsSel)
		k := selectorKey(s)
		nss = ix.namespacesMatching(s, k)
		nsKey = "ns(" + k + ")"
	}
	podS := labels.Everything()
	if podSel != nil {
		podS = selector(podSel)
	}
	key := nsKey + "/pod(" + selectorKey(podS) + ")"
	if r, ok := ix.peerMemo[key]; ok {
		return r, key
	}
	r := &podSet{}
	for _, ns := range nss {
		for _, p := range ix.peersNS[ns] {
			if podS.Matches(labels.Set(p.Labels)) {
				r.pods = append(r.pods, p)
			}
		}
	}
	sortPods(r.pods)
	for _, p := range r.pods {
		r.ips = append(r.ips, p.Addrs()...)
	}
	slices.SortFunc(r.ips, netip.Addr.Compare)
	r.ips = slices.Compact(r.ips)
	ix.peerMemo[key] = r
	return r, key
}

// resolvedPeer is a Peer plus, for selector peers, the pods behind it (for egress named ports).
type resolvedPeer struct {
	Peer
	pods []*Pod
}

// resolvePeers turns a from/to list into peers. ok is false when the rule can match nothing (all
// peers empty or invalid). An empty list is a single Any peer.
func (ix *index) resolvePeers(policyNS string, in []networkingv1.NetworkPolicyPeer) (out []resolvedPeer, ok bool) {
	if len(in) == 0 {
		return []resolvedPeer{{Peer: Peer{Any: true, Selector: "any"}, pods: ix.allPeers}}, true
	}
	for _, p := range in {
		switch {
		case p.IPBlock != nil:
			cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
			if err != nil {
				continue
			}
			peer := Peer{CIDR: cidr.Masked()}
			valid := true
			for _, e := range p.IPBlock.Except {
				ep, err := netip.ParsePrefix(e)
				if err != nil {
					valid = false // never widen access because of a bad except
					break
				}
				peer.Except = append(peer.Except, ep.Masked())
			}
			if !valid {
				continue
			}
			slices.SortFunc(peer.Except, comparePrefix)
			peer.Except = slices.Compact(peer.Except)
			var sb strings.Builder
			sb.WriteString("cidr(" + peer.CIDR.String())
			for _, e := range peer.Except {
				sb.WriteString(" -" + e.String())
			}
			sb.WriteString(")")
			peer.Selector = sb.String()
			out = append(out, resolvedPeer{Peer: peer})
		case p.PodSelector != nil || p.NamespaceSelector != nil:
			set, key := ix.selectPods(policyNS, p.PodSelector, p.NamespaceSelector)
			if len(set.ips) == 0 {
				continue
			}
			out = append(out, resolvedPeer{Peer: Peer{PodIPs: set.ips, Selector: key}, pods: set.pods})
		}
	}
	return out, len(out) > 0
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// peers is resolvePeers without the pod lists.
func (ix *index) peers(policyNS string, in []networkingv1.NetworkPolicyPeer) ([]Peer, bool) {
	rp, ok := ix.resolvePeers(policyNS, in)
	if !ok {
		return nil, false
	}
	out := make([]Peer, len(rp))
	for i := range rp {
		out[i] = rp[i].Peer
	}
	return out, true
}

func protocolOf(p *corev1.Protocol) corev1.Protocol {
	if p == nil || *p == "" {
		return corev1.ProtocolTCP
	}
	return *p
}

// numericPort converts a policy port without a name. ok is false for invalid entries (port out of
// range, endPort < port), which then allow nothing.
func numericPort(pp networkingv1.NetworkPolicyPort) (PortRule, bool) {
	pr := PortRule{Protocol: protocolOf(pp.Protocol)}
	if pp.Port == nil {
		return pr, true // all ports of the protocol
	}
	n := pp.Port.IntValue()
	if n < 1 || n > 65535 {
		return pr, false
	}
	pr.Port, pr.EndPort = uint16(n), uint16(n)
	if pp.EndPort != nil {
		e := int(*pp.EndPort)
		if e < n || e > 65535 {
			return pr, false
		}
		pr.EndPort = uint16(e)
	}
	return pr, true
}

func isNamed(pp networkingv1.NetworkPolicyPort) bool {
	return pp.Port != nil && pp.Port.Type == intstr.String
}

// lookupNamed returns the port numbers pod exposes under name for protocol.
func lookupNamed(p *Pod, name string, proto corev1.Protocol) []uint16 {
	var r []uint16
	for _, np := range p.Ports {
		pp := np.Protocol
		if pp == "" {
			pp = corev1.ProtocolTCP
		}
		if np.Name == name && pp == proto && np.Port != 0 && !slices.Contains(r, np.Port) {
			r = append(r, np.Port)
		}
	}
	return r
}

// resolvePorts resolves a rule's ports against the target pod (ingress). ok is false when the rule
// listed ports but none resolved: such a rule allows nothing.
func resolvePorts(in []networkingv1.NetworkPolicyPort, target *Pod) ([]PortRule, bool) {
	if len(in) == 0 {
		return nil, true
	}
	var out []PortRule
	for _, pp := range in {
		if isNamed(pp) {
			proto := protocolOf(pp.Protocol)
			for _, n := range lookupNamed(target, pp.Port.StrVal, proto) {
				out = appendPort(out, PortRule{Protocol: proto, Port: n, EndPort: n})
			}
			continue
		}
		if pr, ok := numericPort(pp); ok {
			out = appendPort(out, pr)
		}
	}
	return out, len(out) > 0
}

func appendPort(s []PortRule, p PortRule) []PortRule {
	if slices.Contains(s, p) {
		return s
	}
	return append(s, p)
}

// egressRules converts one egress rule, splitting named ports per destination pod (see Rule).
func (ix *index) egressRules(policyNS, name string, idx int, r networkingv1.NetworkPolicyEgressRule) []Rule {
	rp, ok := ix.resolvePeers(policyNS, r.To)
	if !ok {
		return nil
	}
	peers := make([]Peer, len(rp))
	for i := range rp {
		peers[i] = rp[i].Peer
	}
	if len(r.Ports) == 0 {
		return []Rule{{Peers: peers, Ports: nil, Policy: name}}
	}
	var numeric []PortRule
	var named []networkingv1.NetworkPolicyPort
	for _, pp := range r.Ports {
		if isNamed(pp) {
			named = append(named, pp)
		} else if pr, ok := numericPort(pp); ok {
			numeric = appendPort(numeric, pr)
		}
	}
	var out []Rule
	if len(numeric) > 0 {
		out = append(out, Rule{Peers: peers, Ports: numeric, Policy: name})
	}
	if len(named) == 0 {
		return out
	}
	// Destination pods of all peers with the addresses each peer reaches them at (a pod selector: all of them;
	// an ipBlock: those inside the block), deduplicated.
	var dests []*Pod
	addrs := map[*Pod][]netip.Addr{}
	for _, p := range rp {
		if p.CIDR.IsValid() {
			for _, d := range ix.podsInBlock(p.Peer) {
				if addrs[d] == nil {
					dests = append(dests, d)
				}
				addrs[d] = append(addrs[d], inBlock(p.Peer, d)...)
			}
			continue
		}
		for _, d := range p.pods {
			if addrs[d] == nil {
				dests = append(dests, d)
			}
			addrs[d] = append(addrs[d], d.Addrs()...)
		}
	}
	groups := map[PortRule][]netip.Addr{}
	for _, pp := range named {
		proto := protocolOf(pp.Protocol)
		for _, d := range dests {
			for _, n := range lookupNamed(d, pp.Port.StrVal, proto) {
				k := PortRule{Protocol: proto, Port: n, EndPort: n}
				groups[k] = append(groups[k], addrs[d]...)
			}
		}
	}
	keys := make([]PortRule, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b PortRule) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	for _, k := range keys {
		ips := groups[k]
		slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
		ips = slices.Compact(ips)
		out = append(out, Rule{
			Peers:  []Peer{{PodIPs: ips, Selector: fmt.Sprintf("named(%s/egress%d/%s:%d)", name, idx, k.Protocol, k.Port)}},
			Ports:  []PortRule{k},
			Policy: name,
		})
	}
	return out
}

// podsInBlock returns the peer pods with an address inside the block and outside its excepts.
func (ix *index) podsInBlock(p Peer) []*Pod {
	var r []*Pod
	for _, d := range ix.allPeers {
		if len(inBlock(p, d)) > 0 {
			r = append(r, d)
		}
	}
	return r
}

// inBlock returns the addresses of d inside the block p and outside its excepts.
func inBlock(p Peer, d *Pod) []netip.Addr {
	var r []netip.Addr
	for _, a := range d.Addrs() {
		if !p.CIDR.Contains(a) || slices.ContainsFunc(p.Except, func(e netip.Prefix) bool { return e.Contains(a) }) {
			continue
		}
		r = append(r, a)
	}
	return r
}
