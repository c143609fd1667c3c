// Package egress masquerades pod traffic leaving the cluster to the node's address, in Canopy's own chain
// CANOPY-POSTROUTING of the nat table. Traffic between pods and to services keeps its source address: the
// address a pod sees itself as is the one others see.
//
// Every chain exists once per family: Rules, ForwardRules and GuardRules are the IPv4 content (written through
// iptables), Rules6, ForwardRules6 and GuardRules6 the IPv6 content (written through ip6tables, on a node with an
// IPv6 pod CIDR). Apply, Apply6, ApplyForward, ApplyForward6, ApplyBGPGuard and ApplyBGPGuard6 write them; the
// Remove functions work on a handle of either family.
package egress

import (
	"log/slog"
	"net/netip"

	"canopy.io/canopy/internal/ipt"
)

// Chain is Canopy's nat chain for pod egress, jumped to from POSTROUTING.
const Chain = "CANOPY-POSTROUTING"

const jumpComment = "canopy: pod egress masquerade"

// IPTables is what this package writes through: whole chains in one restore, the jumps as single rules (an
// ipt.Host on a node, an ipt.Fake in tests).
type IPTables interface {
	ipt.RuleEditor
	ipt.ChainLister
	ipt.RestoreSaver
}

var jump = ipt.Jump{Table: "nat", Chain: "POSTROUTING", Rule: []string{"-m", "comment", "--comment", jumpComment, "-j", Chain}}

// family returns the prefixes of ps of one family (IPv6 if v6, else IPv4).
func family(ps []netip.Prefix, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() != v6 {
			out = append(out, p)
		}
	}
	return out
}

// Rules is the IPv4 chain's content for pods in podCIDRs: no NAT towards keep (the cluster's pod and service
// networks), masquerade for everything else the pods send. Prefixes of the other family are left out.
func Rules(podCIDRs, keep []netip.Prefix) [][]string { return rules(podCIDRs, keep, false) }

// Rules6 is Rules for IPv6 (the ip6tables chain): IPv6 pods masquerade to the node's IPv6 address, except
// towards the IPv6 prefixes of keep.
func Rules6(podCIDRs, keep []netip.Prefix) [][]string { return rules(podCIDRs, keep, true) }

func rules(podCIDRs, keep []netip.Prefix, v6 bool) [][]string {
	var out [][]string
	for _, k := range family(keep, v6) {
		out = append(out, []string{"-d", k.String(), "-m", "comment", "--comment", "canopy: cluster-internal, keep source", "-j", "RETURN"})
	}
	for _, p := range family(podCIDRs, v6) {
		out = append(out, []string{"-s", p.String(), "-m", "comment", "--comment", "canopy: pod egress", "-j", "MASQUERADE", "--random-fully"})
	}
	return out
}

// Apply makes the IPv4 chain (it: an iptables handle) hold exactly Rules(podCIDRs, keep), written in one
// restore and only when its content differs, and POSTROUTING jump to it.
func Apply(it IPTables, podCIDRs, keep []netip.Prefix, log *slog.Logger) error {
	return apply(it, podCIDRs, keep, false, log)
}

// Apply6 is Apply for IPv6: it6 is an ip6tables handle (ipt.OpenFlavour6), the chain holds Rules6.
func Apply6(it6 IPTables, podCIDRs, keep []netip.Prefix, log *slog.Logger) error {
	return apply(it6, podCIDRs, keep, true, log)
}

func apply(it IPTables, podCIDRs, keep []netip.Prefix, v6 bool, log *slog.Logger) error {
	changed, err := ipt.SyncChain(it, it, "nat", Chain, rules(podCIDRs, keep, v6))
	if err != nil {
		return err
	}
	if err := ipt.EnsureJumps(it, jump); err != nil {
		return err
	}
	if changed {
		fam := "ipv4"
		if v6 {
			fam = "ipv6"
		}
		log.Info("pod egress masquerade programmed", "chain", Chain, "family", fam, "pod_cidrs", family(podCIDRs, v6), "no_nat_to", family(keep, v6))
	}
	return nil
}

// Remove deletes the jump and the chain (egress masquerade turned off), in the family of it.
func Remove(it IPTables) error {
	if err := ipt.DeleteJumps(it, jump); err != nil {
		return err
	}
	return ipt.RemoveChain(it, "nat", Chain)
}

// ForwardChain is Canopy's filter chain that accepts pod traffic at the end of FORWARD, for hosts whose FORWARD
// policy is DROP (Docker sets that): without it such a node forwards no pod traffic at all. Being last, it
// overrides only the policy: every rule before it (an administrator's, NetworkPolicy's) still decides first.
const ForwardChain = "CANOPY-FORWARD-ACCEPT"

const forwardComment = "canopy: accept pod traffic where the FORWARD policy is DROP"

// ForwardRules is ForwardChain's content: accept from and to the cluster's IPv4 pod networks.
func ForwardRules(clusterCIDRs []netip.Prefix) [][]string { return forwardRules(clusterCIDRs, false) }

// ForwardRules6 is ForwardChain's IPv6 content: accept from and to the cluster's IPv6 pod networks.
func ForwardRules6(clusterCIDRs []netip.Prefix) [][]string { return forwardRules(clusterCIDRs, true) }

func forwardRules(clusterCIDRs []netip.Prefix, v6 bool) [][]string {
	var out [][]string
	for _, c := range family(clusterCIDRs, v6) {
		out = append(out, []string{"-s", c.String(), "-j", "ACCEPT"}, []string{"-d", c.String(), "-j", "ACCEPT"})
	}
	return out
}

var forwardJump = ipt.Jump{Table: "filter", Chain: "FORWARD", Rule: []string{"-m", "comment", "--comment", forwardComment, "-j", ForwardChain}, Append: true}

// ApplyForward makes ForwardChain hold ForwardRules(clusterCIDRs), jumped to from the end of FORWARD.
func ApplyForward(it IPTables, clusterCIDRs []netip.Prefix) error {
	if _, err := ipt.SyncChain(it, it, "filter", ForwardChain, ForwardRules(clusterCIDRs)); err != nil {
		return err
	}
	return ipt.EnsureJumps(it, forwardJump)
}

// ApplyForward6 is ApplyForward for IPv6: it6 is an ip6tables handle, the chain holds ForwardRules6.
func ApplyForward6(it6 IPTables, clusterCIDRs []netip.Prefix) error {
	if _, err := ipt.SyncChain(it6, it6, "filter", ForwardChain, ForwardRules6(clusterCIDRs)); err != nil {
		return err
	}
	return ipt.EnsureJumps(it6, forwardJump)
}

// RemoveForward deletes the FORWARD accept chain and its jump.
func RemoveForward(it IPTables) error {
	if err := ipt.DeleteJumps(it, forwardJump); err != nil {
		return err
	}
	return ipt.RemoveChain(it, "filter", ForwardChain)
}

// GuardChain drops pod traffic to TCP port 179 (BGP), jumped to first from INPUT and FORWARD: a pod, masqueraded
// to its node's address, could otherwise open BGP sessions to this node, the other nodes and the ToR and race
// its node's own sessions.
const GuardChain = "CANOPY-BGP-GUARD"

var guardJumps = []ipt.Jump{
	{Table: "filter", Chain: "INPUT", Rule: []string{"-p", "tcp", "--dport", "179", "-m", "comment", "--comment", "canopy: pods may not speak BGP", "-j", GuardChain}},
	{Table: "filter", Chain: "FORWARD", Rule: []string{"-p", "tcp", "--dport", "179", "-m", "comment", "--comment", "canopy: pods may not speak BGP", "-j", GuardChain}},
}

// GuardRules is GuardChain's content: drop TCP/179 from the cluster's IPv4 pod networks.
func GuardRules(clusterCIDRs []netip.Prefix) [][]string { return guardRules(clusterCIDRs, false) }

// GuardRules6 is GuardChain's IPv6 content: drop TCP/179 from the cluster's IPv6 pod networks.
func GuardRules6(clusterCIDRs []netip.Prefix) [][]string { return guardRules(clusterCIDRs, true) }

func guardRules(clusterCIDRs []netip.Prefix, v6 bool) [][]string {
	var out [][]string
	for _, c := range family(clusterCIDRs, v6) {
		out = append(out, []string{"-s", c.String(), "-p", "tcp", "--dport", "179", "-j", "DROP"})
	}
	return out
}

// ApplyBGPGuard makes GuardChain hold GuardRules(clusterCIDRs) and INPUT and FORWARD jump to it first.
func ApplyBGPGuard(it IPTables, clusterCIDRs []netip.Prefix) error {
	if _, err := ipt.SyncChain(it, it, "filter", GuardChain, GuardRules(clusterCIDRs)); err != nil {
		return err
	}
	return ipt.EnsureJumps(it, guardJumps...)
}

// ApplyBGPGuard6 is ApplyBGPGuard for IPv6: it6 is an ip6tables handle, the chain holds GuardRules6.
func ApplyBGPGuard6(it6 IPTables, clusterCIDRs []netip.Prefix) error {
	if _, err := ipt.SyncChain(it6, it6, "filter", GuardChain, GuardRules6(clusterCIDRs)); err != nil {
		return err
	}
	return ipt.EnsureJumps(it6, guardJumps...)
}

// RemoveBGPGuard deletes GuardChain and its jumps.
func RemoveBGPGuard(it IPTables) error {
	if err := ipt.DeleteJumps(it, guardJumps...); err != nil {
		return err
	}
	return ipt.RemoveChain(it, "filter", GuardChain)
}
