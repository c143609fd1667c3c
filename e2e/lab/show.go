package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// AgentRouteProtocol is the kernel route protocol number the agent tags its routes with (its default
// --route-protocol); Show lists the routes carrying it.
const AgentRouteProtocol = 186

// Show prints the lab's routing state to w: the ToR's BGP summary, table and kernel routes, then per node the
// agent's view through the gobgp CLI (its gRPC API on 127.0.0.1:50051 inside the node) and the routes the agent
// installed. A failing command prints its error in place; Show only fails if w does.
func (l *Lab) Show(ctx context.Context, w io.Writer) error {
	var werr error
	section := func(title, out string, err error) {
		if werr != nil {
			return
		}
		if err != nil {
			out = "(error) " + err.Error()
		}
		out = strings.TrimRight(out, "\n")
		if out == "" {
			out = "(empty)"
		}
		_, werr = fmt.Fprintf(w, "== %s\n%s\n\n", title, out)
	}
	routers := l.Routers()
	if len(routers) == 0 { // attached to a lab recorded without racks
		routers = []*ToR{l.ToR}
	}
	for _, t := range routers {
		title := func(cmd string) string {
			if t.rack != nil && l.cfg.multiRack() {
				return fmt.Sprintf("%s (%s, %s, %s, AS %d): %s", t.Name, t.NS, t.rack.Name, t.Kind, t.ASN, cmd)
			}
			return fmt.Sprintf("%s (%s): %s", t.Name, t.NS, cmd)
		}
		proto := "bgp"
		switch t.Kind {
		case ToRBIRD:
			proto = "bird"
			for _, cmd := range []string{"show protocols", "show route"} {
				out, err := t.Birdc(ctx, cmd)
				section(title("birdc "+cmd), out, err)
			}
		case ToRGoBGP:
			for _, cmd := range [][]string{{"gobgp", "neighbor"}, {"gobgp", "global", "rib"}} {
				out, err := t.Exec(ctx, cmd...)
				section(title(strings.Join(cmd, " ")), out, err)
			}
		default:
			for _, cmd := range []string{"show bgp summary", "show ip bgp"} {
				out, err := t.Vtysh(ctx, cmd)
				section(title(cmd), out, err)
			}
		}
		out, err := t.Exec(ctx, "ip", "route", "show", "proto", proto)
		section(title("ip route show proto "+proto), out, err)
	}
	_, gobgpErr := exec.LookPath("gobgp")
	for _, n := range l.Nodes {
		title := func(cmd string) string {
			return fmt.Sprintf("%s (%s, %s, pods %s): %s", n.Name, n.NS, n.IP, n.PodCIDR, cmd)
		}
		if gobgpErr == nil {
			out, err := n.Exec(ctx, "gobgp", "neighbor")
			section(title("gobgp neighbor"), out, err)
			out, err = n.Exec(ctx, "gobgp", "global", "rib")
			section(title("gobgp global rib"), out, err)
		} else {
			section(title("gobgp"), "", fmt.Errorf("gobgp CLI not found (package gobgpd)"))
		}
		out, err := n.Exec(ctx, "ip", "route", "show", "proto", fmt.Sprint(AgentRouteProtocol))
		section(title(fmt.Sprintf("ip route show proto %d", AgentRouteProtocol)), out, err)
	}
	return werr
}

// Describe prints where things are: namespaces, addresses, logs, kubeconfigs and ready-to-paste commands.
func (l *Lab) Describe(w io.Writer) error {
	c := l.cfg
	kubectl := filepath.Join(c.K8sBinDir, "kubectl")
	var b strings.Builder
	fmt.Fprintf(&b, "lab %s  work dir %s\n", l.Prefix, l.WorkDir)
	if l.Spine == nil {
		fmt.Fprintf(&b, "  tor   %-18s %s (AS %d, bridge br0)  external link %s\n", l.ToR.NS, l.ToR.IP, l.ToR.ASN, nthAddr(c.ExternalCIDR, 1))
	} else {
		fmt.Fprintf(&b, "  spine %-18s %s (FRR, AS %d, bridge br0 %s)  external link %s\n", l.Spine.NS, l.Spine.IP, l.Spine.ASN,
			c.SpineCIDR, nthAddr(c.ExternalCIDR, 1))
		for _, r := range l.Racks {
			fmt.Fprintf(&b, "  %-5s %-18s %s (%s, AS %d, bridge br0 %s, uplink %s)  %s\n", r.ToR.Name, r.ToR.NS, r.ToR.IP, r.ToR.Kind,
				r.ToR.ASN, r.Subnet, r.ToR.Uplink, r.Name)
		}
	}
	fmt.Fprintf(&b, "  cp    %-18s %s (kube-apiserver :%d, etcd 127.0.0.1:2379)  logs %s/cp/\n", l.CP.NS, l.CP.IP, apiPort, l.WorkDir)
	fmt.Fprintf(&b, "  ext   %-18s %s\n", l.Ext.NS, l.Ext.IP)
	for _, n := range l.Nodes {
		agent := "no agent"
		if p := n.Agent(); p != nil {
			agent = fmt.Sprintf("agent pid %d", p.PID())
			if exited, err := p.Exited(); exited {
				agent = fmt.Sprintf("agent exited: %v", err)
			}
		}
		fmt.Fprintf(&b, "  %-5s %-18s %s pods %s (%s, log %s)\n", n.Name, n.NS, n.IP, n.PodCIDR, agent, n.LogPath)
	}
	for _, p := range l.Pods() {
		fmt.Fprintf(&b, "  pod   %-18s %s on %s\n", p.NS, p.IP, p.Node.Name)
	}
	fmt.Fprintf(&b, "\nadmin kubeconfig %s\nnode kubeconfigs %s/nodeN/kubeconfig\n", l.AdminKubeconfig, l.WorkDir)
	fmt.Fprintf(&b, "\ntry:\n")
	fmt.Fprintf(&b, "  ip netns exec %s %s --kubeconfig %s get nodes -o wide\n", l.CP.NS, kubectl, l.AdminKubeconfig)
	for _, t := range l.Routers() {
		switch {
		case t.Kind == ToRBIRD:
			fmt.Fprintf(&b, "  birdc -s %s show route   # %s\n", t.birdSocket(), t.Name)
		case t.Kind == ToRGoBGP:
			fmt.Fprintf(&b, "  ip netns exec %s gobgp global rib   # %s\n", t.NS, t.Name)
		case l.Spine == nil:
			fmt.Fprintf(&b, "  vtysh --vty_socket %s -c 'show ip bgp'\n", t.Dir)
		default:
			fmt.Fprintf(&b, "  vtysh --vty_socket %s -c 'show ip bgp'   # %s\n", t.Dir, t.Name)
		}
	}
	if len(l.Nodes) > 0 {
		fmt.Fprintf(&b, "  ip netns exec %s gobgp neighbor\n", l.Nodes[0].NS)
		fmt.Fprintf(&b, "  ip netns exec %s ip route show proto %d\n", l.Nodes[0].NS, AgentRouteProtocol)
	}
	fmt.Fprintf(&b, "  . %s   # shell helpers: kc, tor, inns\n", filepath.Join(l.WorkDir, "env.sh"))
	_, err := io.WriteString(w, b.String())
	return err
}

// writeEnv writes <WorkDir>/env.sh, shell helpers for a person poking at the lab.
func (l *Lab) writeEnv() error {
	kubectl := filepath.Join(l.cfg.K8sBinDir, "kubectl")
	s := fmt.Sprintf(`# Shell helpers for lab %[1]s: . %[2]s/env.sh
export LAB_PREFIX=%[1]s LAB_DIR=%[2]s
# kubectl as admin, from the control-plane namespace:   kc get nodes -o wide
kc() { ip netns exec %[3]s %[4]s --kubeconfig %[5]s "$@"; }
# vtysh on the ToR:                                      tor -c 'show ip bgp'
tor() { vtysh --vty_socket %[6]s "$@"; }
# run in a lab namespace by its short name (tor, cp, ext, n1, n1-<pod>):   inns n1 gobgp neighbor
inns() { local ns="$1"; shift; ip netns exec "%[1]s$ns" "$@"; }
`, l.Prefix, l.WorkDir, l.CP.NS, kubectl, l.AdminKubeconfig, l.ToR.Dir)
	return os.WriteFile(filepath.Join(l.WorkDir, "env.sh"), []byte(s), 0o644)
}
