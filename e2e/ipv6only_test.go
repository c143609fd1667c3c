package e2e

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
	"k8s.io/apimachinery/pkg/util/intstr"

	"canopy.io/canopy/bgp"
	"canopy.io/canopy/e2e/lab"
)

// TestIPv6Only runs its own IPv6-only lab (lab.Config.IPv6Only: IPv6 on every link, single-stack IPv6 cluster and
// service CIDRs in kube-apiserver and kube-controller-manager, nodes with an IPv6 InternalIP only, an FRR ToR with
// IPv6 neighbours; 2 nodes): the agents derive their BGP router IDs from their node names, peer with the ToR and
// with each other over IPv6 sessions (GTSM on both), the ToR learns and installs every node's pod CIDR through that
// node's address, every node installs the other's, pods get IPv6 addresses from the CNI plugin and reach each other
// across nodes (ICMPv6, TCP with the source address kept) but not the nodes' BGP port (the IPv6 BGP guard), and a
// pod reaches a single-stack IPv6 ClusterIP Service backed by a pod on the other node. Times from the agents'
// start are logged.
func TestIPv6Only(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	l := lab.New(t, lab.Config{Nodes: 2, IPv6Only: true, AgentBin: agentBin(), CNIPlugin: cniBin()})
	start := time.Now() // the agents have just started
	cfg := l.Config()
	for _, h := range []*lab.Host{&l.ToR.Host, l.CP, l.Ext} {
		if !h.IP.Is6() {
			t.Fatalf("%s has address %s, want IPv6", h.Name, h.IP)
		}
	}
	for _, n := range l.Nodes {
		if !n.IP.Is6() || !n.PodCIDR.Addr().Is6() || !cfg.ClusterCIDR.Contains(n.PodCIDR.Addr()) || n.PodCIDR.Bits() != 64 {
			t.Fatalf("%s: address %s, pod CIDR %s: want IPv6, a /64 of %s", n.Name, n.IP, n.PodCIDR, cfg.ClusterCIDR)
		}
		t.Logf("%s: %s, pod CIDR %s", n.Name, n.IP, n.PodCIDR)
	}

	// The ToR: an IPv6 session with every node, and every node's pod CIDR in its BGP table and its kernel through
	// that node's address.
	eventually(t, 60*time.Second, "the ToR learns every pod CIDR over IPv6 sessions with the node's next hop", func(ctx context.Context) error {
		peers, err := l.ToR.Peers(ctx)
		if err != nil {
			return err
		}
		rib, err := l.ToR.Routes6(ctx)
		if err != nil {
			return err
		}
		kern, err := routesIn(ctx, exec6(l.ToR.Exec), "proto", "bgp")
		if err != nil {
			return err
		}
		for _, n := range l.Nodes {
			if peers[n.IP] != "Established" {
				return fmt.Errorf("ToR session with %s: %q", n.IP, peers[n.IP])
			}
			if !slices.Equal(rib[n.PodCIDR], []netip.Addr{n.IP}) || !slices.Equal(kern[n.PodCIDR], []netip.Addr{n.IP}) {
				return fmt.Errorf("ToR: %s BGP via %v, kernel via %v, want %s", n.PodCIDR, rib[n.PodCIDR], kern[n.PodCIDR], n.IP)
			}
		}
		return nil
	})
	t.Logf("ToR has every pod CIDR (BGP and kernel) over IPv6 sessions %s after the agents started", time.Since(start).Round(time.Millisecond))
	out, _ := l.ToR.Vtysh(context.Background(), "show bgp ipv6 unicast")
	t.Logf("ToR: show bgp ipv6 unicast\n%s", out)

	// Every node: the derived router ID, IPv6 sessions with the ToR and the other node, the other node's pod CIDR
	// through its address (Canopy's route protocol), and no IPv4 route of Canopy's at all.
	eventually(t, 60*time.Second, "every node installs the other node's pod CIDR", func(ctx context.Context) error {
		for _, n := range l.Nodes {
			st, err := neighbors(ctx, n)
			if err != nil {
				return err
			}
			if st[l.ToR.IP] != "ESTABLISHED" {
				return fmt.Errorf("%s: ToR session %q", n.Name, st[l.ToR.IP])
			}
			r6, err := routesIn(ctx, exec6(n.Exec), "proto", "186")
			if err != nil {
				return err
			}
			for _, o := range l.Nodes {
				if o == n {
					continue
				}
				if st[o.IP] != "ESTABLISHED" {
					return fmt.Errorf("%s: session with %s %q", n.Name, o.IP, st[o.IP])
				}
				if !slices.Equal(r6[o.PodCIDR], []netip.Addr{o.IP}) {
					return fmt.Errorf("%s: %s via %v, want %s", n.Name, o.PodCIDR, r6[o.PodCIDR], o.IP)
				}
			}
			if len(r6) != len(l.Nodes)-1 {
				return fmt.Errorf("%s: IPv6 routes of Canopy %v, want the other nodes' pod CIDRs only", n.Name, r6)
			}
		}
		return nil
	})
	t.Logf("every node has the other's pod CIDR %s after the agents started", time.Since(start).Round(time.Millisecond))
	for _, n := range l.Nodes {
		out, err := n.Exec(context.Background(), "gobgp", "global")
		if err != nil {
			t.Fatalf("%s: gobgp global: %v: %s", n.Name, err, out)
		}
		if want := bgp.DeriveRouterID(n.Name).String(); !strings.Contains(out, "Router-ID: "+want) {
			t.Errorf("%s: gobgp global says\n%s\nwant router ID %s (derived from the node name)", n.Name, out, want)
		}
		if r4, err := kernelRoutes(context.Background(), n); err != nil || len(r4) != 0 {
			t.Errorf("%s: IPv4 routes of Canopy %v (%v), want none", n.Name, r4, err)
		}
	}

	// Pods get an IPv6 address of their node's pod CIDR, and only that.
	pods := make([]*lab.Pod, len(l.Nodes))
	for i, n := range l.Nodes {
		p, err := l.AddPodWith(context.Background(), n, fmt.Sprintf("v6p%d", i+1), lab.PodOptions{Labels: map[string]string{"app": fmt.Sprintf("v6p%d", i+1)}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.DeletePod(p); err != nil {
				t.Errorf("delete pod %s: %v", p.Name, err)
			}
		})
		if !p.IP.Is6() || !n.PodCIDR.Contains(p.IP) || p.IP6.IsValid() {
			t.Fatalf("pod on %s: address %s (second %s), want one IPv6 address inside %s", n.Name, p.IP, p.IP6, n.PodCIDR)
		}
		pods[i] = p
		t.Logf("pod %s on %s: %s", p.Name, n.Name, p.IP)
	}
	// Pod to pod across nodes: ICMPv6 both ways, TCP keeping the pod's address.
	for _, a := range pods {
		for _, b := range pods {
			if a != b {
				eventually(t, 10*time.Second, fmt.Sprintf("ping %s -> %s (%s)", a.Name, b.Name, b.IP), func(ctx context.Context) error {
					return a.Ping(ctx, b.IP)
				})
			}
		}
	}
	if got := sourceSeenAt(t, &pods[1].Host, pods[1].IP, pods[0]); got != pods[0].IP {
		t.Errorf("TCP %s -> %s: the server saw %s, want the client pod's %s", pods[0].Name, pods[1].Name, got, pods[0].IP)
	}
	// Pods cannot speak BGP: the IPv6 CANOPY-BGP-GUARD drops their TCP/179, to their own node and to another.
	for _, n := range l.Nodes {
		out, err := n.Exec(context.Background(), "ip6tables", "-S", "CANOPY-BGP-GUARD")
		if err != nil || !strings.Contains(out, "-s "+cfg.ClusterCIDR.String()+" -p tcp -m tcp --dport 179 -j DROP") {
			t.Errorf("%s: ip6tables CANOPY-BGP-GUARD (%v):\n%s", n.Name, err, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := pods[0].Dial(ctx, "tcp", net.JoinHostPort(n.IP.String(), "179"))
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("pod %s reached %s's BGP port [%s]:179", pods[0].Name, n.Name, n.IP)
		}
	}

	// A ClusterIP Service (single-stack IPv6, the cluster's only family) backed by the pod on node2, reached from
	// the pod on node1.
	if _, err := pods[1].Start("web6", "socat", "TCP6-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo "+pods[1].Name); err != nil {
		t.Fatal(err)
	}
	svc := createService(t, l, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "v6web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": pods[1].Name}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP}}},
	})
	vip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !cfg.ServiceCIDR.Contains(vip) || !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv6Protocol}) {
		t.Fatalf("Service %s: ClusterIP %q, families %v: want an IPv6 address of %s, IPv6 only", svc.Name, svc.Spec.ClusterIP, svc.Spec.IPFamilies, cfg.ServiceCIDR)
	}
	t0 := time.Now()
	eventually(t, 30*time.Second, fmt.Sprintf("%s -> ClusterIP [%s]:80", pods[0].Name, vip), func(ctx context.Context) error {
		got, err := readLine(ctx, pods[0], "tcp", net.JoinHostPort(vip.String(), "80"))
		if err != nil {
			return err
		}
		if got != pods[1].Name {
			return fmt.Errorf("answered %q, want %q", got, pods[1].Name)
		}
		return nil
	})
	t.Logf("ClusterIP [%s]:80 answered from %s %s after the Service was created", vip, pods[1].Name, time.Since(t0).Round(time.Millisecond))
}

// TestDualStackIPv6Sessions runs its own dual-stack lab (2 nodes) whose ToR peers with the nodes over IPv6 as
// well: a second peer group (NODES6, the IPv6 fabric as listen range) carries IPv6 unicast only, and the IPv4 node
// sessions no longer do (FRR: no neighbor NODES activate under address-family ipv6 unicast); the agents name the
// ToR's IPv6 address as a second --peer-router-ips. Each node then has two sessions with the ToR, and the ToR learns
// every IPv6 pod CIDR over the node's IPv6 session (next hop the node's IPv6 address) and every IPv4 one over its
// IPv4 session; pods on different nodes reach each other over IPv6.
func TestDualStackIPv6Sessions(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	const tor6 = "fd00:99::1" // the dual-stack lab's ToR (lab.Host.IP6)
	l := lab.New(t, lab.Config{Nodes: 2, DualStack: true, AgentBin: agentBin(), CNIPlugin: cniBin(),
		AgentArgs: []string{"--peer-router-ips=" + tor6},
		BeforeAgents: func(ctx context.Context, l *lab.Lab) error {
			return l.ToR.Config(ctx, fmt.Sprintf("router bgp %d", l.ToR.ASN),
				"neighbor NODES6 peer-group", "neighbor NODES6 remote-as external", "neighbor NODES6 ttl-security hops 1",
				"bgp listen range "+l.Config().FabricCIDR6.String()+" peer-group NODES6",
				"address-family ipv6 unicast", "no neighbor NODES activate", "neighbor NODES6 activate", "neighbor NODES6 as-override",
				"exit-address-family")
		}})
	start := time.Now()
	if l.ToR.IP6() != netip.MustParseAddr(tor6) {
		t.Fatalf("the ToR's IPv6 address is %s, not %s", l.ToR.IP6(), tor6)
	}
	var said string // the last condition logged (eventually reports only the last error, maybe a timeout)
	eventually(t, 60*time.Second, "the ToR learns each family's pod CIDRs over the sessions of that family", func(ctx context.Context) error {
		err := dualStackIPv6SessionsCheck(ctx, l)
		if err != nil && err.Error() != said && ctx.Err() == nil {
			said = err.Error()
			t.Logf("not yet: %v", err)
		}
		return err
	})
	t.Logf("IPv6 pod CIDRs over the IPv6 sessions, IPv4 ones over the IPv4 sessions at the ToR %s after the agents started", time.Since(start).Round(time.Millisecond))
	a := addPod(t, l, l.Nodes[0], "ds6a")
	b := addPod(t, l, l.Nodes[1], "ds6b")
	eventually(t, 10*time.Second, fmt.Sprintf("ping %s -> %s", b.IP6, a.IP6), func(ctx context.Context) error { return b.Ping(ctx, a.IP6) })
	if got := sourceSeenAt(t, &b.Host, b.IP6, a); got != a.IP6 {
		t.Errorf("TCP over IPv6 %s -> %s: the server saw %s, want %s", a.Name, b.Name, got, a.IP6)
	}
}

// dualStackIPv6SessionsCheck is TestDualStackIPv6Sessions' check of the ToR and the nodes' sessions.
func dualStackIPv6SessionsCheck(ctx context.Context, l *lab.Lab) error {
	type summary struct {
		Peers map[string]struct {
			State  string `json:"state"`
			PfxRcd int    `json:"pfxRcd"`
		} `json:"peers"`
	}
	var s4, s6 summary
	if err := l.ToR.VtyshJSON(ctx, "show bgp ipv4 unicast summary", &s4); err != nil {
		return err
	}
	if err := l.ToR.VtyshJSON(ctx, "show bgp ipv6 unicast summary", &s6); err != nil {
		return err
	}
	rib6, err := l.ToR.Routes6(ctx)
	if err != nil {
		return err
	}
	rib4, err := l.ToR.Routes(ctx)
	if err != nil {
		return err
	}
	for _, n := range l.Nodes {
		if p := s6.Peers[n.IP6().String()]; p.State != "Established" || p.PfxRcd != 1 {
			return fmt.Errorf("ToR IPv6 unicast from %s: %+v, want Established with 1 prefix", n.IP6(), p)
		}
		if p := s6.Peers[n.IP.String()]; p.PfxRcd != 0 {
			return fmt.Errorf("ToR: IPv6 routes on the IPv4 session with %s: %+v", n.IP, p)
		}
		if p := s4.Peers[n.IP.String()]; p.State != "Established" || p.PfxRcd != 1 {
			return fmt.Errorf("ToR IPv4 unicast from %s: %+v, want Established with 1 prefix", n.IP, p)
		}
		// FRR lists IPv4 unicast for the IPv6 neighbours too (bgp default ipv4-unicast); the node never sends IPv4
		// routes there (it does not offer the family: TestSpeakerIPv6Session).
		if p := s4.Peers[n.IP6().String()]; p.PfxRcd != 0 {
			return fmt.Errorf("ToR: IPv4 routes on the IPv6 session with %s: %+v", n.IP6(), p)
		}
		if !slices.Equal(rib6[n.PodCIDR6], []netip.Addr{n.IP6()}) || !slices.Equal(rib4[n.PodCIDR], []netip.Addr{n.IP}) {
			return fmt.Errorf("ToR: %s via %v (want %s), %s via %v (want %s)", n.PodCIDR6, rib6[n.PodCIDR6], n.IP6(), n.PodCIDR, rib4[n.PodCIDR], n.IP)
		}
	}
	for _, n := range l.Nodes {
		st, err := neighbors(ctx, n)
		if err != nil {
			return err
		}
		if st[l.ToR.IP] != "ESTABLISHED" || st[l.ToR.IP6()] != "ESTABLISHED" {
			return fmt.Errorf("%s: ToR sessions %s %q, %s %q", n.Name, l.ToR.IP, st[l.ToR.IP], l.ToR.IP6(), st[l.ToR.IP6()])
		}
	}
	return nil
}
