package overlay

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"canopy.io/canopy/internal/testsupport/testns"
)

// dsNode6 is a node of the dual-stack kernel tests: pods with an address of each family.
type dsNode6 struct {
	kernelNode
	podIP6 netip.Addr
}

// twoSubnets builds, in namespaces of the test's own, a router between two node subnets (node a in the first,
// node c in the second) over IPv4 (underlay6 false) or IPv6, and a pod namespace behind each node with
// 10.244.<i>.5/24 and fd00:10:244:<i>::5/64. The router forwards only the underlay's family and has no route to
// any pod CIDR: pod traffic between the nodes can only go through the tunnel. Node a's namespace has
// net.ipv6.conf.default.disable_ipv6=1 (set after its links exist), so its device starts without IPv6.
func twoSubnets(t *testing.T, underlay6 bool) (a, c *dsNode6) {
	testns.Require(t, "ping", "bridge", "sysctl")
	router := testns.New(t, "ov6r")
	if underlay6 {
		router.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	} else {
		router.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
	addr := func(ns *testns.NS, dev, cidr string) {
		if strings.Contains(cidr, ":") {
			ns.MustRun(t, "ip", "addr", "add", cidr, "dev", dev, "nodad")
		} else {
			ns.MustRun(t, "ip", "addr", "add", cidr, "dev", dev)
		}
	}
	mk := func(i int, name string) *dsNode6 {
		ns := testns.New(t, "ov6"+name)
		testns.Link(t, router, "to"+name, "", ns, "eth0", "")
		var ip, rtr, other string
		if underlay6 {
			ip, rtr, other = "fd00:50:"+itoa(i)+"::1"+itoa(i), "fd00:50:"+itoa(i)+"::1", "fd00:50::/32"
			addr(router, "to"+name, rtr+"/64")
			addr(ns, "eth0", ip+"/64")
		} else {
			ip, rtr, other = "10.50."+itoa(i)+".1"+itoa(i), "10.50."+itoa(i)+".1", "10.50.0.0/16"
			addr(router, "to"+name, rtr+"/24")
			addr(ns, "eth0", ip+"/24")
		}
		ns.MustRun(t, "ip", "route", "add", other, "via", rtr)
		ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
		pod := testns.New(t, "ov6p"+name)
		testns.Link(t, ns, "pod0", "", pod, "eth0", "")
		v4, v6 := "10.244."+itoa(i)+".", "fd00:10:244:"+itoa(i)+"::"
		addr(ns, "pod0", v4+"1/24")
		addr(ns, "pod0", v6+"1/64")
		addr(pod, "eth0", v4+"5/24")
		addr(pod, "eth0", v6+"5/64")
		pod.MustRun(t, "ip", "route", "add", "default", "via", v4+"1")
		pod.MustRun(t, "ip", "-6", "route", "add", "default", "via", v6+"1")
		h := ns.Handle(t)
		n := &dsNode6{kernelNode: kernelNode{ns: ns, pod: pod, podIP: netip.MustParseAddr(v4 + "5"), h: h,
			info: NodeInfo{Name: "node-" + name, IP: netip.MustParseAddr(ip),
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix(v4 + "0/24"), netip.MustParsePrefix(v6 + "/64")}},
			tun: NewTunnel(h, TunnelConfig{Sysctl: func(path, value string) error {
				return ns.Do(func() error { return procSysctl(path, value) })
			}}, nil)},
			podIP6: netip.MustParseAddr(v6 + "5")}
		sub, err := n.tun.LocalSubnet(n.info.IP)
		if err != nil {
			t.Fatal(err)
		}
		n.self = Self{Name: n.info.Name, IP: n.info.IP, Subnet: sub, PodCIDRs: n.info.PodCIDRs}
		return n
	}
	a, c = mk(1, "a"), mk(3, "c")
	a.ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
	return a, c
}

var dsCluster = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}

func (n *dsNode6) apply(t *testing.T, mode Mode, nodes ...NodeInfo) []Peer {
	t.Helper()
	peers, probs := Desired(mode, n.self, nodes, dsCluster)
	if len(probs) > 0 {
		t.Fatalf("%s: problems %v", n.info.Name, probs)
	}
	if err := n.tun.Apply(n.info.IP, peers); err != nil {
		t.Fatalf("%s: apply %v: %v", n.info.Name, peers, err)
	}
	return peers
}

// state6 is the device's IPv6 neighbour entries and routes of pod networks, as `ip -6` shows them.
func (n *dsNode6) state6(t *testing.T) string {
	t.Helper()
	var keep []string
	for _, l := range strings.Split(n.ns.MustRun(t, "ip", "-6", "neigh", "show", "dev", Device)+
		n.ns.MustRun(t, "ip", "-6", "route", "show", "dev", Device), "\n") {
		if strings.Contains(l, "fd00:10:244:") {
			keep = append(keep, strings.TrimSpace(l))
		}
	}
	return strings.Join(keep, "\n")
}

// tcpFrom connects from pod from to to:port and returns the source address the server saw.
func tcpFrom(t *testing.T, from, at *testns.NS, to netip.Addr) string {
	t.Helper()
	ln, err := at.Listen("tcp", netip.AddrPortFrom(to, 8080).String())
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
	conn, err := from.Dial("tcp", netip.AddrPortFrom(to, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	select {
	case s := <-seen:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
	return ""
}

func testKernelDualStack(t *testing.T, underlay6 bool) {
	rootHad, _ := FindDevice(nil, "")
	a, c := twoSubnets(t, underlay6)
	start := time.Now()
	pa := a.apply(t, ModeCrossSubnet, a.info, c.info)
	c.apply(t, ModeCrossSubnet, a.info, c.info)
	t.Logf("two tunnels programmed in %s", time.Since(start).Round(time.Microsecond))
	if len(pa) != 1 || pa[0].VTEP != netip.MustParseAddr("10.244.3.0") || pa[0].VTEP6 != netip.MustParseAddr("fd00:10:244:3::") {
		t.Fatalf("peers of a: %v", pa)
	}
	l, err := a.h.LinkByName(Device)
	if err != nil {
		t.Fatal(err)
	}
	v := l.(*netlink.Vxlan)
	mac, _ := MAC(c.info.IP)
	wantMTU := 1500 - Overhead
	if underlay6 {
		wantMTU = 1500 - Overhead6
	}
	if !v.SrcAddr.Equal(a.info.IP.AsSlice()) || v.Attrs().MTU != wantMTU {
		t.Errorf("device: local %s mtu %d, want %s %d", v.SrcAddr, v.Attrs().MTU, a.info.IP, wantMTU)
	}
	if out := a.ns.MustRun(t, "sysctl", "-n", "net/ipv6/conf/"+Device+"/disable_ipv6"); strings.TrimSpace(out) != "0" {
		t.Errorf("disable_ipv6 on %s: %s", Device, out)
	}
	st := a.state6(t)
	for _, want := range []string{"fd00:10:244:3:: lladdr " + mac.String() + " PERMANENT",
		"fd00:10:244:3::/64 via fd00:10:244:3:: proto 185 metric 2048 onlink"} {
		if !strings.Contains(st, want) {
			t.Errorf("node a lacks %q:\n%s", want, st)
		}
	}
	fdb := a.ns.MustRun(t, "bridge", "fdb", "show", "dev", Device)
	if !strings.Contains(fdb, mac.String()+" dst "+c.info.IP.String()+" self permanent") {
		t.Errorf("FDB: %s", fdb)
	}

	// Pods across subnets talk over the tunnel in both families, both ways, with their own addresses.
	d := waitPing(t, a.pod, c.podIP6, true)
	t.Logf("pod a -> pod c over IPv6 through the tunnel: first reply %s after programming", d.Round(time.Millisecond))
	waitPing(t, c.pod, a.podIP6, true)
	waitPing(t, a.pod, c.podIP, true)
	if got := tcpFrom(t, a.pod, c.pod, c.podIP6); !strings.HasPrefix(got, "["+a.podIP6.String()+"]:") {
		t.Errorf("pod c sees %s, want pod a's %s", got, a.podIP6)
	}
	// The underlay carried it: the router saw no pod address (it has no route to one) and forwarded packets.
	if out := c.ns.MustRun(t, "ip", "-s", "link", "show", Device); !strings.Contains(out, "RX:") {
		t.Errorf("no counters: %s", out)
	}

	// Idempotent, and repairs drift: a deleted IPv6 neighbour entry, a stray IPv6 route of ours.
	a.ns.MustRun(t, "ip", "-6", "neigh", "del", "fd00:10:244:3::", "dev", Device)
	a.ns.MustRun(t, "ip", "-6", "route", "add", "fd00:10:244:77::/64", "via", "fd00:10:244:77::", "dev", Device, "onlink", "proto", "185", "metric", "2048")
	a.apply(t, ModeCrossSubnet, a.info, c.info)
	if st2 := a.state6(t); st2 != st {
		t.Errorf("after repair:\n%s\nwant:\n%s", st2, st)
	}

	// A BGP route to the IPv6 pod CIDR (metric 0, which the kernel makes 1024) wins over the tunnel route, which
	// stays as the fallback, and Apply leaves it alone.
	bgpGw := "fd00:10:244:1::99" // any on-link next hop: only the route choice is looked at
	a.ns.MustRun(t, "ip", "-6", "route", "add", "fd00:10:244:3::/64", "via", bgpGw, "dev", "pod0", "proto", "186", "metric", "0")
	a.apply(t, ModeCrossSubnet, a.info, c.info)
	if out := a.ns.MustRun(t, "ip", "-6", "route", "get", "fd00:10:244:3::5"); !strings.Contains(out, "dev pod0") {
		t.Errorf("with a BGP route: %s", out)
	}
	if st2 := a.state6(t); st2 != st {
		t.Errorf("tunnel entries with a BGP route:\n%s\nwant:\n%s", st2, st)
	}
	a.ns.MustRun(t, "ip", "-6", "route", "del", "fd00:10:244:3::/64", "proto", "186")
	if out := a.ns.MustRun(t, "ip", "-6", "route", "get", "fd00:10:244:3::5"); !strings.Contains(out, "dev "+Device) {
		t.Errorf("after the BGP route left: %s", out)
	}

	// Node c's IPv6 pod CIDR changes: the old route and VTEP go, the new ones come.
	moved := c.info
	moved.PodCIDRs = []netip.Prefix{c.info.PodCIDRs[0], netip.MustParsePrefix("fd00:10:244:33::/64")}
	a.apply(t, ModeCrossSubnet, a.info, moved)
	if st := a.state6(t); strings.Contains(st, "fd00:10:244:3::") || !strings.Contains(st, "fd00:10:244:33::/64 via fd00:10:244:33:: proto 185 metric 2048") ||
		!strings.Contains(st, "fd00:10:244:33:: lladdr "+mac.String()+" PERMANENT") {
		t.Errorf("after node c's pod CIDR change:\n%s", st)
	}

	// Node c leaving: no IPv6 entry stays (a restarted agent computing no peers removes them the same way).
	a.apply(t, ModeCrossSubnet, a.info)
	if st := a.state6(t); st != "" {
		t.Errorf("after node c left:\n%s", st)
	}
	waitPing(t, a.pod, c.podIP6, false)
	if err := a.tun.Remove(); err != nil {
		t.Fatal(err)
	}
	if rootHas, _ := FindDevice(nil, ""); rootHas != rootHad {
		t.Errorf("the root namespace's %s changed: %v -> %v", Device, rootHad, rootHas)
	}
}

// IPv6 pod CIDRs ride the IPv4 underlay (dual-stack nodes): same device, FDB and MAC, their own VTEP.
func TestKernelVXLANDualStack(t *testing.T) { testKernelDualStack(t, false) }

// An IPv6-only underlay: the device's local end and the FDB destinations are IPv6 addresses, MACs hashed from
// them; it carries both pod families.
func TestKernelVXLANIPv6Underlay(t *testing.T) { testKernelDualStack(t, true) }
