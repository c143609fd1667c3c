package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"canopy.io/canopy/e2e/lab"
)

// setNodeASN sets (or with "" removes) the node's canopy.io/node-asn annotation.
func setNodeASN(t *testing.T, l *lab.Lab, n *lab.Node, v string) {
	t.Helper()
	val := "null"
	if v != "" {
		val = fmt.Sprintf("%q", v)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"canopy.io/node-asn":%s}}}`, val)
	if _, err := l.Kube.CoreV1().Nodes().Patch(context.Background(), n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// torNeighbor returns the ToR's session with addr: its state and the AS it is in.
func torNeighbor(ctx context.Context, l *lab.Lab, addr netip.Addr) (state string, asn uint32, err error) {
	var nb map[string]struct {
		RemoteAs uint32 `json:"remoteAs"`
		BgpState string `json:"bgpState"`
	}
	if err := l.ToR.VtyshJSON(ctx, "show bgp neighbors "+addr.String(), &nb); err != nil {
		return "", 0, err
	}
	p := nb[addr.String()]
	return p.BgpState, p.RemoteAs, nil
}

// A node's BGP speaker restarts (here: ten alternations of canopy.io/node-asn); after each, the ToR gets the
// node's pod CIDR and every VIP it announces again — the manager replays its whole desired state onto each new
// speaker, paths before peers — with the routes there as soon as the new session is Established.
func TestSpeakerRestartsReplayEveryAnnouncement(t *testing.T) {
	l := needLab(t)
	n := l.Nodes[1]
	backend(t, l, l.Nodes[0], "rsa", "rs1")
	backend(t, l, n, "rsb", "rs1")
	lb := webService("rs1", "rs1")
	lb.Spec.Type = corev1.ServiceTypeLoadBalancer
	createService(t, l, lb)
	lbIP := waitLBIP(t, l, "rs1")
	ext := webService("rs2", "rs1")
	ext.Spec.ExternalIPs = []string{"10.201.0.21"}
	createService(t, l, ext)
	want := []netip.Prefix{n.PodCIDR, netip.PrefixFrom(lbIP, 32), netip.MustParsePrefix("10.201.0.21/32")}
	announced := func(ctx context.Context) error {
		rib, err := l.ToR.Routes(ctx)
		if err != nil {
			return err
		}
		for _, p := range want {
			if !slices.Contains(rib[p], n.IP) {
				return fmt.Errorf("the ToR routes %s via %v, not via %s", p, rib[p], n.IP)
			}
		}
		return nil
	}
	eventually(t, 20*time.Second, "the ToR has the pod CIDR and both VIPs from "+n.Name, announced)
	t.Cleanup(func() { setNodeASN(t, l, n, ""); waitConverged(t, l) })

	var afterEstablished, total []time.Duration
	for i := range 10 {
		asn, val := uint32(64512), ""
		if i%2 == 0 {
			asn, val = 65020, "65020"
		}
		t0 := time.Now()
		setNodeASN(t, l, n, val)
		var established time.Time
		eventually(t, 30*time.Second, fmt.Sprintf("restart %d: the speaker back in AS %d with everything announced", i+1, asn), func(ctx context.Context) error {
			st, remote, err := torNeighbor(ctx, l, n.IP)
			if err != nil {
				return err
			}
			if st != "Established" || remote != asn {
				established = time.Time{}
				return fmt.Errorf("the ToR's session with %s: %s in AS %d", n.Name, st, remote)
			}
			if established.IsZero() {
				established = time.Now()
			}
			return announced(ctx)
		})
		afterEstablished = append(afterEstablished, time.Since(established))
		total = append(total, time.Since(t0))
	}
	sort.Slice(afterEstablished, func(i, j int) bool { return afterEstablished[i] < afterEstablished[j] })
	sort.Slice(total, func(i, j int) bool { return total[i] < total[j] })
	t.Logf("10 speaker restarts: everything at the ToR %v after the session came up (max %v; the poll takes ~50 ms), %v after the annotation changed (median %v)",
		afterEstablished, afterEstablished[9].Round(time.Millisecond), total, total[5].Round(time.Millisecond))
	if afterEstablished[9] > time.Second {
		t.Errorf("announcements came more than 1 s after the session: %v", afterEstablished)
	}
}

// The sweep of the routes an earlier run left never deletes a right one: an agent restarted while its ToR is
// unreachable keeps the route it learned from the ToR long past --stale-route-timeout (the mesh peers' End-of-RIB
// does not speak for the ToR's routes), and the route is confirmed once the ToR is back.
func TestStartupSweepKeepsRoutesOfAnUnreachablePeer(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	b := l.Nodes[1]
	const prefix = "100.64.7.0/24" // inside --import-allow
	pfx := netip.MustParsePrefix(prefix)
	if err := l.ToR.Announce(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.ToR.Withdraw(context.Background(), prefix) })
	viaToR := func(ctx context.Context) error {
		rt, err := kernelRoutes(ctx, b)
		if err != nil {
			return err
		}
		if !slices.Equal(rt[pfx], []netip.Addr{l.ToR.IP}) {
			return fmt.Errorf("%s: route to %s is %v, want via the ToR %s", b.Name, pfx, rt[pfx], l.ToR.IP)
		}
		return nil
	}
	eventually(t, 15*time.Second, b.Name+" learns "+prefix+" from the ToR", viaToR)

	if err := b.StopAgent(); err != nil {
		t.Fatal(err)
	}
	// The ToR now refuses the node's BGP connections (and nothing else: traffic through it still flows).
	block := [][]string{
		{"INPUT", "-s", b.IP.String(), "-p", "tcp", "--dport", "179", "-j", "DROP"},
		{"INPUT", "-s", b.IP.String(), "-p", "tcp", "--sport", "179", "-j", "DROP"},
	}
	for _, r := range block {
		if out, err := l.ToR.Exec(ctx, append([]string{"iptables", "-I"}, r...)...); err != nil {
			t.Fatalf("block BGP at the ToR: %v %s", err, out)
		}
	}
	unblocked := false
	unblock := func() {
		if unblocked {
			return
		}
		unblocked = true
		for _, r := range block {
			_, _ = l.ToR.Exec(context.Background(), append([]string{"iptables", "-D"}, r...)...)
		}
	}
	t.Cleanup(func() {
		unblock()
		_ = b.StopAgent()
		if err := b.StartAgent(); err != nil {
			t.Errorf("restart the agent with its usual flags: %v", err)
		}
		waitConverged(t, l)
	})
	const timeout = 4 * time.Second
	if err := b.StartAgent(fmt.Sprintf("--stale-route-timeout=%s", timeout)); err != nil {
		t.Fatal(err)
	}
	// The mesh comes up and sends End-of-RIB; the ToR never does.
	eventually(t, 30*time.Second, b.Name+" peers with the other nodes again", func(ctx context.Context) error {
		st, err := neighbors(ctx, b)
		if err != nil {
			return err
		}
		for _, o := range l.Nodes {
			if o != b && st[o.IP] != "ESTABLISHED" {
				return fmt.Errorf("session with %s is %q", o.Name, st[o.IP])
			}
		}
		if st[l.ToR.IP] == "ESTABLISHED" {
			return fmt.Errorf("the session with the ToR is up: the block did not work")
		}
		return nil
	})
	time.Sleep(3 * timeout)
	if err := viaToR(ctx); err != nil {
		t.Fatalf("the sweep removed the route of the unreachable ToR %s after start: %v", 3*timeout, err)
	}
	unblock()
	eventually(t, 30*time.Second, "the ToR session back up and the route still there", func(ctx context.Context) error {
		st, err := neighbors(ctx, b)
		if err != nil {
			return err
		}
		if st[l.ToR.IP] != "ESTABLISHED" {
			return fmt.Errorf("session with the ToR is %q", st[l.ToR.IP])
		}
		return viaToR(ctx)
	})
	// Confirmed, not merely kept: withdrawing it at the ToR removes it.
	if err := l.ToR.Withdraw(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the withdrawn route leaves "+b.Name, func(ctx context.Context) error {
		rt, err := kernelRoutes(ctx, b)
		if err != nil {
			return err
		}
		if _, ok := rt[pfx]; ok {
			return fmt.Errorf("still %v", rt[pfx])
		}
		return nil
	})
}
