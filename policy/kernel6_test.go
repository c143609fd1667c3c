package policy

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/testsupport/testns"
	corev1 "k8s.io/api/core/v1"
)

// The dual-stack lab: netLab plus IPv6 everywhere — canopy0 fd00:10:244:1::1/64, pods p1..p3 at
// fd00:10:244:1::10-12 (each also answering TCP :80 and :81 over IPv6), the outside host fd00:99::2 routed
// through the node. Every IPv6 address is added nodad, so none waits for duplicate address detection.
var podCIDR6 = netip.MustParsePrefix("fd00:10:244:1::/64")

const outsideIP6 = "fd00:99::2"

type dualLab struct {
	*netLab
	ips6 [3]netip.Addr
}

func requireKernel6(t testing.TB) {
	testns.Require(t, "iptables-nft-restore", "iptables-legacy-restore", "ip6tables-nft-restore", "ip6tables-legacy-restore", "ipset")
}

func newDualLab(t testing.TB) *dualLab {
	l := &dualLab{netLab: newNetLab(t)}
	addr6 := func(ns *testns.NS, cidr, dev string) {
		ns.MustRun(t, "ip", "-6", "addr", "add", cidr, "dev", dev, "nodad")
	}
	l.node.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	l.node.MustRun(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1")
	addr6(l.node, "fd00:10:244:1::1/64", "canopy0")
	addr6(l.node, "fd00:99::1/64", "up0")
	addr6(l.out, outsideIP6+"/64", "eth0")
	l.out.MustRun(t, "ip", "-6", "route", "add", "default", "via", "fd00:99::1")
	serveNet(t, l.out, "tcp6", "out", 80)
	for i, p := range l.pods {
		l.ips6[i] = netip.MustParseAddr(fmt.Sprintf("fd00:10:244:1::%d", 0x10+i))
		addr6(p, l.ips6[i].String()+"/64", "eth0")
		p.MustRun(t, "ip", "-6", "route", "add", "default", "via", "fd00:10:244:1::1")
		for _, port := range []int{80, 81} {
			serveNet(t, p, "tcp6", fmt.Sprintf("p%d", i+1), port)
		}
	}
	// The links' own link-local addresses still go through duplicate address detection (about a second); until
	// then neighbour discovery from them fails and the first probes would be dropped on an idle machine.
	for _, ns := range append([]*testns.NS{l.node, l.out}, l.pods[:]...) {
		deadline := time.Now().Add(10 * time.Second)
		for strings.TrimSpace(ns.MustRun(t, "ip", "-6", "addr", "show", "tentative")) != "" {
			if time.Now().After(deadline) {
				t.Fatalf("%s: addresses still tentative after 10 s:\n%s", ns.Name, ns.MustRun(t, "ip", "-6", "addr"))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return l
}

// local is every pod with both of its addresses.
func (l *dualLab) local() []LocalPod {
	r := l.netLab.local()
	for i, ip := range l.ips6 {
		r = append(r, LocalPod{Key: fmt.Sprintf("ns/p%d", i+1), IP: ip})
	}
	return r
}

// flushNeighbours forgets every IPv6 neighbour of the pods, so the next packet needs neighbour discovery.
func (l *dualLab) flushNeighbours(t *testing.T) {
	for _, p := range l.pods {
		p.MustRun(t, "ip", "-6", "neigh", "flush", "dev", "eth0")
	}
}

func TestKernelFirewallIPv6(t *testing.T) {
	requireKernel6(t)
	for _, f := range []ipt.Flavour{ipt.NFT, ipt.Legacy} {
		t.Run(string(f), func(t *testing.T) { testKernelFirewallIPv6(t, f) })
	}
}

func testKernelFirewallIPv6(t *testing.T, flavour ipt.Flavour) {
	l := newDualLab(t)
	p1, p2, p3 := l.pods[0], l.pods[1], l.pods[2]
	ip2, ip3 := l.ips[1].String(), l.ips[2].String()
	v6a, v6b, v6c := l.ips6[0].String(), l.ips6[1].String(), l.ips6[2].String()
	l.check(t, "no firewall", probe{p1, v6b, 80, nil}, probe{l.out, v6b, 80, nil}, probe{p1, outsideIP6, 80, nil})

	fw := l.firewall(t, flavour)
	opts := Options{PodCIDRs: []netip.Prefix{podCIDR, podCIDR6}}
	l.do(t, func() error { return fw.Start(opts) })
	// Started, nothing synced: every pod address of both families is unready, dropped both ways; the node
	// itself still reaches its pods over IPv6 too.
	l.check(t, "before the first sync", probe{p1, v6b, 80, errDropped}, probe{l.out, v6b, 80, errDropped},
		probe{p1, outsideIP6, 80, errDropped}, probe{p1, ip2, 80, errDropped}, probe{l.node, v6b, 80, nil})

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
	l.check(t, "no policy", probe{p1, v6b, 80, nil}, probe{l.out, v6b, 81, nil}, probe{p3, outsideIP6, 80, nil}, probe{p1, ip2, 80, nil})

	// Default deny ingress on the dual-stack p2: closed over both families; p2's own egress stays open.
	deny := map[string]*PodFirewall{"ns/p1": {}, "ns/p3": {}, "ns/p2": {IngressIsolated: true}}
	sync(deny, opts)
	l.check(t, "p2 default deny", probe{p1, v6b, 80, errDropped}, probe{l.out, v6b, 80, errDropped}, probe{p1, ip2, 80, errDropped},
		probe{p2, v6a, 80, nil}, probe{p2, outsideIP6, 80, nil}, probe{p3, v6a, 81, nil})

	// p2 admits TCP 80 from the pods selected by "sel": a selector peer carries both families' addresses.
	sel := func(pods ...int) Peer {
		p := Peer{Selector: "ns=ns/pod(role=client)"}
		for _, i := range pods {
			p.PodIPs = append(p.PodIPs, l.ips[i], l.ips6[i])
		}
		return p
	}
	isolated := func(peer Peer) map[string]*PodFirewall {
		return map[string]*PodFirewall{"ns/p1": {}, "ns/p3": {}, "ns/p2": {IngressIsolated: true,
			Ingress: []Rule{{Peers: []Peer{peer}, Ports: []PortRule{tcp(80)}, Policy: "ns/allow-client"}}}}
	}
	st := sync(isolated(sel(0)), opts)
	if st.Full || st.Chains != 4 || st.DispatchLines != 0 {
		t.Errorf("policy added: wrote %+v, want the pod chain and the policy chain in each family, no dispatch line", st)
	}
	l.check(t, "p2 admits p1 on 80", probe{p1, v6b, 80, nil}, probe{p1, ip2, 80, nil}, probe{p1, v6b, 81, errDropped},
		probe{p3, v6b, 80, errDropped}, probe{l.out, v6b, 80, errDropped}, probe{l.node, v6b, 81, nil})

	// A label change moves the selector to p3: set members change in both families, no chain is written.
	st = sync(isolated(sel(2)), opts)
	if st.Chains != 0 || st.DispatchLines != 0 || st.SetOps != 4 {
		t.Errorf("label change: wrote %+v, want 4 set operations only", st)
	}
	l.check(t, "p2 admits p3 on 80", probe{p1, v6b, 80, errDropped}, probe{p3, v6b, 80, nil}, probe{p3, ip2, 80, nil})

	// Egress of p1 by ipBlocks of both families, each programmed in its own: IPv6 fd00::/8 except the outside
	// host, IPv4 the pod network only.
	egress := isolated(sel(0, 2))
	egress["ns/p1"] = &PodFirewall{EgressIsolated: true, Egress: []Rule{
		{Peers: []Peer{{CIDR: netip.MustParsePrefix("fd00::/8"), Except: []netip.Prefix{netip.MustParsePrefix(outsideIP6 + "/128")},
			Selector: "cidr(fd00::/8 -" + outsideIP6 + "/128)"}}, Policy: "ns/egress6"},
		{Peers: []Peer{{CIDR: netip.MustParsePrefix("10.244.0.0/16"), Selector: "cidr(10.244.0.0/16)"}}, Policy: "ns/egress4"},
	}}
	sync(egress, opts)
	l.check(t, "p1 egress by ipBlock", probe{p1, outsideIP6, 80, errDropped}, probe{p1, v6c, 81, nil}, probe{p1, v6b, 80, nil},
		probe{p1, outsideIP, 80, errDropped}, probe{p1, ip3, 81, nil}, probe{p3, outsideIP6, 80, nil})

	// Neighbour discovery under default deny: p2 is now also egress default-deny and p1 is egress-isolated;
	// with every neighbour forgotten, p1 -> p2 still works (p1's solicitation and p2's advertisement are
	// neither connection-tracked nor allowed by any policy).
	nd := egress
	nd["ns/p2"] = &PodFirewall{IngressIsolated: true, EgressIsolated: true, Ingress: egress["ns/p2"].Ingress}
	sync(nd, opts)
	l.flushNeighbours(t)
	l.check(t, "neighbour discovery under default deny", probe{p1, v6b, 80, nil}, probe{p2, v6a, 80, errDropped}, probe{p2, v6c, 80, errDropped})
	// The control: without the neighbour discovery lines the same connection fails; a repair puts them back.
	l.do(t, func() error {
		for _, typ := range ndTypes {
			out, err := exec.Command("ip6tables-"+string(flavour), "-D", ChainPod, "-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type",
				fmt.Sprint(typ), "-m", "hl", "--hl-eq", "255", "-m", "comment", "--comment", "canopy network policy: neighbour discovery", "-j", "RETURN").CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
		}
		return nil
	})
	l.flushNeighbours(t)
	l.check(t, "without neighbour discovery", probe{p1, v6b, 80, errDropped})
	if n := p1.MustRun(t, "ip", "-6", "neigh", "show", v6b, "dev", "eth0"); !strings.Contains(n, "FAILED") && !strings.Contains(n, "INCOMPLETE") {
		t.Errorf("without neighbour discovery p1 still resolved p2: %q", n)
	}
	fw.Invalidate()
	if st := sync(nd, opts); !st.Full {
		t.Errorf("repair not full: %+v", st)
	}
	l.flushNeighbours(t)
	l.check(t, "repaired", probe{p1, v6b, 80, nil}, probe{p1, ip2, 80, nil})

	// Reject instead of drop, over IPv6 too.
	rej := opts
	rej.Reject = true
	sync(egress, rej)
	l.check(t, "reject", probe{p1, outsideIP6, 80, errRefused}, probe{l.out, v6b, 80, errRefused}, probe{p3, v6b, 80, nil})

	// A restarted agent keeps both families enforced until its first (full) Sync.
	fw2 := l.firewall(t, flavour)
	l.do(t, func() error { return fw2.Start(opts) })
	l.check(t, "restart: still enforced", probe{p1, outsideIP6, 80, errRefused}, probe{p3, v6b, 80, nil})
	fw = fw2
	if st := sync(egress, opts); !st.Full {
		t.Errorf("first sync after restart not full: %+v", st)
	}

	// Counters count each family's denials (the full sync rewrote the deny chains: deny something again).
	l.check(t, "after restart", probe{p1, outsideIP6, 80, errDropped}, probe{l.out, v6b, 80, errDropped}, probe{l.out, ip2, 80, errDropped})
	var c Counters
	l.do(t, func() (err error) { c, err = fw.Counters(); return err })
	if c.IPv6.DeniedIngress == 0 || c.IPv6.DeniedEgress == 0 || c.DeniedIngress <= c.IPv6.DeniedIngress {
		t.Errorf("counters %+v: want denied ingress and egress over IPv6, and more ingress over both families", c)
	}

	// Cleanup leaves nothing of ours in either family.
	l.do(t, fw.Cleanup)
	l.do(t, func() error {
		for _, save := range []string{"iptables-" + string(flavour) + "-save", "ip6tables-" + string(flavour) + "-save"} {
			out, err := exec.Command(save, "-t", "filter").Output()
			if err != nil {
				return err
			}
			if strings.Contains(string(out), "CANOPY-") {
				return fmt.Errorf("after Cleanup, %s:\n%s", save, out)
			}
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
	l.check(t, "after cleanup", probe{p1, v6b, 80, nil}, probe{l.out, v6b, 81, nil}, probe{p1, outsideIP6, 80, nil})
}

// An IPv6-only node (no IPv4 pod CIDR in use by its pods): its pods are policed, and an agent on a node without
// an IPv6 pod CIDR leaves ip6tables alone.
func TestKernelFirewallIPv6Only(t *testing.T) {
	requireKernel6(t)
	l := newDualLab(t)
	p1, p2 := l.pods[0], l.pods[1]
	v6a, v6b := l.ips6[0].String(), l.ips6[1].String()

	// IPv4 pod CIDR only: nothing in ip6tables, IPv6 traffic untouched (it is not this node's pod traffic).
	fw4 := l.firewall(t, ipt.NFT)
	o4 := Options{PodCIDRs: []netip.Prefix{podCIDR}}
	l.do(t, func() error { return fw4.Start(o4) })
	l.do(t, func() (err error) {
		_, err = fw4.Sync(Build(map[string]*PodFirewall{}, l.netLab.local(), o4))
		return err
	})
	l.do(t, func() error {
		out, err := exec.Command("ip6tables-nft-save", "-t", "filter").Output()
		if err == nil && strings.Contains(string(out), "CANOPY-") {
			err = fmt.Errorf("IPv4-only node wrote ip6tables:\n%s", out)
		}
		return err
	})
	l.do(t, fw4.Cleanup)

	fw := l.firewall(t, ipt.NFT)
	o6 := Options{PodCIDRs: []netip.Prefix{podCIDR6}}
	l.do(t, func() error { return fw.Start(o6) })
	var pods []LocalPod
	for i, ip := range l.ips6 {
		pods = append(pods, LocalPod{Key: fmt.Sprintf("ns/p%d", i+1), IP: ip})
	}
	fws := map[string]*PodFirewall{"ns/p1": {}, "ns/p3": {}, "ns/p2": {IngressIsolated: true, Ingress: []Rule{{
		Peers: []Peer{{Selector: "p1", PodIPs: []netip.Addr{l.ips6[0]}}}, Ports: []PortRule{{Protocol: corev1.ProtocolTCP, Port: 80, EndPort: 81}}, Policy: "ns/p"}}}}
	l.do(t, func() (err error) { _, err = fw.Sync(Build(fws, pods, o6)); return err })
	l.check(t, "IPv6-only", probe{p1, v6b, 80, nil}, probe{p1, v6b, 81, nil}, probe{l.pods[2], v6b, 80, errDropped}, probe{p2, v6a, 80, nil})
	l.do(t, fw.Cleanup)
}
