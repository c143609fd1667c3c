package e2e

// eBGP per rack (RFC 7938) in a two-rack fabric: each rack its own subnet and ToR, the ToRs under an FRR spine
// that also holds the control plane and the external host. The node mesh is off; every node peers only with
// its own rack's ToR, configured the product's way — one BGPPeer per rack selecting the rack's nodes by label —
// and the nodes of a rack share one ASN (canopy.io/node-asn). Behind an FRR ToR they learn each other's routes
// through as-override; behind a BIRD ToR (no as-override) through allowOwnAS (allowas-in) on the BGPPeer, which
// the test turns on live after showing the routes missing without it. A gobgpd ToR (which never sends a route to
// a peer whose AS is in its path) runs with an ASN per node instead. Then pods talk across racks through the
// spine, a ClusterIP Service is reached across racks, and a LoadBalancer VIP announced from the nodes of both
// racks is ECMP at the spine and reached from the external host.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/e2e/lab"
)

// racksCase is one ToR software and how the nodes of a rack learn each other's routes through it.
type racksCase struct {
	name string
	kind lab.ToRKind
	// allowOwnAS: the ToR does not as-override, so the rack's BGPPeer needs allowOwnAS 1 (first shown missing).
	allowOwnAS bool
	// perNodeASN: every node its own ASN (65010+i) instead of one per rack.
	perNodeASN bool
}

func TestRacksEBGP(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	for _, c := range []racksCase{
		{name: "frr-as-override", kind: lab.ToRFRR},
		{name: "bird-allowas-in", kind: lab.ToRBIRD, allowOwnAS: true},
		{name: "gobgpd-asn-per-node", kind: lab.ToRGoBGP, perNodeASN: true},
	} {
		t.Run(c.name, func(t *testing.T) { testRacks(t, c) })
	}
}

// rackPeer is the BGPPeer of a rack: its ToR, for the nodes labelled with the rack's name.
func rackPeer(r *lab.Rack, allowOwnAS int32) *v1alpha1.BGPPeer {
	return &v1alpha1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "tor-" + r.Name}, Spec: v1alpha1.BGPPeerSpec{
		PeerAddress:  r.ToR.IP.String(),
		PeerASN:      int64(r.ToR.ASN),
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{lab.RackLabel: r.Name}},
		TTLSecurity:  crdPtr(true), // every ToR kind runs GTSM with its nodes
		AllowOwnAS:   allowOwnAS,
	}}
}

func testRacks(t *testing.T, c racksCase) {
	own := int32(0) // allowOwnAS at the start: a BIRD ToR's rack first goes without it
	per := []lab.RackConfig{{ToRKind: c.kind, NodeASN: 65001}, {ToRKind: c.kind, NodeASN: 65002}}
	if c.perNodeASN {
		per = []lab.RackConfig{{ToRKind: c.kind}, {ToRKind: c.kind}}
	}
	cfg := lab.Config{
		Nodes: 4, Racks: 2, PerRack: per,
		AgentBin: agentBin(), CNIPlugin: cniBin(), AgentGroups: []string{agentGroup},
		// The peers come from the BGPPeers alone.
		NoToRPeerFlags: true,
		AgentArgs:      []string{"--nodes-full-mesh=false", "--loadbalancer-ip-range=" + lbRange},
		BeforeAgents: func(ctx context.Context, l *lab.Lab) error {
			dyn := dynamic.NewForConfigOrDie(l.RestConfig())
			if err := installCRDs(ctx, dyn); err != nil {
				return fmt.Errorf("CRDs: %w", err)
			}
			if err := applyAgentRBAC(ctx, l); err != nil {
				return err
			}
			if c.perNodeASN {
				for _, n := range l.Nodes {
					patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"%d"}}}`, lab.AnnotationNodeASN, 65010+n.Index)
					if _, err := l.Kube.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
						return err
					}
				}
			}
			for _, r := range l.Racks {
				u, err := v1alpha1.ToUnstructured(rackPeer(r, own))
				if err != nil {
					return err
				}
				if _, err := dyn.Resource(v1alpha1.BGPPeersResource).Create(ctx, u, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
					return fmt.Errorf("BGPPeer for %s: %w", r.Name, err)
				}
			}
			return nil
		},
	}
	l := lab.New(t, cfg)
	start := time.Now() // the agents have just started
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(l.RestConfig())
	n1, n2, n3, n4 := l.Nodes[0], l.Nodes[1], l.Nodes[2], l.Nodes[3]
	if n1.Rack != l.Racks[0] || n2.Rack != l.Racks[0] || n3.Rack != l.Racks[1] || n4.Rack != l.Racks[1] {
		t.Fatalf("racks: node1-2 in rack1 and node3-4 in rack2 expected, got %s %s %s %s", n1.Rack.Name, n2.Rack.Name, n3.Rack.Name, n4.Rack.Name)
	}

	// Every node has exactly one session: its own ToR (mesh off, the other rack's BGPPeer does not select it).
	eventually(t, 60*time.Second, "every node Established with its ToR only", func(ctx context.Context) error {
		for _, n := range l.Nodes {
			st, err := neighbors(ctx, n)
			if err != nil {
				return err
			}
			if len(st) != 1 || st[n.Rack.ToR.IP] != "ESTABLISHED" {
				return fmt.Errorf("%s: sessions %v, want only %s ESTABLISHED", n.Name, st, n.Rack.ToR.IP)
			}
		}
		for _, r := range l.Racks {
			got, err := r.ToR.Peers(ctx)
			if err != nil {
				return err
			}
			for _, ip := range r.NodeIPs() {
				if got[ip] != "Established" {
					return fmt.Errorf("%s ToR (%s): %s is %q", r.Name, r.ToR.Kind, ip, got[ip])
				}
			}
		}
		return nil
	})
	t.Logf("%s: every node Established with its rack's ToR (and only it) %s after the agents started", c.name, time.Since(start).Round(time.Millisecond))

	// routeVia says whether n's kernel has o's pod CIDR through a next hop of o's (o itself or n's ToR).
	routeOK := func(rt map[netip.Prefix][]netip.Addr, n, o *lab.Node) error {
		got := rt[o.PodCIDR]
		want := []netip.Addr{n.Rack.ToR.IP} // another rack: only through our ToR (and the spine)
		if o.Rack == n.Rack {
			// Same rack: the ToR passes the route on with the other node as next hop (same segment), or itself.
			if slices.Equal(got, []netip.Addr{o.IP}) {
				return nil
			}
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s: %s via %v, want %v", n.Name, o.PodCIDR, got, want)
		}
		return nil
	}
	allRoutes := func(sameRack bool) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			for _, n := range l.Nodes {
				rt, err := kernelRoutes(ctx, n)
				if err != nil {
					return err
				}
				for _, o := range l.Nodes {
					if o == n || (o.Rack == n.Rack && !sameRack) {
						continue
					}
					if err := routeOK(rt, n, o); err != nil {
						return err
					}
				}
			}
			return nil
		}
	}
	if c.allowOwnAS {
		// Without allowas-in the other rack's routes arrive, the own rack's (our ASN in the path) never do.
		eventually(t, 60*time.Second, "the other rack's pod CIDRs on every node", allRoutes(false))
		t.Logf("%s: other racks' pod CIDRs on every node %s after the agents started", c.name, time.Since(start).Round(time.Millisecond))
		time.Sleep(2 * time.Second) // a same-rack route would have come with the others; give it time to be sure
		for _, n := range l.Nodes {
			rt, err := kernelRoutes(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range n.Rack.Nodes {
				if o != n && len(rt[o.PodCIDR]) > 0 {
					t.Fatalf("%s has %s (%s, same ASN) without allowOwnAS: via %v", n.Name, o.Name, o.PodCIDR, rt[o.PodCIDR])
				}
			}
		}
		t1 := time.Now()
		for _, r := range l.Racks {
			objApply(t, dyn, rackPeer(r, 1))
		}
		eventually(t, 60*time.Second, "every pod CIDR on every node with allowOwnAS 1", allRoutes(true))
		t.Logf("%s: allowOwnAS 1 on both BGPPeers: the own rack's pod CIDRs on every node %s later", c.name, time.Since(t1).Round(time.Millisecond))
	} else {
		eventually(t, 60*time.Second, "every pod CIDR on every node", allRoutes(true))
		t.Logf("%s: every pod CIDR on every node %s after the agents started", c.name, time.Since(start).Round(time.Millisecond))
	}

	// Pods across racks, through the spine, and within a rack (the shared ASN), by ICMP and TCP.
	webA := backend(t, l, n1, "web-a", "rackweb") // rack 1
	webB := backend(t, l, n3, "web-b", "rackweb") // rack 2
	cli2 := addPod(t, l, n2, "cli")               // rack 1
	cli4 := addPod(t, l, n4, "cli")               // rack 2
	t2 := time.Now()
	for _, p := range []struct {
		from *lab.Pod
		to   *lab.Pod
	}{{cli2, webB}, {cli4, webA}, {cli2, webA}, {cli4, webB}} {
		eventually(t, 30*time.Second, fmt.Sprintf("%s on %s → %s on %s", p.from.Name, p.from.Node.Name, p.to.Name, p.to.Node.Name), func(ctx context.Context) error {
			if err := p.from.Ping(ctx, p.to.IP); err != nil {
				return err
			}
			got, err := readLine(ctx, p.from, "tcp", net.JoinHostPort(p.to.IP.String(), "8080"))
			if err == nil && got != p.to.Name {
				err = fmt.Errorf("answer %q", got)
			}
			return err
		})
	}
	t.Logf("%s: pod to pod across racks and within each rack (ICMP, TCP) %s after the pods were made", c.name, time.Since(t2).Round(time.Millisecond))
	// The path across racks goes through the spine: the spine routes each node's pod CIDR to its rack's ToR.
	eventually(t, 30*time.Second, "the spine routes every pod CIDR to its rack's ToR", func(ctx context.Context) error {
		rt, err := l.Spine.KernelRoutes(ctx)
		if err != nil {
			return err
		}
		for _, n := range l.Nodes {
			if got := rt[n.PodCIDR]; !slices.Equal(got, []netip.Addr{n.Rack.ToR.Uplink}) {
				return fmt.Errorf("spine: %s via %v, want %s (%s)", n.PodCIDR, got, n.Rack.ToR.Uplink, n.Rack.Name)
			}
		}
		return nil
	})

	// A ClusterIP Service with a backend in each rack, from a client in each rack.
	svc := createService(t, l, webService("rackweb", "rackweb"))
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	for _, cli := range []*lab.Pod{cli2, cli4} {
		eventually(t, 30*time.Second, "ClusterIP from "+cli.Node.Name+" reaches both racks' backends", func(ctx context.Context) error {
			seen := spread(t, cli, addr, 12)
			if seen["web-a"] == 0 || seen["web-b"] == 0 {
				return fmt.Errorf("answers %v", seen)
			}
			return nil
		})
	}

	// A LoadBalancer Service: its VIP is announced by every node of both racks, so the spine has it ECMP over
	// both ToRs (and each ToR over its nodes), and the external host behind the spine reaches the backends.
	if err := startSharedController(ctx, l); err != nil {
		t.Fatal(err)
	}
	lbSvc := webService("rackweb-lb", "rackweb")
	lbSvc.Spec.Type = corev1.ServiceTypeLoadBalancer
	lbSvc.Spec.Ports = lbSvc.Spec.Ports[:1]
	createService(t, l, lbSvc)
	vip := waitLBIP(t, l, "rackweb-lb")
	t3 := time.Now()
	uplinks := []netip.Addr{l.Racks[0].ToR.Uplink, l.Racks[1].ToR.Uplink}
	eventually(t, 30*time.Second, "the VIP ECMP at the spine over both ToRs", func(ctx context.Context) error {
		rt, err := l.Spine.KernelRoutes(ctx)
		if err != nil {
			return err
		}
		if got := rt[netip.PrefixFrom(vip, 32)]; !slices.Equal(got, uplinks) {
			return fmt.Errorf("spine: %s via %v, want %v", vip, got, uplinks)
		}
		return nil
	})
	t.Logf("%s: LoadBalancer %s at the spine over both ToRs (ECMP) %s after the allocation", c.name, vip, time.Since(t3).Round(time.Millisecond))
	for _, r := range l.Racks {
		if c.kind == lab.ToRGoBGP {
			break // gobgpd's ECMP is its FIB helper's; checked at the spine only
		}
		eventually(t, 30*time.Second, r.Name+"'s ToR has the VIP over both its nodes", func(ctx context.Context) error {
			rt, err := r.ToR.KernelRoutes(ctx)
			if err != nil {
				return err
			}
			if got := rt[netip.PrefixFrom(vip, 32)]; !slices.Equal(got, nodeIPs(r.Nodes...)) {
				return fmt.Errorf("%s ToR: %s via %v, want %v", r.Name, vip, got, nodeIPs(r.Nodes...))
			}
			return nil
		})
	}
	eventually(t, 30*time.Second, "the external host reaches both racks' backends through the VIP", func(ctx context.Context) error {
		seen := spread(t, l.Ext, net.JoinHostPort(vip.String(), "80"), 16)
		if seen["web-a"] == 0 || seen["web-b"] == 0 {
			return fmt.Errorf("answers %v", seen)
		}
		return nil
	})
	t.Logf("%s: the external host fetched from both racks' backends through %s %s after the allocation", c.name, vip, time.Since(t3).Round(time.Millisecond))
	if t.Failed() {
		var b strings.Builder
		_ = l.Show(ctx, &b)
		t.Log(b.String())
	}
}
