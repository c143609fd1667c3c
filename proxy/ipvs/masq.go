package ipvs

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"canopy.io/canopy/internal/ipt"
)

// Chain is the nat chain, jumped to from POSTROUTING, that masquerades IPVS traffic from outside the pod
// network. With net.ipv4.vs.conntrack=1 the nat table sees IPVS connections after IPVS picked the real server;
// the xt_ipvs match (-m ipvs) finds them without one rule per virtual service. Its IPv6 twin, of the same name
// and shape, is in ip6tables (Config.IPT6), holding the IPv6 pod networks, exceptions and hairpin rules.
const Chain = "CANOPY-POSTROUTING-IPVS"

const (
	jumpComment  = "canopy: IPVS masquerade"
	localComment = "canopy-ipvs local " // + vsKey: external traffic to a Local-policy service keeps its source
	// + endpoint address: a local pod that IPVS sent its own connection back to (hairpin) is masqueraded, or it
	// would drop a packet from its own address, and its reply would skip IPVS.
	hairpinComment = "canopy-ipvs hairpin "
)

// IPTables is what the chain is written through (it must act in the namespace being programmed): whole
// changes in one restore, the jump as a single rule (an ipt.Host on a node).
type IPTables interface {
	ipt.RuleEditor
	ipt.ChainLister
	ipt.RestoreSaver
}

var masqJump = ipt.Jump{Table: "nat", Chain: "POSTROUTING", Rule: []string{"-m", "comment", "--comment", jumpComment, "-j", Chain}, Append: true}

type masq struct {
	ipt      IPTables
	v6       bool // ip6tables: holds the IPv6 exceptions and hairpin rules only
	log      *slog.Logger
	have     map[vsKey]bool      // Local exceptions in the chain
	hairpins map[netip.Addr]bool // hairpin rules in the chain
}

// StaticRules is the chain's tail: pod-network sources keep their address, every other IPVS connection is
// masqueraded (Local exceptions go before it). podCIDRs are those of the chain's family.
func StaticRules(podCIDRs []netip.Prefix) [][]string {
	var out [][]string
	for _, p := range podCIDRs {
		out = append(out, []string{"-s", p.Masked().String(), "-j", "RETURN"})
	}
	return append(out, []string{"-m", "ipvs", "--ipvs", "-j", "MASQUERADE"})
}

// mine reports whether an (unmapped) address is of the chain's family.
func (m *masq) mine(a netip.Addr) bool { return a.Is4() != m.v6 }

// ofFamily are the prefixes of one family (v6: IPv6), unmapped.
func ofFamily(ps []netip.Prefix, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if a := p.Addr().Unmap(); a.Is4() != v6 {
			bits := p.Bits()
			if p.Addr().Is4In6() {
				bits -= 96
			}
			out = append(out, netip.PrefixFrom(a, bits))
		}
	}
	return out
}

func localRule(k vsKey) []string {
	bits := 32
	if !k.addr.Is4() {
		bits = 128
	}
	return []string{"-m", "ipvs", "--vaddr", netip.PrefixFrom(k.addr, bits).String(), "--vport", strconv.Itoa(int(k.port)),
		"--vproto", strconv.Itoa(int(k.proto)), "-m", "comment", "--comment", localComment + k.String(), "-j", "RETURN"}
}

func hairpinRule(a netip.Addr) []string {
	p := netip.PrefixFrom(a, a.BitLen()).String()
	return []string{"-s", p, "-d", p, "-m", "ipvs", "--ipvs", "-m", "comment", "--comment", hairpinComment + a.String(), "-j", "MASQUERADE"}
}

// parseHairpin finds the endpoint address of a hairpin rule in an `iptables -S` line by its comment.
func parseHairpin(line string) (netip.Addr, bool) {
	i := strings.Index(line, hairpinComment)
	if i < 0 {
		return netip.Addr{}, false
	}
	f := strings.Fields(line[i+len(hairpinComment):])
	if len(f) == 0 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(strings.Trim(f[0], `"`))
	return a, err == nil
}

// newMasq makes sure the chain, its jump and its static rules exist (rewriting the chain, in one restore, only
// when its static rules differ) and reads back the Local exceptions and hairpin rules it holds.
func newMasq(it IPTables, v6 bool, podCIDRs []netip.Prefix, log *slog.Logger) (*masq, error) {
	m := &masq{ipt: it, v6: v6, log: log, have: map[vsKey]bool{}, hairpins: map[netip.Addr]bool{}}
	podCIDRs = ofFamily(podCIDRs, v6)
	lines, err := it.List("nat", Chain)
	exists := err == nil
	var static []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		if k, ok := parseLocal(l); ok {
			m.have[k] = true
			continue
		}
		if a, ok := parseHairpin(l); ok {
			m.hairpins[a] = true
			continue
		}
		static = append(static, normalize(strings.TrimPrefix(l, "-A "+Chain+" ")))
	}
	var want []string
	for _, r := range StaticRules(podCIDRs) {
		want = append(want, normalize(strings.Join(r, " ")))
	}
	if !exists || !slices.Equal(static, want) {
		var tx ipt.Tx
		tx.Declare(Chain)
		for _, a := range sortedAddrs(m.hairpins) {
			tx.Rule(Chain, ipt.Spec(hairpinRule(a)))
		}
		for _, k := range sortedKeys(m.have) {
			tx.Rule(Chain, ipt.Spec(localRule(k)))
		}
		for _, r := range StaticRules(podCIDRs) {
			tx.Rule(Chain, ipt.Spec(r))
		}
		if err := it.Restore("nat", tx.Bytes("nat")); err != nil {
			return nil, fmt.Errorf("nat %s: %w", Chain, err)
		}
		log.Info("IPVS masquerade chain programmed", "chain", Chain, "ipv6", v6, "pod_cidrs", podCIDRs)
	}
	if err := ipt.EnsureJumps(it, masqJump); err != nil {
		return nil, err
	}
	return m, nil
}

func sortedAddrs(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// parseLocal finds the virtual service of a Local exception in an `iptables -S` line by its comment.
func parseLocal(line string) (vsKey, bool) {
	i := strings.Index(line, localComment)
	if i < 0 {
		return vsKey{}, false
	}
	s := strings.Trim(strings.Fields(line[i+len(localComment):])[0], `"`)
	proto, ap, ok := strings.Cut(s, "/")
	if !ok {
		return vsKey{}, false
	}
	addrPort, err := netip.ParseAddrPort(ap)
	if err != nil {
		return vsKey{}, false
	}
	var p uint16
	for _, n := range []uint16{6, 17, 132} {
		if protoName(n) == proto {
			p = n
		}
	}
	if p == 0 {
		return vsKey{}, false
	}
	return vsKey{p, addrPort.Addr(), addrPort.Port()}, true
}

// update adds the exceptions in want missing from the chain and removes those in old that want lacks, in one
// restore.
func (m *masq) update(old, want map[vsKey]bool) error {
	var tx ipt.Tx
	var add, del []vsKey
	for _, k := range sortedKeys(want) {
		if m.mine(k.addr) && !m.have[k] {
			tx.Raw("-I " + Chain + " 1 " + ipt.Spec(localRule(k)) + "\n")
			add = append(add, k)
		}
	}
	for _, k := range sortedKeys(old) {
		if !want[k] && m.have[k] && m.mine(k.addr) {
			tx.Raw("-D " + Chain + " " + ipt.Spec(localRule(k)) + "\n")
			del = append(del, k)
		}
	}
	if tx.Empty() {
		return nil
	}
	if err := m.ipt.Restore("nat", tx.Bytes("nat")); err != nil {
		return fmt.Errorf("nat %s: Local exceptions (+%d -%d): %w", Chain, len(add), len(del), err)
	}
	for _, k := range add {
		m.have[k] = true
	}
	for _, k := range del {
		delete(m.have, k)
	}
	return nil
}

// hairpin makes the chain hold a hairpin rule for each of addrs exactly when users[addr] > 0, in one restore.
func (m *masq) hairpin(addrs map[netip.Addr]bool, users map[netip.Addr]int) error {
	var tx ipt.Tx
	var add, del []netip.Addr
	for _, a := range sortedAddrs(addrs) {
		if !m.mine(a) {
			continue
		}
		switch want := users[a] > 0; {
		case want && !m.hairpins[a]:
			tx.Raw("-I " + Chain + " 1 " + ipt.Spec(hairpinRule(a)) + "\n")
			add = append(add, a)
		case !want && m.hairpins[a]:
			tx.Raw("-D " + Chain + " " + ipt.Spec(hairpinRule(a)) + "\n")
			del = append(del, a)
		}
	}
	if tx.Empty() {
		return nil
	}
	if err := m.ipt.Restore("nat", tx.Bytes("nat")); err != nil {
		return fmt.Errorf("nat %s: hairpin rules (+%d -%d): %w", Chain, len(add), len(del), err)
	}
	for _, a := range add {
		m.hairpins[a] = true
	}
	for _, a := range del {
		delete(m.hairpins, a)
	}
	return nil
}

// prune removes exceptions no key claims.
func (m *masq) prune(claimed map[vsKey]bool) error {
	stale := map[vsKey]bool{}
	for k := range m.have {
		if !claimed[k] {
			stale[k] = true
		}
	}
	return m.update(stale, nil)
}

func normalize(s string) string {
	s = strings.ReplaceAll(s, `"`, "")
	return strings.Join(strings.Fields(s), " ")
}
