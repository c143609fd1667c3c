package ipvs

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"canopy.io/canopy/internal/model"
)

// The IPv6 side with the fake IPVS: dual-stack and IPv6-only service ports, per-family masquerade chains,
// NodePorts per family, ETP Local and hairpins per family, restart, and UDP conntrack cleanup.

var (
	nodeIP6 = netip.MustParseAddr("fd00:99::1")
	podNet6 = netip.MustParsePrefix("fd00:10:244::/56")
)

// fakeConntrack records the flows it was asked to delete.
type fakeConntrack struct{ flows []Flow }

func (f *fakeConntrack) DeleteUDP(flows []Flow) error {
	f.flows = append(f.flows, flows...)
	return nil
}

type rig6 struct {
	*rig
	ipt6 *fakeIPT
	ct   *fakeConntrack
}

func newRig6(t *testing.T) *rig6 {
	t.Helper()
	r := &rig6{rig: &rig{h: newFakeHandle(), a: newFakeAddrs(), ipt: newFakeIPT()}, ipt6: newFakeIPT(), ct: &fakeConntrack{}}
	r.open6(t)
	return r
}

func (r *rig6) open6(t *testing.T) {
	t.Helper()
	b, err := New(Config{
		NodeIPs: []netip.Addr{nodeIP, nodeIP6}, PodCIDRs: []netip.Prefix{podNet, podNet6},
		Handle: r.h, Addresses: r.a, IPT: r.ipt, IPT6: r.ipt6, Conntrack: r.ct, SkipSysctls: true, Log: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
}

func (r *rig6) resetWrites() {
	r.h.reset()
	r.a.adds, r.a.dels = 0, 0
	r.ipt.resetWrites()
	r.ipt6.resetWrites()
}

func (r *rig6) writes() int {
	return r.h.writes() + r.a.adds + r.a.dels + r.ipt.writes() + r.ipt6.writes()
}

func a6(s string) netip.Addr { return netip.MustParseAddr(s) }

// dual is a dual-stack service port: IPv4 side as svc(i), IPv6 side fd00:96::i with the given IPv6 endpoints.
func dual(i int, eps4, eps6 []model.Endpoint) *model.ServicePort {
	sp := svc(i, eps4...)
	sp.IPv6 = &model.Family{
		ClusterIPs:       []netip.Addr{netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x96, 14: byte(i >> 8), 15: byte(i)})},
		ClusterEndpoints: eps6, ExternalEndpoints: eps6,
	}
	return sp
}

func (r *rig6) bound() []string {
	var out []string
	for a := range r.a.addrs {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}

// A dual-stack port gets virtual services of both families on every front end, each with its own family's
// real servers only; NodePorts listen on the node's address of each family; the IPv6 addresses are bound as
// /128s; ETP Local exceptions land in the chain of their family; a no-op Sync writes nothing anywhere.
func TestDualStackEveryFrontEnd(t *testing.T) {
	r := newRig6(t)
	sp := dual(1, []model.Endpoint{ready("10.244.1.2"), ready("10.244.2.2")},
		[]model.Endpoint{ready("fd00:10:244:1::2"), ready("fd00:10:244:2::2")})
	sp.NodePort = 30080
	sp.ExternalIPs = []netip.Addr{a6("203.0.113.7")}
	sp.IPv6.ExternalIPs = []netip.Addr{a6("2001:db8:7::7")}
	sp.IPv6.LoadBalancerIPs = []netip.Addr{a6("2001:db8:200::9")}
	sp.ExternalPolicyLocal = true
	sp.AffinityClientIP, sp.AffinityTimeout = true, 30*time.Second
	d := map[string]*model.ServicePort{sp.Key: sp}
	r.sync(t, d, sp.Key)

	v4 := []string{"10.244.1.2:8080=1", "10.244.2.2:8080=1"}
	v6 := []string{"[fd00:10:244:1::2]:8080=1", "[fd00:10:244:2::2]:8080=1"}
	want := map[vsKey][]string{
		tcp("10.96.0.1", 80): v4, tcp("192.168.0.1", 30080): v4, tcp("203.0.113.7", 80): v4,
		tcp("fd00:96::1", 80): v6, tcp("fd00:99::1", 30080): v6, tcp("2001:db8:7::7", 80): v6, tcp("2001:db8:200::9", 80): v6,
	}
	if len(r.h.svcs) != len(want) {
		t.Fatalf("virtual services %v, want %d", slices.Collect(maps.Keys(r.h.svcs)), len(want))
	}
	for k, w := range want {
		s := r.h.svcs[k]
		if s == nil {
			t.Fatalf("no virtual service %v (have %v)", k, slices.Collect(maps.Keys(r.h.svcs)))
		}
		wantFam := uint16(syscall.AF_INET)
		if k.addr.Is6() {
			wantFam = syscall.AF_INET6
		}
		if s.AddressFamily != wantFam || s.Flags&svcFlagPersistent == 0 || s.Timeout != 30 {
			t.Errorf("%v: family %d flags %#x timeout %d, want family %d, persistent, 30", k, s.AddressFamily, s.Flags, s.Timeout, wantFam)
		}
		if got := r.h.weights(k); !slices.Equal(got, w) {
			t.Errorf("%v: real servers %v, want %v", k, got, w)
		}
	}
	if got, want := r.bound(), []string{"10.96.0.1", "2001:db8:200::9", "2001:db8:7::7", "203.0.113.7", "fd00:96::1"}; !slices.Equal(got, want) {
		t.Errorf("bound %v, want %v", got, want)
	}
	rules4, rules6 := strings.Join(r.ipt.chain(Chain), "\n"), strings.Join(r.ipt6.chain(Chain), "\n")
	for _, k := range []string{"tcp/192.168.0.1:30080", "tcp/203.0.113.7:80"} {
		if !strings.Contains(rules4, localComment+k) || strings.Contains(rules6, localComment+k) {
			t.Errorf("Local exception %s: want it in iptables only\niptables:\n%s\nip6tables:\n%s", k, rules4, rules6)
		}
	}
	for _, k := range []string{"tcp/[fd00:99::1]:30080", "tcp/[2001:db8:7::7]:80", "tcp/[2001:db8:200::9]:80"} {
		if !strings.Contains(rules6, localComment+k) || strings.Contains(rules4, localComment+k) {
			t.Errorf("Local exception %s: want it in ip6tables only\niptables:\n%s\nip6tables:\n%s", k, rules4, rules6)
		}
	}
	// The static tails: each family's pod network keeps its source.
	if !strings.Contains(rules4, "-s 10.244.0.0/16 -j RETURN") || strings.Contains(rules4, "fd00") {
		t.Errorf("iptables chain:\n%s", rules4)
	}
	if !strings.Contains(rules6, "-s fd00:10:244::/56 -j RETURN") || strings.Contains(rules6, "10.244.0.0") ||
		!strings.Contains(rules6, "-m ipvs --ipvs -j MASQUERADE") {
		t.Errorf("ip6tables chain:\n%s", rules6)
	}

	r.resetWrites()
	r.sync(t, d, sp.Key)
	if n := r.writes(); n != 0 {
		t.Errorf("no-op Sync wrote %d times (ipvs %v)", n, r.h.calls)
	}

	// A restart reads both families back: the same Sync and Prune write nothing.
	r.open6(t)
	r.resetWrites()
	r.sync(t, d, sp.Key)
	if err := r.b.Prune(); err != nil {
		t.Fatal(err)
	}
	if n := r.writes(); n != 0 {
		t.Errorf("restart + Sync + Prune wrote %d times (ipvs %v)", n, r.h.calls)
	}

	// The port goes: everything of both families with it.
	r.sync(t, map[string]*model.ServicePort{}, sp.Key)
	if len(r.h.svcs) != 0 || len(r.a.addrs) != 0 {
		t.Errorf("left behind: %v, %v", slices.Collect(maps.Keys(r.h.svcs)), r.bound())
	}
	if len(r.ipt.chain(Chain)) != 2 || len(r.ipt6.chain(Chain)) != 2 {
		t.Errorf("chains after delete:\n%s\n--\n%s", strings.Join(r.ipt.chain(Chain), "\n"), strings.Join(r.ipt6.chain(Chain), "\n"))
	}
}

// A family a port has no cluster IP of gets nothing: an IPv4-only port no NodePort on the node's IPv6 address,
// an IPv6-only port (no IPv4 cluster IP) none on the IPv4 one; IPv6 endpoints never reach an IPv4 virtual
// service (nor the other way round), even when a back end gets them in one list.
func TestFamilyNotServed(t *testing.T) {
	r := newRig6(t)
	v4only := svc(1, ready("10.244.1.2"), ready("fd00:10:244:1::2"))
	v4only.NodePort = 30001
	v6only := dual(2, nil, []model.Endpoint{ready("fd00:10:244:1::3")})
	v6only.ClusterIPs = nil
	v6only.NodePort = 30002
	d := map[string]*model.ServicePort{v4only.Key: v4only, v6only.Key: v6only}
	r.sync(t, d, all(d)...)
	var got []string
	for _, k := range sortedKeys(r.h.svcs) {
		got = append(got, k.String()+" "+strings.Join(r.h.weights(k), ","))
	}
	want := []string{
		"tcp/10.96.0.1:80 10.244.1.2:8080=1",
		"tcp/192.168.0.1:30001 10.244.1.2:8080=1",
		"tcp/[fd00:96::2]:80 [fd00:10:244:1::3]:8080=1",
		"tcp/[fd00:99::1]:30002 [fd00:10:244:1::3]:8080=1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("virtual services:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A local endpoint of each family gets its hairpin rule in its own family's chain.
func TestHairpinPerFamily(t *testing.T) {
	r := newRig6(t)
	l4, l6 := ready("10.244.0.5"), ready("fd00:10:244::5")
	l4.Local, l6.Local = true, true
	sp := dual(1, []model.Endpoint{l4}, []model.Endpoint{l6})
	d := map[string]*model.ServicePort{sp.Key: sp}
	r.sync(t, d, sp.Key)
	r4, r6 := spec(hairpinRule(l4.IP)), spec(hairpinRule(l6.IP))
	if c4, c6 := r.ipt.chain(Chain), r.ipt6.chain(Chain); !slices.Contains(c4, r4) || slices.Contains(c4, r6) ||
		!slices.Contains(c6, r6) || slices.Contains(c6, r4) {
		t.Errorf("hairpin rules:\niptables:\n%s\nip6tables:\n%s", strings.Join(c4, "\n"), strings.Join(c6, "\n"))
	}
	if !strings.Contains(r6, "-s fd00:10:244::5/128 -d fd00:10:244::5/128") {
		t.Errorf("IPv6 hairpin rule %q", r6)
	}
	r.sync(t, map[string]*model.ServicePort{}, sp.Key)
	if slices.Contains(r.ipt.chain(Chain), r4) || slices.Contains(r.ipt6.chain(Chain), r6) {
		t.Error("hairpin rules left after the port went")
	}
}

// UDP: a real server that goes leaves its flows deleted (through each virtual service of its family), a virtual
// service that gets its first serving real server has every earlier entry to it deleted, one that goes too;
// TCP ports, and a change that removes nobody, delete nothing.
func TestUDPConntrackCleanup(t *testing.T) {
	r := newRig6(t)
	sp := dual(1, nil, nil)
	sp.Key, sp.Protocol, sp.Port, sp.NodePort = "ns/dns:dns/UDP", model.UDP, 53, 30053
	d := map[string]*model.ServicePort{sp.Key: sp}
	r.sync(t, d, sp.Key)
	if len(r.ct.flows) != 0 {
		t.Errorf("no real servers yet, deleted %v", r.ct.flows)
	}

	e1, e2 := ready("fd00:10:244:1::2"), ready("fd00:10:244:2::2")
	sp.IPv6.ClusterEndpoints, sp.IPv6.ExternalEndpoints = []model.Endpoint{e1, e2}, []model.Endpoint{e1, e2}
	r.sync(t, d, sp.Key)
	wantFlows := func(want ...string) {
		t.Helper()
		var got []string
		for _, f := range r.ct.flows {
			got = append(got, f.String())
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("conntrack deletions %q, want %q", got, want)
		}
		r.ct.flows = nil
	}
	wantFlows("udp [fd00:96::1]:53", "udp [fd00:99::1]:30053")

	sp.IPv6.ClusterEndpoints, sp.IPv6.ExternalEndpoints = []model.Endpoint{e2}, []model.Endpoint{e2}
	r.sync(t, d, sp.Key)
	wantFlows("udp [fd00:96::1]:53 via fd00:10:244:1::2", "udp [fd00:99::1]:30053 via fd00:10:244:1::2")

	drain := e2
	drain.Ready, drain.Terminating = false, true // weight 0: keeps its flows
	sp.IPv6.ClusterEndpoints, sp.IPv6.ExternalEndpoints = []model.Endpoint{e1, drain}, []model.Endpoint{e1, drain}
	r.sync(t, d, sp.Key)
	wantFlows()

	r.sync(t, map[string]*model.ServicePort{}, sp.Key)
	wantFlows("udp [fd00:96::1]:53", "udp [fd00:99::1]:30053")

	tcpPort := dual(2, nil, []model.Endpoint{e1})
	d = map[string]*model.ServicePort{tcpPort.Key: tcpPort}
	r.sync(t, d, tcpPort.Key)
	tcpPort.IPv6.ClusterEndpoints = nil
	r.sync(t, d, tcpPort.Key)
	wantFlows()
}

// The ip6tables chain's lines parse back like the iptables chain's: Local exceptions, hairpin rules; the static
// tail takes the pod networks of its family only (an IPv4-mapped prefix is IPv4).
func TestIPv6RulesParseBack(t *testing.T) {
	k := tcp("fd00:99::1", 30080)
	line := "-A " + Chain + " " + spec(localRule(k))
	if got, ok := parseLocal(line); !ok || got != k {
		t.Errorf("parseLocal(%q) = %v %v, want %v", line, got, ok, k)
	}
	a := a6("fd00:10:244::5")
	if got, ok := parseHairpin("-A " + Chain + " " + spec(hairpinRule(a))); !ok || got != a {
		t.Errorf("parseHairpin = %v %v", got, ok)
	}
	mixed := []netip.Prefix{podNet, podNet6, netip.MustParsePrefix("::ffff:10.245.0.0/112")}
	if got := ofFamily(mixed, false); !slices.Equal(got, []netip.Prefix{podNet, netip.MustParsePrefix("10.245.0.0/16")}) {
		t.Errorf("IPv4 pod networks %v", got)
	}
	if got := ofFamily(mixed, true); !slices.Equal(got, []netip.Prefix{podNet6}) {
		t.Errorf("IPv6 pod networks %v", got)
	}
}
