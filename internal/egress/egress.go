// Package egress masquerades pod traffic leaving the cluster to the node's address, in Canopy's own chain
// CANOPY-POSTROUTING of the nat table. Traffic between pods and to services keeps its source address: the
// address a pod sees itself as is the one others see.
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

// Apply makes the chain hold exactly Rules(podCIDRs, keep), written in one restore and only when its content
// differs, and POSTROUTING jump to it.
func Apply(it IPTables, podCIDRs, keep []netip.Prefix, log *slog.Logger) error {
	changed, err := ipt.SyncChain(it, it, "nat", Chain, Rules(podCIDRs, keep))
	if err != nil {
		return err
	}
	if err := ipt.EnsureJumps(it, jump); err != nil {
		return err
	}
	if changed {
		log.Info("pod egress masquerade programmed", "chain", Chain, "pod_cidrs", podCIDRs, "no_nat_to", keep)
	}
	return nil
}

// Remove deletes the jump and the chain (egress masquerade turned off).
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

var forwardJump = ipt.Jump{Table: "filter", Chain: "FORWARD", Rule: []string{"-m", "comment", "--comment", forwardComment, "-j", ForwardChain}, Append: true}

// ApplyForward makes ForwardChain hold ForwardRules(clusterCIDRs), jumped to from the end of FORWARD.
func ApplyForward(it IPTables, clusterCIDRs []netip.Prefix) error {
	if _, err := ipt.SyncChain(it, it, "filter", ForwardChain, ForwardRules(clusterCIDRs)); err != nil {
		return err
	}
	return ipt.EnsureJumps(it, forwardJump)
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
func GuardRules(clusterCIDRs []netip.Prefix) [][]string {
	var out [][]string
	for _, c := range clusterCIDRs {
		if c.Addr().Is4() {
			out = append(out, []string{"-s", c.String(), "-p", "tcp", "--dport", "179", "-j", "DROP"})
		}
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

// RemoveBGPGuard deletes GuardChain and its jumps.
func RemoveBGPGuard(it IPTables) error {
	if err := ipt.DeleteJumps(it, guardJumps...); err != nil {
		return err
	}
	return ipt.RemoveChain(it, "filter", GuardChain)
}
