package e2e

// The VXLAN overlay carrying IPv6 pod CIDRs (issue 13): in a dual-stack lab whose nodes run no BGP at all
// (no ToR peer flags, node mesh off) the IPv6 pod CIDRs ride canopy.vxlan over the IPv4 underlay, beside the
// IPv4 ones; in an IPv6-only lab the tunnel itself runs over IPv6. Nothing else routes the pod CIDRs (the ToR
// learns nothing), so every pod-to-pod packet across nodes that arrives came through the tunnel.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	"canopy.io/canopy/routes/overlay"
)

// tunnelRoutes6 returns node n's IPv6 overlay routes (dev canopy.vxlan, proto 185): pod CIDR -> on-link gateway,
// failing on one without the IPv6 metric or onlink.
func tunnelRoutes6(ctx context.Context, n *lab.Node) (map[netip.Prefix]netip.Addr, error) {
	out, err := n.Exec(ctx, "ip", "-6", "-j", "route", "show", "dev", overlay.Device, "proto", "185")
	if err != nil {
		return nil, err
	}
	var rs []struct {
		Dst     string   `json:"dst"`
		Gateway string   `json:"gateway"`
		Metric  int      `json:"metric"`
		Flags   []string `json:"flags"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return nil, fmt.Errorf("%s: ip -6 -j route: %w: %s", n.Name, err, out)
	}
	res := map[netip.Prefix]netip.Addr{}
	for _, r := range rs {
		p, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			continue
		}
		if r.Metric != overlay.Metric6 || !strings.Contains(strings.Join(r.Flags, ","), "onlink") {
			return nil, fmt.Errorf("%s: route %s: metric %d flags %v, want %d, onlink", n.Name, r.Dst, r.Metric, r.Flags, overlay.Metric6)
		}
		res[p], _ = netip.ParseAddr(r.Gateway)
	}
	return res, nil
}

// overlayLab brings up a lab of cfg's family whose agents run --overlay=vxlan and no BGP session.
func overlayLab(t *testing.T, cfg lab.Config) *lab.Lab {
	cfg.Nodes = 3
	cfg.AgentBin, cfg.CNIPlugin, cfg.AgentGroups = agentBin(), cniBin(), []string{agentGroup}
	cfg.NoToRPeerFlags = true
	cfg.AgentArgs = []string{"--nodes-full-mesh=false", "--overlay=vxlan"}
	cfg.BeforeAgents = func(ctx context.Context, l *lab.Lab) error { return applyAgentRBAC(ctx, l) }
	l := lab.New(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			ctx := context.Background()
			for _, n := range l.Nodes {
				out, _ := n.Exec(ctx, "sh", "-c", "ip -d link show canopy.vxlan; bridge fdb show dev canopy.vxlan; ip neigh show dev canopy.vxlan; "+
					"ip -6 neigh show dev canopy.vxlan; ip route; ip -6 route")
				t.Logf("%s:\n%s", n.Name, out)
			}
		}
	})
	return l
}

// checkOverlay6 checks the IPv6 side of the tunnel on every node of l (underlay: each node's address of the
// underlay family, ip4 false = IPv6) and that pods on different nodes reach each other over IPv6 through it,
// ICMPv6 both ways and TCP with their own address.
func checkOverlay6(t *testing.T, l *lab.Lab, start time.Time, underlay func(*lab.Node) netip.Addr, mtuOverhead int) []*lab.Pod {
	ctx := context.Background()
	eventually(t, 60*time.Second, "IPv6 tunnel routes to every other node's IPv6 pod CIDR via its VTEP6", func(ctx context.Context) error {
		for _, n := range l.Nodes {
			got, err := tunnelRoutes6(ctx, n)
			if err != nil {
				return err
			}
			for _, o := range l.Nodes {
				if o == n {
					continue
				}
				if gw, ok := got[cidr6(o)]; !ok || gw != cidr6(o).Masked().Addr() {
					return fmt.Errorf("%s: %s via %v (present %v), want the VTEP %s", n.Name, cidr6(o), gw, ok, cidr6(o).Masked().Addr())
				}
			}
			if len(got) != len(l.Nodes)-1 {
				return fmt.Errorf("%s: %d IPv6 tunnel routes, want %d: %v", n.Name, len(got), len(l.Nodes)-1, got)
			}
		}
		return nil
	})
	t.Logf("IPv6 tunnel routes on every node %s after the agents started", time.Since(start).Round(time.Millisecond))

	// The device and its entries on node1: local = the underlay address, IPv6 on, an IPv6 neighbour entry per
	// peer to the MAC its FDB entry sends to that peer's underlay address.
	n1 := l.Nodes[0]
	dev, err := n1.Exec(ctx, "ip", "-d", "link", "show", overlay.Device)
	if err != nil {
		t.Fatal(err)
	}
	up, err := linkMTU(ctx, &n1.Host, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"vxlan id 4096", "local " + underlay(n1).String(), "nolearning", fmt.Sprintf("mtu %d", up-mtuOverhead)} {
		if !strings.Contains(dev, want) {
			t.Errorf("node1: ip -d link show %s lacks %q:\n%s", overlay.Device, want, dev)
		}
	}
	if v, err := n1.Exec(ctx, "cat", "/proc/sys/net/ipv6/conf/"+overlay.Device+"/disable_ipv6"); err != nil || strings.TrimSpace(v) != "0" {
		t.Errorf("node1: disable_ipv6 on %s: %q %v", overlay.Device, v, err)
	}
	fdb, _ := n1.Exec(ctx, "bridge", "fdb", "show", "dev", overlay.Device)
	neigh, _ := n1.Exec(ctx, "ip", "-6", "neigh", "show", "dev", overlay.Device)
	for _, o := range l.Nodes[1:] {
		mac, _ := overlay.MAC(underlay(o))
		if !strings.Contains(fdb, mac.String()+" dst "+underlay(o).String()) {
			t.Errorf("node1: no FDB entry %s dst %s:\n%s", mac, underlay(o), fdb)
		}
		if !strings.Contains(neigh, cidr6(o).Masked().Addr().String()+" lladdr "+mac.String()+" PERMANENT") {
			t.Errorf("node1: no neighbour entry %s lladdr %s:\n%s", cidr6(o).Masked().Addr(), mac, neigh)
		}
		if d, err := routeDev(ctx, n1, cidr6(o).Addr().Next().Next()); err != nil || d != overlay.Device {
			t.Errorf("node1 -> %s's IPv6 pods: dev %s %v, want %s", o.Name, d, err, overlay.Device)
		}
	}
	t.Logf("node1: %s\n%s%s", strings.TrimSpace(dev), fdb, neigh)

	// Pods: ICMPv6 between every pair on different nodes, TCP over IPv6 with the client's own address.
	var pods []*lab.Pod
	for i, n := range l.Nodes {
		pods = append(pods, addPod(t, l, n, fmt.Sprintf("ov6-%d", i+1)))
	}
	t1 := time.Now()
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			eventually(t, 20*time.Second, fmt.Sprintf("ping -6 %s -> %s (%s)", a.Name, b.Name, pod6(b)), func(ctx context.Context) error {
				return a.Ping(ctx, pod6(b))
			})
		}
	}
	t.Logf("ICMPv6 between every pair of pods on different nodes through the tunnel (6 pings) in %s", time.Since(t1).Round(time.Millisecond))
	if got := sourceSeenAt(t, &pods[1].Host, pod6(pods[1]), pods[0]); got != pod6(pods[0]) {
		t.Errorf("TCP over IPv6 %s -> %s: the server saw %s, want the client pod's %s", pods[0].Name, pods[1].Name, got, pod6(pods[0]))
	}
	// The ToR has no route to any pod CIDR: nothing but the tunnel could have carried that.
	if out, err := l.ToR.Exec(ctx, "ip", "-6", "route", "show", "proto", "bgp"); err != nil || strings.Contains(out, "fd00:10:244:") {
		t.Errorf("the ToR has BGP routes to pod CIDRs (%v):\n%s", err, out)
	}
	for _, n := range l.Nodes {
		m, err := metrics(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if m["canopy_overlay_peers"] != float64(len(l.Nodes)-1) {
			t.Errorf("%s: canopy_overlay_peers %v", n.Name, m["canopy_overlay_peers"])
		}
		for k, v := range m {
			if strings.HasPrefix(k, "canopy_overlay_errors_total") && v != 0 {
				t.Errorf("%s: %s = %v", n.Name, k, v)
			}
		}
	}
	return pods
}

// cidr6 is a node's IPv6 pod CIDR (an IPv6-only lab's nodes have it as PodCIDR).
func cidr6(n *lab.Node) netip.Prefix {
	if n.PodCIDR6.IsValid() {
		return n.PodCIDR6
	}
	return n.PodCIDR
}

// pod6 is a pod's IPv6 address (an IPv6-only lab's pods have it as IP).
func pod6(p *lab.Pod) netip.Addr {
	if p.IP6.IsValid() {
		return p.IP6
	}
	return p.IP
}

func TestOverlayDualStack(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	l := overlayLab(t, lab.Config{DualStack: true})
	start := time.Now()
	// Both families through one device over IPv4: the IPv4 routes as before.
	eventually(t, 60*time.Second, "IPv4 tunnel routes to every other node", func(ctx context.Context) error {
		for _, n := range l.Nodes {
			got, err := tunnelRoutes(ctx, n)
			if err != nil {
				return err
			}
			if len(got) != len(l.Nodes)-1 {
				return fmt.Errorf("%s: IPv4 tunnel routes %v", n.Name, got)
			}
		}
		return nil
	})
	pods := checkOverlay6(t, l, start, func(n *lab.Node) netip.Addr { return n.IP }, overlay.Overhead)
	eventually(t, 20*time.Second, "ping (IPv4) pod 1 -> pod 3 through the tunnel", func(ctx context.Context) error {
		return pods[0].Ping(ctx, pods[2].IP)
	})
}

func TestOverlayIPv6Only(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test brings up a lab of its own")
	}
	l := overlayLab(t, lab.Config{IPv6Only: true})
	start := time.Now()
	checkOverlay6(t, l, start, func(n *lab.Node) netip.Addr { return n.IP }, overlay.Overhead6)
}
