package policy

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/testsupport/testns"
	corev1 "k8s.io/api/core/v1"
)

// netLab is a node namespace with the pod bridge canopy0 (10.244.1.1/24), three pods on it (p1..p3 at
// .10-.12) each answering TCP on :80 and :81 with its name, and an outside host (10.0.0.2) routed through
// the node, like a pod on another node.
type netLab struct {
	node, out *testns.NS
	pods      [3]*testns.NS
	ips       [3]netip.Addr
}

const outsideIP = "10.0.0.2"

var podCIDR = netip.MustParsePrefix("10.244.1.0/24")

func requireKernel(t testing.TB) {
	testns.Require(t, "iptables-nft-restore", "iptables-legacy-restore", "ipset")
}

func newNetLab(t testing.TB) *netLab {
	l := &netLab{node: testns.New(t, "pol-node"), out: testns.New(t, "pol-out")}
	l.node.MustRun(t, "ip", "link", "add", "canopy0", "type", "bridge")
	l.node.MustRun(t, "ip", "addr", "add", "10.244.1.1/24", "dev", "canopy0")
	l.node.MustRun(t, "ip", "link", "set", "canopy0", "up")
	l.node.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	l.node.MustRun(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
	testns.Link(t, l.node, "up0", "10.0.0.1/24", l.out, "eth0", outsideIP+"/24")
	l.out.MustRun(t, "ip", "route", "add", "default", "via", "10.0.0.1")
	for i := range l.pods {
		name := fmt.Sprintf("p%d", i+1)
		p := testns.New(t, "pol-"+name)
		l.pods[i], l.ips[i] = p, netip.MustParseAddr(fmt.Sprintf("10.244.1.%d", 10+i))
		testns.Link(t, l.node, "v"+name, "", p, "eth0", l.ips[i].String()+"/24")
		l.node.MustRun(t, "ip", "link", "set", "v"+name, "master", "canopy0")
		p.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
		for _, port := range []int{80, 81} {
			serve(t, p, name, port)
		}
	}
	serve(t, l.out, "out", 80)
	return l
}

func serve(t testing.TB, ns *testns.NS, name string, port int) { serveNet(t, ns, "tcp4", name, port) }

func serveNet(t testing.TB, ns *testns.NS, network, name string, port int) {
	ln, err := ns.Listen(network, fmt.Sprintf(":%d", port))
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
			fmt.Fprintf(c, "%s\n", name)
			c.Close()
		}
	}()
}

// try connects from ns to addr:port (over IPv6 for an IPv6 addr): nil, errDropped (timeout) or errRefused
// (reset: rejected).
func try(ns *testns.NS, addr string, port int) error {
	network := "tcp4"
	if strings.Contains(addr, ":") {
		network = "tcp6"
	}
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout(network, net.JoinHostPort(addr, fmt.Sprint(port)), 400*time.Millisecond)
		return err
	})
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return errRefused
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return errDropped
		}
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		return err
	}
	return nil
}

var (
	errDropped = errors.New("dropped")
	errRefused = errors.New("refused")
)

type probe struct {
	from *testns.NS
	to   string
	port int
	want error // nil, errDropped or errRefused
}

func (l *netLab) check(t *testing.T, what string, probes ...probe) {
	t.Helper()
	for _, p := range probes {
		if got := try(p.from, p.to, p.port); !errors.Is(got, p.want) && got != p.want {
			t.Errorf("%s: %s -> %s:%d: got %v, want %v", what, p.from.Name, p.to, p.port, got, p.want)
		}
	}
}

func (l *netLab) firewall(t *testing.T, f ipt.Flavour) *Firewall {
	var fw *Firewall
	if err := l.node.Do(func() error { h, err := ipt.OpenFlavour(f); fw = NewHost(h, slog.Default()); return err }); err != nil {
		t.Fatal(err)
	}
	return fw
}

func (l *netLab) do(t *testing.T, f func() error) {
	t.Helper()
	if err := l.node.Do(f); err != nil {
		t.Fatal(err)
	}
}

func (l *netLab) local() []LocalPod {
	var r []LocalPod
	for i, ip := range l.ips {
		r = append(r, LocalPod{Key: fmt.Sprintf("ns/p%d", i+1), IP: ip})
	}
	return r
}

func tcp(port uint16) PortRule {
	return PortRule{Protocol: corev1.ProtocolTCP, Port: port, EndPort: port}
}

func TestKernelFirewall(t *testing.T) {
	requireKernel(t)
	for _, f := range []ipt.Flavour{ipt.NFT, ipt.Legacy} {
		t.Run(string(f), func(t *testing.T) { testKernelFirewall(t, f) })
	}
}

func testKernelFirewall(t *testing.T, flavour ipt.Flavour) {
	l := newNetLab(t)
	p1, p2, p3 := l.pods[0], l.pods[1], l.pods[2]
	ip1, ip2, ip3 := l.ips[0].String(), l.ips[1].String(), l.ips[2].String()
	l.check(t, "no firewall", probe{p1, ip2, 80, nil}, probe{l.out, ip2, 80, nil})

	fw := l.firewall(t, flavour)
	opts := Options{PodCIDRs: []netip.Prefix{podCIDR}}
	l.do(t, func() error { return fw.Start(opts) })
	// Started, nothing synced: every pod address is unready, dropped both ways; the node itself still reaches
	// its pods (kubelet probes).
	l.check(t, "before the first sync", probe{p1, ip2, 80, errDropped}, probe{l.out, ip2, 80, errDropped},
		probe{p1, outsideIP, 80, errDropped}, probe{l.node, ip2, 80, nil})

	sync := func(fws map[string]*PodFirewall, o Options) Stats {
		t.Helper()
		var st Stats
		l.do(t, func() (err error) { st, err = fw.Sync(Build(fws, l.local(), o)); return err })
		return st
	}
	open := map[string]*PodFirewall{"ns/p1": {}, "ns/p2": {}, "ns/p3": {}}
	if st := sync(open, opts); !st.Full {
		t.Errorf("first sync not full: %+v", st)
	}
	l.check(t, "no policy", probe{p1, ip2, 80, nil}, probe{l.out, ip2, 81, nil}, probe{p3, outsideIP, 80, nil})

	// p2 admits TCP 80 from the pods selected by "sel" (p1 for now), nothing else.
	sel := func(ips ...string) Peer {
		p := Peer{Selector: "ns=ns/pod(role=client)"}
		for _, s := range ips {
			p.PodIPs = append(p.PodIPs, netip.MustParseAddr(s))
		}
		return p
	}
	isolated := func(peer Peer) map[string]*PodFirewall {
		return map[string]*PodFirewall{"ns/p1": {}, "ns/p3": {}, "ns/p2": {IngressIsolated: true,
			Ingress: []Rule{{Peers: []Peer{peer}, Ports: []PortRule{tcp(80)}, Policy: "ns/allow-client"}}}}
	}
	st := sync(isolated(sel(ip1)), opts)
	if st.Full || st.Chains != 2 || st.DispatchLines != 1 {
		t.Errorf("policy added: wrote %+v, want the pod chain and the policy chain and one dispatch line", st)
	}
	l.check(t, "p2 admits p1 on 80",
		probe{p1, ip2, 80, nil}, probe{p1, ip2, 81, errDropped}, probe{p3, ip2, 80, errDropped},
		probe{l.out, ip2, 80, errDropped}, probe{p2, ip1, 80, nil}, probe{p2, outsideIP, 80, nil},
		probe{l.node, ip2, 81, nil}, probe{p3, ip1, 81, nil})

	// A label change moves the selector from p1 to p3: set members change, no chain is written.
	st = sync(isolated(sel(ip3)), opts)
	if st.Chains != 0 || st.DispatchLines != 0 || st.SetOps != 2 {
		t.Errorf("label change: wrote %+v, want 2 set operations only", st)
	}
	l.check(t, "p2 admits p3 on 80", probe{p1, ip2, 80, errDropped}, probe{p3, ip2, 80, nil})

	// Egress: p1 may reach 10.0.0.0/8 except the outside host, and p2 on any port (ipBlock with except + any port).
	egress := isolated(sel(ip3))
	egress["ns/p1"] = &PodFirewall{EgressIsolated: true, Egress: []Rule{
		{Peers: []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix(outsideIP + "/32")},
			Selector: "cidr(10.0.0.0/8 -" + outsideIP + "/32)"}}, Ports: []PortRule{{Protocol: corev1.ProtocolTCP}}, Policy: "ns/egress"},
	}}
	sync(egress, opts)
	l.check(t, "p1 egress", probe{p1, outsideIP, 80, errDropped}, probe{p1, ip3, 81, nil}, probe{p1, ip2, 80, errDropped},
		probe{p3, ip1, 80, nil})

	// Reject instead of drop: the client learns at once.
	rej := opts
	rej.Reject = true
	sync(egress, rej)
	l.check(t, "reject", probe{p1, outsideIP, 80, errRefused}, probe{l.out, ip2, 80, errRefused}, probe{p3, ip2, 80, nil})

	// A pod that leaves loses its rules and its address is unready again (IP reuse by an unknown pod is dropped).
	sync(map[string]*PodFirewall{"ns/p1": {}, "ns/p3": {}}, opts)
	var lines string
	l.do(t, func() error {
		out, err := exec.Command("iptables-"+string(flavour)+"-save", "-t", "filter").Output()
		lines = string(out)
		return err
	})
	if strings.Contains(lines, "CANOPY-PI-") || strings.Contains(lines, "CANOPY-PE-") || strings.Contains(lines, "CANOPY-PR-") {
		t.Errorf("per-pod and per-policy chains left after the pods lost their policies:\n%s", lines)
	}
	l.check(t, "p2 gone", probe{p1, ip2, 80, errDropped}, probe{p1, ip3, 80, nil})

	// A restarted agent: its Start keeps the rules in force, its first Sync (full) repairs and removes leftovers.
	sync(isolated(sel(ip1)), opts)
	fw2 := l.firewall(t, flavour)
	l.do(t, func() error { return fw2.Start(opts) })
	l.check(t, "restart: still enforced", probe{p1, ip2, 80, nil}, probe{p3, ip2, 80, errDropped})
	fw = fw2
	if st := sync(isolated(sel(ip3)), opts); !st.Full {
		t.Errorf("first sync after restart not full: %+v", st)
	}
	l.check(t, "restart: repaired", probe{p1, ip2, 80, errDropped}, probe{p3, ip2, 80, nil})

	// Counters count what was denied.
	var c Counters
	l.do(t, func() (err error) { c, err = fw.Counters(); return err })
	if c.DeniedIngress == 0 {
		t.Errorf("counters %+v: want denied ingress packets", c)
	}

	// Cleanup leaves nothing of ours.
	l.do(t, fw.Cleanup)
	l.do(t, func() error {
		out, err := exec.Command("iptables-"+string(flavour)+"-save", "-t", "filter").Output()
		if err != nil {
			return err
		}
		if strings.Contains(string(out), "CANOPY-") {
			return fmt.Errorf("after Cleanup:\n%s", out)
		}
		sets, err := exec.Command("ipset", "list", "-n").Output()
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(sets)) != "" {
			return fmt.Errorf("sets after Cleanup: %s", sets)
		}
		return nil
	})
	l.check(t, "after cleanup", probe{p1, ip2, 80, nil}, probe{l.out, ip2, 81, nil})
}
