package nftables

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/proxy"
)

var (
	podCIDR6 = netip.MustParsePrefix("fd00:244::/56")
	dualCfg  = Config{ClusterCIDRs: []netip.Prefix{podCIDR, podCIDR6},
		NodeIPs: []netip.Addr{addr("10.0.1.1"), addr("2001:db8:1::1")}}
	ipv6Addr = regexp.MustCompile(`[0-9a-f]{1,4}:[0-9a-f:]*:[0-9a-f]*[0-9a-f]`)
	ipv4Addr = regexp.MustCompile(`\b\d+\.\d+\.\d+\.\d+\b`)
)

func newFake6() *flaky { return &flaky{Fake: knftables.NewFake(knftables.IPv6Family, TableName)} }

// dualPort is a dual-stack NodePort service port: one IPv4 endpoint, two IPv6 ones, external and LB IPs of
// both families.
func dualPort() *model.ServicePort {
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080))
	sp.NodePort = 30080
	sp.ExternalIPs = []netip.Addr{addr("203.0.113.10")}
	six := []model.Endpoint{ep("fd00:244:1::10", 8080), ep("fd00:244:2::10", 8080)}
	sp.IPv6 = &model.Family{ClusterIPs: []netip.Addr{addr("fd00:96::10")}, ExternalIPs: []netip.Addr{addr("2001:db8:e::10")},
		LoadBalancerIPs: []netip.Addr{addr("2001:db8:b::10")}, ClusterEndpoints: six, ExternalEndpoints: six}
	return sp
}

// The ip6 table holds the ip table's objects for the IPv6 addresses: ip6 matches, ipv6_addr keys, bracketed
// DNAT targets, masquerade outside the IPv6 pod network, node ports on the node's IPv6 address, rejects.
func TestIPv6Table(t *testing.T) {
	f, ct := newFake6(), &fakeCT{}
	p := New6(dualCfg, f, ct, nil)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	sp := dualPort().ForFamily(true)
	empty := svc("default", "empty", "fd00:96::11", 80)
	empty.NodePort = 30090
	sticky := svc("default", "sticky", "fd00:96::13", 80, ep("fd00:244:1::10", 8080))
	sticky.AffinityClientIP, sticky.AffinityTimeout = true, 30*time.Second
	syncAll(t, p, sp, empty, sticky)
	svcC, extC := SVCChain(sp.Key), EXTChain(sp.Key)
	sep1, sep2 := SEPChain(sp.Key, addr("fd00:244:1::10"), 8080), SEPChain(sp.Key, addr("fd00:244:2::10"), 8080)
	want(t, "svc chain", rules(f, svcC), []string{
		"ip6 daddr fd00:96::10 ip6 saddr != fd00:244::/56 jump mark-for-masquerade",
		"numgen random mod 2 == 0 goto " + sep1,
		"goto " + sep2,
	})
	want(t, "sep chain", rules(f, sep1), []string{
		"ip6 saddr fd00:244:1::10 jump mark-for-masquerade",
		"meta l4proto tcp dnat to [fd00:244:1::10]:8080",
	})
	want(t, "ext chain", rules(f, extC), []string{"jump mark-for-masquerade", "goto " + svcC})
	want(t, "service-ips", elements(f, MapServiceIPs), []string{
		"2001:db8:b::10 . tcp . 80 : goto " + extC,
		"2001:db8:e::10 . tcp . 80 : goto " + extC,
		"fd00:96::10 . tcp . 80 : goto " + svcC,
		"fd00:96::13 . tcp . 80 : goto " + SVCChain(sticky.Key),
	})
	want(t, "no-endpoint-services", elements(f, MapNoEndpointServices), []string{"fd00:96::11 . tcp . 80 : goto " + ChainReject})
	want(t, "no-endpoint-nodeports", elements(f, MapNoEndpointNodePorts), []string{"tcp . 30090 : goto " + ChainReject})
	want(t, "services chain", rules(f, ChainServices), []string{
		"ip6 daddr . meta l4proto . th dport vmap @" + MapServiceIPs,
		"ip6 daddr @" + SetNodePortIPs + " meta l4proto . th dport vmap @" + MapServiceNodePorts,
	})
	f.RLock()
	np := f.Table.Sets[SetNodePortIPs]
	var npElems []string
	for _, e := range np.Elements {
		npElems = append(npElems, strings.Join(e.Key, ""))
	}
	aff := f.Table.Sets[AffinitySet(sticky.Key, addr("fd00:244:1::10"), 8080, 30*time.Second)]
	f.RUnlock()
	want(t, "nodeport-ips", npElems, []string{"2001:db8:1::1"})
	if np.Type != "ipv6_addr" || aff == nil || aff.Type != "ipv6_addr" {
		t.Errorf("set types: nodeport-ips %q, affinity %+v", np.Type, aff)
	}
	if m := ipv4Addr.FindAllString(f.Dump(), -1); len(m) > 0 {
		t.Errorf("IPv4 addresses in the ip6 table: %v", m)
	}
	// Without node addresses: every local IPv6 address but ::1.
	f2 := newFake6()
	p2 := New6(Config{ClusterCIDRs: dualCfg.ClusterCIDRs}, f2, nil, nil)
	syncAll(t, p2, sp)
	if r := rules(f2, ChainServices); len(r) != 2 || r[1] != "fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @"+MapServiceNodePorts {
		t.Errorf("services chain without node addresses: %v", r)
	}
}

// A dual-stack port programs both tables, each with its own addresses and endpoints only; a single-stack IPv6
// port is only in the ip6 table; its UDP conntrack entries are cleaned as IPv6 ones; a port that loses its
// IPv6 side leaves the ip6 table.
func TestDualStackBothTables(t *testing.T) {
	f4, f6, ct4, ct6 := newFake(), newFake6(), &fakeCT{}, &fakeCT{}
	d := proxy.NewDualStack(New(dualCfg, f4, ct4, nil), New6(dualCfg, f6, ct6, nil))
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	web := dualPort()
	only6 := svc("default", "only6", "10.96.0.99", 53)
	only6.Key, only6.Protocol, only6.ClusterIPs = "default/only6:dns/UDP", model.UDP, nil
	six := []model.Endpoint{ep("fd00:244:1::20", 5353)}
	only6.IPv6 = &model.Family{ClusterIPs: []netip.Addr{addr("fd00:96::53")}, ClusterEndpoints: six, ExternalEndpoints: six}
	desired := map[string]*model.ServicePort{web.Key: web, only6.Key: only6}
	if err := d.Sync(desired, []string{web.Key, only6.Key}); err != nil {
		t.Fatal(err)
	}
	d4, d6 := f4.Dump(), f6.Dump()
	if m := ipv6Addr.FindAllString(d4, -1); len(m) > 0 {
		t.Errorf("IPv6 addresses in the ip table: %v\n%s", m, d4)
	}
	if m := ipv4Addr.FindAllString(d6, -1); len(m) > 0 {
		t.Errorf("IPv4 addresses in the ip6 table: %v\n%s", m, d6)
	}
	for _, w := range []string{"10.96.0.10 . tcp . 80", "dnat to 10.244.1.10:8080", "203.0.113.10 . tcp . 80"} {
		if !strings.Contains(d4, w) {
			t.Errorf("ip table lacks %q", w)
		}
	}
	for _, w := range []string{"fd00:96::10 . tcp . 80", "dnat to [fd00:244:2::10]:8080", "2001:db8:e::10 . tcp . 80",
		"fd00:96::53 . udp . 53", "dnat to [fd00:244:1::20]:5353", "tcp . 30080 : goto " + EXTChain(web.Key)} {
		if !strings.Contains(d6, w) {
			t.Errorf("ip6 table lacks %q", w)
		}
	}
	if hasChain(f4, SVCChain(only6.Key)) {
		t.Error("the IPv6-only port is in the ip table")
	}
	// The IPv6-only UDP port loses its endpoint: the IPv6 flows NATed to it go, none in IPv4; it is rejected.
	only6.IPv6 = &model.Family{ClusterIPs: only6.IPv6.ClusterIPs}
	if err := d.Sync(desired, []string{only6.Key}); err != nil {
		t.Fatal(err)
	}
	wantFlow := Flow{OrigDst: addr("fd00:96::53"), OrigDstPort: 53, ReplySrc: addr("fd00:244:1::20")}
	if len(ct6.flows) != 1 || ct6.flows[0] != wantFlow || len(ct4.flows) != 0 {
		t.Errorf("conntrack deletions: IPv6 %v (want %v), IPv4 %v", ct6.flows, wantFlow, ct4.flows)
	}
	if v := elem(f6, MapNoEndpointServices, "fd00:96::53", "udp", "53"); v != "goto "+ChainReject {
		t.Errorf("IPv6 port without endpoints: %q", v)
	}
	// web loses its IPv6 side: its ip6 objects go, the ip ones stay.
	web.IPv6 = nil
	if err := d.Sync(desired, []string{web.Key}); err != nil {
		t.Fatal(err)
	}
	if hasChain(f6, SVCChain(web.Key)) || elem(f6, MapServiceIPs, "fd00:96::10", "tcp", "80") != "" {
		t.Errorf("web's IPv6 objects left:\n%s", f6.Dump())
	}
	if !hasChain(f4, SVCChain(web.Key)) {
		t.Error("web's IPv4 chain went too")
	}
}
