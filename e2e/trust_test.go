package e2e

// The trust boundaries, each proven by its attack in the lab: a tenant's Service, a process in the node's network
// namespace, a pod, and a BGP peer try what worked before, and now get a clear refusal and harm nothing.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// A tenant's Service claims the API server's address (and a node's) as ExternalIPs, on the API server's port,
// with an EndpointSlice of its own pod: no node sends its API traffic to the pod, nothing is announced, and the
// Service gets an Event saying why. (The lab's --service-external-ip-range includes the fabric, so the refusal
// comes from the rule that protects the cluster's own addresses, not from the range.)
func TestAttackServiceHijacksTheAPIServer(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	p := addPod(t, l, l.Nodes[0], "hijack")
	if _, err := p.Start("hijack-srv", "socat", "TCP-LISTEN:6443,reuseaddr,fork", "SYSTEM:echo hijacked"); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "hijack"}, Spec: corev1.ServiceSpec{
		ExternalIPs: []string{l.CP.IP.String(), l.Nodes[1].IP.String()},
		Ports:       []corev1.ServicePort{{Name: "https", Port: 6443, TargetPort: intstr.FromInt(6443), Protocol: corev1.ProtocolTCP}},
	}}
	createService(t, l, svc)
	// An EndpointSlice of the tenant's own making (no selector: the tenant writes the endpoints).
	port, name, proto := int32(6443), "https", corev1.ProtocolTCP
	slice := endpointSlice("hijack", p.IP, &name, &port, &proto)
	if _, err := l.Kube.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.Kube.DiscoveryV1().EndpointSlices("default").Delete(context.Background(), slice.Name, metav1.DeleteOptions{})
	})
	waitWarningEvent(t, l, "hijack", "ExternalIPRefused", "Kubernetes API server")
	waitWarningEvent(t, l, "hijack", "ExternalIPRefused", "address of node "+l.Nodes[1].Name)
	time.Sleep(time.Second) // long past a sync: had the proxy programmed it, it would be there
	for _, n := range l.Nodes {
		c, err := n.Dial(ctx, "tcp", net.JoinHostPort(l.CP.IP.String(), "6443"))
		if err != nil {
			t.Errorf("%s cannot reach the API server: %v", n.Name, err)
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 64)
		k, _ := c.Read(buf) // the real API server says nothing before the TLS ClientHello
		c.Close()
		if strings.Contains(string(buf[:k]), "hijacked") {
			t.Errorf("%s's connection to the API server landed on the tenant's pod", n.Name)
		}
		// The kubernetes Service's own endpoint (DNAT to the API server) is right; a rule matching traffic to it is not.
		if out, err := n.Exec(ctx, "iptables-save"); err != nil || strings.Contains(out, "-d "+l.CP.IP.String()+"/32") {
			t.Errorf("%s has rules catching traffic to the API server's address (%v):\n%s", n.Name, err, linesWith(out, "-d "+l.CP.IP.String()))
		}
		// The nftables proxy (the default here) keys its dispatch maps by address: the API server's is in no
		// element of any of its tables. Its endpoint chains DNAT to it ("dnat to 10.99.0.100:6443"), which is
		// right.
		if out, err := n.Exec(ctx, "nft", "list", "ruleset", "ip"); err != nil || strings.Contains(out, l.CP.IP.String()+" . tcp") ||
			strings.Contains(out, "daddr "+l.CP.IP.String()) {
			t.Errorf("%s has nftables rules catching traffic to the API server's address (%v):\n%s", n.Name, err, linesWith(out, l.CP.IP.String()))
		}
	}
	rib, err := l.ToR.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{l.CP.IP, l.Nodes[1].IP} {
		if nh, ok := rib[netip.PrefixFrom(a, 32)]; ok {
			t.Errorf("the ToR learned %s/32 via %v", a, nh)
		}
	}
}

func linesWith(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Any process in a node's network namespace (every hostNetwork pod) used to inject routes into the fabric through
// the GoBGP admin API; now the API is read-only: `gobgp neighbor` works, `gobgp global rib add` is refused, and
// the ToR never learns the path.
func TestAttackAdminAPIInjection(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	n := l.Nodes[0]
	out, err := n.Exec(ctx, "gobgp", "global", "rib", "add", "-a", "ipv4", "198.18.7.0/24", "nexthop", n.IP.String())
	if err == nil || !strings.Contains(out, "read-only") {
		t.Errorf("gobgp global rib add: err %v, output %q; want a refusal saying the API is read-only", err, out)
	}
	for _, cmd := range [][]string{{"gobgp", "neighbor", l.ToR.IP.String(), "reset"}, {"gobgp", "neighbor", "del", l.ToR.IP.String()},
		{"gobgp", "global", "rib", "del", "-a", "ipv4", n.PodCIDR.String()}} {
		if out, err := n.Exec(ctx, cmd...); err == nil {
			t.Errorf("%s was allowed: %s", strings.Join(cmd, " "), out)
		}
	}
	if out, err := n.Exec(ctx, "gobgp", "neighbor"); err != nil || !strings.Contains(out, "Establ") {
		t.Errorf("gobgp neighbor (a read) fails: %v\n%s", err, out)
	}
	if out, err := n.Exec(ctx, "gobgp", "global", "rib"); err != nil || !strings.Contains(out, l.Nodes[1].PodCIDR.String()) {
		t.Errorf("gobgp global rib (a read) fails: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	rib, err := l.ToR.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if nh, ok := rib[netip.MustParsePrefix("198.18.7.0/24")]; ok {
		t.Errorf("the ToR learned the injected 198.18.7.0/24 via %v", nh)
	}
}

// A pod used to open TCP to port 179 of the ToR and of every other node, masqueraded as its node's address; now
// it is dropped on its node (and the sessions themselves accept only TTL 255).
func TestAttackPodReachesBGPPort(t *testing.T) {
	l := needLab(t)
	p := addPod(t, l, l.Nodes[0], "bgpatk")
	for _, dst := range []netip.Addr{l.ToR.IP, l.Nodes[1].IP, l.Nodes[0].IP} {
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		c, err := p.Dial(ctx, "tcp", net.JoinHostPort(dst.String(), "179"))
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("a pod opened TCP to %s:179", dst)
		}
	}
	// Other ports are not affected: the pod still reaches the ToR (it answers ping).
	if err := p.Ping(context.Background(), l.ToR.IP); err != nil {
		t.Errorf("the pod cannot reach the ToR at all: %v", err)
	}
	waitConverged(t, l)
}

// A peer used to take over half of another node's pods (a /25 inside its pod CIDR) and an unallocated block of the
// pod network; now neither is installed anywhere, and the refusals are counted.
func TestAttackPeerHijacksPodCIDRs(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	victim := l.Nodes[1]
	half := netip.PrefixFrom(victim.PodCIDR.Addr(), victim.PodCIDR.Bits()+1)
	unallocated := netip.MustParsePrefix("10.244.250.0/24")
	bad := []string{half.String(), unallocated.String()}
	if err := l.ToR.Announce(ctx, bad...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.ToR.Withdraw(context.Background(), bad...) })
	for _, n := range l.Nodes {
		eventually(t, 15*time.Second, n.Name+" hears the announcements and refuses them", func(ctx context.Context) error {
			out, err := n.Exec(ctx, "gobgp", "global", "rib")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			for _, b := range bad {
				if !strings.Contains(out, b) {
					return fmt.Errorf("%s not in the RIB yet", b)
				}
			}
			m, err := metrics(ctx, n)
			if err != nil {
				return err
			}
			if m[`canopy_bgp_rejected_routes_total{reason="not_a_node_pod_cidr"}`] < 1 && n != victim {
				return fmt.Errorf("not counted as refused yet")
			}
			return nil
		})
		rt, err := kernelRoutes(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bad {
			if nh, ok := rt[netip.MustParsePrefix(b)]; ok {
				t.Errorf("%s installed %s via %v", n.Name, b, nh)
			}
		}
	}
	waitConverged(t, l)
}

// A peer floods prefixes inside the pod network: past its limit its session is torn down (with an Event on the
// Node and a metric), the node's other sessions stay up, nothing of the flood is installed, and the agent's memory
// stays small.
func TestAttackPeerFloodsPrefixes(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	n := l.Nodes[0]
	inj := injector(t, l)
	rss := func() float64 {
		m, err := metrics(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		return m["process_resident_memory_bytes"] / (1 << 20)
	}
	before := rss()
	annotatePeers(t, l, n, fmt.Sprintf(`[{"ip":"%s","asn":65099,"maxPrefixes":1000}]`, inj.host.IP))
	eventually(t, 30*time.Second, n.Name+" peers with the flooding peer", func(ctx context.Context) error {
		st, err := neighbors(ctx, n)
		if err != nil {
			return err
		}
		if st[inj.host.IP] != "ESTABLISHED" {
			return fmt.Errorf("session is %q", st[inj.host.IP])
		}
		return nil
	})
	inj.announceFrom(t, netip.MustParseAddr("10.244.128.0"), 30000)
	waitWarningEvent(t, l, n.Name, "BGPPrefixLimit", inj.host.IP.String())
	eventually(t, 15*time.Second, "the flooding session is torn down, the others are up", func(ctx context.Context) error {
		st, err := neighbors(ctx, n)
		if err != nil {
			return err
		}
		if st[inj.host.IP] == "ESTABLISHED" {
			return fmt.Errorf("the flooding session is still up")
		}
		for _, o := range append([]netip.Addr{l.ToR.IP}, l.Nodes[1].IP, l.Nodes[2].IP) {
			if st[o] != "ESTABLISHED" {
				return fmt.Errorf("session with %s is %q", o, st[o])
			}
		}
		m, err := metrics(ctx, n)
		if err != nil {
			return err
		}
		if m[fmt.Sprintf(`canopy_bgp_prefix_limit_teardowns_total{peer=%q}`, inj.host.IP)] < 1 {
			return fmt.Errorf("teardown not counted")
		}
		return nil
	})
	rt, err := kernelRoutes(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	for p := range rt {
		if netip.MustParsePrefix("10.244.128.0/17").Contains(p.Addr()) && p.Bits() == 32 {
			t.Fatalf("%s installed a flooded prefix %s", n.Name, p)
		}
	}
	after := rss()
	t.Logf("agent RSS %.0f MiB before the flood of 30,000 prefixes, %.0f MiB after the limit tore the session down", before, after)
	if after-before > 40 {
		t.Errorf("the flood grew the agent by %.0f MiB (limit 40)", after-before)
	}
	// The lab stays as it was.
	annotatePeers(t, l, n, "")
	waitConverged(t, l)
}

// endpointSlice is a tenant-written EndpointSlice of Service svc with one endpoint.
func endpointSlice(svc string, ip netip.Addr, name *string, port *int32, proto *corev1.Protocol) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-tenant", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: name, Port: port, Protocol: proto}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip.String()}}},
	}
}
