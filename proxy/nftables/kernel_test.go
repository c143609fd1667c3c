package nftables

import (
	"bufio"
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

// lab is a node namespace running the rules, a client namespace outside, and two backend namespaces ("pods"
// on the node) each answering TCP on :8080 with "<name> <client address>" and UDP on :5353 with its name.
type lab struct {
	node, client *testns.NS
	be           [2]*testns.NS
	beIP         [2]netip.Addr
}

const (
	clientIP = "10.0.1.2"
	nodeIP   = "10.0.1.1"
)

func requireNft(t testing.TB) { testns.Require(t, "nft") }

func newLab(t testing.TB) *lab {
	l := &lab{node: testns.New(t, "nft-node"), client: testns.New(t, "nft-cl")}
	testns.Link(t, l.node, "cl0", nodeIP+"/24", l.client, "eth0", clientIP+"/24")
	l.client.MustRun(t, "ip", "route", "add", "default", "via", nodeIP)
	// The node's default route points outside (to the client's network): VIPs without endpoints are routed,
	// so the filter chains see (and reject) them, and the node's own traffic to VIPs has a route.
	l.node.MustRun(t, "ip", "route", "add", "default", "via", clientIP)
	l.node.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for i := range l.be {
		name := fmt.Sprintf("be%d", i+1)
		be := testns.New(t, "nft-"+name)
		l.be[i], l.beIP[i] = be, netip.MustParseAddr(fmt.Sprintf("10.244.%d.10", i+1))
		testns.Link(t, l.node, name, fmt.Sprintf("10.244.%d.1/24", i+1), be, "eth0", l.beIP[i].String()+"/24")
		be.MustRun(t, "ip", "route", "add", "default", "via", fmt.Sprintf("10.244.%d.1", i+1))
		serveTCP(t, be, name)
		serveUDP(t, be, name)
	}
	return l
}

func serveTCP(t testing.TB, ns *testns.NS, name string) { serveTCPOn(t, ns, name, 8080) }

func serveTCPOn(t testing.TB, ns *testns.NS, name string, port int) {
	ln, err := ns.Listen("tcp4", fmt.Sprintf(":%d", port))
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
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
}

func serveUDP(t testing.TB, ns *testns.NS, name string) {
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp4", ":5353"); return err }); err != nil {
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

// ask connects from ns to addr and returns the backend's name and the client address it saw.
func ask(ns *testns.NS, addr string) (name, src string, err error) {
	c, err := ns.Dial("tcp4", addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	name, src, _ = strings.Cut(strings.TrimSpace(line), " ")
	return name, src, nil
}

// askN asks n times and counts the answers by backend name and by client address seen.
func askN(t *testing.T, ns *testns.NS, addr string, n int) (names, srcs map[string]int) {
	t.Helper()
	names, srcs = map[string]int{}, map[string]int{}
	for range n {
		name, src, err := ask(ns, addr)
		if err != nil {
			t.Fatalf("%s -> %s: %v", ns.Name, addr, err)
		}
		names[name]++
		srcs[src]++
	}
	return names, srcs
}

// dial connects from ns to addr with a timeout and reports the error and how long it took.
func dial(ns *testns.NS, addr string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp4", addr, timeout)
		if err == nil {
			c.Close()
		}
		return err
	})
	return time.Since(start), err
}

func (l *lab) ep(i int, port uint16) model.Endpoint {
	return model.Endpoint{IP: l.beIP[i], Port: port, Ready: true, Serving: true, Local: true}
}

func (l *lab) ruleset(t testing.TB) string { return l.node.MustRun(t, "nft", "list", "ruleset") }

func TestKernel(t *testing.T) {
	requireNft(t)
	for _, tc := range []struct {
		name   string
		cfg    Config
		shards int // 0: one Proxier on table canopy (NewHost)
	}{
		{"local-addresses", Config{}, 0},
		{"nodeips", Config{NodeIPs: []netip.Addr{netip.MustParseAddr(nodeIP)}}, 0},
		// The host default: the service ports spread over DefaultShards tables (and those tables' hooks).
		{"shards", Config{}, DefaultShards},
	} {
		t.Run(tc.name, func(t *testing.T) { testKernel(t, tc.cfg, tc.shards) })
	}
}

// newHostBackend is NewHost (shards 0: one table) or NewHostShards (that many tables), IPv4.
func newHostBackend(cfg Config, shards int) (proxy.Backend, error) {
	if shards == 0 {
		return NewHost(cfg, nil)
	}
	return NewHostShards(cfg, false, shards, nil)
}

func testKernel(t *testing.T, cfg Config, shards int) {
	l := newLab(t)
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	var p proxy.Backend
	if err := l.node.Do(func() (err error) { p, err = newHostBackend(cfg, shards); return err }); err != nil {
		t.Fatal(err)
	}

	both := []model.Endpoint{l.ep(0, 8080), l.ep(1, 8080)}
	mk := func(name, vip string, port uint16, eps ...model.Endpoint) *model.ServicePort {
		return &model.ServicePort{Key: "default/" + name + ":/TCP", Namespace: "default", Name: name, Protocol: model.TCP,
			ClusterIPs: []netip.Addr{netip.MustParseAddr(vip)}, Port: port, ClusterEndpoints: eps, ExternalEndpoints: eps}
	}
	web := mk("web", "10.96.0.10", 80, both...)
	web.NodePort = 30080
	web.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.10")}
	lb := mk("lb", "10.96.0.16", 80, both...)
	lb.NodePort = 30083
	lb.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.51.100.16")}
	empty := mk("empty", "10.96.0.11", 80)
	empty.NodePort = 30090
	local := mk("local", "10.96.0.14", 80, both...)
	local.NodePort, local.ExternalPolicyLocal, local.ExternalEndpoints = 30081, true, both[:1]
	nolocal := mk("nolocal", "10.96.0.15", 80, both[1])
	nolocal.NodePort, nolocal.ExternalPolicyLocal, nolocal.ExternalEndpoints = 30082, true, nil
	sticky := mk("sticky", "10.96.0.13", 80, both...)
	sticky.AffinityClientIP, sticky.AffinityTimeout = true, time.Minute
	dns := mk("dns", "10.96.0.12", 53, l.ep(0, 5353), l.ep(1, 5353))
	dns.Key, dns.Protocol = "default/dns:/UDP", model.UDP

	desired := map[string]*model.ServicePort{}
	var keys []string
	for _, sp := range []*model.ServicePort{web, lb, empty, local, nolocal, sticky, dns} {
		desired[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	sync := func(keys ...string) {
		t.Helper()
		if err := l.node.Do(func() error { return p.Sync(desired, keys) }); err != nil {
			t.Fatal(err)
		}
	}
	sync(keys...)
	if err := l.node.Do(p.PruneStale); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(l.ruleset(t), "table ip "+TableName); shards > 0 && n != shards {
		t.Fatalf("%d tables, want %d", n, shards)
	}
	if testing.Verbose() {
		t.Logf("ruleset:\n%s", l.ruleset(t))
	}

	t.Run("cluster IP spreads over both backends", func(t *testing.T) {
		names, srcs := askN(t, l.client, "10.96.0.10:80", 40)
		if names["be1"] == 0 || names["be2"] == 0 {
			t.Errorf("answers %v, want both backends", names)
		}
		if srcs[clientIP] != 0 {
			t.Errorf("client address kept for traffic from outside the pod network: %v", srcs)
		}
	})
	t.Run("external IP, load balancer IP and node port (Cluster policy)", func(t *testing.T) {
		for _, addr := range []string{"203.0.113.10:80", "198.51.100.16:80", nodeIP + ":30080", nodeIP + ":30083"} {
			names, srcs := askN(t, l.client, addr, 20)
			if names["be1"] == 0 || names["be2"] == 0 || srcs[clientIP] != 0 {
				t.Errorf("%s: answers %v from %v, want both backends, masqueraded", addr, names, srcs)
			}
		}
	})
	t.Run("externalTrafficPolicy Local keeps the client address", func(t *testing.T) {
		names, srcs := askN(t, l.client, nodeIP+":30081", 20)
		if names["be1"] != 20 || srcs[clientIP] != 20 {
			t.Errorf("answers %v from %v, want only the local endpoint be1, seeing %s", names, srcs, clientIP)
		}
	})
	t.Run("externalTrafficPolicy Local without local endpoints drops", func(t *testing.T) {
		_, err := dial(l.client, nodeIP+":30082", 500*time.Millisecond)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("connect: %v, want a timeout (dropped)", err)
		}
		// Cluster traffic to it still works.
		if names, _ := askN(t, l.client, "10.96.0.15:80", 3); names["be2"] != 3 {
			t.Errorf("cluster IP answers %v", names)
		}
	})
	t.Run("no endpoints rejects at once", func(t *testing.T) {
		for _, addr := range []string{"10.96.0.11:80", nodeIP + ":30090"} {
			took, err := dial(l.client, addr, 3*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) || took > 500*time.Millisecond {
				t.Errorf("%s: connect %v after %v, want refused at once", addr, err, took)
			}
			t.Logf("%s refused after %v", addr, took)
		}
	})
	t.Run("ClientIP affinity sticks", func(t *testing.T) {
		names, _ := askN(t, l.client, "10.96.0.13:80", 20)
		if len(names) != 1 {
			t.Errorf("answers %v, want one backend", names)
		}
	})
	t.Run("hairpin and node-originated traffic", func(t *testing.T) {
		// be1 reaching itself through the VIP needs the hairpin masquerade.
		if names, _ := askN(t, l.be[0], "10.96.0.10:80", 20); names["be1"] == 0 || names["be2"] == 0 {
			t.Errorf("from be1: answers %v", names)
		}
		if names, _ := askN(t, l.node, "10.96.0.10:80", 10); len(names) == 0 {
			t.Error("no answer from the node itself")
		}
	})

	// UDP: a connected socket keeps its conntrack entry; removing the endpoint it went to moves it.
	var udp net.Conn
	if err := l.client.Do(func() (err error) { udp, err = net.Dial("udp4", "10.96.0.12:53"); return err }); err != nil {
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
	t.Logf("UDP answered by %s", first)

	// Scale web to one endpoint, and move dns off the endpoint the UDP flow uses.
	web.ClusterEndpoints, web.ExternalEndpoints = both[:1], both[:1]
	if first == "be1" {
		dns.ClusterEndpoints = []model.Endpoint{l.ep(1, 5353)}
	} else {
		dns.ClusterEndpoints = []model.Endpoint{l.ep(0, 5353)}
	}
	dns.ExternalEndpoints = dns.ClusterEndpoints
	sync(web.Key, dns.Key)
	t.Run("scaled to one endpoint", func(t *testing.T) {
		if names, _ := askN(t, l.client, "10.96.0.10:80", 20); names["be1"] != 20 {
			t.Errorf("answers %v, want all from be1", names)
		}
		if names, _ := askN(t, l.client, nodeIP+":30080", 10); names["be1"] != 10 {
			t.Errorf("node port answers %v, want all from be1", names)
		}
	})
	t.Run("UDP flow moves off the removed endpoint", func(t *testing.T) {
		if got := udpAsk(); got == first {
			t.Errorf("UDP flow still goes to the removed endpoint %s (stale conntrack entry)", got)
		}
	})
	t.Run("only the changed chains", func(t *testing.T) {
		s := l.ruleset(t)
		if strings.Contains(s, SEPChain(web.Key, l.beIP[1], 8080)) {
			t.Error("the removed endpoint's chain is still there")
		}
		for _, c := range []string{SVCChain(sticky.Key), SEPChain(sticky.Key, l.beIP[1], 8080), EXTChain(local.Key)} {
			if !strings.Contains(s, "chain "+c+" {") {
				t.Errorf("chain %s of an unchanged service is gone", c)
			}
		}
	})
	// Endpoints for the empty service: the reject goes, traffic flows.
	empty.ClusterEndpoints, empty.ExternalEndpoints = both[1:], both[1:]
	sync(empty.Key)
	t.Run("endpoints arrive", func(t *testing.T) {
		if names, _ := askN(t, l.client, "10.96.0.11:80", 3); names["be2"] != 3 {
			t.Errorf("answers %v", names)
		}
	})

	// Delete a service, then everything.
	delete(desired, web.Key)
	sync(web.Key)
	if s := l.ruleset(t); strings.Contains(s, SVCChain(web.Key)) || strings.Contains(s, "10.96.0.10 ") || strings.Contains(s, "203.0.113.10") {
		t.Errorf("the deleted service is still programmed:\n%s", s)
	}
	if err := l.node.Do(p.Cleanup); err != nil {
		t.Fatal(err)
	}
	if s := l.ruleset(t); strings.Contains(s, "table ip "+TableName) {
		t.Errorf("left after Cleanup:\n%s", s)
	}
}

// TestKernelReshard: an agent that changes the number of tables (an upgrade from the single table, a
// smaller DefaultShards) keeps every service answering through the restart; the next run's PruneStale leaves
// each destination in one table and deletes the tables it no longer has.
func TestKernelReshard(t *testing.T) {
	requireNft(t)
	l := newLab(t)
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	both := []model.Endpoint{l.ep(0, 8080), l.ep(1, 8080)}
	desired := map[string]*model.ServicePort{}
	var keys []string
	for i := range 8 {
		sp := &model.ServicePort{Key: fmt.Sprintf("default/s%d:/TCP", i), Namespace: "default", Name: fmt.Sprintf("s%d", i), Protocol: model.TCP,
			ClusterIPs: []netip.Addr{netip.MustParseAddr(fmt.Sprintf("10.96.1.%d", i+1))}, Port: 80, NodePort: uint16(30100 + i),
			ClusterEndpoints: both, ExternalEndpoints: both}
		desired[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	answer := func(step string) {
		t.Helper()
		for _, sp := range desired {
			for _, a := range []string{sp.ClusterIPs[0].String() + ":80", fmt.Sprintf("%s:%d", nodeIP, sp.NodePort)} {
				if name, _, err := ask(l.client, a); err != nil || name == "" {
					t.Fatalf("%s: %s does not answer: %v", step, a, err)
				}
			}
		}
	}
	run := func(step string, shards int, prune bool) proxy.Backend {
		t.Helper()
		var p proxy.Backend
		if err := l.node.Do(func() (err error) {
			if p, err = newHostBackend(cfg, shards); err == nil {
				err = p.Start()
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if step != "one table" { // (the first run starts on an empty node)
			answer(step + ", started")
		}
		if err := l.node.Do(func() error { return p.Sync(desired, keys) }); err != nil {
			t.Fatal(err)
		}
		answer(step + ", synced")
		if prune {
			if err := l.node.Do(p.PruneStale); err != nil {
				t.Fatal(err)
			}
			answer(step + ", pruned")
			rs := l.ruleset(t)
			for _, sp := range desired {
				if n := strings.Count(rs, sp.ClusterIPs[0].String()+" . tcp . 80 : goto"); n != 1 {
					t.Errorf("%s: %s is in %d dispatch maps, want 1", step, sp.ClusterIPs[0], n)
				}
			}
			if n := max(shards, 1); strings.Count(rs, "table ip "+TableName) != n {
				t.Errorf("%s: want %d tables:\n%s", step, n, rs)
			}
		}
		return p
	}
	run("one table", 0, true)
	run("four tables", 4, true)
	p := run("two tables", 2, true)
	if err := l.node.Do(p.Cleanup); err != nil {
		t.Fatal(err)
	}
	if s := l.ruleset(t); strings.Contains(s, "table ip "+TableName) {
		t.Errorf("left after Cleanup:\n%s", s)
	}
}

// TestKernelRestart: a new proxier over a previous run's table keeps serving it until PruneStale, which
// deletes the services that are gone and nothing else.
func TestKernelRestart(t *testing.T) {
	requireNft(t)
	l := newLab(t)
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	a := &model.ServicePort{Key: "default/a:/TCP", Protocol: model.TCP, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}, Port: 80,
		ClusterEndpoints: []model.Endpoint{l.ep(0, 8080)}}
	b := &model.ServicePort{Key: "default/b:/TCP", Protocol: model.TCP, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.21")}, Port: 80,
		ClusterEndpoints: []model.Endpoint{l.ep(1, 8080)}, AffinityClientIP: true, AffinityTimeout: time.Minute}
	desired := map[string]*model.ServicePort{a.Key: a, b.Key: b}
	err := l.node.Do(func() error {
		p, err := NewHost(cfg, nil)
		if err != nil {
			return err
		}
		return p.Sync(desired, []string{a.Key, b.Key})
	})
	if err != nil {
		t.Fatal(err)
	}
	if names, _ := askN(t, l.client, "10.96.0.21:80", 2); names["be2"] != 2 {
		t.Fatalf("first run: %v", names)
	}

	// Restart: b is gone meanwhile.
	delete(desired, b.Key)
	var p2 *Proxier
	if err := l.node.Do(func() (err error) { p2, err = NewHost(cfg, nil); return err }); err != nil {
		t.Fatal(err)
	}
	counted := &countingNFT{Interface: p2.nft}
	p2.nft = counted
	if err := l.node.Do(p2.Start); err != nil {
		t.Fatal(err)
	}
	if names, _ := askN(t, l.client, "10.96.0.21:80", 2); names["be2"] != 2 {
		t.Errorf("after Start: %v", names)
	}
	// The shared objects were left as this configuration writes them: Start wrote nothing.
	if !p2.staticCurrent || counted.ops != 0 {
		t.Errorf("Start over the same configuration's table: shared objects current %v, %d operations written, want true and 0", p2.staticCurrent, counted.ops)
	}
	if err := l.node.Do(func() error { return p2.Sync(desired, []string{a.Key}) }); err != nil {
		t.Fatal(err)
	}
	if names, _ := askN(t, l.client, "10.96.0.21:80", 2); names["be2"] != 2 {
		t.Errorf("after the first sync, before PruneStale: %v", names)
	}
	if err := l.node.Do(p2.PruneStale); err != nil {
		t.Fatal(err)
	}
	s := l.ruleset(t)
	if strings.Contains(s, "default/b") || strings.Contains(s, "10.96.0.21") {
		t.Errorf("objects of the gone service left:\n%s", s)
	}
	if strings.Count(s, "table ip "+TableName) != 1 || strings.Count(s, "jump services") != 2 {
		t.Errorf("table duplicated or shared chains missing:\n%s", s)
	}
	if names, _ := askN(t, l.client, "10.96.0.20:80", 2); names["be1"] != 2 {
		t.Errorf("after PruneStale: %v", names)
	}
	// A full resync after someone deleted a's map element repairs it (and writes nothing else).
	l.node.MustRun(t, "nft", "delete", "element", "ip", TableName, MapServiceIPs, "{ 10.96.0.20 . tcp . 80 }")
	if err := l.node.Do(func() error { return p2.Sync(desired, []string{a.Key}) }); err != nil {
		t.Fatal(err)
	}
	if names, _ := askN(t, l.client, "10.96.0.20:80", 2); names["be1"] != 2 {
		t.Errorf("after the repair: %v", names)
	}

	// Another configuration (node ports on one address): Start rewrites the shared objects.
	cfg3 := cfg
	cfg3.NodeIPs = []netip.Addr{netip.MustParseAddr(nodeIP)}
	var p3 *Proxier
	if err := l.node.Do(func() (err error) {
		if p3, err = NewHost(cfg3, nil); err != nil {
			return err
		}
		return p3.Start()
	}); err != nil {
		t.Fatal(err)
	}
	if p3.staticCurrent {
		t.Error("Start with another configuration found the shared objects current")
	}
	if s := l.node.MustRun(t, "nft", "list", "set", "ip", TableName, SetNodePortIPs); !strings.Contains(s, nodeIP) {
		t.Errorf("nodeport-ips after a restart with NodeIPs %s:\n%s", nodeIP, s)
	}
}

// TestKernelManyEndpoints: more endpoints than maxCascade are spread by one numgen vmap.
func TestKernelManyEndpoints(t *testing.T) {
	requireNft(t)
	l := newLab(t)
	sp := &model.ServicePort{Key: "default/many:/TCP", Protocol: model.TCP, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.30")}, Port: 80}
	for port := 8080; len(sp.ClusterEndpoints) <= maxCascade; port++ {
		for i := range l.be {
			if port != 8080 {
				serveTCPOn(t, l.be[i], fmt.Sprintf("be%d", i+1), port)
			}
			sp.ClusterEndpoints = append(sp.ClusterEndpoints, l.ep(i, uint16(port)))
		}
	}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	err := l.node.Do(func() error {
		p, err := NewHost(Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}, nil)
		if err != nil {
			return err
		}
		return p.Sync(map[string]*model.ServicePort{sp.Key: sp}, []string{sp.Key})
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := l.node.MustRun(t, "nft", "list", "chain", "ip", TableName, SVCChain(sp.Key)); !strings.Contains(s, fmt.Sprintf("numgen random mod %d vmap", len(sp.ClusterEndpoints))) {
		t.Fatalf("%d endpoints without a vmap:\n%s", len(sp.ClusterEndpoints), s)
	}
	// 40 connections: both backends unless 40 draws of 18 all land on one backend's 9 (2^-39).
	if names, _ := askN(t, l.client, "10.96.0.30:80", 40); names["be1"] == 0 || names["be2"] == 0 {
		t.Errorf("answers %v, want both backends", names)
	}
}
