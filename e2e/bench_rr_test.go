package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
)

// BenchmarkRouteReflectors compares the node full mesh with two route reflectors (canopy.io/route-reflector on
// node1 and node2) in one lab of CANOPY_RR_NODES nodes (default 50): the BGP sessions every node holds, and, from
// starting every agent at once, the time until every session is Established and every node has installed every
// other node's pod CIDR, with the agents' CPU time until then, their CPU over 10 s of steady state (keepalives)
// and their memory; then node churn: the last node's agent (a client; started without graceful restart) is
// SIGKILLed — until its pod CIDR is gone from every other node — and started again — until everything has
// converged again — three times. The ToR sends the nodes nothing, so the routes come from the mesh or the
// reflectors only. Agents run BGP alone (no service proxy, firewall or canopy.io objects) at log level info.
//
//	go test -run '^$' -bench RouteReflectors -benchtime 1x -timeout 30m ./e2e/
func BenchmarkRouteReflectors(b *testing.B) {
	if testing.Short() {
		b.Skip("-short: no lab")
	}
	n := 50
	if v := os.Getenv("CANOPY_RR_NODES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 4 || n > 200 {
			b.Fatalf("CANOPY_RR_NODES=%q: want 4..200", v)
		}
	}
	t0 := time.Now()
	l := rrLab(b, n, 0, true, "--log-level=info", "--run-service-proxy=false", "--run-firewall=false", "--bgp-objects=false")
	up := time.Since(t0)
	ctx := context.Background()
	first, err := rrWaitConverged(ctx, l, nil, time.Now(), 5*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("lab of %d nodes up in %s (network, control plane, FRR, agents started), full mesh converged %s later; agents' RSS %d MB",
		n, up.Round(time.Millisecond), first.converged.Round(time.Millisecond), first.rssKB/1024)

	results := map[string]*rrResult{}
	for _, mode := range []struct {
		name       string
		reflectors int
	}{{"mesh", 0}, {"rr", 2}} {
		// Every agent stops (SIGTERM), the labels are set, then every agent starts at once.
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for _, node := range l.Nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := node.StopAgent(); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		reflectors := map[string]bool{}
		for i, node := range l.Nodes[:2] {
			v := ""
			if i < mode.reflectors {
				v = rrClusterID
				reflectors[node.Name] = true
			}
			if err := rrLabel(ctx, l, node, v); err != nil {
				b.Fatal(err)
			}
		}
		victim := l.Nodes[n-1]
		start := time.Now()
		for _, node := range l.Nodes {
			var extra []string
			if node == victim {
				extra = []string{"--graceful-restart=false"} // its peers drop its routes when it dies
			}
			if err := node.StartAgent(extra...); err != nil {
				b.Fatal(err)
			}
		}
		r, err := rrWaitConverged(ctx, l, reflectors, start, 5*time.Minute)
		if err != nil {
			b.Fatalf("%s: %v", mode.name, err)
		}
		cpu0 := rrAgentsCPU(b, l)
		time.Sleep(10 * time.Second)
		r.idleCPU = rrAgentsCPU(b, l) - cpu0
		for range 3 {
			if err := victim.KillAgent(); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if err := rrWaitRoutes(ctx, l, victim, len(l.Nodes)-2, time.Minute); err != nil {
				b.Fatalf("%s: %v", mode.name, err)
			}
			r.withdraws = append(r.withdraws, time.Since(t0))
			t1 := time.Now()
			if err := victim.StartAgent("--graceful-restart=false"); err != nil {
				b.Fatal(err)
			}
			j, err := rrWaitConverged(ctx, l, reflectors, t1, 2*time.Minute)
			if err != nil {
				b.Fatalf("%s: %v", mode.name, err)
			}
			r.joins = append(r.joins, j.converged)
		}
		results[mode.name] = r
		b.Logf("%-4s %d nodes: %d BGP sessions between nodes (%d per client, %d per reflector/mesh node) + %d with the ToR; all Established in %s, all routes in %s; agents' CPU %s until then, %s in the next 10 s; RSS %d MB",
			mode.name, n, r.nodeSessions, r.minPeers-1, r.maxPeers-1, n, r.sessionsUp.Round(time.Millisecond), r.converged.Round(time.Millisecond),
			r.convergeCPU.Round(time.Millisecond), r.idleCPU.Round(time.Millisecond), r.rssKB/1024)
		b.Logf("%-4s %s killed: its pod CIDR gone from every other node in %v; started again: converged in %v",
			mode.name, victim.Name, rrRoundAll(r.withdraws), rrRoundAll(r.joins))
	}
	m, rr := results["mesh"], results["rr"]
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	b.ReportMetric(float64(m.nodeSessions), "mesh-node-sessions")
	b.ReportMetric(float64(rr.nodeSessions), "rr-node-sessions")
	b.ReportMetric(ratio(float64(m.nodeSessions), float64(rr.nodeSessions)), "x-fewer-sessions")
	b.ReportMetric(float64(m.converged.Milliseconds()), "ms-mesh-converge")
	b.ReportMetric(float64(rr.converged.Milliseconds()), "ms-rr-converge")
	b.ReportMetric(ratio(float64(m.converged), float64(rr.converged)), "x-converge-mesh/rr")
	b.ReportMetric(ratio(float64(m.convergeCPU), float64(rr.convergeCPU)), "x-cpu-to-converge-mesh/rr")
	b.ReportMetric(ratio(float64(m.idleCPU), float64(rr.idleCPU)), "x-steady-cpu-mesh/rr")
	b.ReportMetric(ratio(float64(m.rssKB), float64(rr.rssKB)), "x-rss-mesh/rr")
	b.ReportMetric(float64(rrMedian(m.withdraws).Milliseconds()), "ms-mesh-withdraw")
	b.ReportMetric(float64(rrMedian(rr.withdraws).Milliseconds()), "ms-rr-withdraw")
	b.ReportMetric(float64(rrMedian(m.joins).Milliseconds()), "ms-mesh-rejoin")
	b.ReportMetric(float64(rrMedian(rr.joins).Milliseconds()), "ms-rr-rejoin")
	b.Logf("mesh/rr at %d nodes: sessions %.1fx, time to converge %.2fx, CPU to converge %.1fx, steady CPU %.1fx, RSS %.2fx, withdrawal %.2fx, rejoin %.2fx (medians; lab up in %s)",
		n, ratio(float64(m.nodeSessions), float64(rr.nodeSessions)), ratio(float64(m.converged), float64(rr.converged)),
		ratio(float64(m.convergeCPU), float64(rr.convergeCPU)), ratio(float64(m.idleCPU), float64(rr.idleCPU)),
		ratio(float64(m.rssKB), float64(rr.rssKB)), ratio(float64(rrMedian(m.withdraws)), float64(rrMedian(rr.withdraws))),
		ratio(float64(rrMedian(m.joins)), float64(rrMedian(rr.joins))), up.Round(time.Second))
}

type rrResult struct {
	nodeSessions       int           // BGP sessions between nodes (each counted once)
	minPeers, maxPeers int           // Established sessions of one node, ToR included
	sessionsUp         time.Duration // until every node had all its sessions Established
	converged          time.Duration // until, besides, every node had installed every other pod CIDR
	convergeCPU        time.Duration // the agents' CPU time until converged
	idleCPU            time.Duration // the agents' CPU time over 10 s after
	rssKB              int64         // the agents' resident memory, summed, when converged
	withdraws, joins   []time.Duration
}

// rrWaitRoutes polls every agent but skip's until each has exactly want learned routes.
func rrWaitRoutes(ctx context.Context, l *lab.Lab, skip *lab.Node, want int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		why := ""
		for _, n := range l.Nodes {
			if n == skip {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
				defer mcancel()
				m, err := metrics(mctx, n)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					why = err.Error()
				} else if got := int(m["canopy_bgp_learned_routes"]); got != want {
					why = fmt.Sprintf("%s: %d routes, want %d", n.Name, got, want)
				}
			}()
		}
		wg.Wait()
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %s: %s", timeout, why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// rrWaitConverged polls every agent's metrics until each has the sessions it should (the ToR, and the reflectors
// or every node) Established and the learned routes of every other node installed.
func rrWaitConverged(ctx context.Context, l *lab.Lab, reflectors map[string]bool, start time.Time, timeout time.Duration) (*rrResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := &rrResult{}
	var last string
	for {
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		sessionsOK, routesOK := true, true
		total, minP, maxP := 0, 1<<30, 0
		var whys []string
		var missing []*lab.Node
		for _, n := range l.Nodes {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				want := len(rrWantPeers(l, n, reflectors))
				mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
				defer mcancel()
				m, err := metrics(mctx, n)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					sessionsOK, routesOK = false, false
					whys = append(whys, err.Error())
					return
				}
				est := int(m["canopy_bgp_established_peers"])
				total += est
				minP, maxP = min(minP, est), max(maxP, est)
				if est != want || int(m["canopy_bgp_configured_peers"]) != want {
					sessionsOK = false
					whys = append(whys, fmt.Sprintf("%s: %d of %d sessions Established (%d configured)", n.Name, est, want,
						int(m["canopy_bgp_configured_peers"])))
					missing = append(missing, n)
				} else if int(m["canopy_bgp_learned_routes"]) != len(l.Nodes)-1 {
					routesOK = false
					whys = append(whys, fmt.Sprintf("%s: %d of %d routes", n.Name, int(m["canopy_bgp_learned_routes"]), len(l.Nodes)-1))
				}
			}()
		}
		wg.Wait()
		if sessionsOK && r.sessionsUp == 0 {
			r.sessionsUp = time.Since(start)
		}
		if sessionsOK && routesOK {
			r.converged = time.Since(start)
			r.nodeSessions = (total - len(l.Nodes)) / 2
			r.minPeers, r.maxPeers = minP, maxP
			for _, n := range l.Nodes {
				cpu, rss, err := procUsage(n.Agent().PID())
				if err != nil {
					return nil, err
				}
				r.convergeCPU += cpu
				r.rssKB += rss
			}
			return r, nil
		}
		slices.Sort(whys)
		if len(whys) > 6 {
			whys = append(whys[:6], fmt.Sprintf("and %d more nodes", len(whys)-6))
		}
		last = strings.Join(whys, "; ")
		select {
		case <-ctx.Done():
			dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
			defer dcancel()
			for _, n := range missing[:min(len(missing), 4)] {
				last += fmt.Sprintf("; %s not Established:%s", n.Name, rrNotEstablished(dctx, n))
			}
			return nil, fmt.Errorf("not converged within %s: %s", timeout, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// rrNotEstablished lists the node's sessions that are not Established, with their state (for a report).
func rrNotEstablished(ctx context.Context, n *lab.Node) string {
	st, err := neighbors(ctx, n)
	if err != nil {
		return ""
	}
	var out []string
	for a, s := range st {
		if s != "ESTABLISHED" {
			out = append(out, a.String()+" "+s)
		}
	}
	slices.Sort(out)
	return " " + fmt.Sprint(out)
}

// rrStaticNeighbors gives every fabric host (the ToR, the control plane, every node) a permanent neighbour entry
// for every other, inside the lab's namespaces. The kernel has one neighbour table for all network namespaces and
// caps its dynamic entries at the root namespace's net.ipv4.neigh.default.gc_thresh3 (1024 here): a full mesh of
// 50 nodes needs ~2,600, and past the cap ARP fails ("neighbour: arp_cache: neighbor table overflow!", connect:
// no route to host) for this lab and every other one on the machine. Permanent entries are exempt from the cap.
func rrStaticNeighbors(ctx context.Context, l *lab.Lab) error {
	type port struct {
		ns, dev, mac string
		ip           netip.Addr
	}
	hosts := []*lab.Host{&l.ToR.Host, l.CP}
	for _, n := range l.Nodes {
		hosts = append(hosts, &n.Host)
	}
	var ports []port
	for _, h := range hosts {
		out, err := l.Exec(ctx, h.NS, "ip", "-j", "addr", "show")
		if err != nil {
			return fmt.Errorf("%s: ip addr: %v: %s", h.Name, err, out)
		}
		var links []struct {
			IfName   string `json:"ifname"`
			Address  string `json:"address"`
			AddrInfo []struct {
				Local string `json:"local"`
			} `json:"addr_info"`
		}
		if err := json.Unmarshal([]byte(out), &links); err != nil {
			return fmt.Errorf("%s: ip -j addr: %v", h.Name, err)
		}
		found := false
		for _, ln := range links {
			for _, a := range ln.AddrInfo {
				if a.Local == h.IP.String() {
					ports, found = append(ports, port{ns: h.NS, dev: ln.IfName, mac: ln.Address, ip: h.IP}), true
				}
			}
		}
		if !found {
			return fmt.Errorf("%s: no interface has %s", h.Name, h.IP)
		}
	}
	for _, a := range ports {
		var lines []string
		for _, b := range ports {
			if b.ip != a.ip {
				lines = append(lines, fmt.Sprintf("neigh replace %s lladdr %s dev %s nud permanent", b.ip, b.mac, a.dev))
			}
		}
		f := filepath.Join(l.WorkDir, "neigh-"+strings.TrimPrefix(a.ns, l.Prefix)+".batch")
		if err := os.WriteFile(f, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			return err
		}
		if out, err := l.Exec(ctx, a.ns, "ip", "-batch", f); err != nil {
			return fmt.Errorf("%s: ip -batch %s: %v: %s", a.ns, f, err, out)
		}
	}
	return nil
}

// rrAgentsCPU is the CPU time every agent has used so far.
func rrAgentsCPU(b *testing.B, l *lab.Lab) time.Duration {
	var sum time.Duration
	for _, n := range l.Nodes {
		cpu, _, err := procUsage(n.Agent().PID())
		if err != nil {
			b.Fatal(err)
		}
		sum += cpu
	}
	return sum
}

// procUsage reads a process's CPU time (user + system) and resident memory from /proc.
func procUsage(pid int) (time.Duration, int64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command (which may hold spaces) in parentheses: state is field 3, utime 14, stime 15.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	cpu := time.Duration(ut+st) * time.Second / 100 // USER_HZ
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	var rss int64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return cpu, rss, nil
}

func rrRoundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

func rrMedian(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
