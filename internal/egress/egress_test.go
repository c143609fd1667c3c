package egress

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/testsupport/testns"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestRules(t *testing.T) {
	got := Rules([]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00::/64")},
		[]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/16")})
	want := []string{
		"-d 10.244.0.0/16 -m comment --comment canopy: cluster-internal, keep source -j RETURN",
		"-d 10.96.0.0/16 -m comment --comment canopy: cluster-internal, keep source -j RETURN",
		"-s 10.244.1.0/24 -m comment --comment canopy: pod egress -j MASQUERADE --random-fully",
	}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if s := strings.Join(got[i], " "); s != want[i] {
			t.Errorf("rule %d = %q, want %q", i, s, want[i])
		}
	}
}

// counting wraps the host's iptables to count restores (chain rewrites).
type counting struct {
	IPTables
	restores int
}

func (c *counting) Restore(table string, data []byte) error {
	c.restores++
	return c.IPTables.Restore(table, data)
}

// TestMasqueradeInNamespace programs the chain in a test namespace playing the node, with a pod namespace
// behind it and an outside host beyond it: traffic to the outside is masqueraded to the node's address,
// traffic to the cluster's pod network keeps the pod's address, and re-applying rewrites nothing.
func TestMasqueradeInNamespace(t *testing.T) {
	testns.Require(t, "iptables")
	node, pod, out := testns.New(t, "eg-node"), testns.New(t, "eg-pod"), testns.New(t, "eg-out")
	testns.Link(t, node, "pod0", "10.244.1.1/24", pod, "eth0", "10.244.1.10/24")
	testns.Link(t, node, "up0", "192.0.2.2/24", out, "eth0", "192.0.2.1/24")
	pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
	node.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	// The outside host also holds an address inside the cluster's pod network (another node's pod).
	out.MustRun(t, "ip", "addr", "add", "10.244.9.9/32", "dev", "lo")
	out.MustRun(t, "ip", "route", "add", "10.244.1.0/24", "via", "192.0.2.2")
	node.MustRun(t, "ip", "route", "add", "10.244.9.9/32", "via", "192.0.2.1")

	pods := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}
	keep := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/16")}
	var c *counting
	err := node.Do(func() error {
		it, err := ipt.Open()
		if err != nil {
			return err
		}
		c = &counting{IPTables: it}
		if err := Apply(c, pods, keep, quiet); err != nil {
			return err
		}
		return Apply(c, pods, keep, quiet)
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.restores != 1 {
		t.Errorf("the chain was rewritten %d times for two identical applies, want 1", c.restores)
	}
	saved := node.MustRun(t, "iptables-save", "-t", "nat")
	if !strings.Contains(saved, "-A POSTROUTING -m comment --comment \"canopy: pod egress masquerade\" -j CANOPY-POSTROUTING") {
		t.Errorf("no jump from POSTROUTING:\n%s", saved)
	}

	for _, tc := range []struct{ dst, wantSrc string }{
		{"192.0.2.1", "192.0.2.2"},    // leaves the cluster: the node's address
		{"10.244.9.9", "10.244.1.10"}, // another pod: the pod's own address
	} {
		if got := clientAddrSeen(t, out, pod, tc.dst); got != tc.wantSrc {
			t.Errorf("pod -> %s arrives from %s, want %s", tc.dst, got, tc.wantSrc)
		}
	}

	if err := node.Do(func() error { return Remove(c) }); err != nil {
		t.Fatal(err)
	}
	if saved := node.MustRun(t, "iptables-save", "-t", "nat"); strings.Contains(saved, Chain) {
		t.Errorf("chain left after Remove:\n%s", saved)
	}
}

// clientAddrSeen connects from client to an echo server in server at dst:8080 and returns the source address
// the server saw.
func clientAddrSeen(t *testing.T, server, client *testns.NS, dst string) string {
	t.Helper()
	l, err := server.Listen("tcp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		fmt.Fprintln(c, c.RemoteAddr().(*net.TCPAddr).IP)
		c.Close()
	}()
	conn, err := client.Dial("tcp4", net.JoinHostPort(dst, fmt.Sprint(l.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(line)
}

// A host whose FORWARD policy is DROP (as Docker leaves it) forwards pod traffic once ApplyForward ran, and
// only pod traffic.
func TestForwardAcceptWithDropPolicy(t *testing.T) {
	testns.Require(t, "iptables")
	node, pod, out := testns.New(t, "fw-node"), testns.New(t, "fw-pod"), testns.New(t, "fw-out")
	testns.Link(t, node, "pod0", "10.244.1.1/24", pod, "eth0", "10.244.1.10/24")
	testns.Link(t, node, "up0", "192.0.2.2/24", out, "eth0", "192.0.2.1/24")
	pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
	out.MustRun(t, "ip", "route", "add", "10.244.1.0/24", "via", "192.0.2.2")
	node.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	f := ipt.Detect()
	node.MustRun(t, "iptables-"+string(f), "-P", "FORWARD", "DROP")

	reach := func() error {
		l, err := out.Listen("tcp4", ":0")
		if err != nil {
			return err
		}
		defer l.Close()
		go func() {
			if c, err := l.Accept(); err == nil {
				c.Close()
			}
		}()
		var c net.Conn
		err = pod.Do(func() (err error) {
			c, err = net.DialTimeout("tcp4", net.JoinHostPort("192.0.2.1", fmt.Sprint(l.Addr().(*net.TCPAddr).Port)), 500*time.Millisecond)
			return err
		})
		if err == nil {
			c.Close()
		}
		return err
	}
	if reach() == nil {
		t.Fatal("pod traffic forwarded although FORWARD's policy is DROP: the test proves nothing")
	}
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	if err := node.Do(func() error {
		it, err := ipt.OpenFlavour(f)
		if err != nil {
			return err
		}
		if err := ApplyForward(it, cidrs); err != nil {
			return err
		}
		return ApplyForward(it, cidrs) // idempotent
	}); err != nil {
		t.Fatal(err)
	}
	if err := reach(); err != nil {
		t.Errorf("pod traffic not forwarded after ApplyForward: %v", err)
	}
	saved := node.MustRun(t, "iptables-"+string(f)+"-save", "-t", "filter")
	if strings.Count(saved, "-j "+ForwardChain) != 1 || !strings.Contains(saved, "-A "+ForwardChain+" -d 10.244.0.0/16 -j ACCEPT") {
		t.Errorf("want one jump and the accept rules:\n%s", saved)
	}
}

// A pod cannot open TCP to port 179 through or on its node once the guard is in; other ports still work.
func TestBGPGuardDropsPodsBGP(t *testing.T) {
	testns.Require(t, "iptables")
	node, pod, out := testns.New(t, "gd-node"), testns.New(t, "gd-pod"), testns.New(t, "gd-out")
	testns.Link(t, node, "pod0", "10.244.1.1/24", pod, "eth0", "10.244.1.10/24")
	testns.Link(t, node, "up0", "192.0.2.2/24", out, "eth0", "192.0.2.1/24")
	pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
	out.MustRun(t, "ip", "route", "add", "10.244.1.0/24", "via", "192.0.2.2")
	node.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	listen := func(ns *testns.NS, addr string) {
		l, err := ns.Listen("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	listen(out, "192.0.2.1:179")
	listen(out, "192.0.2.1:180")
	listen(node, "10.244.1.1:179")
	dial := func(addr string) error {
		return pod.Do(func() error {
			c, err := net.DialTimeout("tcp4", addr, 500*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	for _, a := range []string{"192.0.2.1:179", "10.244.1.1:179", "192.0.2.1:180"} {
		if err := dial(a); err != nil {
			t.Fatalf("before the guard, %s: %v (the test proves nothing)", a, err)
		}
	}
	if err := node.Do(func() error {
		it, err := ipt.Open()
		if err != nil {
			return err
		}
		return ApplyBGPGuard(it, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")})
	}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"192.0.2.1:179", "10.244.1.1:179"} {
		if err := dial(a); err == nil {
			t.Errorf("a pod reached %s (BGP) through the guard", a)
		}
	}
	if err := dial("192.0.2.1:180"); err != nil {
		t.Errorf("the guard blocked another port: %v", err)
	}
	if err := node.Do(func() error {
		it, err := ipt.Open()
		if err != nil {
			return err
		}
		return RemoveBGPGuard(it)
	}); err != nil {
		t.Fatal(err)
	}
	if out := node.MustRun(t, "iptables-save", "-t", "filter"); strings.Contains(out, GuardChain) {
		t.Errorf("the guard survived its removal:\n%s", out)
	}
}
