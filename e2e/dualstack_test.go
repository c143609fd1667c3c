package e2e

import (
	"bufio"
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

	"canopy.io/canopy/e2e/lab"
)

// TestDualStack runs its own dual-stack lab (lab.Config.DualStack: IPv6 on the fabric, both families in the
// cluster and service CIDRs, both InternalIPs on every Node, IPv6 unicast on the ToR's node sessions; 3 nodes):
// the BGP sessions are the IPv4 ones, and over them (MP-BGP) every node announces its IPv6 pod CIDR with its IPv6
// address as next hop. It checks that the ToR learns and installs every node's IPv6 pod CIDR through that node's
// IPv6 address, that every node installs every other node's IPv6 pod CIDR the same way (and its IPv4 one through
// its IPv4 address, as without dual stack), that pods get an address of each family from the CNI plugin, and that
// pods on different nodes reach each other over IPv6 (ICMPv6, TCP with the source address kept) and still over
// IPv4, and that a pod resolves a name over IPv6 through a dual-stack DNS Service (checkDNSOverIPv6). Convergence
// times from the agents' start are logged.
func TestDualStack(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	l := lab.New(t, lab.Config{Nodes: 3, DualStack: true, AgentBin: agentBin(), CNIPlugin: cniBin()})
	start := time.Now() // the agents have just started
	for _, n := range l.Nodes {
		if !n.PodCIDR6.IsValid() || !n.IP6().IsValid() {
			t.Fatalf("%s: IPv6 pod CIDR %v, IPv6 address %v", n.Name, n.PodCIDR6, n.IP6())
		}
		t.Logf("%s: %s %s, pod CIDRs %s %s", n.Name, n.IP, n.IP6(), n.PodCIDR, n.PodCIDR6)
	}

	// The ToR: every node's IPv6 pod CIDR in its BGP table and its kernel, through that node's IPv6 address (and
	// every IPv4 one through its IPv4 address: each family's time is logged).
	var at4, at6 time.Duration
	eventually(t, 60*time.Second, "the ToR learns every IPv6 pod CIDR with the node's IPv6 next hop", func(ctx context.Context) error {
		if at4 == 0 {
			rib4, err := l.ToR.Routes(ctx)
			if err != nil {
				return err
			}
			all := true
			for _, n := range l.Nodes {
				all = all && slices.Equal(rib4[n.PodCIDR], []netip.Addr{n.IP})
			}
			if all {
				at4 = time.Since(start)
			}
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
			if !slices.Equal(rib[n.PodCIDR6], []netip.Addr{n.IP6()}) {
				return fmt.Errorf("ToR BGP: %s via %v, want %s", n.PodCIDR6, rib[n.PodCIDR6], n.IP6())
			}
			if !slices.Equal(kern[n.PodCIDR6], []netip.Addr{n.IP6()}) {
				return fmt.Errorf("ToR kernel: %s via %v, want %s", n.PodCIDR6, kern[n.PodCIDR6], n.IP6())
			}
		}
		if at6 == 0 {
			at6 = time.Since(start)
		}
		if at4 == 0 {
			return fmt.Errorf("ToR: not every IPv4 pod CIDR yet")
		}
		return nil
	})
	t.Logf("ToR has every IPv6 pod CIDR (BGP and kernel) %s after the agents started; every IPv4 one (BGP) %s after",
		at6.Round(time.Millisecond), at4.Round(time.Millisecond))
	out, _ := l.ToR.Vtysh(context.Background(), "show bgp ipv6 unicast")
	t.Logf("ToR: show bgp ipv6 unicast\n%s", out)

	// Every node: every other node's pod CIDRs, each through that node's address of its family (Canopy's route
	// protocol), and the sessions are the IPv4 ones.
	eventually(t, 60*time.Second, "every node installs every other node's IPv6 and IPv4 pod CIDR", func(ctx context.Context) error {
		for _, n := range l.Nodes {
			st, err := neighbors(ctx, n)
			if err != nil {
				return err
			}
			r6, err := routesIn(ctx, exec6(n.Exec), "proto", "186")
			if err != nil {
				return err
			}
			r4, err := kernelRoutes(ctx, n)
			if err != nil {
				return err
			}
			if st[l.ToR.IP] != "ESTABLISHED" {
				return fmt.Errorf("%s: ToR session %q", n.Name, st[l.ToR.IP])
			}
			for _, o := range l.Nodes {
				if o == n {
					continue
				}
				if st[o.IP] != "ESTABLISHED" {
					return fmt.Errorf("%s: session with %s %q", n.Name, o.IP, st[o.IP])
				}
				if !slices.Equal(r6[o.PodCIDR6], []netip.Addr{o.IP6()}) {
					return fmt.Errorf("%s: %s via %v, want %s", n.Name, o.PodCIDR6, r6[o.PodCIDR6], o.IP6())
				}
				if !slices.Equal(r4[o.PodCIDR], []netip.Addr{o.IP}) {
					return fmt.Errorf("%s: %s via %v, want %s", n.Name, o.PodCIDR, r4[o.PodCIDR], o.IP)
				}
			}
			if len(r6) != len(l.Nodes)-1 {
				return fmt.Errorf("%s: IPv6 routes of Canopy %v, want the other nodes' pod CIDRs only", n.Name, r6)
			}
		}
		return nil
	})
	t.Logf("every node has every other node's IPv6 and IPv4 pod CIDR %s after the agents started", time.Since(start).Round(time.Millisecond))
	out, _ = l.Nodes[0].Exec(context.Background(), "ip", "-6", "route", "show", "proto", "186")
	t.Logf("node1: ip -6 route show proto 186\n%s", out)

	// Pods get an address of each family, of their node's pod CIDRs.
	t0 := time.Now()
	pods := make([]*lab.Pod, len(l.Nodes))
	for i, n := range l.Nodes {
		pods[i] = addPod(t, l, n, fmt.Sprintf("ds%d", i+1))
		p := pods[i]
		if !n.PodCIDR.Contains(p.IP) || !n.PodCIDR6.Contains(p.IP6) {
			t.Fatalf("pod on %s: addresses %s %s, want inside %s and %s", n.Name, p.IP, p.IP6, n.PodCIDR, n.PodCIDR6)
		}
		t.Logf("pod %s on %s: %s %s", p.Name, n.Name, p.IP, p.IP6)
	}
	t.Logf("3 dual-stack pods made in %s", time.Since(t0).Round(time.Millisecond))

	// Pod to pod across nodes: ICMPv6 both ways between every pair, then ICMP (IPv4).
	t1 := time.Now()
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			eventually(t, 10*time.Second, fmt.Sprintf("ping -6 %s -> %s (%s)", a.Name, b.Name, b.IP6), func(ctx context.Context) error {
				return a.Ping(ctx, b.IP6)
			})
			eventually(t, 10*time.Second, fmt.Sprintf("ping %s -> %s (%s)", a.Name, b.Name, b.IP), func(ctx context.Context) error {
				return a.Ping(ctx, b.IP)
			})
		}
	}
	t.Logf("ICMPv6 and ICMP between every pair of pods on different nodes (12 pings) in %s", time.Since(t1).Round(time.Millisecond))

	// TCP over IPv6 and over IPv4 across nodes; the server sees the client pod's own address (no NAT).
	if got := sourceSeenAt(t, &pods[1].Host, pods[1].IP6, pods[0]); got != pods[0].IP6 {
		t.Errorf("TCP over IPv6 %s -> %s: the server saw %s, want the client pod's %s", pods[0].Name, pods[1].Name, got, pods[0].IP6)
	}
	if got := sourceSeenAt(t, &pods[2].Host, pods[2].IP, pods[0]); got != pods[0].IP {
		t.Errorf("TCP over IPv4 %s -> %s: the server saw %s, want the client pod's %s", pods[0].Name, pods[2].Name, got, pods[0].IP)
	}

	// The cluster DNS over IPv6.
	checkDNSOverIPv6(t, l, pods)
}

// torRoutesVia6 checks that the ToR routes each of prefixes over exactly the next hops want (sorted), in its BGP
// table and its kernel (FRR's routes); want nil: none of them is there.
func torRoutesVia6(ctx context.Context, tor *lab.ToR, want []netip.Addr, prefixes ...netip.Prefix) error {
	rib, err := tor.Routes6(ctx)
	if err != nil {
		return err
	}
	kern, err := routesIn(ctx, exec6(tor.Exec), "proto", "bgp")
	if err != nil {
		return err
	}
	for _, p := range prefixes {
		if !slices.Equal(rib[p], want) || !slices.Equal(kern[p], want) {
			return fmt.Errorf("ToR: %s BGP %v kernel %v, want %v", p, rib[p], kern[p], want)
		}
	}
	return nil
}

// exec6 turns `ip …` commands into `ip -6 …` ones (for routesIn).
func exec6(exec func(context.Context, ...string) (string, error)) func(context.Context, ...string) (string, error) {
	return func(ctx context.Context, args ...string) (string, error) {
		if len(args) > 0 && args[0] == "ip" {
			args = append([]string{"ip", "-6"}, args[1:]...)
		}
		return exec(ctx, args...)
	}
}

// sourceSeenAt is sourceSeen for a server address of either family: a TCP server in server's namespace answers
// each connection with the client address it sees; client connects to addr and the address is returned.
func sourceSeenAt(t *testing.T, server *lab.Host, addr netip.Addr, client *lab.Pod) netip.Addr {
	t.Helper()
	const port = "8098"
	listen := "TCP4-LISTEN:" + port
	if addr.Is6() {
		listen = "TCP6-LISTEN:" + port
	}
	proc, err := server.Start("echo-source-"+strings.ToLower(listen[:4]), "socat", listen+",reuseaddr,fork", `SYSTEM:echo $SOCAT_PEERADDR`)
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Kill()
	var got netip.Addr
	t0 := time.Now()
	eventually(t, 10*time.Second, fmt.Sprintf("connect %s -> [%s]:%s", client.Name, addr, port), func(ctx context.Context) error {
		c, err := client.Dial(ctx, "tcp", net.JoinHostPort(addr.String(), port))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		got, err = netip.ParseAddr(strings.Trim(strings.TrimSpace(line), "[]"))
		return err
	})
	t.Logf("TCP %s -> [%s]:%s answered in %s (server start included), source seen %s", client.Name, addr, port, time.Since(t0).Round(time.Millisecond), got)
	return got
}

// TestDualStackServiceVIPs runs its own dual-stack lab (3 nodes; agents with --advertise-cluster-ip, an
// ExternalIP range and a LoadBalancer range of each family, --run-loadbalancer) and a RequireDualStack Service
// with an ExternalIP of each family, backed by dual-stack pods on two nodes: every node announces the IPv6
// ClusterIP and ExternalIP to the ToR as /128s through its IPv6 address (over the IPv4 sessions) and the IPv4
// ones as /32s through its IPv4 address; the ToR installs them as ECMP routes over the three nodes; TCP from the
// ToR's namespace to each IPv6 VIP (and to the IPv4 ClusterIP) reaches both backend pods (the nodes' IPv6
// proxy). With externalTrafficPolicy Local only the nodes with a local IPv6 endpoint announce the IPv6
// ExternalIP and the backend sees the client's own address. A RequireDualStack LoadBalancer Service gets an
// address of each family from the allocator, and its IPv6 one is announced and reachable the same way, and both
// of its addresses from the external host. Deleting the Services withdraws the /128s. Times are logged.
func TestDualStackServiceVIPs(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	const extRange6, ext6, extRange4, ext4 = "fd00:e1::/64", "fd00:e1::9", "10.201.0.0/22", "10.201.0.9"
	const lbRange4, lbRange6 = "10.200.0.0/24", "fd00:200::/120"
	l := lab.New(t, lab.Config{Nodes: 3, DualStack: true, AgentBin: agentBin(), CNIPlugin: cniBin(),
		AgentArgs: []string{"--advertise-cluster-ip", "--service-external-ip-range=" + extRange4 + "," + extRange6,
			"--run-loadbalancer", "--loadbalancer-ip-range=" + lbRange4 + "," + lbRange6}})
	// Backends on node1 and node2, answering their name over both families.
	for i, name := range []string{"va", "vb"} {
		p, err := l.AddPodWith(context.Background(), l.Nodes[i], name, lab.PodOptions{Labels: map[string]string{"app": "vip6"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.DeletePod(p); err != nil {
				t.Errorf("delete pod %s: %v", name, err)
			}
		})
		if _, err := p.Start("web-"+name, "socat", "TCP6-LISTEN:8080,reuseaddr,fork,ipv6only=0", "SYSTEM:echo "+name); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Start("peer-"+name, "socat", "TCP6-LISTEN:8081,reuseaddr,fork,ipv6only=0", `SYSTEM:echo $SOCAT_PEERADDR`); err != nil {
			t.Fatal(err)
		}
		if !p.IP6.IsValid() {
			t.Fatalf("pod %s has no IPv6 address", name)
		}
	}
	policy := corev1.IPFamilyPolicyRequireDualStack
	svc := webService("vip6", "vip6")
	svc.Spec.Ports = svc.Spec.Ports[:1] // http: 80 -> 8080
	svc.Spec.IPFamilyPolicy = &policy
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	svc.Spec.ExternalIPs = []string{ext4, ext6}
	t0 := time.Now()
	created := createService(t, l, svc)
	var cip4, cip6 netip.Addr
	for _, s := range created.Spec.ClusterIPs {
		a := netip.MustParseAddr(s)
		if a.Is4() {
			cip4 = a
		} else {
			cip6 = a
		}
	}
	if !cip4.IsValid() || !cip6.IsValid() {
		t.Fatalf("cluster IPs %v: want one of each family", created.Spec.ClusterIPs)
	}
	t.Logf("Service vip6: cluster IPs %s %s, external IPs %s %s", cip4, cip6, ext4, ext6)

	var all4, all6 []netip.Addr
	for _, n := range l.Nodes {
		all4, all6 = append(all4, n.IP), append(all6, n.IP6())
	}
	slices.SortFunc(all4, netip.Addr.Compare)
	slices.SortFunc(all6, netip.Addr.Compare)
	vips6 := []netip.Prefix{netip.PrefixFrom(cip6, 128), netip.MustParsePrefix(ext6 + "/128")}
	vips4 := []netip.Prefix{netip.PrefixFrom(cip4, 32), netip.MustParsePrefix(ext4 + "/32")}
	var bgpAt time.Duration
	var lastErr string // each new reason logged once (the machine may be loaded: see how far it got)
	logNew := func(err error) error {
		if err != nil && err.Error() != lastErr {
			lastErr = err.Error()
			t.Logf("%s after the Service: %v", time.Since(t0).Round(time.Millisecond), err)
		}
		return err
	}
	eventually(t, 90*time.Second, "the ToR routes the IPv6 VIPs as /128s over every node's IPv6 address", func(ctx context.Context) error {
		rib, err := l.ToR.Routes6(ctx)
		if err != nil {
			return logNew(err)
		}
		for _, v := range vips6 {
			if !slices.Equal(rib[v], all6) {
				return logNew(fmt.Errorf("ToR BGP: %s via %v, want %v", v, rib[v], all6))
			}
		}
		if bgpAt == 0 {
			bgpAt = time.Since(t0)
		}
		kern, err := routesIn(ctx, exec6(l.ToR.Exec), "proto", "bgp")
		if err != nil {
			return logNew(err)
		}
		for _, v := range vips6 {
			if !slices.Equal(kern[v], all6) {
				return logNew(fmt.Errorf("ToR kernel: %s via %v, want %v", v, kern[v], all6))
			}
		}
		return nil
	})
	t.Logf("IPv6 VIPs %v at the ToR: BGP %s, kernel (ECMP over %d nodes) %s after the Service was created",
		vips6, bgpAt.Round(time.Millisecond), len(all6), time.Since(t0).Round(time.Millisecond))
	out, _ := l.ToR.Vtysh(context.Background(), "show bgp ipv6 unicast")
	t.Logf("ToR: show bgp ipv6 unicast\n%s", out)
	eventually(t, 30*time.Second, "the ToR routes the IPv4 VIPs as /32s over every node's IPv4 address", func(ctx context.Context) error {
		rib, err := l.ToR.Routes(ctx)
		if err != nil {
			return err
		}
		for _, v := range vips4 {
			if !slices.Equal(rib[v], all4) {
				return fmt.Errorf("ToR BGP: %s via %v, want %v", v, rib[v], all4)
			}
		}
		return nil
	})
	t.Logf("IPv4 VIPs %v at the ToR %s after the Service was created", vips4, time.Since(t0).Round(time.Millisecond))

	// Traffic from the ToR's namespace (source fd00:99::1) to each VIP reaches both backends.
	reachesBoth := func(addr string) {
		t.Helper()
		eventually(t, 30*time.Second, "TCP from the ToR to "+addr+" reaches both backends", func(ctx context.Context) error {
			if s := spread(t, &l.ToR.Host, addr, 16); s["va"] == 0 || s["vb"] == 0 {
				return fmt.Errorf("answers %v", s)
			}
			return nil
		})
	}
	for _, vip := range []netip.Addr{cip6, netip.MustParseAddr(ext6), cip4} {
		t1 := time.Now()
		addr := net.JoinHostPort(vip.String(), "80")
		reachesBoth(addr)
		t.Logf("TCP from the ToR to %s answered by both backends in %s (%s after the Service was created)",
			addr, time.Since(t1).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	}

	// No node installs the VIPs (they go to the ToR only).
	for _, n := range l.Nodes {
		r6, err := routesIn(context.Background(), exec6(n.Exec), "proto", "186")
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vips6 {
			if _, ok := r6[v]; ok {
				t.Errorf("%s installed a route to the VIP %s", n.Name, v)
			}
		}
	}

	// externalTrafficPolicy Local over IPv6: only the nodes with a local IPv6 endpoint (node1, node2) announce the
	// IPv6 ExternalIP, and the backend sees the client's own address (the ToR's), not a node's.
	const extLocal6 = "fd00:e1::10"
	etp := webService("etp6", "vip6")
	etp.Spec.Ports = etp.Spec.Ports[1:2] // peer: 81 -> 8081, answers the client address it sees
	etp.Spec.IPFamilyPolicy = &policy
	etp.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	etp.Spec.ExternalIPs = []string{extLocal6}
	etp.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	t5 := time.Now()
	createService(t, l, etp)
	local6 := []netip.Addr{l.Nodes[0].IP6(), l.Nodes[1].IP6()}
	slices.SortFunc(local6, netip.Addr.Compare)
	etpVIP := netip.MustParsePrefix(extLocal6 + "/128")
	eventually(t, 60*time.Second, "the ToR routes the ETP Local IPv6 ExternalIP over the nodes with a local endpoint only", func(ctx context.Context) error {
		return torRoutesVia6(ctx, l.ToR, local6, etpVIP)
	})
	t.Logf("ETP Local %s at the ToR via %v (not node3) %s after the Service was created", etpVIP, local6, time.Since(t5).Round(time.Millisecond))
	etpAddr := net.JoinHostPort(extLocal6, "81")
	for i := range 4 { // ECMP may pick either node: each answer must show the ToR's own address
		var seen string
		eventually(t, 30*time.Second, "TCP from the ToR to "+etpAddr, func(ctx context.Context) error {
			var err error
			seen, err = readLine(ctx, &l.ToR.Host, "tcp", etpAddr)
			return err
		})
		if got, err := netip.ParseAddr(strings.Trim(seen, "[]")); err != nil || got != l.ToR.IP6() {
			t.Fatalf("connection %d to %s: the backend saw %q, want the ToR's own %s (ETP Local keeps the client address)", i, etpAddr, seen, l.ToR.IP6())
		}
	}
	t.Logf("ETP Local over IPv6: the backend sees the client's own address %s", l.ToR.IP6())
	vips6 = append(vips6, etpVIP)

	// A dual-stack LoadBalancer Service: an address of each family from the allocator (status in spec.ipFamilies
	// order), the IPv6 one announced as a /128 by every node and reachable from the ToR.
	lb := webService("lb6", "vip6")
	lb.Spec.Ports = lb.Spec.Ports[:1]
	lb.Spec.Type = corev1.ServiceTypeLoadBalancer
	lb.Spec.IPFamilyPolicy = &policy
	lb.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	t3 := time.Now()
	createService(t, l, lb)
	var lb4, lb6 netip.Addr
	eventually(t, 60*time.Second, "an address of each family from the allocator", func(ctx context.Context) error {
		s, err := l.Kube.CoreV1().Services("default").Get(ctx, "lb6", metav1.GetOptions{})
		if err != nil {
			return err
		}
		var got []string
		for _, in := range s.Status.LoadBalancer.Ingress {
			got = append(got, in.IP)
		}
		if len(got) != 2 {
			return fmt.Errorf("status %v", got)
		}
		lb6, lb4 = netip.MustParseAddr(got[0]), netip.MustParseAddr(got[1])
		if !netip.MustParsePrefix(lbRange6).Contains(lb6) || !netip.MustParsePrefix(lbRange4).Contains(lb4) {
			return fmt.Errorf("status %v: want an address of %s, then one of %s", got, lbRange6, lbRange4)
		}
		return nil
	})
	allocAt := time.Since(t3)
	lbVIP6 := netip.PrefixFrom(lb6, 128)
	eventually(t, 60*time.Second, "the ToR routes the IPv6 LoadBalancer IP over every node's IPv6 address", func(ctx context.Context) error {
		return torRoutesVia6(ctx, l.ToR, all6, lbVIP6)
	})
	t.Logf("LoadBalancer IPs %s and %s allocated %s after the Service was created; %s at the ToR (BGP and kernel, ECMP) %s after",
		lb6, lb4, allocAt.Round(time.Millisecond), lbVIP6, time.Since(t3).Round(time.Millisecond))
	t4 := time.Now()
	lbAddr := net.JoinHostPort(lb6.String(), "80")
	reachesBoth(lbAddr)
	t.Logf("TCP from the ToR to %s answered by both backends in %s", lbAddr, time.Since(t4).Round(time.Millisecond))
	vips6 = append(vips6, lbVIP6)

	// From the external host (a client outside the rack, behind the ToR): both LoadBalancer IPs, IPv6 and IPv4,
	// reach both backends. The nodes reach its links through the ToR, as a real node's uplink would (the routes
	// live in the lab's namespaces).
	for _, n := range l.Nodes {
		for _, r := range [][]string{
			{"ip", "route", "replace", l.Config().ExternalCIDR.String(), "via", l.ToR.IP.String()},
			{"ip", "-6", "route", "replace", lab.ExternalCIDR6.String(), "via", l.ToR.IP6().String()},
		} {
			if out, err := n.Exec(context.Background(), r...); err != nil {
				t.Fatalf("%s: %v: %v: %s", n.Name, r, err, out)
			}
		}
	}
	for _, vip := range []netip.Addr{lb6, lb4} {
		t5 := time.Now()
		addr := net.JoinHostPort(vip.String(), "80")
		eventually(t, 30*time.Second, "TCP from the external host to "+addr+" reaches both backends", func(ctx context.Context) error {
			if s := spread(t, l.Ext, addr, 16); s["va"] == 0 || s["vb"] == 0 {
				return fmt.Errorf("answers %v", s)
			}
			return nil
		})
		t.Logf("TCP from the external host (%s, %s) to %s answered by both backends in %s", l.Ext.IP, l.Ext.IP6(), addr, time.Since(t5).Round(time.Millisecond))
	}

	t2 := time.Now()
	for _, name := range []string{"vip6", "etp6", "lb6"} {
		if err := l.Kube.CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "the IPv6 VIPs withdrawn at the ToR", func(ctx context.Context) error {
		return torRoutesVia6(ctx, l.ToR, nil, vips6...)
	})
	t.Logf("IPv6 VIPs %v withdrawn at the ToR (BGP and kernel) %s after the Services were deleted", vips6, time.Since(t2).Round(time.Millisecond))
}
