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

	"canopy.io/canopy/internal/cleanup"
	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/testsupport/testns"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestRules(t *testing.T) {
	pods := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	keep := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56"),
		netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/112")}
	for _, tc := range []struct {
		name string
		got  [][]string
		want []string
	}{
		{"IPv4", Rules(pods, keep), []string{
			"-d 10.244.0.0/16 -m comment --comment canopy: cluster-internal, keep source -j RETURN",
			"-d 10.96.0.0/16 -m comment --comment canopy: cluster-internal, keep source -j RETURN",
			"-s 10.244.1.0/24 -m comment --comment canopy: pod egress -j MASQUERADE --random-fully",
		}},
		{"IPv6", Rules6(pods, keep), []string{
			"-d fd00:10:244::/56 -m comment --comment canopy: cluster-internal, keep source -j RETURN",
			"-d fd00:10:96::/112 -m comment --comment canopy: cluster-internal, keep source -j RETURN",
			"-s fd00:10:244:1::/64 -m comment --comment canopy: pod egress -j MASQUERADE --random-fully",
		}},
		{"IPv4 only: no IPv6 rules", Rules6(pods[:1], keep[:1]), nil},
		{"IPv6 only: no IPv4 rules", Rules(pods[1:], keep[1:2]), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.got) != len(tc.want) {
				t.Fatalf("%q, want %q", tc.got, tc.want)
			}
			for i := range tc.want {
				if s := strings.Join(tc.got[i], " "); s != tc.want[i] {
					t.Errorf("rule %d = %q, want %q", i, s, tc.want[i])
				}
			}
		})
	}
}

func TestForwardAndGuardRulesPerFamily(t *testing.T) {
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
	join := func(rs [][]string) string {
		var out []string
		for _, r := range rs {
			out = append(out, strings.Join(r, " "))
		}
		return strings.Join(out, "; ")
	}
	for _, tc := range []struct{ name, got, want string }{
		{"forward IPv4", join(ForwardRules(cidrs)), "-s 10.244.0.0/16 -j ACCEPT; -d 10.244.0.0/16 -j ACCEPT"},
		{"forward IPv6", join(ForwardRules6(cidrs)), "-s fd00:10:244::/56 -j ACCEPT; -d fd00:10:244::/56 -j ACCEPT"},
		{"guard IPv4", join(GuardRules(cidrs)), "-s 10.244.0.0/16 -p tcp --dport 179 -j DROP"},
		{"guard IPv6", join(GuardRules6(cidrs)), "-s fd00:10:244::/56 -p tcp --dport 179 -j DROP"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

// Each family's chains go through its own handle (an iptables and an ip6tables fake), holding only that
// family's prefixes; re-applying writes nothing; the Remove functions clear each handle.
func TestApplyPerFamilyFakes(t *testing.T) {
	pods := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	keep := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56"),
		netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/112")}
	cluster := []netip.Prefix{keep[0], keep[1]}
	f4, f6 := ipt.NewFake(), ipt.NewFake()
	applyAll := func() {
		t.Helper()
		for _, err := range []error{Apply(f4, pods, keep, quiet), Apply6(f6, pods, keep, quiet),
			ApplyForward(f4, cluster), ApplyForward6(f6, cluster), ApplyBGPGuard(f4, cluster), ApplyBGPGuard6(f6, cluster)} {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	applyAll()
	for _, tc := range []struct {
		name          string
		f             *ipt.Fake
		table, chain  string
		n             int
		want, wantNot string
		jumpFrom      string
		jumpTable     string
		jumpTarget    string
	}{
		{"nat v4", f4, "nat", Chain, 3, "-s 10.244.1.0/24", ":", "POSTROUTING", "nat", Chain},
		{"nat v6", f6, "nat", Chain, 3, "-s fd00:10:244:1::/64", ".", "POSTROUTING", "nat", Chain},
		{"forward v4", f4, "filter", ForwardChain, 2, "-d 10.244.0.0/16 -j ACCEPT", ":", "FORWARD", "filter", ForwardChain},
		{"forward v6", f6, "filter", ForwardChain, 2, "-d fd00:10:244::/56 -j ACCEPT", ".", "FORWARD", "filter", ForwardChain},
		{"guard v4", f4, "filter", GuardChain, 1, "-s 10.244.0.0/16", ":", "INPUT", "filter", GuardChain},
		{"guard v6", f6, "filter", GuardChain, 1, "-s fd00:10:244::/56", ".", "INPUT", "filter", GuardChain},
	} {
		rules := tc.f.Rules(tc.table, tc.chain)
		all := strings.Join(rules, "\n")
		if len(rules) != tc.n || !strings.Contains(all, tc.want) {
			t.Errorf("%s: %d rules %q, want %d with %q", tc.name, len(rules), rules, tc.n, tc.want)
		}
		// No address of the other family: IPv4 rules have no ':' and IPv6 ones no dotted quad.
		for _, r := range rules {
			if strings.Contains(strings.Fields(r)[1], tc.wantNot) {
				t.Errorf("%s: rule of the other family %q", tc.name, r)
			}
		}
		if !strings.Contains(strings.Join(tc.f.Rules(tc.jumpTable, tc.jumpFrom), "\n"), "-j "+tc.jumpTarget) {
			t.Errorf("%s: no jump from %s: %q", tc.name, tc.jumpFrom, tc.f.Rules(tc.jumpTable, tc.jumpFrom))
		}
	}
	w4, w6 := f4.Restores+f4.Edits, f6.Restores+f6.Edits
	applyAll()
	if d4, d6 := f4.Restores+f4.Edits-w4, f6.Restores+f6.Edits-w6; d4 != 0 || d6 != 0 {
		t.Errorf("re-applying wrote %d (IPv4) and %d (IPv6) times, want 0", d4, d6)
	}
	for _, f := range []*ipt.Fake{f4, f6} {
		for _, err := range []error{Remove(f), RemoveForward(f), RemoveBGPGuard(f)} {
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []struct{ table, chain string }{{"nat", Chain}, {"filter", ForwardChain}, {"filter", GuardChain}} {
			if f.HasChain(c.table, c.chain) {
				t.Errorf("%s %s left after removal", c.table, c.chain)
			}
		}
		for _, c := range []struct{ table, chain string }{{"nat", "POSTROUTING"}, {"filter", "FORWARD"}, {"filter", "INPUT"}} {
			if r := f.Rules(c.table, c.chain); len(r) != 0 {
				t.Errorf("%s %s still holds %q", c.table, c.chain, r)
			}
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

// TestMasqueradeDualStackInNamespace is TestMasqueradeInNamespace on a dual-stack node: the IPv4 chain goes
// through iptables and the IPv6 one through ip6tables, each from the same dual-stack lists. Traffic leaving the
// cluster is masqueraded to the node's address of its family; traffic to the cluster's pod network keeps the
// pod's address in both families; Remove on each handle leaves neither family's chain behind.
func TestMasqueradeDualStackInNamespace(t *testing.T) {
	testns.Require(t, "iptables", "ip6tables")
	node, pod, out := testns.New(t, "eg6-node"), testns.New(t, "eg6-pod"), testns.New(t, "eg6-out")
	testns.Link(t, node, "pod0", "10.244.1.1/24", pod, "eth0", "10.244.1.10/24")
	testns.Link(t, node, "up0", "192.0.2.2/24", out, "eth0", "192.0.2.1/24")
	// IPv6 without duplicate address detection: usable at once.
	for _, a := range []struct {
		ns        *testns.NS
		addr, dev string
	}{{node, "fd00:10:244:1::1/64", "pod0"}, {pod, "fd00:10:244:1::10/64", "eth0"}, {node, "2001:db8::2/64", "up0"}, {out, "2001:db8::1/64", "eth0"}} {
		a.ns.MustRun(t, "ip", "-6", "addr", "add", a.addr, "dev", a.dev, "nodad")
	}
	pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
	pod.MustRun(t, "ip", "-6", "route", "add", "default", "via", "fd00:10:244:1::1")
	node.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	node.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	// The outside host also holds an address of each family inside the cluster's pod network (another node's pod).
	out.MustRun(t, "ip", "addr", "add", "10.244.9.9/32", "dev", "lo")
	out.MustRun(t, "ip", "-6", "addr", "add", "fd00:10:244:9::9/128", "dev", "lo", "nodad")
	out.MustRun(t, "ip", "route", "add", "10.244.1.0/24", "via", "192.0.2.2")
	out.MustRun(t, "ip", "-6", "route", "add", "fd00:10:244:1::/64", "via", "2001:db8::2")
	node.MustRun(t, "ip", "route", "add", "10.244.9.9/32", "via", "192.0.2.1")
	node.MustRun(t, "ip", "-6", "route", "add", "fd00:10:244:9::9/128", "via", "2001:db8::1")

	pods := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	keep := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56"),
		netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/112")}
	var h4, h6 *ipt.Host
	if err := node.Do(func() (err error) {
		if h4, err = ipt.Open(); err != nil {
			return err
		}
		if h6, err = ipt.OpenFlavour6(h4.Flavour); err != nil {
			return err
		}
		if err := Apply(h4, pods, keep, quiet); err != nil {
			return err
		}
		return Apply6(h6, pods, keep, quiet)
	}); err != nil {
		t.Fatal(err)
	}
	saved4 := node.MustRun(t, "iptables-"+string(h4.Flavour)+"-save", "-t", "nat")
	saved6 := node.MustRun(t, "ip6tables-"+string(h6.Flavour)+"-save", "-t", "nat")
	if !strings.Contains(saved4, "-A "+Chain+" -s 10.244.1.0/24") || strings.Contains(saved4, "fd00:") {
		t.Errorf("IPv4 nat table:\n%s", saved4)
	}
	if !strings.Contains(saved6, "-A "+Chain+" -s fd00:10:244:1::/64") || !strings.Contains(saved6, "-j "+Chain) || strings.Contains(saved6, "10.244.") {
		t.Errorf("IPv6 nat table:\n%s", saved6)
	}

	for _, tc := range []struct{ dst, wantSrc string }{
		{"192.0.2.1", "192.0.2.2"},                // leaves the cluster: the node's IPv4 address
		{"10.244.9.9", "10.244.1.10"},             // another pod: the pod's own address
		{"2001:db8::1", "2001:db8::2"},            // leaves the cluster over IPv6: the node's IPv6 address
		{"fd00:10:244:9::9", "fd00:10:244:1::10"}, // another pod over IPv6: the pod's own address
	} {
		if got := clientAddrSeen(t, out, pod, tc.dst); got != tc.wantSrc {
			t.Errorf("pod -> %s arrives from %s, want %s", tc.dst, got, tc.wantSrc)
		} else {
			t.Logf("pod -> %s arrives from %s", tc.dst, got)
		}
	}

	if err := node.Do(func() error {
		if err := Remove(h4); err != nil {
			return err
		}
		return Remove(h6)
	}); err != nil {
		t.Fatal(err)
	}
	saves := []string{"iptables-" + string(h4.Flavour) + "-save", "ip6tables-" + string(h6.Flavour) + "-save"}
	for _, save := range saves {
		if saved := node.MustRun(t, save, "-t", "nat"); strings.Contains(saved, Chain) {
			t.Errorf("chain left after Remove (%s):\n%s", save, saved)
		}
	}

	// `canopy cleanup` (cleanup.Run, here in the node namespace) removes every chain of both families and the
	// jumps to them: the masquerade, the FORWARD accept and the BGP guard.
	cluster := keep[:2]
	var r *cleanup.Report
	if err := node.Do(func() error {
		for _, err := range []error{Apply(h4, pods, keep, quiet), Apply6(h6, pods, keep, quiet), ApplyForward(h4, cluster),
			ApplyForward6(h6, cluster), ApplyBGPGuard(h4, cluster), ApplyBGPGuard6(h6, cluster)} {
			if err != nil {
				return err
			}
		}
		r = cleanup.Run(cleanup.Config{RouteProtocol: 186})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if r.Failures() != 0 {
		t.Errorf("cleanup: %d failures", r.Failures())
	}
	if s := r.Section("ip6tables", ""); s == nil || len(s.Removed) == 0 {
		t.Errorf("cleanup removed nothing from ip6tables: %+v", s)
	} else {
		t.Logf("cleanup removed from ip6tables: %q", s.Removed)
	}
	for _, save := range saves {
		if saved := node.MustRun(t, save); strings.Contains(saved, "CANOPY-") {
			t.Errorf("Canopy's chains left after cleanup (%s):\n%s", save, saved)
		}
	}
}

// clientAddrSeen connects from client to an echo server in server at dst:8080 and returns the source address
// the server saw.
func clientAddrSeen(t *testing.T, server, client *testns.NS, dst string) string {
	t.Helper()
	network := "tcp4"
	if strings.Contains(dst, ":") {
		network = "tcp6"
	}
	l, err := server.Listen(network, ":0")
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
	conn, err := client.Dial(network, net.JoinHostPort(dst, fmt.Sprint(l.Addr().(*net.TCPAddr).Port)))
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
