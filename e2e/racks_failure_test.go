package e2e

// ToR failure in a routed fabric (issue 15, design 4) and the hostile-peer and restart checks per rack and per
// ToR kind, all in one five-rack lab to keep CI time low:
//
//	rack1  FRR ToR (tor)                 node1 node2   AS 65001   BFD
//	rack2  FRR ToR (tor2)                node3         AS 65002   BFD   ← powered off and on (single-homed)
//	rack3  FRR ToRs tor3 (.1), tor3b (.2) node4        AS 65003   BFD   ← one ToR powered off (dual-homed)
//	rack4  BIRD ToR (tor4)               node5         AS 65004
//	rack5  gobgpd ToR (tor5)             node6         AS 65005
//
// The node mesh is off: every node peers with its rack's ToR(s) only (the lab's --peer-router-* flags; both
// ToRs in rack 3). A ToR "dies" by ToR.PowerOff: its links go down, then its daemons are SIGKILLed, so nothing
// says goodbye; the spine sees carrier loss on its port, the nodes must notice by BFD or the hold time.

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"

	"canopy.io/canopy/e2e/lab"
)

// pingInterval is the spacing of the continuous ping streams: a lost ping is ~50 ms without a path.
const pingInterval = 50 * time.Millisecond

// pingStream is a continuous ping from a pod, started by startStream.
type pingStream struct {
	name       string
	sent, lost int
	lostAt     []time.Time // when the lost pings were sent (the ones ping saw)
	err        error
	done       chan struct{}
}

// startStream pings dst from p every pingInterval for d.
func startStream(p *lab.Pod, name string, dst netip.Addr, d time.Duration) *pingStream {
	s := &pingStream{name: name, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
		defer cancel()
		sent, got, lostAt, err := rrPingLoop(ctx, p, dst, int(d/pingInterval), pingInterval)
		s.sent, s.lost, s.lostAt, s.err = sent, sent-got, lostAt, err
	}()
	return s
}

// wait waits for the stream's end and fails the test if ping failed to run.
func (s *pingStream) wait(t *testing.T) {
	t.Helper()
	<-s.done
	if s.err != nil {
		t.Fatalf("%s: %v", s.name, s.err)
	}
}

func (s *pingStream) String() string {
	at := ""
	if len(s.lostAt) > 0 {
		ts := make([]string, len(s.lostAt))
		for i, t := range s.lostAt {
			ts[i] = t.UTC().Format("15:04:05.000")
		}
		at = ", sent at " + strings.Join(ts, " ")
	}
	return fmt.Sprintf("%s: %d of %d lost (~%s without a path%s)", s.name, s.lost, s.sent, time.Duration(s.lost)*pingInterval, at)
}

// racksConverged: every node has every other node's pod CIDR in its kernel and is Established with each of
// its rack's ToRs; every pod CIDR is at the spine.
func racksConverged(ctx context.Context, l *lab.Lab) error {
	for _, n := range l.Nodes {
		st, err := neighbors(ctx, n)
		if err != nil {
			return err
		}
		for _, ip := range n.Rack.ToRIPs() {
			if st[ip] != "ESTABLISHED" {
				return fmt.Errorf("%s: session with its ToR %s is %q", n.Name, ip, st[ip])
			}
		}
		rt, err := kernelRoutes(ctx, n)
		if err != nil {
			return err
		}
		for _, o := range l.Nodes {
			if o != n && len(rt[o.PodCIDR]) == 0 {
				return fmt.Errorf("%s: no route to %s (%s)", n.Name, o.PodCIDR, o.Name)
			}
		}
	}
	rt, err := l.Spine.KernelRoutes(ctx)
	if err != nil {
		return err
	}
	for _, n := range l.Nodes {
		if len(rt[n.PodCIDR]) == 0 {
			return fmt.Errorf("spine: no route to %s (%s)", n.PodCIDR, n.Name)
		}
	}
	return nil
}

// waitUntil polls f every 50 ms until it returns nil and returns how long that took after since.
func waitUntil(t *testing.T, timeout time.Duration, since time.Time, what string, f func(ctx context.Context) error) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(cctx)
		ccancel()
		if err == nil {
			return time.Since(since)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestRacksFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no lab")
	}
	cfg := lab.Config{
		Nodes: 6, Racks: 5, PerRack: []lab.RackConfig{
			{ToRKind: lab.ToRFRR, NodeASN: 65001, Nodes: 2},
			{ToRKind: lab.ToRFRR, NodeASN: 65002, Nodes: 1},
			{ToRKind: lab.ToRFRR, NodeASN: 65003, Nodes: 1, DualToR: true},
			{ToRKind: lab.ToRBIRD, NodeASN: 65004, Nodes: 1},
			{ToRKind: lab.ToRGoBGP, NodeASN: 65005, Nodes: 1},
		},
		AgentBin: agentBin(), CNIPlugin: cniBin(), AgentGroups: []string{agentGroup},
		AgentArgs: []string{"--nodes-full-mesh=false"},
		// BFD with the FRR ToRs (bfdd, 300 ms × 3); the lab's BIRD and gobgpd ToRs run none.
		PerNodeArgs: map[int][]string{1: {"--bfd"}, 2: {"--bfd"}, 3: {"--bfd"}, 4: {"--bfd"}},
		BeforeAgents: func(ctx context.Context, l *lab.Lab) error {
			if err := installCRDs(ctx, dynamic.NewForConfigOrDie(l.RestConfig())); err != nil {
				return fmt.Errorf("CRDs: %w", err)
			}
			return applyAgentRBAC(ctx, l)
		},
	}
	l := lab.New(t, cfg)
	start := time.Now()
	fabricConverged := func(ctx context.Context) error { return racksConverged(ctx, l) }
	ctx := context.Background()
	d := waitUntil(t, 90*time.Second, start, "the fabric converges", fabricConverged)
	t.Logf("fabric converged (every pod CIDR on every node and at the spine) %s after the agents started", d.Round(time.Millisecond))
	if t.Failed() {
		return
	}
	defer func() {
		if t.Failed() {
			var b strings.Builder
			_ = l.Show(context.Background(), &b)
			t.Log(b.String())
		}
	}()
	n1, n2, n3, n4 := l.Nodes[0], l.Nodes[1], l.Nodes[2], l.Nodes[3]
	p1 := addPod(t, l, n1, "a")
	p2 := addPod(t, l, n2, "b")
	p3 := addPod(t, l, n3, "c")
	p4 := addPod(t, l, n4, "d")
	p5 := addPod(t, l, l.Nodes[4], "e")
	p6 := addPod(t, l, l.Nodes[5], "f")
	pods := []*lab.Pod{p1, p2, p3, p4, p5, p6}
	eventually(t, 30*time.Second, "every pod reaches every other pod and the external host", func(ctx context.Context) error {
		for _, a := range pods {
			for _, b := range pods {
				if a != b {
					if err := a.Ping(ctx, b.IP); err != nil {
						return fmt.Errorf("%s → %s: %v", a.Node.Name, b.Node.Name, err)
					}
				}
			}
			if err := a.Ping(ctx, l.Ext.IP); err != nil {
				return fmt.Errorf("%s → external host: %v", a.Node.Name, err)
			}
		}
		return nil
	})

	t.Run("single-homed-rack-loses-its-tor", func(t *testing.T) {
		tor2 := n3.Rack.ToR
		inRack := startStream(p1, "rack1 pod → rack1 pod", p2.IP, 8*time.Second)
		toExt := startStream(p1, "rack1 pod → external host", l.Ext.IP, 8*time.Second)
		toDual := startStream(p1, "rack1 pod → dual-homed rack pod", p4.IP, 8*time.Second)
		time.Sleep(time.Second)
		down, err := tor2.PowerOff(ctx)
		if err != nil {
			t.Fatal(err)
		}
		spineGone := waitUntil(t, 30*time.Second, down, "the spine withdraws rack2's pod CIDR", func(ctx context.Context) error {
			rt, err := l.Spine.Routes(ctx)
			if err != nil {
				return err
			}
			if nh, ok := rt[n3.PodCIDR]; ok {
				return fmt.Errorf("spine still routes %s via %v", n3.PodCIDR, nh)
			}
			return nil
		})
		nodeGone := waitUntil(t, 30*time.Second, down, "rack1's nodes drop rack2's pod CIDR", func(ctx context.Context) error {
			for _, n := range []*lab.Node{n1, n2} {
				rt, err := kernelRoutes(ctx, n)
				if err != nil {
					return err
				}
				if nh, ok := rt[n3.PodCIDR]; ok {
					return fmt.Errorf("%s still routes %s via %v", n.Name, n3.PodCIDR, nh)
				}
			}
			return nil
		})
		t.Logf("%s powered off: the spine withdrew %s after %s (carrier loss on its port), rack1's nodes after %s",
			tor2.Name, n3.PodCIDR, spineGone.Round(time.Millisecond), nodeGone.Round(time.Millisecond))
		if err := p1.Ping(ctx, p3.IP); err == nil {
			t.Errorf("rack2's pod %s still answers with its only ToR down", p3.IP)
		}
		for _, s := range []*pingStream{inRack, toExt, toDual} {
			s.wait(t)
			t.Log(s)
			if s.lost > 0 {
				t.Errorf("%s: traffic that never crossed %s lost pings", s, tor2.Name)
			}
		}
		up := time.Now()
		if err := tor2.PowerOn(ctx); err != nil {
			t.Fatal(err)
		}
		d := waitUntil(t, 60*time.Second, up, "the fabric converges after "+tor2.Name+" is back", fabricConverged)
		eventually(t, 20*time.Second, "rack1 pod reaches rack2's pod again", func(ctx context.Context) error { return p1.Ping(ctx, p3.IP) })
		t.Logf("%s powered on: the fabric converged again (sessions, every pod CIDR everywhere) %s later, pod to pod %s later",
			tor2.Name, d.Round(time.Millisecond), time.Since(up).Round(time.Millisecond))
	})

	t.Run("dual-homed-rack-loses-one-tor", func(t *testing.T) {
		rack := n4.Rack
		if len(rack.ToRs) != 2 {
			t.Fatalf("%s: ToRs %v", rack.Name, rack.ToRIPs())
		}
		ext := l.Config().ExternalCIDR
		// Both ToRs carry the rack: the spine has the pod CIDR and the subnet ECMP over both uplinks, the node
		// the other racks' pod CIDRs over both ToRs and its uplink routes ECMP (static).
		eventually(t, 30*time.Second, "ECMP over both ToRs at the spine and at "+n4.Name, func(ctx context.Context) error {
			rt, err := l.Spine.KernelRoutes(ctx)
			if err != nil {
				return err
			}
			ups := []netip.Addr{rack.ToRs[0].Uplink, rack.ToRs[1].Uplink}
			for _, p := range []netip.Prefix{n4.PodCIDR, rack.Subnet} {
				if !slices.Equal(rt[p], ups) {
					return fmt.Errorf("spine: %s via %v, want %v", p, rt[p], ups)
				}
			}
			nrt, err := routesIn(ctx, n4.Exec)
			if err != nil {
				return err
			}
			for _, p := range []netip.Prefix{n1.PodCIDR, ext} {
				if !slices.Equal(nrt[p], rack.ToRIPs()) {
					return fmt.Errorf("%s: %s via %v, want %v", n4.Name, p, nrt[p], rack.ToRIPs())
				}
			}
			return nil
		})
		// Power off the ToR the pod's flow to the external host is hashed to, so that flow must fail over.
		out, err := n4.Exec(ctx, "ip", "route", "get", l.Ext.IP.String(), "from", p4.IP.String(), "iif", "canopy0")
		if err != nil {
			t.Fatalf("ip route get: %v: %s", err, out)
		}
		dead, alive := rack.ToRs[0], rack.ToRs[1]
		if strings.Contains(out, "via "+alive.IP.String()+" ") {
			dead, alive = alive, dead
		}
		// The pod-to-pod stream goes to a pod whose flow is hashed to that ToR too, if there is one (the BGP
		// routes' ECMP), so that it must fail over by BFD.
		target, via := p1, alive.Name+" (no pod's flow is hashed to "+dead.Name+")"
		for _, p := range []*lab.Pod{p1, p2, p3, p5, p6} {
			o, err := n4.Exec(ctx, "ip", "route", "get", p.IP.String(), "from", p4.IP.String(), "iif", "canopy0")
			if err != nil {
				t.Fatalf("ip route get: %v: %s", err, o)
			}
			if strings.Contains(o, "via "+dead.IP.String()+" ") {
				target, via = p, dead.Name
				break
			}
		}
		t.Logf("%s's flows: to the external host %s; to %s's pod via %s; powering off %s", n4.Name,
			strings.SplitN(strings.TrimSpace(out), "\n", 2)[0], target.Node.Name, via, dead.Name)
		before, err := uptimes(ctx, n4)
		if err != nil {
			t.Fatal(err)
		}
		if before[alive.IP].IsZero() || before[dead.IP].IsZero() {
			t.Fatalf("%s: sessions %v, want both ToRs Established", n4.Name, before)
		}
		toPod := startStream(p4, "dual-homed pod → "+target.Node.Name+" pod", target.IP, 10*time.Second)
		toExt := startStream(p4, "dual-homed pod → external host", l.Ext.IP, 10*time.Second)
		fromPod := startStream(p2, "rack1 pod → dual-homed pod", p4.IP, 10*time.Second)
		time.Sleep(time.Second)
		down, err := dead.PowerOff(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bgpGone := waitUntil(t, 30*time.Second, down, n4.Name+" drops "+dead.Name, func(ctx context.Context) error {
			rt, err := kernelRoutes(ctx, n4)
			if err != nil {
				return err
			}
			if !slices.Equal(rt[n1.PodCIDR], []netip.Addr{alive.IP}) {
				return fmt.Errorf("%s: %s via %v", n4.Name, n1.PodCIDR, rt[n1.PodCIDR])
			}
			return nil
		})
		t.Logf("%s powered off: %s routes rack1's pods via %s only %s later (BFD 300 ms × 3; hold time 9 s)",
			dead.Name, n4.Name, alive.Name, bgpGone.Round(time.Millisecond))
		for _, s := range []*pingStream{toPod, toExt, fromPod} {
			s.wait(t)
			t.Log(s)
		}
		// Bounds that tell detection from the hold time: BFD (~0.9 s) for the BGP routes, the dead ToR's
		// neighbour entry failing (~2 s) for the static uplink routes; the spine fails over on carrier loss.
		if out := time.Duration(toPod.lost) * pingInterval; out > 3*time.Second {
			t.Errorf("%s: longer than BFD detection allows", toPod)
		}
		if out := time.Duration(toExt.lost) * pingInterval; out > 5*time.Second {
			t.Errorf("%s: longer than the neighbour timers allow", toExt)
		}
		if out := time.Duration(fromPod.lost) * pingInterval; out > 3*time.Second {
			t.Errorf("%s: longer than the spine's failover allows", fromPod)
		}
		after, err := uptimes(ctx, n4)
		if err != nil {
			t.Fatal(err)
		}
		if !after[alive.IP].Equal(before[alive.IP]) {
			t.Errorf("%s's session with the surviving %s was reset: up since %v, before since %v", n4.Name, alive.Name, after[alive.IP], before[alive.IP])
		}
		if err := p4.Ping(ctx, l.Ext.IP); err != nil {
			t.Errorf("external host after the failover: %v", err)
		}
		up := time.Now()
		if err := dead.PowerOn(ctx); err != nil {
			t.Fatal(err)
		}
		d := waitUntil(t, 60*time.Second, up, "both ToRs carry the rack again", func(ctx context.Context) error {
			if err := fabricConverged(ctx); err != nil {
				return err
			}
			rt, err := kernelRoutes(ctx, n4)
			if err != nil {
				return err
			}
			if !slices.Equal(rt[n1.PodCIDR], rack.ToRIPs()) {
				return fmt.Errorf("%s: %s via %v", n4.Name, n1.PodCIDR, rt[n1.PodCIDR])
			}
			return nil
		})
		t.Logf("%s powered on: %s Established with it and ECMP over both ToRs again %s later", dead.Name, n4.Name, d.Round(time.Millisecond))
		final, err := uptimes(ctx, n4)
		if err != nil {
			t.Fatal(err)
		}
		if !final[alive.IP].Equal(before[alive.IP]) {
			t.Errorf("%s's session with %s was reset when %s came back", n4.Name, alive.Name, dead.Name)
		}
	})

	// The hostile-peer and restart checks per rack, one rack per ToR kind: the rack's ToR announces a /25 of a
	// victim node's pod CIDR and an unallocated /24 of the pod network. The rack's nodes must refuse both. (The
	// ToR hijacks them for the whole fabric too — the spine takes the /25 — so only a victim in the same rack,
	// whose pod CIDR the node routes straight to it, proves the data path unharmed.)
	for _, c := range []struct {
		kind   lab.ToRKind
		node   *lab.Node
		pod    *lab.Pod
		victim *lab.Pod
	}{
		{lab.ToRFRR, n1, p1, p2}, // node2: the same rack
		{lab.ToRBIRD, l.Nodes[4], p5, p1},
		{lab.ToRGoBGP, l.Nodes[5], p6, p1},
	} {
		tor := c.node.Rack.ToR
		t.Run(string(c.kind)+"/hostile-tor-hijacks-pod-cidrs", func(t *testing.T) {
			if tor.Kind != c.kind {
				t.Fatalf("%s is %s", tor.Name, tor.Kind)
			}
			half := netip.PrefixFrom(c.victim.Node.PodCIDR.Addr(), c.victim.Node.PodCIDR.Bits()+1)
			bad := []string{half.String(), "10.244.250.0/24"}
			const refused = `canopy_bgp_rejected_routes_total{reason="not_a_node_pod_cidr"}`
			m0, err := metrics(ctx, c.node)
			if err != nil {
				t.Fatal(err)
			}
			if err := tor.Announce(ctx, bad...); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = tor.Withdraw(context.Background(), bad...) })
			eventually(t, 20*time.Second, c.node.Name+" hears the announcements from "+tor.Name+" and refuses them", func(ctx context.Context) error {
				out, err := c.node.Exec(ctx, "gobgp", "global", "rib")
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				for _, b := range bad {
					if !strings.Contains(out, b) {
						return fmt.Errorf("%s not in the RIB yet", b)
					}
				}
				m, err := metrics(ctx, c.node)
				if err != nil {
					return err
				}
				if m[refused] < m0[refused]+2 {
					return fmt.Errorf("refusals counted: %v, before %v", m[refused], m0[refused])
				}
				return nil
			})
			rt, err := kernelRoutes(ctx, c.node)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range bad {
				if nh, ok := rt[netip.MustParsePrefix(b)]; ok {
					t.Errorf("%s installed %s via %v", c.node.Name, b, nh)
				}
			}
			if c.victim.Node.Rack == c.node.Rack {
				if err := c.pod.Ping(ctx, c.victim.IP); err != nil {
					t.Errorf("%s's pod no longer reaches %s's: %v", c.node.Name, c.victim.Node.Name, err)
				}
			}
			if err := tor.Withdraw(ctx, bad...); err != nil {
				t.Fatal(err)
			}
			eventually(t, 30*time.Second, "the spine forgets the hijack and the victim's pod answers again", func(ctx context.Context) error {
				rt, err := l.Spine.KernelRoutes(ctx)
				if err != nil {
					return err
				}
				if nh, ok := rt[half]; ok {
					return fmt.Errorf("spine: %s via %v", half, nh)
				}
				return c.pod.Ping(ctx, c.victim.IP)
			})
		})
		t.Run(string(c.kind)+"/agent-restart-keeps-traffic", func(t *testing.T) {
			// From a pod of another rack to the restarting node's pod, and from that pod out of the rack.
			from := p2
			if c.node.Rack == n2.Rack {
				from = p4
			}
			in := startStream(from, from.Node.Name+" pod → "+c.node.Name+" pod", c.pod.IP, 8*time.Second)
			out := startStream(c.pod, c.node.Name+" pod → "+from.Node.Name+" pod", from.IP, 8*time.Second)
			time.Sleep(time.Second)
			if err := c.node.StopAgent(); err != nil {
				t.Fatalf("agent did not stop cleanly: %v", err)
			}
			restarted := false
			t.Cleanup(func() {
				if !restarted {
					_ = c.node.StartAgent()
				}
			})
			time.Sleep(3 * time.Second)
			rt, err := tor.KernelRoutes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(rt[c.node.PodCIDR]) == 0 {
				t.Errorf("%s dropped %s while the agent was down (no graceful restart?)", tor.Name, c.node.PodCIDR)
			}
			t0 := time.Now()
			if err := c.node.StartAgent(); err != nil {
				t.Fatal(err)
			}
			restarted = true
			t.Logf("%s: agent started at %s (UTC; its log has the times of what it did)", c.node.Name, t0.UTC().Format("15:04:05.000"))
			for _, s := range []*pingStream{in, out} {
				s.wait(t)
				t.Log(s)
				if s.lost > 0 {
					t.Errorf("%s: traffic stopped across the agent restart behind %s", s, tor.Kind)
				}
			}
			d := waitUntil(t, 60*time.Second, t0, "the fabric converges after the restart", fabricConverged)
			t.Logf("%s (%s ToR): agent restarted, fabric converged %s after the start", c.node.Name, tor.Kind, d.Round(time.Millisecond))
		})
	}
}
