package ipvs

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Chain is the nat chain, jumped to from POSTROUTING, that masquerades IPVS traffic from outside the pod
// network. With net.ipv4.vs.conntrack=1 the nat table sees IPVS connections after IPVS picked the real server;
// the xt_ipvs match (-m ipvs) finds them without one rule per virtual service.
const Chain = "CANOPY-POSTROUTING-IPVS"

const (
	jumpComment  = "canopy: IPVS masquerade"
	localComment = "canopy-ipvs local " // + vsKey: external traffic to a Local-policy service keeps its source
	// + endpoint address: a local pod that IPVS sent its own connection back to (hairpin) is masqueraded, or it
	// would drop a packet from its own address, and its reply would skip IPVS.
	hairpinComment = "canopy-ipvs hairpin "
)

// IPTables is the part of go-iptables the chain needs (it must act in the namespace being programmed).
type IPTables interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	List(table, chain string) ([]string, error)
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
}

type masq struct {
	ipt      IPTables
	log      *slog.Logger
	have     map[vsKey]bool      // Local exceptions in the chain
	hairpins map[netip.Addr]bool // hairpin rules in the chain
}

// StaticRules is the chain's tail: pod-network sources keep their address, every other IPVS connection is
// masqueraded (Local exceptions go before it).
func StaticRules(podCIDRs []netip.Prefix) [][]string {
	var out [][]string
	for _, p := range podCIDRs {
		out = append(out, []string{"-s", p.Masked().String(), "-j", "RETURN"})
	}
	return append(out, []string{"-m", "ipvs", "--ipvs", "-j", "MASQUERADE"})
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

// newMasq makes sure the chain, its jump and its static rules exist (rewriting the chain only when its static
// rules differ) and reads back the Local exceptions it holds.
func newMasq(ipt IPTables, podCIDRs []netip.Prefix, log *slog.Logger) (*masq, error) {
	m := &masq{ipt: ipt, log: log, have: map[vsKey]bool{}, hairpins: map[netip.Addr]bool{}}
	ok, err := ipt.ChainExists("nat", Chain)
	if err != nil {
		return nil, fmt.Errorf("nat %s: %w", Chain, err)
	}
	if !ok {
		if err := ipt.NewChain("nat", Chain); err != nil {
			return nil, fmt.Errorf("create nat %s: %w", Chain, err)
		}
	}
	jump := []string{"-m", "comment", "--comment", jumpComment, "-j", Chain}
	if ok, err := ipt.Exists("nat", "POSTROUTING", jump...); err != nil {
		return nil, err
	} else if !ok {
		if err := ipt.Append("nat", "POSTROUTING", jump...); err != nil {
			return nil, fmt.Errorf("jump from POSTROUTING: %w", err)
		}
	}
	lines, err := ipt.List("nat", Chain)
	if err != nil {
		return nil, err
	}
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
	if slices.Equal(static, want) {
		return m, nil
	}
	if err := ipt.ClearChain("nat", Chain); err != nil {
		return nil, err
	}
	for _, r := range StaticRules(podCIDRs) {
		if err := ipt.Append("nat", Chain, r...); err != nil {
			return nil, fmt.Errorf("nat %s %s: %w", Chain, strings.Join(r, " "), err)
		}
	}
	for k := range m.have {
		if err := ipt.Insert("nat", Chain, 1, localRule(k)...); err != nil {
			return nil, err
		}
	}
	for a := range m.hairpins {
		if err := ipt.Insert("nat", Chain, 1, hairpinRule(a)...); err != nil {
			return nil, err
		}
	}
	log.Info("IPVS masquerade chain programmed", "chain", Chain, "pod_cidrs", podCIDRs)
	return m, nil
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

// update adds the exceptions in want missing from the chain and removes those in old that want lacks.
func (m *masq) update(old, want map[vsKey]bool) error {
	var errs []error
	for _, k := range sortedKeys(want) {
		if m.have[k] {
			continue
		}
		if err := m.ipt.Insert("nat", Chain, 1, localRule(k)...); err != nil {
			errs = append(errs, fmt.Errorf("nat %s: Local exception for %v: %w", Chain, k, err))
			continue
		}
		m.have[k] = true
	}
	for _, k := range sortedKeys(old) {
		if want[k] || !m.have[k] {
			continue
		}
		if err := m.ipt.Delete("nat", Chain, localRule(k)...); err != nil {
			errs = append(errs, fmt.Errorf("nat %s: remove Local exception for %v: %w", Chain, k, err))
			continue
		}
		delete(m.have, k)
	}
	return errors.Join(errs...)
}

// hairpin makes the chain hold a hairpin rule for each of addrs exactly when users[addr] > 0.
func (m *masq) hairpin(addrs map[netip.Addr]bool, users map[netip.Addr]int) error {
	var errs []error
	for a := range addrs {
		switch want := users[a] > 0; {
		case want && !m.hairpins[a]:
			if err := m.ipt.Insert("nat", Chain, 1, hairpinRule(a)...); err != nil {
				errs = append(errs, fmt.Errorf("nat %s: hairpin rule for %s: %w", Chain, a, err))
				continue
			}
			m.hairpins[a] = true
		case !want && m.hairpins[a]:
			if err := m.ipt.Delete("nat", Chain, hairpinRule(a)...); err != nil {
				errs = append(errs, fmt.Errorf("nat %s: remove hairpin rule for %s: %w", Chain, a, err))
				continue
			}
			delete(m.hairpins, a)
		}
	}
	return errors.Join(errs...)
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
