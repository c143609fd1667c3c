package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// (1) The ToR (FRR) learns every node's pod CIDR, with the node as next hop, and installs it in its FIB.
func TestToRLearnsEveryPodCIDR(t *testing.T) {
	l := needLab(t)
	eventually(t, 10*time.Second, "ToR BGP table and FIB", func(ctx context.Context) error {
		rib, err := l.ToR.Routes(ctx)
		if err != nil {
			return err
		}
		fib, err := routesIn(ctx, l.ToR.Exec, "proto", "bgp")
		if err != nil {
			return err
		}
		for _, n := range l.Nodes {
			if got := rib[n.PodCIDR]; !slices.Equal(got, []netip.Addr{n.IP}) {
				return fmt.Errorf("ToR BGP: %s via %v, want %s", n.PodCIDR, got, n.IP)
			}
			if got := fib[n.PodCIDR]; !slices.Equal(got, []netip.Addr{n.IP}) {
				return fmt.Errorf("ToR FIB: %s via %v, want %s", n.PodCIDR, got, n.IP)
			}
		}
		return nil
	})
}

// (2) Every node's kernel has the others' pod CIDRs (proto 186), and never its own.
func TestNodesInstallTheOthersPodCIDRs(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	for _, n := range l.Nodes {
		rt, err := kernelRoutes(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := rt[n.PodCIDR]; ok {
			t.Errorf("%s installed a route to its own pod CIDR %s", n.Name, n.PodCIDR)
		}
		for _, o := range l.Nodes {
			if o != n && !slices.Equal(rt[o.PodCIDR], []netip.Addr{o.IP}) {
				t.Errorf("%s: route to %s is %v, want via %s", n.Name, o.PodCIDR, rt[o.PodCIDR], o.IP)
			}
		}
	}
}

// (3) Pods on different nodes reach each other both ways, by their own addresses.
func TestPodToPodAcrossNodes(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	var pods []*lab.Pod
	for _, n := range l.Nodes {
		p, err := l.AddPod(ctx, n, "x")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.DeletePod(p) })
		pods = append(pods, p)
	}
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			eventually(t, 10*time.Second, fmt.Sprintf("ping %s (%s) -> %s (%s)", a.Node.Name, a.IP, b.Node.Name, b.IP),
				func(ctx context.Context) error { return a.Ping(ctx, b.IP) })
		}
	}
}

// (4) `gobgp neighbor` in a node's namespace lists the ToR and every other node as Established.
func TestGobgpNeighborShowsEstablished(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	for _, n := range l.Nodes {
		out, err := n.Exec(ctx, "gobgp", "neighbor")
		if err != nil {
			t.Fatalf("%s: gobgp neighbor: %v\n%s", n.Name, err, out)
		}
		peers := []netip.Addr{l.ToR.IP}
		for _, o := range l.Nodes {
			if o != n {
				peers = append(peers, o.IP)
			}
		}
		for _, p := range peers {
			found := false
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				if len(f) >= 4 && f[0] == p.String() && f[3] == "Establ" {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: gobgp neighbor does not show %s Established:\n%s", n.Name, p, out)
			}
		}
	}
}

// (5) A node deleted from the API is unpeered by the others and its pod CIDR disappears everywhere; put back,
// it is peered again.
func TestDeletedNodeIsUnpeeredEverywhere(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	gone := l.Nodes[len(l.Nodes)-1]
	old, err := l.Kube.CoreV1().Nodes().Get(ctx, gone.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restoreNode(t, l, gone, old) })
	if err := l.Kube.CoreV1().Nodes().Delete(ctx, gone.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	eventually(t, 10*time.Second, "the deleted node's pod CIDR is gone from the ToR and every node", func(ctx context.Context) error {
		rib, err := l.ToR.Routes(ctx)
		if err != nil {
			return err
		}
		if _, ok := rib[gone.PodCIDR]; ok {
			return fmt.Errorf("ToR still has %s", gone.PodCIDR)
		}
		for _, n := range l.Nodes {
			if n == gone {
				continue
			}
			rt, err := kernelRoutes(ctx, n)
			if err != nil {
				return err
			}
			if _, ok := rt[gone.PodCIDR]; ok {
				return fmt.Errorf("%s still routes %s", n.Name, gone.PodCIDR)
			}
			st, err := neighbors(ctx, n)
			if err != nil {
				return err
			}
			if s, ok := st[gone.IP]; ok {
				return fmt.Errorf("%s still has peer %s (%s)", n.Name, gone.IP, s)
			}
		}
		return nil
	})
	t.Logf("%s unpeered and its route gone everywhere %s after the Node was deleted", gone.Name, time.Since(t0).Round(time.Millisecond))
}

// restoreNode registers a deleted node again, as its kubelet would, and waits for the lab to converge.
func restoreNode(t *testing.T, l *lab.Lab, n *lab.Node, old *corev1.Node) {
	t.Helper()
	ctx := context.Background()
	fresh := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: old.Name, Labels: old.Labels}, Status: old.Status}
	if _, err := l.Kube.CoreV1().Nodes().Create(ctx, fresh, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("re-register %s: %v", n.Name, err)
	}
	eventually(t, 20*time.Second, "the re-registered node gets a pod CIDR", func(ctx context.Context) error {
		got, err := l.Kube.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Spec.PodCIDR == "" {
			return fmt.Errorf("no pod CIDR yet")
		}
		p, err := netip.ParsePrefix(got.Spec.PodCIDR)
		if err != nil {
			return err
		}
		n.PodCIDR = p
		return nil
	})
	waitConverged(t, l)
}

// (6) Routes the ToR announces that the import policy refuses — a default route, a prefix outside the cluster
// CIDR, a prefix covering node addresses — reach the nodes' BGP tables but never their kernels.
func TestImportPolicyRefusesForeignRoutes(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	bad := []string{"0.0.0.0/0", "198.51.100.0/24", "10.99.0.0/16", "10.244.0.0/16"}
	if err := l.ToR.Announce(ctx, bad...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.ToR.Withdraw(context.Background(), bad...); err != nil {
			t.Error(err)
		}
	})
	for _, n := range l.Nodes {
		eventually(t, 15*time.Second, n.Name+" receives the announcements", func(ctx context.Context) error {
			out, err := n.Exec(ctx, "gobgp", "global", "rib")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			for _, b := range bad {
				if !strings.Contains(out, b) {
					return fmt.Errorf("%s not in the RIB yet:\n%s", b, out)
				}
			}
			return nil
		})
	}
	time.Sleep(500 * time.Millisecond) // the learner runs right after the RIB; give it a moment before checking
	for _, n := range l.Nodes {
		rt, err := kernelRoutes(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		all, err := routesIn(ctx, n.Exec)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bad {
			p := netip.MustParsePrefix(b)
			if _, ok := rt[p]; ok {
				t.Errorf("%s installed refused prefix %s", n.Name, b)
			}
			if _, ok := all[p]; ok {
				t.Errorf("%s has a route to refused prefix %s in its main table", n.Name, b)
			}
		}
		m, err := metrics(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, reason := range []string{"default_route", "outside_allowed", "own_pod_cidr"} {
			if m[`canopy_bgp_rejected_routes_total{reason="`+reason+`"}`] < 1 {
				t.Errorf("%s: canopy_bgp_rejected_routes_total{reason=%q} not counted", n.Name, reason)
			}
		}
	}
	// Still converged: the refused routes disturbed nothing.
	waitConverged(t, l)
}

// (7) A malformed canopy.io/peers annotation leaves the sessions up and is reported as an Event on the Node;
// a good value after it takes effect.
func TestMalformedPeersAnnotationIsReportedAndHarmless(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	n := l.Nodes[0]
	before, err := uptimes(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { annotate(t, l, n, nil) })
	bad := `[{"ip": "10.99.0.250", "asn": "sixty-four"}]`
	annotate(t, l, n, &bad)
	waitWarningEvent(t, l, n.Name, "InvalidBGPAnnotation", "canopy.io/peers[0].asn")
	time.Sleep(time.Second)
	after, err := uptimes(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	for p, up := range before {
		if after[p].IsZero() || !after[p].Equal(up) {
			t.Errorf("session with %s was reset by a malformed annotation (up since %v, now %v)", p, up, after[p])
		}
	}
	m, err := metrics(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if m[`canopy_bgp_invalid_input_total{source="node_annotation"}`] < 1 {
		t.Errorf("the invalid annotation was not counted")
	}
	good := `[{"ip": "10.99.0.250", "asn": 65099}]`
	annotate(t, l, n, &good)
	eventually(t, 10*time.Second, "the good annotation's peer is configured", func(ctx context.Context) error {
		st, err := neighbors(ctx, n)
		if err != nil {
			return err
		}
		if _, ok := st[netip.MustParseAddr("10.99.0.250")]; !ok {
			return fmt.Errorf("peer 10.99.0.250 not configured: %v", st)
		}
		return nil
	})
}

// annotate sets (or with nil removes) canopy.io/peers on the node.
func annotate(t *testing.T, l *lab.Lab, n *lab.Node, v *string) {
	t.Helper()
	val := "null"
	if v != nil {
		val = fmt.Sprintf("%q", *v)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"canopy.io/peers":%s}}}`, val)
	if _, err := l.Kube.CoreV1().Nodes().Patch(context.Background(), n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// uptimes returns when each Established session of the node came up.
func uptimes(ctx context.Context, n *lab.Node) (map[netip.Addr]time.Time, error) {
	out, err := n.Exec(ctx, "gobgp", "neighbor", "-j")
	if err != nil {
		return nil, err
	}
	return parseUptimes(out)
}

// (8) An agent restart keeps traffic flowing: while the agent is down, its peers keep its pod CIDR (graceful
// restart) and its kernel keeps the learned routes; after it is back, everything converges without churn.
func TestAgentRestartKeepsTraffic(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	a, b := l.Nodes[0], l.Nodes[1]
	pa, err := l.AddPod(ctx, a, "r")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeletePod(pa) })
	pb, err := l.AddPod(ctx, b, "r")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeletePod(pb) })
	eventually(t, 10*time.Second, "ping before the restart", func(ctx context.Context) error { return pa.Ping(ctx, pb.IP) })
	if err := b.StopAgent(); err != nil {
		t.Fatalf("agent did not stop cleanly on SIGTERM: %v", err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = b.StartAgent()
		}
	})
	time.Sleep(2 * time.Second) // well past a TCP reset's effect (~70 ms without graceful restart)
	if err := pa.Ping(ctx, pb.IP); err != nil {
		t.Errorf("traffic stopped while the agent on %s was down: %v", b.Name, err)
	}
	rt, err := kernelRoutes(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rt[a.PodCIDR], []netip.Addr{a.IP}) {
		t.Errorf("%s lost its route to %s while its agent was down: %v", b.Name, a.PodCIDR, rt)
	}
	if err := b.StartAgent(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	waitConverged(t, l)
	if err := pa.Ping(ctx, pb.IP); err != nil {
		t.Errorf("ping after the restart: %v", err)
	}
}

// A node's canopy.io/node-asn annotation takes effect live: its speaker restarts in the new AS, the other nodes
// re-create only their session with it (now eBGP), and routes converge again; removing it goes back.
func TestNodeASNAnnotationTakesEffectLive(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	n := l.Nodes[len(l.Nodes)-1]
	set := func(v string) {
		t.Helper()
		val := "null"
		if v != "" {
			val = fmt.Sprintf("%q", v)
		}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"canopy.io/node-asn":%s}}}`, val)
		if _, err := l.Kube.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { set(""); waitConverged(t, l) })
	set("65003")
	eventually(t, 60*time.Second, "the others peer with "+n.Name+" in AS 65003 and still route to it", func(ctx context.Context) error {
		for _, o := range l.Nodes {
			if o == n {
				continue
			}
			out, err := o.Exec(ctx, "gobgp", "neighbor", n.IP.String(), "-j")
			if err != nil {
				return fmt.Errorf("%s: %v %s", o.Name, err, out)
			}
			if !strings.Contains(out, `"peer_asn":65003`) || !strings.Contains(out, `"session_state":6`) {
				return fmt.Errorf("%s's session with %s is not Established in AS 65003 yet", o.Name, n.Name)
			}
			rt, err := kernelRoutes(ctx, o)
			if err != nil {
				return err
			}
			if !slices.Equal(rt[n.PodCIDR], []netip.Addr{n.IP}) {
				return fmt.Errorf("%s: route to %s is %v", o.Name, n.PodCIDR, rt[n.PodCIDR])
			}
		}
		return nil
	})
}

// waitWarningEvent waits for a Warning Event in namespace default (where cluster-scoped objects' events go too)
// about object, with reason (if not "") and a message containing text.
func waitWarningEvent(t *testing.T, l *lab.Lab, object, reason, text string) {
	t.Helper()
	sel := "involvedObject.name=" + object
	if reason != "" {
		sel += ",reason=" + reason
	}
	eventually(t, 10*time.Second, "a Warning Event about "+object+" mentioning "+text, func(ctx context.Context) error {
		evs, err := l.Kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, text) {
				return nil
			}
		}
		return fmt.Errorf("%d events matching %s, none mentioning %q", len(evs.Items), sel, text)
	})
}
