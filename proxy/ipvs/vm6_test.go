package ipvs

// IPv6 and dual-stack service ports against the VM kernel's IPVS (see vm_test.go): the node of newNode with an
// IPv6 address on every link (pods in fd00:244::/32, the outside link fd00:192::/64) and a dual-stack back end (IPv6
// masquerade chain in ip6tables, the node's IPv6 address for NodePorts).

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
)

const (
	clusterIP6 = "fd00:96::10"
	nodeIP6VM  = "fd00:192::1" // the node's address on the outside link
	outside6   = "fd00:192::2"
)

// newNode6 is newNode with IPv6 on every link and a dual-stack back end.
func newNode6(t *testing.T) *node {
	t.Helper()
	n := newNode(t)
	for _, c := range []string{"ip6tables", "ip6tables-save"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("the VM has no %s", c)
		}
	}
	sysctl(t, n.node, "net/ipv6/conf/all/forwarding", "1")
	nodeCmds := []string{"addr add fd00:244::1/64 dev c0 nodad", "addr add " + nodeIP6VM + "/64 dev up0 nodad"}
	ipBatch(t, n.client, "addr add fd00:244::2/64 dev eth0 nodad", "route add ::/0 via fd00:244::1")
	ipBatch(t, n.outside, "addr add "+outside6+"/64 dev eth0 nodad")
	for i, ns := range n.bns {
		ip := backend6(i)
		nodeCmds = append(nodeCmds, fmt.Sprintf("addr add fd00:244:%d::1/64 dev b%d nodad", i+1, i+1))
		ipBatch(t, ns, "addr add "+ip+"/64 dev eth0 nodad", fmt.Sprintf("route add ::/0 via fd00:244:%d::1", i+1))
		serve(t, ns, fmt.Sprintf("b%d", i+1), "["+ip+"]:8080")
	}
	ipBatch(t, n.node, nodeCmds...)
	n.b.Close()
	n.dual = true
	n.open()
	return n
}

func backend6(i int) string { return fmt.Sprintf("fd00:244:%d::2", i+1) }

func (n *node) ready6(i int) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(backend6(i)), Port: 8080, Ready: true, Serving: true}
}

// service6 is n.service made dual-stack: the IPv6 side on clusterIP6 over eps6.
func (n *node) service6(eps4, eps6 []model.Endpoint) *model.ServicePort {
	sp := n.service(eps4...)
	sp.IPv6 = &model.Family{ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP6)}, ClusterEndpoints: eps6, ExternalEndpoints: eps6}
	return sp
}

func v6(addr string, port int) string { return fmt.Sprintf("[%s]:%d", addr, port) }

// One dual-stack Service over two backends in each family: both cluster IPs spread over the backends of their
// own family and keep a pod client's address; the IPv6 NodePort from outside is masqueraded to the node (ETP
// Cluster) or keeps the client's address (ETP Local: an exception in the ip6tables chain, gone again with
// Cluster); ClientIP affinity holds over IPv6; a real server removed takes no more connections; a restarted back
// end rewrites nothing (IPVS, addresses, iptables, ip6tables); the Service deleted leaves no virtual service,
// no /128 and only the static rules.
func TestVMDualStackService(t *testing.T) {
	n := newNode6(t)
	sp := n.service6([]model.Endpoint{n.ready(0), n.ready(1)}, []model.Endpoint{n.ready6(0), n.ready6(1)})
	n.sync(sp)

	if got := spread(t, n.client, v6(clusterIP6, 80), 6); got["b1"] != 3 || got["b2"] != 3 {
		t.Errorf("IPv6 ClusterIP round robin: %v, want 3 each", got)
	}
	if got := spread(t, n.client, clusterIP+":80", 4); got["b1"] != 2 || got["b2"] != 2 {
		t.Errorf("IPv4 ClusterIP of the same Service: %v, want 2 each", got)
	}
	if _, seen := ask(t, n.client, v6(clusterIP6, 80)); seen != "fd00:244::2" {
		t.Errorf("backend saw the IPv6 pod client as %s, want fd00:244::2 (no masquerade inside the pod network)", seen)
	}
	if _, seen := ask(t, n.client, clusterIP+":80"); seen != "10.244.0.2" {
		t.Errorf("backend saw the IPv4 pod client as %s", seen)
	}
	if out := n.node.MustRun(t, "ip", "-6", "addr", "show", "dev", Interface); !strings.Contains(out, clusterIP6+"/128") {
		t.Errorf("%s lacks %s/128:\n%s", Interface, clusterIP6, out)
	}

	// The IPv6 NodePort from outside: masqueraded to the node's address on the backend's link.
	name, seen := ask(t, n.outside, v6(nodeIP6VM, 30080))
	if (name != "b1" || seen != "fd00:244:1::1") && (name != "b2" || seen != "fd00:244:2::1") {
		t.Errorf("outside -> IPv6 NodePort: %s saw %s, want the node's address on its link", name, seen)
	}
	if _, seen := ask(t, n.outside, "192.168.0.1:30080"); !strings.HasPrefix(seen, "10.244.") {
		t.Errorf("outside -> IPv4 NodePort: backend saw %s, want the node", seen)
	}
	sp.ExternalPolicyLocal = true
	n.sync(sp)
	if _, seen := ask(t, n.outside, v6(nodeIP6VM, 30080)); seen != outside6 {
		t.Errorf("ETP Local over IPv6: backend saw %s, want the client %s", seen, outside6)
	}
	if _, seen := ask(t, n.outside, "192.168.0.1:30080"); seen != "192.168.0.2" {
		t.Errorf("ETP Local over IPv4: backend saw %s, want the client", seen)
	}
	rules6 := n.node.MustRun(t, "ip6tables", "-t", "nat", "-S", Chain)
	if !strings.Contains(rules6, localComment+"tcp/["+nodeIP6VM+"]:30080") || strings.Contains(rules6, "192.168.0.1") {
		t.Errorf("ip6tables chain:\n%s", rules6)
	}
	sp.ExternalPolicyLocal = false
	n.sync(sp)
	if rules6 := n.node.MustRun(t, "ip6tables", "-t", "nat", "-S", Chain); strings.Contains(rules6, localComment) {
		t.Errorf("IPv6 Local exception left after ETP went back to Cluster:\n%s", rules6)
	}

	// ClientIP affinity over IPv6.
	sp.AffinityClientIP, sp.AffinityTimeout = true, time.Minute
	n.sync(sp)
	if got := spread(t, n.client, v6(clusterIP6, 80), 6); len(got) != 1 {
		t.Errorf("IPv6 ClientIP affinity: one client went to %v, want one backend", got)
	}
	sp.AffinityClientIP = false
	n.sync(sp)

	// A restart reads both families back and rewrites nothing.
	nat4, nat6 := n.node.MustRun(t, "iptables-save", "-t", "nat"), n.node.MustRun(t, "ip6tables-save", "-t", "nat")
	n.b.Close()
	n.open()
	n.sync(sp)
	if err := n.b.Prune(); err != nil {
		t.Fatal(err)
	}
	if n.h.writes != 0 || n.a.writes != 0 {
		t.Errorf("restart + same Sync + Prune wrote: ipvs %d, addresses %d", n.h.writes, n.a.writes)
	}
	if after := n.node.MustRun(t, "iptables-save", "-t", "nat"); stripCounters(after) != stripCounters(nat4) {
		t.Errorf("nat changed on restart:\n%s\n--\n%s", nat4, after)
	}
	if after := n.node.MustRun(t, "ip6tables-save", "-t", "nat"); stripCounters(after) != stripCounters(nat6) {
		t.Errorf("IPv6 nat changed on restart:\n%s\n--\n%s", nat6, after)
	}

	// b2's IPv6 endpoint goes: every new IPv6 connection to b1, IPv4 unchanged.
	sp = n.service6([]model.Endpoint{n.ready(0), n.ready(1)}, []model.Endpoint{n.ready6(0)})
	n.sync(sp)
	if got := spread(t, n.client, v6(clusterIP6, 80), 4); got["b1"] != 4 {
		t.Errorf("after removing b2's IPv6 endpoint: %v, want all 4 on b1", got)
	}
	if got := spread(t, n.outside, v6(nodeIP6VM, 30080), 2); got["b1"] != 2 {
		t.Errorf("IPv6 NodePort after removing b2: %v", got)
	}
	if got := spread(t, n.client, clusterIP+":80", 4); got["b2"] == 0 {
		t.Errorf("IPv4 lost b2 too: %v", got)
	}

	if err := n.b.Sync(map[string]*model.ServicePort{}, []string{sp.Key}); err != nil {
		t.Fatal(err)
	}
	if svcs, err := n.h.GetServices(); err != nil || len(svcs) != 0 {
		t.Errorf("after delete: %d virtual services (%v)", len(svcs), err)
	}
	if out := n.node.MustRun(t, "ip", "-6", "addr", "show", "dev", Interface); strings.Contains(out, clusterIP6) {
		t.Errorf("%s still bound:\n%s", clusterIP6, out)
	}
	if rules6 := n.node.MustRun(t, "ip6tables", "-t", "nat", "-S", Chain); strings.Count(rules6, "-A "+Chain) != 2 ||
		!strings.Contains(rules6, "-s fd00:244::/32 -j RETURN") {
		t.Errorf("ip6tables chain after delete, want the static rules only:\n%s", rules6)
	}
	if c, err := n.client.Dial("tcp", v6(clusterIP6, 80)); err == nil {
		c.Close()
		t.Error("the deleted IPv6 ClusterIP still answers")
	}
}

// An IPv6-only Service with externalTrafficPolicy Local: the IPv6 NodePort and an IPv6 ExternalIP keep the
// outside client's address and reach only the Local endpoints; no virtual service of IPv4 exists for it, and a
// local pod sent to itself through its ClusterIP (hairpin) is masqueraded by the ip6tables chain.
func TestVMIPv6OnlyLocalPolicyAndHairpin(t *testing.T) {
	n := newNode6(t)
	local := n.ready6(0)
	local.Local = true
	remote := n.ready6(1)
	sp := n.service6(nil, []model.Endpoint{local, remote})
	sp.ClusterIPs = nil
	sp.IPv6.ExternalIPs = []netip.Addr{netip.MustParseAddr("2001:db8:7::7")}
	sp.IPv6.ExternalEndpoints = []model.Endpoint{local}
	sp.ExternalPolicyLocal = true
	n.sync(sp)
	ipBatch(t, n.outside, "route add 2001:db8:7::7/128 via "+nodeIP6VM)
	for _, addr := range []string{v6(nodeIP6VM, 30080), v6("2001:db8:7::7", 80)} {
		for range 3 {
			if name, seen := ask(t, n.outside, addr); name != "b1" || seen != outside6 {
				t.Errorf("outside -> %s: %s saw %s, want b1 (the Local endpoint) seeing %s", addr, name, seen, outside6)
			}
		}
	}
	svcs, err := n.h.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.Address.To4() != nil {
			t.Errorf("an IPv4 virtual service %s:%d for an IPv6-only Service", s.Address, s.Port)
		}
	}
	// Hairpin: b1 reaches its own Service's ClusterIP; when IPVS picks b1 itself, b1 sees the node's address.
	got := map[string]string{}
	for range 6 {
		name, seen := ask(t, n.bns[0], v6(clusterIP6, 80))
		got[name] = seen
	}
	if got["b1"] != "fd00:244:1::1" || got["b2"] != backend6(0) {
		t.Errorf("b1 -> its own ClusterIP: seen by backend %v, want b1 seeing the node (fd00:244:1::1), b2 seeing b1", got)
	}
}

// UDP over IPv6, with a client that keeps its socket (and so its conntrack entry). Before the Service exists its
// datagrams to the ClusterIP are routed on (the node's default route) and leave an entry to that address; when
// the Service comes, that entry is deleted and the same socket is answered. When the real server it talks to goes, no entry through it is left
// (this kernel's expire_nodest_conn flush drops them too; the back end deletes them either way, as kube-proxy)
// and its next datagrams reach the remaining one.
func TestVMIPv6UDPConntrackCleanup(t *testing.T) {
	n := newNode6(t)
	for i, ns := range n.bns {
		serveUDP(t, ns, fmt.Sprintf("b%d", i+1), v6(backend6(i), 5353))
	}
	ep := func(i int) model.Endpoint {
		return model.Endpoint{IP: netip.MustParseAddr(backend6(i)), Port: 5353, Ready: true, Serving: true}
	}
	sp := n.service6(nil, []model.Endpoint{ep(0), ep(1)})
	sp.ClusterIPs = nil
	sp.Key, sp.Protocol, sp.Port, sp.NodePort = "default/dns:dns/UDP", model.UDP, 53, 0
	ipBatch(t, n.node, "route add ::/0 via "+outside6)

	var c net.PacketConn
	if err := n.client.Do(func() (err error) { c, err = net.ListenPacket("udp", "[fd00:244::2]:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	vip := &net.UDPAddr{IP: net.ParseIP(clusterIP6), Port: 53}
	if got := askUDP(t, c, vip, 2); got != "" {
		t.Fatalf("answered by %q before the Service exists", got)
	}
	if flows := udpEntries(t, n.node, clusterIP6); flows == 0 {
		t.Fatal("no conntrack entry to the ClusterIP from before the Service")
	}
	n.sync(sp)
	if flows := udpEntries(t, n.node, clusterIP6); flows != 0 {
		t.Errorf("%d conntrack entries from before the Service left", flows)
	}
	first := askUDP(t, c, vip, 3)
	if first == "" {
		t.Fatal("the socket that asked before the Service came gets no answer")
	}
	for range 3 {
		if got := askUDP(t, c, vip, 3); got != first {
			t.Fatalf("the same socket went to %s, then %s", first, got)
		}
	}
	gone, other := 0, 1
	if first == "b2" {
		gone, other = 1, 0
	}
	if flows := udpEntries(t, n.node, backend6(gone)); flows == 0 {
		t.Fatalf("no conntrack entry through %s before the removal", backend6(gone))
	}
	sp.IPv6.ClusterEndpoints = []model.Endpoint{ep(other)}
	sp.IPv6.ExternalEndpoints = sp.IPv6.ClusterEndpoints
	n.sync(sp)
	if flows := udpEntries(t, n.node, backend6(gone)); flows != 0 {
		t.Errorf("%d conntrack entries through the removed %s left", flows, backend6(gone))
	}
	if got := askUDP(t, c, vip, 5); got != fmt.Sprintf("b%d", other+1) {
		t.Errorf("the socket's next datagrams: answered by %q, want b%d", got, other+1)
	}
}

// udpEntries counts the node's IPv6 UDP conntrack entries whose reply comes from src (a real server; the
// virtual address itself for an entry IPVS did not translate).
func udpEntries(t *testing.T, ns *testns.NS, src string) int {
	t.Helper()
	h := ns.Handle(t)
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.InetFamily(10)) // AF_INET6
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range flows {
		if f.Forward.Protocol == 17 && f.Reverse.SrcIP.Equal(net.ParseIP(src)) {
			n++
		}
	}
	return n
}

// askUDP sends a datagram to vip up to tries times (1 s apart) and returns the first answer's name.
func askUDP(t *testing.T, c net.PacketConn, vip net.Addr, tries int) string {
	t.Helper()
	buf := make([]byte, 256)
	for range tries {
		if _, err := c.WriteTo([]byte("who\n"), vip); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		nr, _, err := c.ReadFrom(buf)
		if err == nil {
			return strings.Fields(string(buf[:nr]))[0]
		}
	}
	return ""
}

// serveUDP answers every datagram with "<name> <client address>" until the test ends.
func serveUDP(t *testing.T, ns *testns.NS, name, addr string) {
	t.Helper()
	var c net.PacketConn
	if err := ns.Do(func() (err error) { c, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { c.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 256)
		for {
			_, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(from.String())
			_, _ = c.WriteTo([]byte(name+" "+host+"\n"), from)
		}
	}()
}

// Cleanup of a dual-stack back end removes the IPv6 virtual services, the /128s with the interface, and the
// masquerade chain of both families.
func TestVMDualStackCleanup(t *testing.T) {
	n := newNode6(t)
	n.sync(n.service6([]model.Endpoint{n.ready(0)}, []model.Endpoint{n.ready6(0)}))
	if err := n.b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if svcs, err := n.h.GetServices(); err != nil || len(svcs) != 0 {
		t.Errorf("after Cleanup: %d virtual services (%v)", len(svcs), err)
	}
	if out := n.node.MustRun(t, "ip", "link"); strings.Contains(out, Interface) {
		t.Errorf("%s still exists", Interface)
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		if out := n.node.MustRun(t, save, "-t", "nat"); strings.Contains(out, Chain) {
			t.Errorf("%s: %s still there:\n%s", save, Chain, out)
		}
	}
}
