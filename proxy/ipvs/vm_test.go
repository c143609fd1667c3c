package ipvs

// Tests against a real kernel's IPVS. They run in the test VM (internal/testsupport/vmtest) and skip elsewhere:
//
//	go build -o /tmp/vmexec ./internal/testsupport/vmtest/cmd/vmexec && go test -exec /tmp/vmexec ./proxy/ipvs
//
// Every test builds a node of its own from network namespaces, as a node would be wired even though the guest
// is a throwaway machine: a node namespace where IPVS is programmed, a pod client, two backend pods serving
// TCP on :8080 (each answers "<name> <client address>" and then echoes lines), and an outside client. All of
// it, IPVS state included, goes with the namespaces when the test ends.

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/internal/testsupport/vmtest"
)

const clusterIP = "10.96.0.10"

type node struct {
	t        *testing.T
	node     *testns.NS
	client   *testns.NS
	outside  *testns.NS
	backends []string // backend IPs, b1 then b2
	bns      []*testns.NS
	names    map[string]string
	h        *countingHandle
	a        *countingAddrs
	b        *Backend
	dual     bool // open a dual-stack back end (newNode6)
}

// newNode wires the namespaces and starts a Backend on the node namespace.
func newNode(t *testing.T) *node {
	t.Helper()
	vmtest.Require(t)
	testns.Require(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatal("the VM has no iptables")
	}
	n := &node{t: t, names: map[string]string{}}
	n.node = testns.New(t, "ipvs-node")
	n.client = testns.New(t, "ipvs-cli")
	n.outside = testns.New(t, "ipvs-out")
	n.bns = []*testns.NS{testns.New(t, "ipvs-b1"), testns.New(t, "ipvs-b2")}
	// Wired with one `ip -n NS -batch` per namespace: exec is slow under emulation, `ip netns exec` more so.
	nodeCmds := []string{
		"link add c0 type veth peer name eth0 netns " + n.client.Name,
		"link add up0 type veth peer name eth0 netns " + n.outside.Name,
		"addr add 10.244.0.1/24 dev c0", "link set c0 up",
		"addr add 192.168.0.1/24 dev up0", "link set up0 up",
	}
	for i, ns := range n.bns {
		name, ip := fmt.Sprintf("b%d", i+1), fmt.Sprintf("10.244.%d.2", i+1)
		nodeCmds = append(nodeCmds, fmt.Sprintf("link add %s type veth peer name eth0 netns %s", name, ns.Name),
			fmt.Sprintf("addr add 10.244.%d.1/24 dev %s", i+1, name), fmt.Sprintf("link set %s up", name))
		n.backends = append(n.backends, ip)
		n.names[ip] = name
	}
	// The node's links first: they create the pods' ends.
	ipBatch(t, n.node, nodeCmds...)
	ipBatch(t, n.client, "addr add 10.244.0.2/24 dev eth0", "link set eth0 up", "route add default via 10.244.0.1")
	ipBatch(t, n.outside, "addr add 192.168.0.2/24 dev eth0", "link set eth0 up")
	for i, ns := range n.bns {
		ipBatch(t, ns, fmt.Sprintf("addr add %s/24 dev eth0", n.backends[i]), "link set eth0 up",
			fmt.Sprintf("route add default via 10.244.%d.1", i+1))
		serve(t, ns, fmt.Sprintf("b%d", i+1), n.backends[i]+":8080")
	}
	sysctl(t, n.node, "net/ipv4/ip_forward", "1")
	n.open()
	return n
}

// ipBatch runs ip commands in ns with one exec of `ip -n NS -batch -`.
func ipBatch(t *testing.T, ns *testns.NS, cmds ...string) {
	t.Helper()
	cmd := exec.Command("ip", "-n", ns.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s -batch: %v: %s\n%s", ns.Name, err, out, strings.Join(cmds, "\n"))
	}
}

// sysctl sets /proc/sys/<name> inside ns, without an exec.
func sysctl(t *testing.T, ns *testns.NS, name, value string) {
	t.Helper()
	if err := ns.Do(func() error { return os.WriteFile("/proc/sys/"+name, []byte(value), 0o644) }); err != nil {
		t.Fatal(err)
	}
}

// open starts (or restarts) the backend on the node namespace.
func (n *node) open() {
	t := n.t
	path := "/run/netns/" + n.node.Name
	if ok, err := available(path, true); err != nil || !ok {
		t.Fatalf("the VM kernel has no IPVS (available: %v, %v)", ok, err)
	}
	h, err := mobyipvs.New(path)
	if err != nil {
		t.Fatal(err)
	}
	la, err := newLinkAddresses(path)
	if err != nil {
		t.Fatal(err)
	}
	var it *ipt.Host
	if err := n.node.Do(func() (err error) { it, err = ipt.Open(); return err }); err != nil {
		t.Fatal(err)
	}
	n.h, n.a = &countingHandle{Handle: h}, &countingAddrs{Addresses: la}
	cfg := Config{
		NetNS: path, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		IPT:      &nsIPT{ns: n.node, ipt: it}, Handle: n.h, Addresses: n.a, Log: quiet,
	}
	if n.dual {
		var it6 *ipt.Host
		if err := n.node.Do(func() (err error) { it6, err = ipt.OpenFlavour6(it.Flavour); return err }); err != nil {
			t.Fatal(err)
		}
		cfg.IPT6 = &nsIPT{ns: n.node, ipt: it6}
		cfg.NodeIPs = append(cfg.NodeIPs, netip.MustParseAddr(nodeIP6VM))
		cfg.PodCIDRs = append(cfg.PodCIDRs, netip.MustParsePrefix("fd00:244::/32"))
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.b = b
	t.Cleanup(func() { h.Close(); la.close() })
}

func (n *node) sync(sps ...*model.ServicePort) {
	n.t.Helper()
	d := map[string]*model.ServicePort{}
	var keys []string
	for _, sp := range sps {
		d[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	if err := n.b.Sync(d, keys); err != nil {
		n.t.Fatal(err)
	}
}

// service is a ClusterIP service port on clusterIP:80 with NodePort 30080 over the given backends.
func (n *node) service(eps ...model.Endpoint) *model.ServicePort {
	return &model.ServicePort{
		Key: "default/web:http/TCP", Namespace: "default", Name: "web", PortName: "http", Protocol: model.TCP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP)}, Port: 80, NodePort: 30080,
		ClusterEndpoints: eps, ExternalEndpoints: eps,
	}
}

func (n *node) ready(i int) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(n.backends[i]), Port: 8080, Ready: true, Serving: true}
}

func (n *node) draining(i int) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(n.backends[i]), Port: 8080, Serving: true, Terminating: true}
}

// ask connects from ns to addr and returns the backend's answer: its name and the client address it saw.
func ask(t *testing.T, ns *testns.NS, addr string) (name, seen string) {
	t.Helper()
	c, err := ns.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("%s -> %s: %v", ns.Name, addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s -> %s: read: %v", ns.Name, addr, err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		t.Fatalf("%s -> %s: answer %q", ns.Name, addr, line)
	}
	return f[0], f[1]
}

// spread asks count times and counts answers by backend name.
func spread(t *testing.T, ns *testns.NS, addr string, count int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range count {
		name, _ := ask(t, ns, addr)
		got[name]++
	}
	return got
}

// serve answers every connection with "<name> <client ip>\n" and then echoes lines, until the test ends.
func serve(t *testing.T, ns *testns.NS, name, addr string) {
	t.Helper()
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				fmt.Fprintf(c, "%s %s\n", name, host)
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprint(c, line)
				}
			}()
		}
	}()
}

func TestVMClusterIPSpreadsAndEndpointRemoval(t *testing.T) {
	n := newNode(t)
	n.sync(n.service(n.ready(0), n.ready(1)))
	got := spread(t, n.client, clusterIP+":80", 10)
	if got["b1"] != 5 || got["b2"] != 5 {
		t.Errorf("round robin over two backends gave %v, want 5 each", got)
	}
	// From a pod, the backend sees the pod's own address (no masquerade inside the pod network).
	if _, seen := ask(t, n.client, clusterIP+":80"); seen != "10.244.0.2" {
		t.Errorf("backend saw the pod client as %s, want 10.244.0.2", seen)
	}

	n.sync(n.service(n.ready(0)))
	if got := spread(t, n.client, clusterIP+":80", 6); got["b1"] != 6 {
		t.Errorf("after removing b2: %v, want all 6 on b1", got)
	}
	n.sync(n.service(n.ready(0), n.ready(1)))
	if got := spread(t, n.client, clusterIP+":80", 6); got["b2"] == 0 {
		t.Errorf("after adding b2 back: %v, want some on b2", got)
	}

	// The service goes: its virtual services and its address with it.
	if err := n.b.Sync(map[string]*model.ServicePort{}, []string{"default/web:http/TCP"}); err != nil {
		t.Fatal(err)
	}
	svcs, err := n.h.GetServices()
	if err != nil || len(svcs) != 0 {
		t.Errorf("after delete: %d virtual services (%v)", len(svcs), err)
	}
	if out := n.node.MustRun(t, "ip", "-br", "addr", "show", "dev", Interface); strings.Contains(out, clusterIP) {
		t.Errorf("ClusterIP still bound: %s", out)
	}
	if c, err := n.client.Dial("tcp", clusterIP+":80"); err == nil {
		c.Close()
		t.Error("the deleted service still answers")
	}
}

func TestVMDrainingWeightZero(t *testing.T) {
	n := newNode(t)
	n.sync(n.service(n.ready(0), n.ready(1)))
	// Hold a connection to b2.
	var held net.Conn
	var r *bufio.Reader
	for range 4 {
		c, err := n.client.Dial("tcp", clusterIP+":80")
		if err != nil {
			t.Fatal(err)
		}
		rd := bufio.NewReader(c)
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "b2 ") {
			held, r = c, rd
			break
		}
		c.Close()
	}
	if held == nil {
		t.Fatal("no connection reached b2")
	}
	defer held.Close()

	n.sync(n.service(n.ready(0), n.draining(1)))
	ds, err := n.h.GetDestinations(toService(tcp(clusterIP, 80), &vsState{}))
	if err != nil {
		t.Fatal(err)
	}
	weights := map[string]int{}
	for _, d := range ds {
		weights[d.Address.String()] = d.Weight
	}
	if weights["10.244.1.2"] != 1 || weights["10.244.2.2"] != 0 || len(weights) != 2 {
		t.Errorf("kernel weights %v, want b1 1 and b2 0", weights)
	}
	if got := spread(t, n.client, clusterIP+":80", 6); got["b1"] != 6 {
		t.Errorf("new connections while b2 drains: %v, want all on b1", got)
	}
	_ = held.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(held, "still there?\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || line != "still there?\n" {
		t.Errorf("the connection to the draining backend broke: %q %v", line, err)
	}

	// Nothing ready: the serving terminating backend takes traffic again.
	n.sync(n.service(n.draining(1)))
	if got := spread(t, n.client, clusterIP+":80", 3); got["b2"] != 3 {
		t.Errorf("only b2 serving (terminating): %v, want all on b2", got)
	}
}

func TestVMPersistence(t *testing.T) {
	n := newNode(t)
	sp := n.service(n.ready(0), n.ready(1))
	sp.AffinityClientIP, sp.AffinityTimeout = true, time.Minute
	n.sync(sp)
	if got := spread(t, n.client, clusterIP+":80", 8); len(got) != 1 {
		t.Errorf("with ClientIP affinity one client went to %v, want one backend", got)
	}
	svcs, err := n.h.GetServices()
	if err != nil || len(svcs) == 0 {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.Flags&svcFlagPersistent == 0 || s.Timeout != 60 {
			t.Errorf("%v:%d flags %#x timeout %d, want persistent 60", s.Address, s.Port, s.Flags, s.Timeout)
		}
	}
	// Affinity off again: round robin.
	n.sync(n.service(n.ready(0), n.ready(1)))
	if got := spread(t, n.client, clusterIP+":80", 6); got["b1"] == 0 || got["b2"] == 0 {
		t.Errorf("without affinity: %v, want both", got)
	}
}

func TestVMNoOpSyncAndRestartWriteNothing(t *testing.T) {
	n := newNode(t)
	sp := n.service(n.ready(0), n.ready(1))
	sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.7")}
	sp.ExternalPolicyLocal = true
	n.sync(sp)
	if n.h.writes == 0 || n.a.writes == 0 {
		t.Fatalf("the first Sync wrote nothing (ipvs %d, addresses %d)", n.h.writes, n.a.writes)
	}
	before := n.node.MustRun(t, "iptables-save", "-t", "nat")
	n.h.writes, n.a.writes = 0, 0
	n.sync(sp)
	if n.h.writes != 0 || n.a.writes != 0 {
		t.Errorf("no-op Sync wrote: ipvs %d, addresses %d", n.h.writes, n.a.writes)
	}
	// A restarted agent reads the kernel back and rewrites nothing.
	n.b.Close()
	n.open()
	n.sync(sp)
	if err := n.b.Prune(); err != nil {
		t.Fatal(err)
	}
	if n.h.writes != 0 || n.a.writes != 0 {
		t.Errorf("restart + same Sync + Prune wrote: ipvs %d, addresses %d", n.h.writes, n.a.writes)
	}
	if after := n.node.MustRun(t, "iptables-save", "-t", "nat"); stripCounters(after) != stripCounters(before) {
		t.Errorf("the nat table changed on restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got := spread(t, n.client, clusterIP+":80", 4); got["b1"]+got["b2"] != 4 {
		t.Errorf("after restart: %v", got)
	}
}

func stripCounters(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
			l = l[:i]
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// NodePort traffic from outside is masqueraded (so replies return through this node) unless the service's
// externalTrafficPolicy is Local, which keeps the client's address.
func TestVMNodePortMasqueradeAndLocalPolicy(t *testing.T) {
	n := newNode(t)
	sp := n.service(n.ready(0))
	n.sync(sp)
	name, seen := ask(t, n.outside, "192.168.0.1:30080")
	if name != "b1" || seen != "10.244.1.1" {
		t.Errorf("outside -> NodePort: %s saw %s, want b1 seeing the node (10.244.1.1)", name, seen)
	}
	sp.ExternalPolicyLocal = true
	n.sync(sp)
	if _, seen := ask(t, n.outside, "192.168.0.1:30080"); seen != "192.168.0.2" {
		t.Errorf("Local policy: backend saw %s, want the client 192.168.0.2", seen)
	}
	// The node itself reaches the ClusterIP too.
	if name, _ := ask(t, n.node, clusterIP+":80"); name != "b1" {
		t.Errorf("node -> ClusterIP answered by %s", name)
	}
	sp.ExternalPolicyLocal = false
	n.sync(sp)
	if rules := n.node.MustRun(t, "iptables", "-t", "nat", "-S", Chain); strings.Contains(rules, localComment) {
		t.Errorf("Local exception left after the policy went back to Cluster:\n%s", rules)
	}
}

// IPv6 works the same way: a v6 ClusterIP bound to the (down) dummy, v6 real servers.
func TestVMIPv6ClusterIP(t *testing.T) {
	n := newNode(t)
	sysctl(t, n.node, "net/ipv6/conf/all/forwarding", "1")
	nodeCmds := []string{"addr add fd00:244::1/64 dev c0 nodad"}
	ipBatch(t, n.client, "addr add fd00:244::2/64 dev eth0 nodad", "route add ::/0 via fd00:244::1")
	var eps []model.Endpoint
	for i, ns := range n.bns {
		ip := fmt.Sprintf("fd00:244:%d::2", i+1)
		nodeCmds = append(nodeCmds, fmt.Sprintf("addr add fd00:244:%d::1/64 dev b%d nodad", i+1, i+1))
		ipBatch(t, ns, "addr add "+ip+"/64 dev eth0 nodad", fmt.Sprintf("route add ::/0 via fd00:244:%d::1", i+1))
		serve(t, ns, fmt.Sprintf("b%d", i+1), "["+ip+"]:8080")
		eps = append(eps, model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Serving: true})
	}
	ipBatch(t, n.node, nodeCmds...)
	sp := n.service(eps...)
	sp.ClusterIPs = []netip.Addr{netip.MustParseAddr("fd00:96::10")}
	sp.NodePort = 0
	n.sync(sp)
	if got := spread(t, n.client, "[fd00:96::10]:80", 4); got["b1"] != 2 || got["b2"] != 2 {
		t.Errorf("v6 round robin: %v, want 2 each", got)
	}
	if _, seen := ask(t, n.client, "[fd00:96::10]:80"); seen != "fd00:244::2" {
		t.Errorf("backend saw the v6 pod client as %s", seen)
	}
}

// countingHandle counts the calls that write to the kernel.
type countingHandle struct {
	Handle
	writes int
}

func (c *countingHandle) NewService(s *mobyipvs.Service) error {
	c.writes++
	return c.Handle.NewService(s)
}
func (c *countingHandle) UpdateService(s *mobyipvs.Service) error {
	c.writes++
	return c.Handle.UpdateService(s)
}
func (c *countingHandle) DelService(s *mobyipvs.Service) error {
	c.writes++
	return c.Handle.DelService(s)
}
func (c *countingHandle) NewDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	c.writes++
	return c.Handle.NewDestination(s, d)
}
func (c *countingHandle) UpdateDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	c.writes++
	return c.Handle.UpdateDestination(s, d)
}
func (c *countingHandle) DelDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	c.writes++
	return c.Handle.DelDestination(s, d)
}

type countingAddrs struct {
	Addresses
	writes int
}

func (c *countingAddrs) Add(a netip.Addr) error { c.writes++; return c.Addresses.Add(a) }
func (c *countingAddrs) Del(a netip.Addr) error { c.writes++; return c.Addresses.Del(a) }

// nsIPT runs the host's iptables inside a namespace (its commands inherit the calling thread's namespace).
type nsIPT struct {
	ns  *testns.NS
	ipt *ipt.Host
}

func (n *nsIPT) List(table, chain string) (out []string, err error) {
	err = n.ns.Do(func() (e error) { out, e = n.ipt.List(table, chain); return e })
	return out, err
}
func (n *nsIPT) Exists(table, chain string, rs ...string) (ok bool, err error) {
	err = n.ns.Do(func() (e error) { ok, e = n.ipt.Exists(table, chain, rs...); return e })
	return ok, err
}
func (n *nsIPT) Insert(table, chain string, pos int, rs ...string) error {
	return n.ns.Do(func() error { return n.ipt.Insert(table, chain, pos, rs...) })
}
func (n *nsIPT) Append(table, chain string, rs ...string) error {
	return n.ns.Do(func() error { return n.ipt.Append(table, chain, rs...) })
}
func (n *nsIPT) DeleteIfExists(table, chain string, rs ...string) error {
	return n.ns.Do(func() error { return n.ipt.DeleteIfExists(table, chain, rs...) })
}
func (n *nsIPT) Restore(table string, data []byte) error {
	return n.ns.Do(func() error { return n.ipt.Restore(table, data) })
}
func (n *nsIPT) Save(table string) (out []byte, err error) {
	err = n.ns.Do(func() (e error) { out, e = n.ipt.Save(table); return e })
	return out, err
}

// Available tells the truth on both kernels: the test VM's has IPVS; on the host this only looks (it loads no
// module there).
func TestAvailable(t *testing.T) {
	if !vmtest.InVM() {
		ok, err := available("", false)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("IPVS on this kernel (without loading modules): %v", ok)
		return
	}
	ok, err := Available()
	if err != nil || !ok {
		t.Errorf("Available() = %v, %v in the test VM, want true", ok, err)
	}
}

// Cleanup (the proxy mode switched to iptables, or the proxy turned off) removes every virtual service of ours,
// the dummy interface and the masquerade chain with its jump — and leaves a virtual service of someone else's
// alone.
func TestVMCleanupRemovesEverythingOurs(t *testing.T) {
	n := newNode(t)
	n.sync(n.service(n.ready(0), n.ready(1)))
	foreign := &mobyipvs.Service{AddressFamily: 2, Protocol: 6, Address: net.ParseIP("192.168.0.77"), Port: 9, SchedName: "rr"}
	h, err := mobyipvs.New("/run/netns/" + n.node.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.NewService(foreign); err != nil {
		t.Fatal(err)
	}
	var it *ipt.Host
	if err := n.node.Do(func() (err error) { it, err = ipt.Open(); return err }); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup("/run/netns/"+n.node.Name, []netip.Addr{netip.MustParseAddr("192.168.0.1")}, &nsIPT{ns: n.node, ipt: it}); err != nil {
		t.Fatal(err)
	}
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || !svcs[0].Address.Equal(foreign.Address) {
		var got []string
		for _, s := range svcs {
			got = append(got, fmt.Sprintf("%s:%d", s.Address, s.Port))
		}
		t.Errorf("virtual services after Cleanup: %v, want only the foreign one", got)
	}
	if out := n.node.MustRun(t, "ip", "link"); strings.Contains(out, Interface) {
		t.Errorf("%s still exists:\n%s", Interface, out)
	}
	if out := n.node.MustRun(t, "iptables-save", "-t", "nat"); strings.Contains(out, Chain) {
		t.Errorf("%s still in nat:\n%s", Chain, out)
	}
}

// Where the IPVS back end never ran (no canopy-ipvs0), Cleanup touches no virtual service, not even one on the
// node's address: kube-proxy's IPVS NodePorts stay when Canopy runs with its proxy off next to it.
func TestVMCleanupWithoutOurInterfaceKeepsNodePorts(t *testing.T) {
	n := newNode(t)
	if out := n.node.MustRun(t, "ip", "link"); strings.Contains(out, Interface) {
		ipBatch(t, n.node, "link del "+Interface) // a node where our back end never ran
	}
	h, err := mobyipvs.New("/run/netns/" + n.node.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	kubeProxys := &mobyipvs.Service{AddressFamily: 2, Protocol: 6, Address: net.ParseIP("192.168.0.1"), Port: 30080, SchedName: "rr"}
	if err := h.NewService(kubeProxys); err != nil {
		t.Fatal(err)
	}
	var it *ipt.Host
	if err := n.node.Do(func() (err error) { it, err = ipt.Open(); return err }); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup("/run/netns/"+n.node.Name, []netip.Addr{netip.MustParseAddr("192.168.0.1")}, &nsIPT{ns: n.node, ipt: it}); err != nil {
		t.Fatal(err)
	}
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || !svcs[0].Address.Equal(kubeProxys.Address) || svcs[0].Port != 30080 {
		t.Errorf("virtual services after Cleanup: %d, want kube-proxy's NodePort on the node's address", len(svcs))
	}
}
