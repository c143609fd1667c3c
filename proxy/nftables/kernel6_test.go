package nftables

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/proxy"
)

// lab6 is the dual-stack lab: a node namespace, a client outside it (10.0.1.2, 2001:db8:1::2) and two backend
// "pods" on the node (10.244.N.10, fd00:244:N::10), each answering TCP on :8080 (both families) with
// "<name> <client address>" and UDP on [::]:5353 with its name. IPv6 addresses are added nodad (usable at once).
type lab6 struct {
	lab
	be6 [2]netip.Addr
}

const (
	clientIP6 = "2001:db8:1::2"
	nodeIP6   = "2001:db8:1::1"
)

func addr6(t testing.TB, ns *testns.NS, cidr, dev string) {
	ns.MustRun(t, "ip", "-6", "addr", "add", cidr, "dev", dev, "nodad")
}

func newLab6(t testing.TB) *lab6 {
	l := &lab6{lab: lab{node: testns.New(t, "nft6-node"), client: testns.New(t, "nft6-cl")}}
	testns.Link(t, l.node, "cl0", nodeIP+"/24", l.client, "eth0", clientIP+"/24")
	addr6(t, l.node, nodeIP6+"/64", "cl0")
	addr6(t, l.client, clientIP6+"/64", "eth0")
	l.client.MustRun(t, "ip", "route", "add", "default", "via", nodeIP)
	l.client.MustRun(t, "ip", "-6", "route", "add", "default", "via", nodeIP6)
	l.node.MustRun(t, "ip", "route", "add", "default", "via", clientIP)
	l.node.MustRun(t, "ip", "-6", "route", "add", "default", "via", clientIP6)
	l.node.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	l.node.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	for i := range l.be {
		name := fmt.Sprintf("be%d", i+1)
		be := testns.New(t, "nft6-"+name)
		l.be[i], l.beIP[i] = be, netip.MustParseAddr(fmt.Sprintf("10.244.%d.10", i+1))
		l.be6[i] = netip.MustParseAddr(fmt.Sprintf("fd00:244:%d::10", i+1))
		testns.Link(t, l.node, name, fmt.Sprintf("10.244.%d.1/24", i+1), be, "eth0", l.beIP[i].String()+"/24")
		addr6(t, l.node, fmt.Sprintf("fd00:244:%d::1/64", i+1), name)
		addr6(t, be, l.be6[i].String()+"/64", "eth0")
		be.MustRun(t, "ip", "route", "add", "default", "via", fmt.Sprintf("10.244.%d.1", i+1))
		be.MustRun(t, "ip", "-6", "route", "add", "default", "via", fmt.Sprintf("fd00:244:%d::1", i+1))
		serveTCPBoth(t, be, name)
		serveUDP6(t, be, name)
	}
	return l
}

// serveTCPBoth answers on both families' :8080 with "<name> <client address>".
func serveTCPBoth(t testing.TB, ns *testns.NS, name string) {
	ln, err := ns.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ip, _ := netip.AddrFromSlice(c.RemoteAddr().(*net.TCPAddr).IP)
			fmt.Fprintf(c, "%s %s\n", name, ip.Unmap())
			c.Close()
		}
	}()
}

func serveUDP6(t testing.TB, ns *testns.NS, name string) {
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp6", "[::]:5353"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
}

func ask6(ns *testns.NS, addr string) (name, src string, err error) {
	err = ns.Do(func() error {
		c, err := net.DialTimeout("tcp6", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 256)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		name, src, _ = strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
		return nil
	})
	return name, src, err
}

func askN6(t *testing.T, ns *testns.NS, addr string, n int) (names, srcs map[string]int) {
	t.Helper()
	names, srcs = map[string]int{}, map[string]int{}
	for range n {
		name, src, err := ask6(ns, addr)
		if err != nil {
			t.Fatalf("%s -> %s: %v", ns.Name, addr, err)
		}
		names[name]++
		srcs[src]++
	}
	return names, srcs
}

// refusedAtOnce dials addr over family network and says how long the refusal took ("" error text: refused).
func refusedAtOnce(t *testing.T, ns *testns.NS, network, addr string) {
	t.Helper()
	start := time.Now()
	err := ns.Do(func() error {
		c, err := net.DialTimeout(network, addr, 3*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	took := time.Since(start)
	if !errors.Is(err, syscall.ECONNREFUSED) || took > 500*time.Millisecond {
		t.Errorf("%s: connect %v after %v, want refused at once", addr, err, took)
	}
	t.Logf("%s refused after %v", addr, took)
}

func (l *lab6) ep6(i int, port uint16) model.Endpoint {
	return model.Endpoint{IP: l.be6[i], Port: port, Ready: true, Serving: true, Local: true}
}

// TestKernelDualStack: the dual-stack back end (tables ip canopy and ip6 canopy) in namespaces. An IPv6
// cluster IP reaches both IPv6 backends, and the IPv4 cluster IP of the same Service still works; a NodePort
// answers on the node's IPv6 address from outside (masqueraded, as IPv4); an IPv6 Service without endpoints is
// refused at once; a pod reaches itself through the IPv6 VIP (hairpin); the IPv6 UDP flow to a removed endpoint
// moves (conntrack cleanup); IPv6 endpoints never reach the ip table, IPv4 ones never ip6; Cleanup removes both.
func TestKernelDualStack(t *testing.T) {
	requireNft(t)
	l := newLab6(t)
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/48")},
		NodeIPs: []netip.Addr{netip.MustParseAddr(nodeIP), netip.MustParseAddr(nodeIP6)}}
	var d *proxy.DualStack
	err := l.node.Do(func() (err error) {
		if d, err = NewDualStack(cfg, nil); err != nil {
			return err
		}
		return d.Start()
	})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string, proto model.Protocol, port uint16, v4 string, v6 string, eps4, eps6 []model.Endpoint) *model.ServicePort {
		sp := &model.ServicePort{Key: "default/" + name + ":/" + string(proto), Namespace: "default", Name: name, Protocol: proto, Port: port,
			ClusterEndpoints: eps4, ExternalEndpoints: eps4}
		if v4 != "" {
			sp.ClusterIPs = []netip.Addr{netip.MustParseAddr(v4)}
		}
		if v6 != "" {
			sp.IPv6 = &model.Family{ClusterIPs: []netip.Addr{netip.MustParseAddr(v6)}, ClusterEndpoints: eps6, ExternalEndpoints: eps6}
		}
		return sp
	}
	both4 := []model.Endpoint{l.ep(0, 8080), l.ep(1, 8080)}
	both6 := []model.Endpoint{l.ep6(0, 8080), l.ep6(1, 8080)}
	web := mk("web", model.TCP, 80, "10.96.0.10", "fd00:96::10", both4, both6)
	web.NodePort = 30080
	empty := mk("empty", model.TCP, 80, "", "fd00:96::11", nil, nil)
	empty.NodePort = 30090
	dns := mk("dns", model.UDP, 53, "", "fd00:96::12", nil, []model.Endpoint{l.ep6(0, 5353), l.ep6(1, 5353)})
	desired := map[string]*model.ServicePort{web.Key: web, empty.Key: empty, dns.Key: dns}
	sync := func(keys ...string) {
		t.Helper()
		if err := l.node.Do(func() error { return d.Sync(desired, keys) }); err != nil {
			t.Fatal(err)
		}
	}
	sync(web.Key, empty.Key, dns.Key)
	save4 := func() string { return l.node.MustRun(t, "nft", "list", "table", "ip", TableName) }
	save6 := func() string { return l.node.MustRun(t, "nft", "list", "table", "ip6", TableName) }

	t.Run("IPv6 cluster IP reaches both IPv6 backends", func(t *testing.T) {
		names, srcs := askN6(t, l.client, "[fd00:96::10]:80", 40)
		if names["be1"] == 0 || names["be2"] == 0 {
			t.Errorf("answers %v, want both backends", names)
		}
		if srcs[clientIP6] != 0 {
			t.Errorf("client address kept for traffic from outside the pod network: %v", srcs)
		}
	})
	t.Run("IPv4 cluster IP of the same service", func(t *testing.T) {
		if names, _ := askN(t, l.client, "10.96.0.10:80", 20); names["be1"] == 0 || names["be2"] == 0 {
			t.Errorf("answers %v, want both backends", names)
		}
	})
	t.Run("NodePort on the node's IPv6 address from outside", func(t *testing.T) {
		names, srcs := askN6(t, l.client, "["+nodeIP6+"]:30080", 20)
		if names["be1"] == 0 || names["be2"] == 0 || srcs[clientIP6] != 0 {
			t.Errorf("answers %v from %v, want both backends, masqueraded", names, srcs)
		}
	})
	t.Run("IPv6 service without endpoints is refused at once", func(t *testing.T) {
		refusedAtOnce(t, l.client, "tcp6", "[fd00:96::11]:80")
		refusedAtOnce(t, l.client, "tcp6", "["+nodeIP6+"]:30090")
	})
	t.Run("hairpin over IPv6", func(t *testing.T) {
		if names, _ := askN6(t, l.be[0], "[fd00:96::10]:80", 20); names["be1"] == 0 || names["be2"] == 0 {
			t.Errorf("from be1: answers %v", names)
		}
	})
	t.Run("each family's table holds only its addresses", func(t *testing.T) {
		s4, s6 := save4(), save6()
		if strings.Contains(s4, "fd00:") || strings.Contains(s4, "2001:db8") {
			t.Errorf("IPv6 addresses in table ip:\n%s", s4)
		}
		if strings.Contains(s6, "10.244.") || strings.Contains(s6, "10.96.") {
			t.Errorf("IPv4 addresses in table ip6:\n%s", s6)
		}
		if !strings.Contains(s6, "dnat to [fd00:244:1::10]:8080") || !strings.Contains(s6, "fd00:96::11 . tcp . 80 : goto reject-chain") {
			t.Errorf("table ip6 lacks the IPv6 rules:\n%s", s6)
		}
	})

	// UDP over IPv6: a connected socket keeps its flow; removing its endpoint moves it (conntrack cleanup).
	var udp net.Conn
	if err := l.client.Do(func() (err error) { udp, err = net.Dial("udp6", "[fd00:96::12]:53"); return err }); err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	udpAsk := func() string {
		t.Helper()
		buf := make([]byte, 64)
		for range 3 {
			_, _ = udp.Write([]byte("hi"))
			_ = udp.SetReadDeadline(time.Now().Add(time.Second))
			if n, err := udp.Read(buf); err == nil {
				return string(buf[:n])
			}
		}
		t.Fatal("no UDP answer")
		return ""
	}
	first := udpAsk()
	for range 5 {
		if got := udpAsk(); got != first {
			t.Fatalf("UDP flow moved from %s to %s without a change", first, got)
		}
	}
	keep := l.ep6(1, 5353)
	if first == "be2" {
		keep = l.ep6(0, 5353)
	}
	dns.IPv6.ClusterEndpoints = []model.Endpoint{keep}
	dns.IPv6.ExternalEndpoints = dns.IPv6.ClusterEndpoints
	sync(dns.Key)
	if got := udpAsk(); got == first {
		t.Errorf("IPv6 UDP flow still goes to the removed endpoint %s (stale conntrack entry)", got)
	}

	// The IPv6 side goes: IPv4 still serves.
	web.IPv6 = nil
	sync(web.Key)
	if s := save6(); strings.Contains(s, "fd00:96::10") {
		t.Errorf("web's IPv6 rules left:\n%s", s)
	}
	if names, _ := askN(t, l.client, "10.96.0.10:80", 4); len(names) == 0 {
		t.Error("IPv4 stopped")
	}
	if err := l.node.Do(d.Cleanup); err != nil {
		t.Fatal(err)
	}
	if s := l.ruleset(t); strings.Contains(s, "table ip "+TableName) || strings.Contains(s, "table ip6 "+TableName) {
		t.Errorf("left after Cleanup:\n%s", s)
	}
}
