package cni

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"canopy.io/canopy/cni/hint"
)

// Dual-stack and IPv6-only nodes: the same kernel tests as the IPv4 ones, with an IPv6 pod CIDR.

const (
	v6CIDR = "fd00:10:244:1::/64"
	v6GW   = "fd00:10:244:1::1"
)

// newDualNode is newNode with pod CIDRs 10.244.1.0/24 and fd00:10:244:1::/64.
func newDualNode(tb testing.TB) *node {
	tb.Helper()
	n := newNode(tb)
	n.Conf["podCIDRs"] = []string{"10.244.1.0/24", v6CIDR}
	return n
}

// addrsOf lists a link's addresses of one family in a namespace, global scope only (no link-local).
func addrsOf(tb testing.TB, h *netlink.Handle, link string, family int) []netlink.Addr {
	tb.Helper()
	l, err := h.LinkByName(link)
	if err != nil {
		tb.Fatalf("%s: %v", link, err)
	}
	all, err := h.AddrList(l, family)
	if err != nil {
		tb.Fatal(err)
	}
	var out []netlink.Addr
	for _, a := range all {
		if !a.IP.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	return out
}

func addrStrings(addrs []netlink.Addr) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, a.IPNet.String())
	}
	slices.Sort(out)
	return out
}

// tcpEchoOnce listens on addr inside namespace nsPath (a socket stays in the namespace it was made in) and
// echoes one line per connection until the test ends. It fails the test when the address cannot be bound, which
// is the case while an IPv6 address is tentative.
func tcpEchoOnce(tb testing.TB, nsPath, addr string) string {
	tb.Helper()
	var l net.Listener
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen on %s in %s: %v", addr, nsPath, err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					_, _ = io.WriteString(c, "echo:"+line)
				}
			}()
		}
	}()
	return l.Addr().String()
}

// tcpEchoFrom connects from src (bound: a tentative source address fails here) inside namespace nsPath to dst
// and expects its line echoed.
func tcpEchoFrom(nsPath string, src net.IP, dst string) error {
	var c net.Conn
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		var err error
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
		c, err = d.Dial("tcp", dst)
		return err
	})
	if err != nil {
		return fmt.Errorf("connect from %s to %s: %w", src, dst, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "echo:hello\n" {
		return fmt.Errorf("from %s to %s: got %q, %v", src, dst, line, err)
	}
	return nil
}

// ipOf returns the result's address of one family (6 or 4), or nil.
func ipOf(res *current.Result, family int) *current.IPConfig {
	for _, ipc := range res.IPs {
		if (ipc.Address.IP.To4() == nil) == (family == 6) {
			return ipc
		}
	}
	return nil
}

func TestDualStackAddCheckDel(t *testing.T) {
	n := newDualNode(t)
	p1, p2 := newTestNS(t, "p1"), newTestNS(t, "p2")
	conf := n.conf(t, nil)

	res, err := n.add("ds-1", p1, conf)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	// At once, with no wait for duplicate address detection: the node listens on the bridge's IPv6 gateway (a
	// tentative address cannot be bound) and the pod connects from its own IPv6 address (nor can a tentative
	// source).
	added := time.Now()
	gwAddr := tcpEchoOnce(t, n.Path, net.JoinHostPort(v6GW, "0"))
	if err := tcpEchoFrom(p1.Path, ipOf(res, 6).Address.IP, gwAddr); err != nil {
		t.Fatalf("right after ADD, the pod cannot reach its IPv6 gateway over TCP: %v", err)
	}
	t.Logf("pod -> IPv6 gateway TCP echo %v after ADD returned", time.Since(added).Round(time.Microsecond))
	if err := ping(t, p1.Name, v6GW); err != nil {
		t.Error(err)
	}

	// The result: both addresses on the pod interface (index 2) with their gateways, a default route per family.
	if len(res.IPs) != 2 || res.IPs[0].Address.String() != "10.244.1.2/24" || res.IPs[0].Gateway.String() != "10.244.1.1" ||
		res.IPs[1].Address.String() != "fd00:10:244:1::2/64" || res.IPs[1].Gateway.String() != v6GW {
		t.Errorf("ips = %v", res.IPs)
	}
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface != ifContainer {
			t.Errorf("ip %s: interface %v, want %d", ipc.Address.String(), ipc.Interface, ifContainer)
		}
	}
	if len(res.Routes) != 2 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "10.244.1.1" ||
		res.Routes[1].Dst.String() != "::/0" || res.Routes[1].GW.String() != v6GW {
		t.Errorf("routes = %v", res.Routes)
	}

	// The node: both gateways on the bridge, the IPv6 one without DAD; forwarding on for both families.
	if got := addrStrings(addrsOf(t, n.H, "canopy0", netlink.FAMILY_ALL)); !slices.Equal(got, []string{"10.244.1.1/24", v6GW + "/64"}) {
		t.Errorf("canopy0 addresses = %v", got)
	}
	for _, a := range addrsOf(t, n.H, "canopy0", netlink.FAMILY_V6) {
		if a.Flags&unix.IFA_F_NODAD == 0 || a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			t.Errorf("canopy0 %s flags %#x: want nodad, not tentative", a.IPNet, a.Flags)
		}
	}
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if v := sysctlIn(t, n.Path, s); v != "1" {
			t.Errorf("node %s = %s, want 1", s, v)
		}
	}

	// The pod: both addresses, the IPv6 one usable (not tentative), DAD off on eth0, a default route per family.
	if got := addrStrings(addrsOf(t, p1.H, "eth0", netlink.FAMILY_ALL)); !slices.Equal(got, []string{"10.244.1.2/24", "fd00:10:244:1::2/64"}) {
		t.Errorf("pod eth0 addresses = %v", got)
	}
	for _, a := range addrsOf(t, p1.H, "eth0", netlink.FAMILY_V6) {
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			t.Errorf("pod eth0 %s flags %#x: tentative or failed", a.IPNet, a.Flags)
		}
	}
	if v := sysctlIn(t, p1.Path, "net.ipv6.conf.eth0.accept_dad"); v != "0" {
		t.Errorf("pod eth0 accept_dad = %s, want 0", v)
	}
	eth0, _ := p1.H.LinkByName("eth0")
	routes, _ := p1.H.RouteList(eth0, netlink.FAMILY_ALL)
	for _, gw := range []string{"10.244.1.1", v6GW} {
		if !hasDefaultVia(routes, netip.MustParseAddr(gw)) {
			t.Errorf("pod routes = %v, want a default via %s", routes, gw)
		}
	}
	// One record per family, in the usual format; a rotation marker per family.
	recs := n.records(t)
	if len(recs) != 2 || recs["10.244.1.2"] != "ds-1/eth0" || recs["fd00:10:244:1::2"] != "ds-1/eth0" {
		t.Errorf("records = %v", recs)
	}
	if b, err := os.ReadFile(filepath.Join(n.DataDir, "last_reserved_ip.v6")); err != nil || string(b) != "fd00:10:244:1::2" {
		t.Errorf("last_reserved_ip.v6 = %q, %v", b, err)
	}

	// A second pod on the same bridge: pod to pod over both families (ICMP and TCP), the node to the pods.
	res2 := n.mustAdd(t, "ds-2", p2)
	ip1v4, ip1v6 := ipOf(res, 4).Address.IP.String(), ipOf(res, 6).Address.IP.String()
	ip2v4, ip2v6 := ipOf(res2, 4).Address.IP.String(), ipOf(res2, 6).Address.IP.String()
	if ip2v4 != "10.244.1.3" || ip2v6 != "fd00:10:244:1::3" {
		t.Errorf("second pod got %s and %s", ip2v4, ip2v6)
	}
	for _, c := range []struct{ from, to string }{{p1.Name, ip2v4}, {p2.Name, ip1v4}, {p1.Name, ip2v6}, {p2.Name, ip1v6}, {n.Name, ip1v6}, {p1.Name, ip1v6}} {
		if err := ping(t, c.from, c.to); err != nil {
			t.Error(err)
		}
	}
	_, addr := startHelper(t, p1.Name, "echo-server", net.JoinHostPort(ip1v6, "0"))
	runHelperClient(t, p2.Name, addr)

	// CHECK passes, with and without prevResult.
	for _, c := range []struct {
		cid string
		pod *testNS
		res *current.Result
	}{{"ds-1", p1, res}, {"ds-2", p2, res2}} {
		if err := n.check(c.cid, c.pod, conf); err != nil {
			t.Errorf("CHECK %s: %v", c.cid, err)
		}
		if err := n.check(c.cid, c.pod, withPrev(t, conf, c.res)); err != nil {
			t.Errorf("CHECK %s with prevResult: %v", c.cid, err)
		}
	}

	// CHECK sees each IPv6 part missing: p1's address, p2's default route, then the node's forwarding and the
	// bridge's gateway (for both pods).
	eth0v6 := addrsOf(t, p1.H, "eth0", netlink.FAMILY_V6)[0]
	if err := p1.H.AddrDel(eth0, &eth0v6); err != nil {
		t.Fatal(err)
	}
	if err := n.check("ds-1", p1, withPrev(t, conf, res)); err == nil || !strings.Contains(err.Error(), "eth0 in the pod lacks its address fd00:10:244:1::2/64") {
		t.Errorf("CHECK without the pod's IPv6 address = %v", err)
	}
	eth0p2, _ := p2.H.LinkByName("eth0")
	if err := p2.H.RouteDel(&netlink.Route{LinkIndex: eth0p2.Attrs().Index, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		Gw: net.ParseIP(v6GW)}); err != nil {
		t.Fatal(err)
	}
	if err := n.check("ds-2", p2, conf); err == nil || !strings.Contains(err.Error(), "no default route via "+v6GW) ||
		strings.Contains(err.Error(), "10.244.1.1") {
		t.Errorf("CHECK without the IPv6 default route = %v", err)
	}
	if err := n.in(func() error { return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("0"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	br, _ := n.H.LinkByName("canopy0")
	if err := n.H.AddrDel(br, &netlink.Addr{IPNet: prefixToIPNet(netip.MustParsePrefix(v6GW + "/64"))}); err != nil {
		t.Fatal(err)
	}
	err = n.check("ds-2", p2, conf)
	for _, want := range []string{"net.ipv6.conf.all.forwarding is \"0\"", "bridge canopy0 lacks the gateway address " + v6GW + "/64"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK after breaking the node = %v; want it to say %q", err, want)
		}
	}

	// DEL releases both families' records and removes the pair; again is fine.
	for _, c := range []struct {
		cid string
		pod *testNS
	}{{"ds-1", p1}, {"ds-2", p2}} {
		for i := 0; i < 2; i++ {
			if err := n.del(c.cid, c.pod.Path, conf); err != nil {
				t.Errorf("DEL #%d %s: %v", i+1, c.cid, err)
			}
		}
		assertClean(t, n, c.pod, c.cid)
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
}

func TestIPv6OnlyNode(t *testing.T) {
	n := newNode(t)
	n.Conf["podCIDRs"] = []string{"fd00:10:244:2::/64"}
	p1, p2 := newTestNS(t, "p1"), newTestNS(t, "p2")
	conf := n.conf(t, nil)
	fwd4 := sysctlIn(t, n.Path, "net.ipv4.ip_forward")

	// p2's runtime makes namespaces with IPv6 off: the plugin turns it on for eth0 and lo.
	p2NS := &testNSRunner{p2}
	p2NS.sysctl(t, "net.ipv6.conf.default.disable_ipv6", "1")
	p2NS.sysctl(t, "net.ipv6.conf.lo.disable_ipv6", "1")

	r1 := n.mustAdd(t, "v6-1", p1)
	r2 := n.mustAdd(t, "v6-2", p2)
	for i, r := range []*current.Result{r1, r2} {
		want := fmt.Sprintf("fd00:10:244:2::%d/64", i+2)
		if len(r.IPs) != 1 || r.IPs[0].Address.String() != want || r.IPs[0].Gateway.String() != "fd00:10:244:2::1" ||
			len(r.Routes) != 1 || r.Routes[0].Dst.String() != "::/0" || r.Routes[0].GW.String() != "fd00:10:244:2::1" {
			t.Errorf("result %d: ips %v routes %v, want %s via fd00:10:244:2::1", i+1, r.IPs, r.Routes, want)
		}
	}
	if got := addrStrings(addrsOf(t, n.H, "canopy0", netlink.FAMILY_ALL)); !slices.Equal(got, []string{"fd00:10:244:2::1/64"}) {
		t.Errorf("canopy0 addresses = %v", got)
	}
	if got := addrsOf(t, p1.H, "eth0", netlink.FAMILY_V4); len(got) != 0 {
		t.Errorf("IPv4 addresses on an IPv6-only pod: %v", got)
	}
	if v := sysctlIn(t, n.Path, "net.ipv6.conf.all.forwarding"); v != "1" {
		t.Errorf("node IPv6 forwarding = %s", v)
	}
	if v := sysctlIn(t, n.Path, "net.ipv4.ip_forward"); v != fwd4 {
		t.Errorf("an IPv6-only ADD changed the node's ip_forward from %s to %s", fwd4, v)
	}
	for _, s := range []string{"net.ipv6.conf.eth0.disable_ipv6", "net.ipv6.conf.lo.disable_ipv6"} {
		if v := sysctlIn(t, p2.Path, s); v != "0" {
			t.Errorf("pod p2 %s = %s, want 0", s, v)
		}
	}
	ip1, ip2 := r1.IPs[0].Address.IP, r2.IPs[0].Address.IP
	gw := tcpEchoOnce(t, n.Path, "[fd00:10:244:2::1]:0")
	for _, c := range []struct {
		ns  *testNS
		src net.IP
	}{{p1, ip1}, {p2, ip2}} {
		if err := tcpEchoFrom(c.ns.Path, c.src, gw); err != nil {
			t.Error(err)
		}
	}
	for _, c := range []struct{ from, to string }{{p1.Name, ip2.String()}, {p2.Name, ip1.String()}, {p2.Name, "::1"}} {
		if err := ping(t, c.from, c.to); err != nil {
			t.Error(err)
		}
	}
	for _, c := range []struct {
		cid string
		pod *testNS
		res *current.Result
	}{{"v6-1", p1, r1}, {"v6-2", p2, r2}} {
		if err := n.check(c.cid, c.pod, withPrev(t, conf, c.res)); err != nil {
			t.Errorf("CHECK %s: %v", c.cid, err)
		}
	}
	// GC keeps v6-1 only.
	gcConf := n.conf(t, map[string]any{"cniVersion": "1.1.0", "cni.dev/valid-attachments": []map[string]string{{"containerID": "v6-1", "ifname": "eth0"}}})
	if err := n.in(func() error { return n.P.GC(&skel.CmdArgs{StdinData: gcConf}) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if recs := n.records(t); len(recs) != 1 || recs["fd00:10:244:2::2"] != "v6-1/eth0" {
		t.Errorf("records after GC = %v", recs)
	}
	mustDel(t, n, "v6-1", p1)
	assertClean(t, n, p1, "v6-1")
}

// testNSRunner sets sysctls inside a test namespace.
type testNSRunner struct{ *testNS }

func (r *testNSRunner) sysctl(tb testing.TB, name, value string) {
	tb.Helper()
	err := ns.WithNetNSPath(r.Path, func(ns.NetNS) error {
		return os.WriteFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")), []byte(value), 0o644)
	})
	if err != nil {
		tb.Fatalf("set %s=%s in %s: %v", name, value, r.Name, err)
	}
}

func TestDualStackGC(t *testing.T) {
	n := newDualNode(t)
	pods := map[string]*testNS{}
	for _, cid := range []string{"keep", "gone1", "gone2"} {
		pods[cid] = newTestNS(t, cid)
		n.mustAdd(t, cid, pods[cid])
	}
	if recs := n.records(t); len(recs) != 6 {
		t.Fatalf("records = %v, want 2 per pod", recs)
	}
	gcConf := n.conf(t, map[string]any{"cniVersion": "1.1.0", "cni.dev/valid-attachments": []map[string]string{{"containerID": "keep", "ifname": "eth0"}}})
	if err := n.in(func() error { return n.P.GC(&skel.CmdArgs{StdinData: gcConf}) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	want := map[string]string{"10.244.1.2": "keep/eth0", "fd00:10:244:1::2": "keep/eth0"}
	if recs := n.records(t); !reflect.DeepEqual(recs, want) {
		t.Errorf("records after GC = %v, want %v", recs, want)
	}
	if v := n.hostVeths(t); len(v) != 1 || v[0] != HostVethName("keep", "eth0") {
		t.Errorf("host veths after GC = %v", v)
	}
	if err := n.check("keep", pods["keep"], n.conf(t, nil)); err != nil {
		t.Errorf("CHECK of the kept pod after GC: %v", err)
	}
	// The kept pod still reaches its IPv6 gateway.
	if err := ping(t, pods["keep"].Name, v6GW); err != nil {
		t.Error(err)
	}
}

// TestUpgradeFromIPv4Records: a node running IPv4-only pods gets an IPv6 pod CIDR (the agent rewrites the
// conflist). The running pods keep their addresses and pass CHECK (with the families they were made with); new
// pods get both families and never an address a running pod holds; DEL and GC under the new config handle the old
// records.
func TestUpgradeFromIPv4Records(t *testing.T) {
	n := newNode(t)
	oldConf := n.conf(t, nil) // 10.244.1.0/24 only
	pOld, pOld2, pNew := newTestNS(t, "old"), newTestNS(t, "old2"), newTestNS(t, "new")
	oldRes, err := n.add("old", pOld, oldConf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.add("old2", pOld2, oldConf); err != nil {
		t.Fatal(err)
	}
	// Today's store: one file per address holding "<containerID>\r\n<ifname>", a marker per family.
	for name, want := range map[string]string{"10.244.1.2": "old\r\neth0", "10.244.1.3": "old2\r\neth0", "last_reserved_ip.v4": "10.244.1.3"} {
		if b, err := os.ReadFile(filepath.Join(n.DataDir, name)); err != nil || string(b) != want {
			t.Fatalf("%s = %q, %v; want %q (the IPv4-only store format)", name, b, err, want)
		}
	}

	n.Conf["podCIDRs"] = []string{"10.244.1.0/24", v6CIDR}
	newConf := n.conf(t, nil)
	res, err := n.add("new", pNew, newConf)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.IPs) != 2 || res.IPs[0].Address.String() != "10.244.1.4/24" || res.IPs[1].Address.String() != "fd00:10:244:1::2/64" {
		t.Errorf("new pod ips = %v, want 10.244.1.4/24 (after the running pods) and fd00:10:244:1::2/64", res.IPs)
	}
	// The running pods kept their address, in the kernel and on record; they pass CHECK under the new config;
	// the new pod reaches them.
	if got := addrStrings(addrsOf(t, pOld.H, "eth0", netlink.FAMILY_ALL)); !slices.Equal(got, []string{"10.244.1.2/24"}) {
		t.Errorf("old pod addresses = %v", got)
	}
	want := map[string]string{"10.244.1.2": "old/eth0", "10.244.1.3": "old2/eth0", "10.244.1.4": "new/eth0", "fd00:10:244:1::2": "new/eth0"}
	if recs := n.records(t); !reflect.DeepEqual(recs, want) {
		t.Errorf("records = %v, want %v", recs, want)
	}
	if err := n.check("old", pOld, withPrev(t, newConf, oldRes)); err != nil {
		t.Errorf("CHECK of the running IPv4-only pod under the dual-stack config: %v", err)
	}
	if err := ping(t, pNew.Name, "10.244.1.2"); err != nil {
		t.Error(err)
	}
	// A repeated ADD of a running pod answers with what it has (its IPv4 address): nothing is renumbered.
	again, err := n.add("old", pOld, newConf)
	if err != nil || len(again.IPs) != 1 || again.IPs[0].Address.String() != "10.244.1.2/24" {
		t.Errorf("repeated ADD of the running pod = %v, %v", again, err)
	}
	// GC with every pod valid keeps every record; DEL of an old pod releases its IPv4 record; GC drops the rest.
	valid := []map[string]string{{"containerID": "old", "ifname": "eth0"}, {"containerID": "old2", "ifname": "eth0"}, {"containerID": "new", "ifname": "eth0"}}
	gc := func(valid []map[string]string) {
		t.Helper()
		c := n.conf(t, map[string]any{"cniVersion": "1.1.0", "cni.dev/valid-attachments": valid})
		if err := n.in(func() error { return n.P.GC(&skel.CmdArgs{StdinData: c}) }); err != nil {
			t.Fatalf("GC: %v", err)
		}
	}
	gc(valid)
	if recs := n.records(t); !reflect.DeepEqual(recs, want) {
		t.Errorf("records after GC with every pod valid = %v", recs)
	}
	if err := n.del("old", pOld.Path, newConf); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n, pOld, "old")
	gc(valid[2:])
	if recs := n.records(t); len(recs) != 2 || recs["10.244.1.4"] != "new/eth0" || recs["fd00:10:244:1::2"] != "new/eth0" {
		t.Errorf("records after GC = %v", recs)
	}
}

func TestDualStackExhausted(t *testing.T) {
	n := newNode(t)
	n.Conf["podCIDRs"] = []string{"10.244.9.0/24", "fd00:10:244:9::/126"} // IPv6: ::2 and ::3 only
	p1, p2, p3 := newTestNS(t, "p1"), newTestNS(t, "p2"), newTestNS(t, "p3")
	conf := n.conf(t, nil)
	for cid, p := range map[string]*testNS{"one": p1, "two": p2} {
		if _, err := n.add(cid, p, conf); err != nil {
			t.Fatal(err)
		}
	}
	_, err := n.add("three", p3, conf)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || te.Msg != "no free address in fd00:10:244:9::/126" {
		t.Fatalf("ADD with the IPv6 CIDR full = %#v, want code 11 no free address in fd00:10:244:9::/126", err)
	}
	assertClean(t, n, p3, "three") // its IPv4 address was not kept either
	if recs := n.records(t); len(recs) != 4 {
		t.Errorf("records = %v", recs)
	}
}

func TestDualStackConfigErrors(t *testing.T) {
	n := newNode(t)
	pod := newTestNS(t, "p")
	for _, tc := range []struct {
		name  string
		cidrs []string
		wants string
	}{
		{"two IPv6", []string{"10.244.1.0/24", "fd00:1::/64", "fd00:2::/64"}, `podCIDRs[2]: fd00:2::/64 is a second IPv6 pod CIDR (podCIDRs[1] is fd00:1::/64): at most one per family`},
		{"IPv4-mapped", []string{"::ffff:10.244.1.0/120"}, `podCIDRs[0]: "::ffff:10.244.1.0/120" is an IPv4-mapped IPv6 prefix; write it as IPv4`},
		{"/127", []string{"fd00::/127"}, `podCIDRs[0]: "fd00::/127" is too small`},
		{"link-local", []string{"10.244.1.0/24", "fe80::/64"}, `podCIDRs[1]: "fe80::/64" is not unicast space pods can use`},
	} {
		r := n.execPlugin(t, "ADD", "c1", pod.Path, n.conf(t, map[string]any{"podCIDRs": tc.cidrs}))
		e := r.cniError(t)
		if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, tc.wants) {
			t.Errorf("%s: error %+v, want code 7 saying %q", tc.name, e, tc.wants)
		}
	}
	if names := linkNames(t, n.H); len(names) != 1 {
		t.Errorf("node links after refused configs: %v", names)
	}
	if _, err := os.Stat(n.DataDir); !os.IsNotExist(err) {
		t.Errorf("data dir created by refused configs: %v", err)
	}
}

// TestDualStackBinary runs the built plugin for a dual-stack pod as a runtime does, and logs the exact result.
func TestDualStackBinary(t *testing.T) {
	n := newDualNode(t)
	pod := newTestNS(t, "p1")
	conf := n.conf(t, nil)
	r := n.execPlugin(t, "ADD", "bin-ds", pod.Path, conf)
	if r.Err != nil {
		t.Fatalf("ADD: %v %s %s", r.Err, r.Stdout, r.Stderr)
	}
	t.Logf("dual-stack ADD result:\n%s", r.Stdout)
	var got map[string]any
	if err := json.Unmarshal(r.Stdout, &got); err != nil {
		t.Fatal(err)
	}
	wantIPs := []any{
		map[string]any{"interface": 2.0, "address": "10.244.1.2/24", "gateway": "10.244.1.1"},
		map[string]any{"interface": 2.0, "address": "fd00:10:244:1::2/64", "gateway": v6GW},
	}
	wantRoutes := []any{
		map[string]any{"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
		map[string]any{"dst": "::/0", "gw": v6GW},
	}
	if !reflect.DeepEqual(got["ips"], wantIPs) || !reflect.DeepEqual(got["routes"], wantRoutes) || got["cniVersion"] != "1.0.0" {
		t.Errorf("result ips %v routes %v", got["ips"], got["routes"])
	}
	res, err := current.NewResult(r.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	pc := withPrev(t, conf, res)
	if r := n.execPlugin(t, "CHECK", "bin-ds", pod.Path, pc); r.Err != nil {
		t.Errorf("CHECK: %v %s %s", r.Err, r.Stdout, r.Stderr)
	}
	// 0.4.0 carries both addresses too.
	p2 := newTestNS(t, "p2")
	r = n.execPlugin(t, "ADD", "bin-ds-040", p2.Path, n.conf(t, map[string]any{"cniVersion": "0.4.0"}))
	if r.Err != nil || !bytes.Contains(r.Stdout, []byte(`"version": "6"`)) || !bytes.Contains(r.Stdout, []byte(`"version": "4"`)) {
		t.Errorf("0.4.0 ADD: %v %s", r.Err, r.Stdout)
	}
	for _, c := range []struct {
		cid string
		p   *testNS
	}{{"bin-ds", pod}, {"bin-ds-040", p2}} {
		if r := n.execPlugin(t, "DEL", c.cid, c.p.Path, pc); r.Err != nil {
			t.Errorf("DEL %s: %v %s", c.cid, r.Err, r.Stdout)
		}
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
}

// TestIPv6ForwardingWarnsAboutRA: turning on IPv6 forwarding makes the kernel drop router-advertised default
// routes on interfaces whose accept_ra is not 2; the plugin says so on stderr (the node's setup must fix it).
func TestIPv6ForwardingWarnsAboutRA(t *testing.T) {
	for _, acceptRA := range []string{"1", "2"} {
		t.Run("accept_ra="+acceptRA, func(t *testing.T) {
			n := newDualNode(t)
			up := addUplink(t, n.testNS, "uplink0", 1500, "fd00:99::10/64")
			(&testNSRunner{n.testNS}).sysctl(t, "net.ipv6.conf.uplink0.accept_ra", acceptRA)
			// A default route as the kernel learns it from a router advertisement (protocol "ra").
			if err := n.H.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: net.ParseIP("fe80::1"), Protocol: unix.RTPROT_RA,
				Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}); err != nil {
				t.Fatal(err)
			}
			r := n.execPlugin(t, "ADD", "ra", newTestNS(t, "p").Path, n.conf(t, nil))
			if r.Err != nil {
				t.Fatalf("ADD: %v %s %s", r.Err, r.Stdout, r.Stderr)
			}
			warned := strings.Contains(string(r.Stderr), "net.ipv6.conf.uplink0.accept_ra=2")
			if warned != (acceptRA == "1") {
				t.Errorf("accept_ra=%s: stderr %q", acceptRA, r.Stderr)
			}
		})
	}
}

func TestNotifyAgentDualStack(t *testing.T) {
	sock := t.TempDir() + "/agent.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan hint.Hint, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h, err := hint.Read(c)
			if err == nil {
				got <- h
			}
			_ = hint.Write(c, err == nil, err)
			c.Close()
		}
	}()
	args := "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a"
	for _, tc := range []struct {
		ips  []string
		want hint.Hint
	}{
		{[]string{"10.244.1.10", "fd00:10:244:1::a"}, hint.Hint{Namespace: "x", Name: "a", IP: "10.244.1.10", IPs: []string{"10.244.1.10", "fd00:10:244:1::a"}}},
		// An IPv6-first pod CIDR order: ip is still the IPv4 address (what older agents police).
		{[]string{"fd00:10:244:1::a", "10.244.1.10"}, hint.Hint{Namespace: "x", Name: "a", IP: "10.244.1.10", IPs: []string{"fd00:10:244:1::a", "10.244.1.10"}}},
		{[]string{"fd00:10:244:1::a"}, hint.Hint{Namespace: "x", Name: "a", IP: "fd00:10:244:1::a", IPs: []string{"fd00:10:244:1::a"}}},
	} {
		if !notifyAgent(sock, args, tc.ips, time.Second) {
			t.Errorf("%v: not programmed", tc.ips)
		}
		if h := <-got; !reflect.DeepEqual(h, tc.want) {
			t.Errorf("%v: hint %+v, want %+v", tc.ips, h, tc.want)
		}
	}
}

func TestParseConfigFamilies(t *testing.T) {
	for _, tc := range []struct {
		cidrs []string
		mtu   int
		want  []string // the parsed CIDRs, or
		err   string   // the problem
	}{
		{cidrs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, want: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}},
		{cidrs: []string{"fd00:10:244:1::/64", "10.244.1.0/24"}, want: []string{"fd00:10:244:1::/64", "10.244.1.0/24"}},
		{cidrs: []string{"fd00:10:244:1::/64"}, want: []string{"fd00:10:244:1::/64"}},
		{cidrs: []string{"2001:db8:1::/126"}, want: []string{"2001:db8:1::/126"}},
		{cidrs: []string{"fd00:1::/64", "fd00:2::/64"}, err: `podCIDRs[1]: fd00:2::/64 is a second IPv6 pod CIDR (podCIDRs[0] is fd00:1::/64): at most one per family`},
		{cidrs: []string{"fd00:1::/64", "fd00:1::/64"}, err: `podCIDRs[1]: fd00:1::/64 overlaps podCIDRs[0] fd00:1::/64`},
		{cidrs: []string{"fd00::/127"}, err: `podCIDRs[0]: "fd00::/127" is too small: an IPv6 pod CIDR needs its subnet-router anycast (network) address, a gateway and at least one pod address (/126 at most)`},
		{cidrs: []string{"fd00::1/64"}, err: `podCIDRs[0]: "fd00::1/64" has host bits set; the network is fd00::/64`},
		{cidrs: []string{"::ffff:10.244.1.0/120"}, err: `podCIDRs[0]: "::ffff:10.244.1.0/120" is an IPv4-mapped IPv6 prefix; write it as IPv4`},
		{cidrs: []string{"::fffe:0:0/95"}, err: `podCIDRs[0]: "::fffe:0:0/95" covers the IPv4-mapped range ::ffff:0:0/96`},
		{cidrs: []string{"fe80::/64"}, err: `podCIDRs[0]: "fe80::/64" is not unicast space pods can use`},
		{cidrs: []string{"ff02::/64"}, err: `podCIDRs[0]: "ff02::/64" is not unicast space pods can use`},
		{cidrs: []string{"::/64"}, err: `podCIDRs[0]: "::/64" is not unicast space pods can use`},
		{cidrs: []string{"fd00::%eth0/64"}, err: `podCIDRs[0]: "fd00::%eth0/64" is not a CIDR`},
		{cidrs: []string{"10.244.1.0/24", "fd00::/64"}, mtu: 1279, err: `mtu: 1279 is below IPv6's minimum 1280, and podCIDRs has an IPv6 CIDR`},
		{cidrs: []string{"10.244.1.0/24"}, mtu: 1279, want: []string{"10.244.1.0/24"}},
		{cidrs: []string{"fd00::/64"}, mtu: 1280, want: []string{"fd00::/64"}},
	} {
		b, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "n", "podCIDRs": tc.cidrs, "mtu": tc.mtu})
		c, err := ParseConfig(b)
		if tc.err != "" {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, tc.err) {
				t.Errorf("%v: err = %v, want code 7 saying %q", tc.cidrs, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.cidrs, err)
			continue
		}
		var got []string
		for _, p := range c.PodCIDRs {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%v: podCIDRs %v", tc.cidrs, got)
		}
	}
}

// BenchmarkAddDelFamilies is BenchmarkAddDel's inproc mode (100 pods attached, then detached, per iteration) for
// each family set: what the second family costs an ADD and a DEL.
func BenchmarkAddDelFamilies(b *testing.B) {
	const pods = 100
	for _, fam := range []struct {
		name  string
		cidrs []string
	}{{"ipv4", []string{"10.244.1.0/24"}}, {"dual", []string{"10.244.1.0/24", v6CIDR}}, {"ipv6", []string{v6CIDR}}} {
		b.Run(fmt.Sprintf("%s/pods=%d", fam.name, pods), func(b *testing.B) {
			n := newNode(b)
			conf := n.conf(b, map[string]any{"podCIDRs": fam.cidrs})
			podNS := make([]*testNS, pods)
			for i := range podNS {
				podNS[i] = newTestNS(b, fmt.Sprintf("b%d", i))
			}
			var addTotal, delTotal time.Duration
			b.ResetTimer()
			for it := 0; it < b.N; it++ {
				for i, p := range podNS {
					t0 := time.Now()
					if _, err := n.add(fmt.Sprintf("bench-%d-%d", it, i), p, conf); err != nil {
						b.Fatalf("ADD %d: %v", i, err)
					}
					addTotal += time.Since(t0)
				}
				for i, p := range podNS {
					t0 := time.Now()
					if err := n.del(fmt.Sprintf("bench-%d-%d", it, i), p.Path, conf); err != nil {
						b.Fatalf("DEL %d: %v", i, err)
					}
					delTotal += time.Since(t0)
				}
			}
			b.StopTimer()
			count := float64(b.N * pods)
			b.ReportMetric(float64(addTotal.Microseconds())/1000/count, "ms/add")
			b.ReportMetric(float64(delTotal.Microseconds())/1000/count, "ms/del")
		})
	}
}
