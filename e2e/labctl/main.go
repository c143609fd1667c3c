// Command labctl brings the virtual data centre (package e2e/lab) up and down from a shell; `make lab`,
// `make lab-down` and `make lab-status` run it.
//
//	labctl up [-nodes 3] [-racks 2 [-tor frr,bird]] [-agent bin/canopy] [-prefix cnpdemo] [-workroot DIR] [-agent-args "--flag=x ..."]
//	labctl down [-keep-logs]     remove every lab (also stale ones left by killed tests)
//	labctl status                list labs, their namespaces and processes
//	labctl show [-lab PREFIX]    the routing state of a running lab (ToR BGP table, each node's gobgp view, routes)
//	labctl describe [-lab PREFIX] where a running lab's logs and kubeconfigs are, and commands to try
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"canopy.io/canopy/e2e/lab"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("labctl: ")
	if len(os.Args) < 2 {
		usage()
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "up":
		err = up(ctx, args)
	case "down":
		err = down(args)
	case "status":
		err = status(args)
	case "show", "describe":
		err = show(ctx, cmd, args)
	default:
		usage()
	}
	if err != nil {
		log.Fatal(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: labctl up [-nodes N] [-racks R [-tor KIND,...]] [-agent PATH] [-agent-args "..."] [-prefix P] [-workroot DIR]
       labctl down [-keep-logs]
       labctl status
       labctl show [-lab PREFIX]
       labctl describe [-lab PREFIX]`)
	os.Exit(2)
}

const defaultAgent = "bin/canopy"

func up(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	nodes := fs.Int("nodes", 3, "worker nodes")
	racks := fs.Int("racks", 1, "racks (more than 1: a routed fabric with a spine, eBGP per rack: the nodes of rack r in AS 65000+r, node mesh off)")
	torKinds := fs.String("tor", "", `ToR software per rack, comma-separated (the last one for the remaining racks): frr, bird or gobgpd (default frr)`)
	agent := fs.String("agent", defaultAgent, `agent binary ("" for none)`)
	cniPlugin := fs.String("cni", "", `canopy-cni binary (default: canopy-cni next to the agent, if there; "none" to wire pods without it)`)
	agentArgs := fs.String("agent-args", "", "extra agent flags, space-separated")
	prefix := fs.String("prefix", "", "namespace name prefix (default random cnpXXXXXX-)")
	workroot := fs.String("workroot", "", "where to make the work directory canopy-lab-<prefix> (default $TMPDIR)")
	stateRoot := fs.String("state", lab.DefaultStateRoot, "state directory")
	force := fs.Bool("force", false, "bring up another lab even if one is up")
	family := fs.String("family", "ipv4", "address families of the lab (single rack): ipv4, dual (IPv6 next to IPv4: pods, Services, routes of both) or ipv6 (IPv6-only: fabric, sessions, pods, Services)")
	_ = fs.Parse(args)
	switch *family {
	case "ipv4", "dual", "ipv6":
	default:
		return fmt.Errorf("-family %q: want ipv4, dual or ipv6", *family)
	}
	if *family != "ipv4" && (*racks > 1 || *torKinds != "") {
		return fmt.Errorf("-family %s: single rack with an FRR ToR only", *family)
	}

	if !*force {
		if st, err := lab.List(*stateRoot); err == nil {
			for _, s := range st {
				if s.Keep && len(s.Namespaces) > 0 {
					return fmt.Errorf("lab %s is already up (work dir %s); `make lab-down` first, or -force", s.Prefix, s.WorkDir)
				}
			}
		}
	}
	if *agent != "" {
		if _, err := os.Stat(*agent); err != nil {
			if *agent != defaultAgent {
				return fmt.Errorf("agent %s: %w", *agent, err)
			}
			log.Printf("no agent at %s (make build): the lab comes up without one", *agent)
			*agent = ""
		}
	}
	if *cniPlugin == "" && *agent != "" {
		if p := filepath.Join(filepath.Dir(*agent), "canopy-cni"); fileExists(p) {
			*cniPlugin = p
		}
	}
	if *cniPlugin == "none" {
		*cniPlugin = ""
	}
	if *cniPlugin != "" {
		if abs, err := filepath.Abs(*cniPlugin); err == nil {
			*cniPlugin = abs
		}
	}
	// The demo's LoadBalancer range (canopy-controller allocates from it, the agents announce it), then the caller's.
	agentFlags := []string{"--loadbalancer-ip-range=" + map[string]string{"ipv4": demoLBRange, "dual": demoLBRange + "," + demoLBRange6, "ipv6": demoLBRange6}[*family]}
	var perRack []lab.RackConfig
	if *racks > 1 {
		// RFC 7938: every node peers with its own rack's ToR only, each rack's nodes in their own AS.
		agentFlags = append(agentFlags, "--nodes-full-mesh=false")
		for r := 1; r <= *racks; r++ {
			perRack = append(perRack, lab.RackConfig{NodeASN: uint32(65000 + r)})
		}
	}
	if *torKinds != "" {
		kinds := strings.Split(*torKinds, ",")
		for r := 0; r < max(1, *racks); r++ {
			if r >= len(perRack) {
				perRack = append(perRack, lab.RackConfig{})
			}
			perRack[r].ToRKind = lab.ToRKind(strings.TrimSpace(kinds[min(r, len(kinds)-1)]))
		}
	}
	agentFlags = append(agentFlags, strings.Fields(*agentArgs)...)
	cfg := lab.Config{
		CNIPlugin: *cniPlugin,
		Nodes:     *nodes, AgentBin: *agent, AgentArgs: agentFlags,
		Racks: *racks, PerRack: perRack,
		Prefix: *prefix, WorkRoot: *workroot, StateRoot: *stateRoot, Keep: true,
		Logf: log.Printf, DualStack: *family == "dual", IPv6Only: *family == "ipv6",
	}
	if err := lab.Preflight(cfg); err != nil {
		return fmt.Errorf("%w (make deps k8s)", err)
	}
	upCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	l, err := lab.Up(upCtx, cfg)
	if err != nil {
		return err
	}
	fmt.Println()
	if err := l.Describe(os.Stdout); err != nil {
		return err
	}
	if cfg.AgentBin == "" {
		return nil
	}
	// With an agent: wait for the fabric to converge, put a pod on every node, ping across, show the tables.
	// The lab stays up either way; a failure makes the exit status non-zero.
	fmt.Println()
	cerr := converge(ctx, l)
	fmt.Println()
	if err := l.Show(ctx, os.Stdout); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("the lab is up (make lab-down removes it), but: %w", cerr)
	}
	if *family == "ipv6" {
		fmt.Println("(the Service and NetworkPolicy demo runs on IPv4 labs: this IPv6-only lab is left as it is)")
		return nil
	}
	controller := filepath.Join(filepath.Dir(*agent), "canopy-controller")
	if !fileExists(controller) {
		log.Printf("no %s (make build): skipping the Service and NetworkPolicy demo", controller)
		return nil
	}
	// Like a real node's uplink (and as the e2e tests do), every node reaches the world outside the rack through
	// the ToR: replies to the external host go that way.
	for _, n := range l.Nodes {
		if out, err := n.Exec(ctx, "ip", "route", "replace", l.Config().ExternalCIDR.String(), "via", n.Rack.ToR.IP.String()); err != nil {
			return fmt.Errorf("route to the external network on %s: %v: %s", n.Name, err, out)
		}
	}
	fmt.Println("== Canopy's Services, VIPs and NetworkPolicy, step by step")
	if err := demo(ctx, l, controller, os.Stdout); err != nil {
		return fmt.Errorf("the lab is up (make lab-down removes it), but the demo failed: %w", err)
	}
	return nil
}

// converge waits for every node's BGP session with the ToR, then adds pod "p1" on every node and pings from
// the first node's pod to the others.
func converge(ctx context.Context, l *lab.Lab) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var ips []netip.Addr
	var names []string
	for _, n := range l.Nodes {
		ips = append(ips, n.IP)
		names = append(names, n.IP.String())
	}
	t0 := time.Now()
	if len(l.Racks) > 1 {
		for _, r := range l.Racks {
			if r.NoNodePeering {
				continue
			}
			if err := r.ToR.WaitEstablished(wctx, r.NodeIPs()...); err != nil {
				return fmt.Errorf("BGP in %s: %w", r.Name, err)
			}
			fmt.Printf("BGP: %s's ToR (%s, AS %d) is established with %s (%s)\n", r.Name, r.ToR.Kind, r.ToR.ASN,
				strings.Trim(fmt.Sprint(r.NodeIPs()), "[]"), time.Since(t0).Round(time.Millisecond))
		}
	} else if err := l.ToR.WaitEstablished(wctx, ips...); err != nil {
		return fmt.Errorf("BGP: %w", err)
	} else {
		fmt.Printf("BGP: the ToR is established with %s (%s)\n", strings.Join(names, ", "), time.Since(t0).Round(time.Millisecond))
	}
	var pods []*lab.Pod
	for _, n := range l.Nodes {
		p, err := l.AddPod(wctx, n, "p1")
		if err != nil {
			return err
		}
		pods = append(pods, p)
	}
	var errs []error
	for _, dst := range pods[1:] {
		targets := []netip.Addr{dst.IP}
		if dst.IP6.IsValid() && dst.IP6 != dst.IP { // dual stack: the pod's IPv6 address too
			targets = append(targets, dst.IP6)
		}
		for _, to := range targets {
			src := pods[0].IP
			if to.Is6() && pods[0].IP6.IsValid() {
				src = pods[0].IP6
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := retry(pctx, func() error { return pods[0].Ping(pctx, to) })
			cancel()
			res := "ok"
			if err != nil {
				res = "no reply for 10s"
				errs = append(errs, fmt.Errorf("ping %s -> %s: no reply", src, to))
			}
			fmt.Printf("ping pod %s on %s (%s) -> pod %s on %s (%s): %s\n", pods[0].Name, pods[0].Node.Name, src,
				dst.Name, dst.Node.Name, to, res)
		}
	}
	return errors.Join(errs...)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// retry calls f every 200 ms until it succeeds or ctx ends.
func retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	keepLogs := fs.Bool("keep-logs", false, "leave the work directories")
	stateRoot := fs.String("state", lab.DefaultStateRoot, "state directory")
	_ = fs.Parse(args)
	return lab.DownAll(*stateRoot, *keepLogs, log.Printf)
}

func status(args []string) error {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	stateRoot := fs.String("state", lab.DefaultStateRoot, "state directory")
	_ = fs.Parse(args)
	st, err := lab.List(*stateRoot)
	if err != nil {
		return err
	}
	if len(st) == 0 {
		fmt.Println("no lab")
		return nil
	}
	for _, s := range st {
		owner := "kept (make lab)"
		if !s.Keep {
			owner = fmt.Sprintf("owned by pid %d", s.OwnerPID)
			if !s.OwnerAlive {
				owner += " (dead: stale, removed by the next lab or labctl down)"
			}
		}
		fmt.Printf("lab %s  created %s  %s  ready=%v\n  work dir %s\n", s.Prefix, s.Created.Format(time.RFC3339), owner, s.Ready, s.WorkDir)
		fmt.Printf("  namespaces: %s\n", strings.Join(s.Namespaces, " "))
		for _, n := range s.Nodes {
			fmt.Printf("  %s\n", n)
		}
		for _, p := range s.Procs {
			state := "running"
			if !p.Alive {
				state = "gone"
			}
			fmt.Printf("  %-26s pid %-7d %-7s %s\n", p.Name, p.PID, state, p.LogPath)
		}
	}
	return nil
}

func show(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	prefix := fs.String("lab", "", "lab prefix (default: the only one)")
	stateRoot := fs.String("state", lab.DefaultStateRoot, "state directory")
	_ = fs.Parse(args)
	l, err := lab.Attach(*stateRoot, *prefix)
	if err != nil {
		return err
	}
	if cmd == "describe" {
		return l.Describe(os.Stdout)
	}
	return l.Show(ctx, os.Stdout)
}
