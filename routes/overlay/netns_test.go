package overlay

import (
	"context"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"canopy.io/canopy/internal/testsupport/testns"
)

// kernelNode is a node of the kernel test: its namespace, a pod namespace behind it, and its tunnel.
type kernelNode struct {
	info  NodeInfo
	self  Self
	ns    *testns.NS
	pod   *testns.NS
	podIP netip.Addr
	tun   *Tunnel
	h     *netlink.Handle
}

// threeNodes builds, in namespaces of the test's own, a routed fabric of two subnets: a router (forwarding,
// no route to any pod CIDR) with a bridge for 10.50.1.0/24 (nodes a and b) and a link to 10.50.2.0/24 (node
// c). Each node has a pod namespace (10.244.<i>.5/24 behind the node's 10.244.<i>.1). Nothing in the root
// namespace is touched.
func threeNodes(t *testing.T) (a, b, c *kernelNode, router *testns.NS) {
	testns.Require(t, "ping")
	router = testns.New(t, "ovr")
	router.MustRun(t, "ip", "link", "add", "br1", "type", "bridge")
	router.MustRun(t, "ip", "addr", "add", "10.50.1.1/24", "dev", "br1")
	router.MustRun(t, "ip", "link", "set", "br1", "up")
	router.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	mk := func(i int, name, ip string, subnet string) *kernelNode {
		ns := testns.New(t, "ov"+name)
		gw := "10.50.1.1"
		if subnet == "10.50.2.0/24" {
			testns.Link(t, router, "to"+name, "10.50.2.1/24", ns, "eth0", ip+"/24")
			gw = "10.50.2.1"
		} else {
			testns.Link(t, router, "to"+name, "", ns, "eth0", ip+"/24")
			router.MustRun(t, "ip", "link", "set", "to"+name, "master", "br1")
		}
		other := "10.50.2.0/24"
		if subnet == other {
			other = "10.50.1.0/24"
		}
		ns.MustRun(t, "ip", "route", "add", other, "via", gw)
		ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		pod := testns.New(t, "ovp"+name)
		cidr := netip.MustParsePrefix("10.244." + itoa(i) + ".0/24")
		testns.Link(t, ns, "pod0", "10.244."+itoa(i)+".1/24", pod, "eth0", "10.244."+itoa(i)+".5/24")
		pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244."+itoa(i)+".1")
		info := NodeInfo{Name: "node-" + name, IP: netip.MustParseAddr(ip), PodCIDRs: []netip.Prefix{cidr}}
		h := ns.Handle(t)
		return &kernelNode{info: info, ns: ns, pod: pod, podIP: netip.MustParseAddr("10.244." + itoa(i) + ".5"), h: h,
			tun: NewTunnel(h, TunnelConfig{}, nil)}
	}
	a = mk(1, "a", "10.50.1.11", "10.50.1.0/24")
	b = mk(2, "b", "10.50.1.12", "10.50.1.0/24")
	c = mk(3, "c", "10.50.2.13", "10.50.2.0/24")
	for _, n := range []*kernelNode{a, b, c} {
		sub, err := n.tun.LocalSubnet(n.info.IP)
		if err != nil {
			t.Fatal(err)
		}
		n.self = Self{Name: n.info.Name, IP: n.info.IP, Subnet: sub, PodCIDRs: n.info.PodCIDRs}
	}
	return a, b, c, router
}

func itoa(i int) string { return string(rune('0' + i)) }

// apply computes n's desired peers among nodes in mode and applies them, returning the peers.
func (n *kernelNode) apply(t *testing.T, mode Mode, nodes ...*kernelNode) []Peer {
	t.Helper()
	var infos []NodeInfo
	for _, o := range nodes {
		infos = append(infos, o.info)
	}
	peers, probs := Desired(mode, n.self, infos, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")})
	if len(probs) > 0 {
		t.Fatalf("%s: problems %v", n.info.Name, probs)
	}
	if err := n.tun.Apply(n.info.IP, peers); err != nil {
		t.Fatalf("%s: apply %v: %v", n.info.Name, peers, err)
	}
	return peers
}

func ping(ctx context.Context, from *testns.NS, to netip.Addr) error {
	_, err := from.Run(ctx, "ping", "-c1", "-W1", "-n", to.String())
	return err
}

func waitPing(t *testing.T, from *testns.NS, to netip.Addr, want bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := ping(ctx, from, to)
		cancel()
		if (err == nil) == want {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping %s from %s: success=%v wanted %v (last: %v)", to, from.Name, err == nil, want, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// state is the device's entries as `ip`/`bridge` show them.
func (n *kernelNode) state(t *testing.T) string {
	t.Helper()
	return n.ns.MustRun(t, "ip", "neigh", "show", "dev", Device) + n.ns.MustRun(t, "bridge", "fdb", "show", "dev", Device) +
		n.ns.MustRun(t, "ip", "route", "show", "dev", Device)
}

func TestKernelVXLANCrossSubnet(t *testing.T) {
	testns.Require(t, "bridge", "sysctl")
	rootHad, _ := FindDevice(nil, "")
	a, b, c, _ := threeNodes(t)
	start := time.Now()
	pa := a.apply(t, ModeCrossSubnet, a, b, c)
	pb := b.apply(t, ModeCrossSubnet, a, b, c)
	pc := c.apply(t, ModeCrossSubnet, a, b, c)
	t.Logf("three tunnels programmed in %s", time.Since(start).Round(time.Microsecond))
	if names(pa) != "node-c" || names(pb) != "node-c" || names(pc) != "node-a,node-b" {
		t.Fatalf("crosssubnet peers: a %s, b %s, c %s", names(pa), names(pb), names(pc))
	}

	// The device as specified.
	l, err := a.h.LinkByName(Device)
	if err != nil {
		t.Fatal(err)
	}
	v := l.(*netlink.Vxlan)
	if v.VxlanId != DefaultVNI || v.Port != DefaultPort || v.Learning || !v.SrcAddr.Equal(a.info.IP.AsSlice()) ||
		v.Attrs().HardwareAddr.String() != "02:cb:0a:32:01:0b" || v.Attrs().MTU != 1450 || v.Attrs().Flags&1 == 0 {
		t.Errorf("device: vni %d port %d learning %v local %s mac %s mtu %d flags %v", v.VxlanId, v.Port, v.Learning, v.SrcAddr,
			v.Attrs().HardwareAddr, v.Attrs().MTU, v.Attrs().Flags)
	}
	st := a.state(t)
	for _, want := range []string{"10.244.3.0 lladdr 02:cb:0a:32:02:0d PERMANENT", "02:cb:0a:32:02:0d dst 10.50.2.13 self permanent",
		"10.244.3.0/24 via 10.244.3.0 proto 185 metric 1024 onlink"} {
		if !strings.Contains(st, want) {
			t.Errorf("node a lacks %q:\n%s", want, st)
		}
	}
	if strings.Contains(st, "10.244.2.") || strings.Contains(st, "10.50.1.12") {
		t.Errorf("node a has tunnel entries for node b (same subnet):\n%s", st)
	}

	// Pods across subnets talk over the tunnel (the router has no route to any pod CIDR), both ways.
	d := waitPing(t, a.pod, c.podIP, true)
	t.Logf("pod a -> pod c over the tunnel: first reply %s after programming", d.Round(time.Millisecond))
	waitPing(t, c.pod, b.podIP, true)
	// The pod's own address arrives (no NAT): a TCP server in pod c sees pod a's address.
	ln, err := c.pod.Listen("tcp", c.podIP.String()+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 1)
	go func() {
		if conn, err := ln.Accept(); err == nil {
			seen <- conn.RemoteAddr().String()
			conn.Close()
		}
	}()
	conn, err := a.pod.Dial("tcp", c.podIP.String()+":8080")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if got := <-seen; !strings.HasPrefix(got, a.podIP.String()+":") {
		t.Errorf("pod c sees %s, want pod a's %s", got, a.podIP)
	}
	if out := c.ns.MustRun(t, "ip", "-s", "link", "show", Device); !strings.Contains(out, "RX:") {
		t.Errorf("no counters: %s", out)
	}

	// Apply is idempotent and repairs drift: a deleted neighbour entry and a foreign-protocol-free extra route.
	a.ns.MustRun(t, "ip", "neigh", "del", "10.244.3.0", "dev", Device)
	a.ns.MustRun(t, "ip", "route", "add", "10.244.77.0/24", "via", "10.244.77.0", "dev", Device, "onlink", "proto", "185", "metric", "1024")
	a.apply(t, ModeCrossSubnet, a, b, c)
	if st2 := a.state(t); st2 != st {
		t.Errorf("after repair:\n%s\nwant:\n%s", st2, st)
	}

	// A node leaving (deleted Node): its entries go, and its pods are unreachable through the tunnel.
	start = time.Now()
	c.apply(t, ModeCrossSubnet, b, c) // node a is gone
	t.Logf("node a's entries removed from node c in %s", time.Since(start).Round(time.Microsecond))
	if st := c.state(t); strings.Contains(st, "10.244.1.") || strings.Contains(st, "10.50.1.11") || !strings.Contains(st, "10.244.2.0/24") {
		t.Errorf("node c after node a left:\n%s", st)
	}
	waitPing(t, c.pod, a.podIP, false)
	waitPing(t, c.pod, b.podIP, true)

	// vxlan mode: same-subnet nodes get the tunnel too.
	if p := a.apply(t, ModeVXLAN, a, b, c); names(p) != "node-b,node-c" {
		t.Errorf("vxlan peers of a: %s", names(p))
	}
	b.apply(t, ModeVXLAN, a, b, c)
	if !strings.Contains(a.state(t), "10.244.2.0/24 via 10.244.2.0") {
		t.Errorf("vxlan mode: no tunnel route to node b:\n%s", a.state(t))
	}
	waitPing(t, a.pod, b.podIP, true)

	// A BGP route (metric 0) to a pod CIDR wins over the tunnel route; the tunnel route stays as the fallback.
	a.ns.MustRun(t, "ip", "route", "add", "10.244.2.0/24", "via", "10.50.1.12", "proto", "186")
	if out := a.ns.MustRun(t, "ip", "route", "get", "10.244.2.5"); !strings.Contains(out, "dev eth0") {
		t.Errorf("with a BGP route: %s", out)
	}
	a.ns.MustRun(t, "ip", "route", "del", "10.244.2.0/24", "proto", "186")
	if out := a.ns.MustRun(t, "ip", "route", "get", "10.244.2.5"); !strings.Contains(out, "dev "+Device) {
		t.Errorf("after the BGP route left: %s", out)
	}
	if p := a.apply(t, ModeVXLAN, a, b, c); len(p) != 2 {
		t.Errorf("re-apply: %v", p)
	}

	// A device with other settings (another VNI) is replaced; Remove takes everything.
	a.ns.MustRun(t, "ip", "link", "del", Device)
	a.ns.MustRun(t, "ip", "link", "add", Device, "type", "vxlan", "id", "7", "dstport", "4789", "local", "10.50.1.11")
	a.apply(t, ModeVXLAN, a, b, c)
	if l, _ := a.h.LinkByName(Device); l.(*netlink.Vxlan).VxlanId != DefaultVNI {
		t.Errorf("VNI %d kept", l.(*netlink.Vxlan).VxlanId)
	}
	if err := a.tun.Remove(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := FindDevice(a.h, ""); ok {
		t.Error("device still there after Remove")
	}
	rs, _ := a.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: Protocol, Table: syscall.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if len(rs) != 0 {
		t.Errorf("tunnel routes left after Remove: %v", rs)
	}
	if err := a.tun.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	// A link of that name that is not VXLAN is not ours: left alone.
	a.ns.MustRun(t, "ip", "link", "add", Device, "type", "bridge")
	if err := a.tun.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.h.LinkByName(Device); err != nil {
		t.Errorf("a bridge named %s was removed", Device)
	}
	if rootHas, _ := FindDevice(nil, ""); rootHas != rootHad {
		t.Errorf("the root namespace's %s changed: %v -> %v", Device, rootHad, rootHas)
	}
}
