package e2e

// The VXLAN overlay for a node that cannot peer (issue 15, design 3), in a three-rack fabric: racks 1 and 2
// (two nodes each, eBGP with their FRR ToR, an ASN per rack, node mesh off) and rack 3, a single node on its own
// subnet whose ToR routes the subnet but accepts no BGP from it. Every agent runs --overlay=crosssubnet.
// Nothing announces node5's pod CIDR, and node5 learns nothing; the overlay carries that traffic:
//
//	                                 <p>spine (FRR)
//	            ┌──────────────────────────┼───────────────────────────┐
//	  <p>tor rack1 10.99.0.0/24   <p>tor2 rack2 10.99.1.0/24   <p>tor3 rack3 10.99.2.0/24 (no BGP with nodes)
//	     │ eBGP        │ eBGP          │ eBGP         │ eBGP                 │
//	   node1         node2           node3          node4                  node5
//	     ╰──────── canopy.vxlan (VNI 4096, UDP 4789 through the ToRs and the spine) ────────╯
//
// It checks that the unpeered node's pods reach and are reached by the racks' pods (ICMP, TCP) with their own
// addresses, that same-subnet and BGP-routed traffic stays native, and that the overlay nodes' pods have the
// uplink MTU minus 50.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"canopy.io/canopy/e2e/lab"
)

// tunnelRoutes returns node n's overlay routes (dev canopy.vxlan): pod CIDR -> on-link gateway.
func tunnelRoutes(ctx context.Context, n *lab.Node) (map[netip.Prefix]netip.Addr, error) {
	out, err := n.Exec(ctx, "ip", "-j", "route", "show", "dev", "canopy.vxlan")
	if err != nil {
		return nil, err
	}
	var rs []struct {
		Dst      string   `json:"dst"`
		Gateway  string   `json:"gateway"`
		Protocol string   `json:"protocol"`
		Metric   int      `json:"metric"`
		Flags    []string `json:"flags"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return nil, fmt.Errorf("%s: ip -j route: %w: %s", n.Name, err, out)
	}
	res := map[netip.Prefix]netip.Addr{}
	for _, r := range rs {
		p, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			continue
		}
		if r.Protocol != "185" || r.Metric != 1024 || !strings.Contains(strings.Join(r.Flags, ","), "onlink") {
			return nil, fmt.Errorf("%s: route %s: protocol %s metric %d flags %v, want 185, 1024, onlink", n.Name, r.Dst, r.Protocol, r.Metric, r.Flags)
		}
		res[p], _ = netip.ParseAddr(r.Gateway)
	}
	return res, nil
}

// routeDev is the device the kernel of n sends a packet to dst through (ip route get).
func routeDev(ctx context.Context, n *lab.Node, dst netip.Addr) (string, error) {
	out, err := n.Exec(ctx, "ip", "-j", "route", "get", dst.String())
	if err != nil {
		return "", err
	}
	var rs []struct {
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) == 0 {
		return "", fmt.Errorf("ip route get %s: %v: %s", dst, err, out)
	}
	return rs[0].Dev, nil
}

// linkMTU is the MTU of link dev in h's namespace.
func linkMTU(ctx context.Context, h *lab.Host, dev string) (int, error) {
	out, err := h.Exec(ctx, "ip", "-j", "link", "show", "dev", dev)
	if err != nil {
		return 0, err
	}
	var ls []struct {
		MTU int `json:"mtu"`
	}
	if err := json.Unmarshal([]byte(out), &ls); err != nil || len(ls) == 0 {
		return 0, fmt.Errorf("ip link show %s: %v: %s", dev, err, out)
	}
	return ls[0].MTU, nil
}

func TestOverlayCrossSubnet(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	cfg := lab.Config{
		Nodes: 5, Racks: 3,
		PerRack:  []lab.RackConfig{{Nodes: 2, NodeASN: 65001}, {Nodes: 2, NodeASN: 65002}, {NoNodePeering: true, Nodes: 1}},
		AgentBin: agentBin(), CNIPlugin: cniBin(), AgentGroups: []string{agentGroup},
		AgentArgs: []string{"--nodes-full-mesh=false", "--overlay=crosssubnet"},
		BeforeAgents: func(ctx context.Context, l *lab.Lab) error {
			return applyAgentRBAC(ctx, l)
		},
	}
	t0 := time.Now()
	l := lab.New(t, cfg)
	start := time.Now() // the agents have just started
	t.Logf("lab with 3 racks up in %s", start.Sub(t0).Round(time.Millisecond))
	ctx := context.Background()
	n1, n2, n3, n4, n5 := l.Nodes[0], l.Nodes[1], l.Nodes[2], l.Nodes[3], l.Nodes[4]
	if n5.Rack != l.Racks[2] || !n5.Rack.NoNodePeering || n1.Rack != l.Racks[0] || n3.Rack != l.Racks[1] {
		t.Fatalf("racks: %s %s %s", n1.Rack.Name, n3.Rack.Name, n5.Rack.Name)
	}
	defer func() {
		if t.Failed() {
			var b strings.Builder
			_ = l.Show(ctx, &b)
			t.Log(b.String())
			for _, n := range l.Nodes {
				out, _ := n.Exec(ctx, "sh", "-c", "ip -d link show canopy.vxlan; bridge fdb show dev canopy.vxlan; ip neigh show dev canopy.vxlan; ip route")
				t.Logf("%s:\n%s", n.Name, out)
			}
		}
	}()

	// Tunnel routes: to every node of another subnet, never to one of the same subnet.
	eventually(t, 60*time.Second, "tunnel routes to exactly the other subnets' nodes on every node", func(ctx context.Context) error {
		for _, n := range l.Nodes {
			got, err := tunnelRoutes(ctx, n)
			if err != nil {
				return err
			}
			want := 0
			for _, o := range l.Nodes {
				if o == n {
					continue
				}
				gw, ok := got[o.PodCIDR]
				switch {
				case o.Rack == n.Rack && ok:
					return fmt.Errorf("%s has a tunnel route to %s (%s, same subnet)", n.Name, o.Name, o.PodCIDR)
				case o.Rack != n.Rack && !ok:
					return fmt.Errorf("%s: no tunnel route to %s (%s): %v", n.Name, o.Name, o.PodCIDR, got)
				case ok && gw != o.PodCIDR.Masked().Addr():
					return fmt.Errorf("%s: %s via %s, want the VTEP %s", n.Name, o.PodCIDR, gw, o.PodCIDR.Masked().Addr())
				}
				if o.Rack != n.Rack {
					want++
				}
			}
			if len(got) != want {
				return fmt.Errorf("%s: %d tunnel routes, want %d: %v", n.Name, len(got), want, got)
			}
		}
		return nil
	})
	t.Logf("tunnel routes on every node %s after the agents started", time.Since(start).Round(time.Millisecond))

	// BGP still carries the racks' traffic: each rack node reaches the other racks' pod CIDRs through its ToR
	// (metric 0 beats the tunnel's 1024), its own rack natively; only node5's pod CIDR goes through the tunnel.
	eventually(t, 60*time.Second, "the kernel's choice: BGP where learned, the tunnel for node5", func(ctx context.Context) error {
		for _, n := range []*lab.Node{n1, n2, n3, n4, n5} {
			for _, o := range l.Nodes {
				if o == n {
					continue
				}
				dev, err := routeDev(ctx, n, o.PodCIDR.Addr().Next().Next())
				if err != nil {
					return err
				}
				viaTunnel := n == n5 || o == n5
				if viaTunnel != (dev == "canopy.vxlan") {
					return fmt.Errorf("%s -> %s's pods: dev %s (tunnel expected: %v)", n.Name, o.Name, dev, viaTunnel)
				}
			}
		}
		return nil
	})
	t.Logf("BGP routes between the racks, tunnel to and from node5: %s after the agents started", time.Since(start).Round(time.Millisecond))

	// The device as specified, and its FDB/neighbour entries on the unpeered node.
	out, err := n5.Exec(ctx, "ip", "-d", "link", "show", "canopy.vxlan")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"vxlan id 4096", "local " + n5.IP.String(), "dstport 4789", "nolearning", "mtu 1450", "02:cb:"} {
		if !strings.Contains(out, want) {
			t.Errorf("node5: ip -d link show canopy.vxlan lacks %q:\n%s", want, out)
		}
	}
	fdb, err := n5.Exec(ctx, "bridge", "fdb", "show", "dev", "canopy.vxlan")
	if err != nil {
		t.Fatal(err)
	}
	neigh, err := n5.Exec(ctx, "ip", "neigh", "show", "dev", "canopy.vxlan")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []*lab.Node{n1, n2, n3, n4} {
		b := o.IP.As4()
		mac := fmt.Sprintf("02:cb:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
		if !strings.Contains(fdb, mac+" dst "+o.IP.String()) {
			t.Errorf("node5: no FDB entry %s dst %s:\n%s", mac, o.IP, fdb)
		}
		if !strings.Contains(neigh, o.PodCIDR.Masked().Addr().String()+" lladdr "+mac+" PERMANENT") {
			t.Errorf("node5: no neighbour entry %s lladdr %s:\n%s", o.PodCIDR.Masked().Addr(), mac, neigh)
		}
	}
	t.Logf("node5: %s\n%s%s", strings.TrimSpace(out), fdb, neigh)

	// Pods: the unpeered node's pod reaches and is reached by the racks' pods, ICMP and TCP, with its own address.
	web1 := backend(t, l, n1, "ovl-web1", "ovlweb")
	web3 := backend(t, l, n3, "ovl-web3", "ovlweb")
	web5 := backend(t, l, n5, "ovl-web5", "ovlweb")
	cli2 := addPod(t, l, n2, "ovl-cli2")
	cli5 := addPod(t, l, n5, "ovl-cli5")
	t2 := time.Now()
	for _, p := range []struct{ from, to *lab.Pod }{{cli5, web1}, {cli5, web3}, {cli2, web5}, {cli2, web3}} {
		eventually(t, 30*time.Second, fmt.Sprintf("%s on %s → %s on %s (ICMP, TCP, source kept)", p.from.Name, p.from.Node.Name, p.to.Name, p.to.Node.Name), func(ctx context.Context) error {
			if err := p.from.Ping(ctx, p.to.IP); err != nil {
				return err
			}
			got, err := readLine(ctx, p.from, "tcp", net.JoinHostPort(p.to.IP.String(), "8080"))
			if err == nil && got != p.to.Name {
				err = fmt.Errorf("answer %q", got)
			}
			if err != nil {
				return err
			}
			seen, err := readLine(ctx, p.from, "tcp", net.JoinHostPort(p.to.IP.String(), "8081"))
			if err != nil {
				return err
			}
			if a, err := netip.ParseAddr(strings.Trim(seen, "[]")); err != nil || a.Unmap() != p.from.IP {
				return fmt.Errorf("the server saw %q, want the pod's own %s (no NAT)", seen, p.from.IP)
			}
			return nil
		})
	}
	t.Logf("pods: node5 <-> rack1/rack2 over the tunnel and rack2 <-> rack1 natively (ICMP, TCP, source kept) %s after the pods were made",
		time.Since(t2).Round(time.Millisecond))
	// A TCP round trip over the tunnel, timed.
	t3 := time.Now()
	if _, err := readLine(ctx, cli5, "tcp", net.JoinHostPort(web1.IP.String(), "8080")); err != nil {
		t.Fatal(err)
	}
	t.Logf("one TCP connect + answer node5 -> node1 over the tunnel: %s", time.Since(t3).Round(time.Microsecond))

	// MTU: the overlay nodes' pods get the uplink's MTU minus 50.
	for _, p := range []*lab.Pod{cli5, web1} {
		up, err := linkMTU(ctx, &p.Node.Host, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		got, err := linkMTU(ctx, &p.Host, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if got != up-50 {
			t.Errorf("pod %s on %s: MTU %d, want the uplink's %d - 50", p.Name, p.Node.Name, got, up)
		}
	}

	// Metrics: peers per node, no errors.
	for _, c := range []struct {
		n     *lab.Node
		peers float64
	}{{n5, 4}, {n1, 3}} {
		m, err := metrics(ctx, c.n)
		if err != nil {
			t.Fatal(err)
		}
		if m["canopy_overlay_peers"] != c.peers {
			t.Errorf("%s: canopy_overlay_peers %v, want %v", c.n.Name, m["canopy_overlay_peers"], c.peers)
		}
		for k, v := range m {
			if strings.HasPrefix(k, "canopy_overlay_errors_total") && v != 0 {
				t.Errorf("%s: %s = %v", c.n.Name, k, v)
			}
		}
	}

	// A Node joining (a node of a fourth subnet, registered by hand: no process runs behind it) gets tunnel
	// entries on every node, and leaving takes them away; a Node with a pod CIDR outside the cluster's gets an
	// Event and none.
	newNode := func(name, ip, cidr string) {
		t.Helper()
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
		created, err := l.Kube.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Kube.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
		if _, err := l.Kube.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	joined := netip.MustParsePrefix("10.244.200.0/24")
	hasRoute := func(want bool) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			for _, n := range []*lab.Node{n1, n5} {
				got, err := tunnelRoutes(ctx, n)
				if err != nil {
					return err
				}
				if _, ok := got[joined]; ok != want {
					return fmt.Errorf("%s: tunnel route to %s: %v, want %v", n.Name, joined, ok, want)
				}
			}
			return nil
		}
	}
	t4 := time.Now()
	newNode("ovl-joined", "10.99.50.60", joined.String())
	eventually(t, 30*time.Second, "tunnel routes to a Node that joined", hasRoute(true))
	t.Logf("a Node that joined: tunnel route on node1 and node5 %s after it got its address", time.Since(t4).Round(time.Millisecond))
	if fdb, _ := n5.Exec(ctx, "bridge", "fdb", "show", "dev", "canopy.vxlan"); !strings.Contains(fdb, "02:cb:0a:63:32:3c dst 10.99.50.60") {
		t.Errorf("node5: no FDB entry for the joined node:\n%s", fdb)
	}
	t5 := time.Now()
	if err := l.Kube.CoreV1().Nodes().Delete(ctx, "ovl-joined", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the deleted Node's tunnel routes gone", hasRoute(false))
	t.Logf("the Node deleted: its tunnel routes gone from node1 and node5 %s later", time.Since(t5).Round(time.Millisecond))
	if fdb, _ := n5.Exec(ctx, "bridge", "fdb", "show", "dev", "canopy.vxlan"); strings.Contains(fdb, "10.99.50.60") {
		t.Errorf("node5: FDB entry of the deleted node left:\n%s", fdb)
	}

	newNode("ovl-bad", "10.99.50.61", "10.55.0.0/24")
	eventually(t, 30*time.Second, "Event InvalidOverlayNode on the bad Node, counted", func(ctx context.Context) error {
		evs, err := l.Kube.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=ovl-bad,reason=InvalidOverlayNode"})
		if err != nil {
			return err
		}
		var msgs []string
		for _, e := range evs.Items {
			msgs = append(msgs, e.Message)
		}
		if !strings.Contains(strings.Join(msgs, "\n"), "outside the cluster CIDRs") {
			return fmt.Errorf("events: %q", msgs)
		}
		m, err := metrics(ctx, n5)
		if err != nil {
			return err
		}
		if m[`canopy_overlay_errors_total{reason="invalid_node"}`] < 1 {
			return fmt.Errorf("node5: canopy_overlay_errors_total{reason=\"invalid_node\"} = %v", m[`canopy_overlay_errors_total{reason="invalid_node"}`])
		}
		return nil
	})
	if got, err := tunnelRoutes(ctx, n5); err != nil || len(got) != 4 {
		t.Errorf("node5 after the bad Node: %v %v", got, err)
	}
	// The agents are fine: pod traffic over the tunnel still flows.
	if err := cli5.Ping(ctx, web1.IP); err != nil {
		t.Errorf("after the bad Node: %v", err)
	}
}
