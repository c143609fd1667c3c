// Package egress masquerades pod traffic leaving the cluster to the node's address, in Canopy's own chain
// CANOPY-POSTROUTING of the nat table. Traffic between pods and to services keeps its source address: the
// address a pod sees itself as is the one others see.
package egress

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
)

// Chain is Canopy's nat chain for pod egress, jumped to from POSTROUTING.
const Chain = "CANOPY-POSTROUTING"

const jumpComment = "canopy: pod egress masquerade"

// IPTables is the part of go-iptables this package uses (a fake in unit tests).
type IPTables interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	List(table, chain string) ([]string, error)
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
}

// Rules is the chain's content for pods in podCIDRs: no NAT towards keep (the cluster's pod and service
// networks), masquerade for everything else the pods send.
func Rules(podCIDRs, keep []netip.Prefix) [][]string {
	var out [][]string
	for _, k := range keep {
		out = append(out, []string{"-d", k.String(), "-m", "comment", "--comment", "canopy: cluster-internal, keep source", "-j", "RETURN"})
	}
	for _, p := range podCIDRs {
		if !p.Addr().Is4() {
			continue
		}
		out = append(out, []string{"-s", p.String(), "-m", "comment", "--comment", "canopy: pod egress", "-j", "MASQUERADE", "--random-fully"})
	}
	return out
}

// Apply makes the chain hold exactly Rules(podCIDRs, keep) and POSTROUTING jump to it. It rewrites only our
// chain, and only when its content differs.
func Apply(ipt IPTables, podCIDRs, keep []netip.Prefix, log *slog.Logger) error {
	ok, err := ipt.ChainExists("nat", Chain)
	if err != nil {
		return fmt.Errorf("nat %s: %w", Chain, err)
	}
	if !ok {
		if err := ipt.NewChain("nat", Chain); err != nil {
			return fmt.Errorf("create nat %s: %w", Chain, err)
		}
	}
	jump := []string{"-m", "comment", "--comment", jumpComment, "-j", Chain}
	if ok, err := ipt.Exists("nat", "POSTROUTING", jump...); err != nil {
		return err
	} else if !ok {
		if err := ipt.Insert("nat", "POSTROUTING", 1, jump...); err != nil {
			return fmt.Errorf("jump from POSTROUTING: %w", err)
		}
	}
	want := Rules(podCIDRs, keep)
	have, err := ipt.List("nat", Chain)
	if err != nil {
		return err
	}
	if sameRules(have, want) {
		return nil
	}
	if err := ipt.ClearChain("nat", Chain); err != nil {
		return err
	}
	for _, r := range want {
		if err := ipt.Append("nat", Chain, r...); err != nil {
			return fmt.Errorf("nat %s %s: %w", Chain, strings.Join(r, " "), err)
		}
	}
	log.Info("pod egress masquerade programmed", "chain", Chain, "pod_cidrs", podCIDRs, "no_nat_to", keep)
	return nil
}

// Remove deletes the jump and the chain (egress masquerade turned off).
func Remove(ipt IPTables) error {
	jump := []string{"-m", "comment", "--comment", jumpComment, "-j", Chain}
	if ok, _ := ipt.Exists("nat", "POSTROUTING", jump...); ok {
		if err := ipt.Delete("nat", "POSTROUTING", jump...); err != nil {
			return err
		}
	}
	if ok, _ := ipt.ChainExists("nat", Chain); ok {
		if err := ipt.ClearChain("nat", Chain); err != nil {
			return err
		}
		return ipt.DeleteChain("nat", Chain)
	}
	return nil
}

// ForwardChain is Canopy's filter chain that accepts pod traffic at the end of FORWARD, for hosts whose FORWARD
// policy is DROP (Docker sets that): without it such a node forwards no pod traffic at all. Being last, it
// overrides only the policy: every rule before it (an administrator's, NetworkPolicy's) still decides first.
const ForwardChain = "CANOPY-FORWARD-ACCEPT"

const forwardComment = "canopy: accept pod traffic where the FORWARD policy is DROP"

// ForwardRules is ForwardChain's content: accept from and to the cluster's IPv4 pod networks.
func ForwardRules(clusterCIDRs []netip.Prefix) [][]string {
	var out [][]string
	for _, c := range clusterCIDRs {
		if !c.Addr().Is4() {
			continue
		}
		out = append(out, []string{"-s", c.String(), "-j", "ACCEPT"}, []string{"-d", c.String(), "-j", "ACCEPT"})
	}
	return out
}

// ApplyForward makes ForwardChain hold ForwardRules(clusterCIDRs), jumped to from the end of FORWARD.
func ApplyForward(ipt IPTables, clusterCIDRs []netip.Prefix) error {
	ok, err := ipt.ChainExists("filter", ForwardChain)
	if err != nil {
		return fmt.Errorf("filter %s: %w", ForwardChain, err)
	}
	if !ok {
		if err := ipt.NewChain("filter", ForwardChain); err != nil {
			return fmt.Errorf("create filter %s: %w", ForwardChain, err)
		}
	}
	jump := []string{"-m", "comment", "--comment", forwardComment, "-j", ForwardChain}
	if ok, err := ipt.Exists("filter", "FORWARD", jump...); err != nil {
		return err
	} else if !ok {
		if err := ipt.Append("filter", "FORWARD", jump...); err != nil {
			return fmt.Errorf("jump from FORWARD: %w", err)
		}
	}
	want := ForwardRules(clusterCIDRs)
	have, err := ipt.List("filter", ForwardChain)
	if err != nil {
		return err
	}
	if sameChainRules(ForwardChain, have, want) {
		return nil
	}
	if err := ipt.ClearChain("filter", ForwardChain); err != nil {
		return err
	}
	for _, r := range want {
		if err := ipt.Append("filter", ForwardChain, r...); err != nil {
			return fmt.Errorf("filter %s %s: %w", ForwardChain, strings.Join(r, " "), err)
		}
	}
	return nil
}

func sameRules(have []string, want [][]string) bool { return sameChainRules(Chain, have, want) }

// sameChainRules compares `iptables -S CHAIN` output (first line "-N CHAIN") with the wanted rules, ignoring how
// iptables normalises quoting and address masks.
func sameChainRules(chain string, have []string, want [][]string) bool {
	var got []string
	for _, l := range have {
		if strings.HasPrefix(l, "-A ") {
			got = append(got, normalize(strings.TrimPrefix(l, "-A "+chain+" ")))
		}
	}
	var exp []string
	for _, r := range want {
		exp = append(exp, normalize(strings.Join(r, " ")))
	}
	return slices.Equal(got, exp)
}

func normalize(s string) string {
	s = strings.ReplaceAll(s, `"`, "")
	return strings.Join(strings.Fields(s), " ")
}
