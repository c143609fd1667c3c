package iptables

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/proxy"
)

var (
	podCIDR6 = netip.MustParsePrefix("fd00:244::/56")
	dualCfg  = Config{ClusterCIDRs: []netip.Prefix{podCIDR, podCIDR6},
		NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("2001:db8:1::1")}}
	ipv6Addr = regexp.MustCompile(`[0-9a-f]{1,4}:[0-9a-f:]*:[0-9a-f]*/\d+|\[[0-9a-f:]+\]:\d+`)
	ipv4Addr = regexp.MustCompile(`\b\d+\.\d+\.\d+\.\d+\b`)
)

// dualPort is a dual-stack NodePort service port with an IPv4 and an IPv6 endpoint, external and LB IPs of both
// families.
func dualPort() *model.ServicePort {
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080))
	sp.NodePort = 30080
	sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.10")}
	six := []model.Endpoint{ep("fd00:244:1::10", 8080), ep("fd00:244:2::10", 8080)}
	sp.IPv6 = &model.Family{ClusterIPs: []netip.Addr{netip.MustParseAddr("fd00:96::10")},
		ExternalIPs:      []netip.Addr{netip.MustParseAddr("2001:db8:e::10")},
		LoadBalancerIPs:  []netip.Addr{netip.MustParseAddr("2001:db8:b::10")},
		ClusterEndpoints: six, ExternalEndpoints: six}
	return sp
}

// The IPv6 proxier writes the IPv4 proxier's rules for the IPv6 addresses: /128 matches, bracketed DNAT
// targets, masquerade of traffic from outside the IPv6 pod network, node ports on the node's IPv6 address,
// ICMPv6 rejects.
func TestIPv6Rules(t *testing.T) {
	r, it := &recorder{saved: map[string]string{}}, &fakeIPT{}
	p := New6(dualCfg, r, it, nil, nil)
	sp := dualPort().ForFamily(true)
	empty := svc("default", "empty", "10.96.0.11", 80)
	empty.ClusterIPs = []netip.Addr{netip.MustParseAddr("fd00:96::11")}
	empty.NodePort = 30090
	syncOne(t, p, sp, empty)
	w := r.take()
	nat := w["nat"]
	t.Logf("nat:\n%s\nfilter:\n%s", nat, w["filter"])
	svcC, extC := SVCChain(sp.Key), EXTChain(sp.Key)
	sep1, sep2 := SEPChain(sp.Key, netip.MustParseAddr("fd00:244:1::10"), 8080), SEPChain(sp.Key, netip.MustParseAddr("fd00:244:2::10"), 8080)
	wantLines(t, "SVC chain", chainRules(nat, svcC), []string{
		"-A " + svcC + ` ! -s fd00:244::/56 -d fd00:96::10/128 -p tcp -m comment --comment "default/web:http/TCP cluster IP" -m tcp --dport 80 -j CANOPY-MARK-MASQ`,
		"-A " + svcC + " -m statistic --mode random --probability 0.5000000000 -j " + sep1,
		"-A " + svcC + " -j " + sep2,
	})
	wantLines(t, "SEP chain", chainRules(nat, sep1), []string{
		"-A " + sep1 + " -s fd00:244:1::10/128 -j CANOPY-MARK-MASQ",
		"-A " + sep1 + " -p tcp -j DNAT --to-destination [fd00:244:1::10]:8080",
	})
	wantLines(t, "CANOPY-SERVICES", chainRules(nat, ChainServices), []string{
		"-A CANOPY-SERVICES -d fd00:96::10/128 -p tcp " + `-m comment --comment "default/web:http/TCP cluster IP" -m tcp --dport 80 -j ` + svcC,
		"-A CANOPY-SERVICES -d 2001:db8:e::10/128 -p tcp " + `-m comment --comment "default/web:http/TCP external IP" -m tcp --dport 80 -j ` + extC,
		"-A CANOPY-SERVICES -d 2001:db8:b::10/128 -p tcp " + `-m comment --comment "default/web:http/TCP loadbalancer IP" -m tcp --dport 80 -j ` + extC,
		`-A CANOPY-SERVICES -m comment --comment "canopy service nodeports; must be the last rule of this chain" -d 2001:db8:1::1/128 -j CANOPY-NODEPORTS`,
	})
	wantLines(t, "EXT chain", chainRules(nat, extC), []string{
		"-A " + extC + ` -m comment --comment "masquerade traffic for default/web:http/TCP external destinations" -j CANOPY-MARK-MASQ`,
		"-A " + extC + " -j " + svcC,
	})
	wantLines(t, "reject chain", chainRules(w["filter"], ChainReject), []string{
		`-A CANOPY-SVC-REJECT -p tcp -m comment --comment "service without endpoints" -j REJECT --reject-with tcp-reset`,
		`-A CANOPY-SVC-REJECT -m comment --comment "service without endpoints" -j REJECT --reject-with icmp6-port-unreachable`,
	})
	wantLines(t, "filter", chainRules(w["filter"], ChainFilter), []string{
		`-A CANOPY-SERVICES-FILTER -d fd00:96::11/128 -p tcp -m comment --comment "default/empty:http/TCP has no endpoints" -m tcp --dport 80 -j CANOPY-SVC-REJECT`,
		`-A CANOPY-SERVICES-FILTER -d 2001:db8:1::1/128 -p tcp -m comment --comment "default/empty:http/TCP has no endpoints" -m tcp --dport 30090 -j CANOPY-SVC-REJECT`,
	})
	if m := ipv4Addr.FindAllString(nat+w["filter"], -1); len(m) > 0 {
		t.Errorf("IPv4 addresses in the IPv6 rules: %v", m)
	}
	// Without node addresses: every local IPv6 address but loopback.
	r2 := &recorder{saved: map[string]string{}}
	syncOne(t, New6(Config{ClusterCIDRs: dualCfg.ClusterCIDRs}, r2, &fakeIPT{}, nil, nil), sp)
	if !strings.Contains(r2.take()["nat"], "-m addrtype --dst-type LOCAL ! -d ::1/128 -j CANOPY-NODEPORTS") {
		t.Error("no node port match on every local IPv6 address")
	}
}

// A dual-stack port programs both families, each with its own addresses and endpoints only: no IPv6 endpoint
// in the IPv4 rules, no IPv4 one in the IPv6 rules. A single-stack IPv6 port gives no IPv4 rules at all, and a
// port that loses its IPv6 side leaves the IPv6 rules.
func TestDualStackBothFamilies(t *testing.T) {
	r4, r6 := &recorder{saved: map[string]string{}}, &recorder{saved: map[string]string{}}
	ct4, ct6 := &fakeCT{}, &fakeCT{}
	d := proxy.NewDualStack(New(dualCfg, r4, &fakeIPT{}, ct4, nil), New6(dualCfg, r6, &fakeIPT{}, ct6, nil))
	web := dualPort()
	only6 := svc("default", "only6", "10.96.0.99", 53)
	only6.Key, only6.Protocol, only6.ClusterIPs = "default/only6:dns/UDP", model.UDP, nil
	only6.ClusterEndpoints, only6.ExternalEndpoints = nil, nil
	six := []model.Endpoint{ep("fd00:244:1::20", 5353)}
	only6.IPv6 = &model.Family{ClusterIPs: []netip.Addr{netip.MustParseAddr("fd00:96::53")}, ClusterEndpoints: six, ExternalEndpoints: six}
	desired := map[string]*model.ServicePort{web.Key: web, only6.Key: only6}
	if err := d.Sync(desired, []string{web.Key, only6.Key}); err != nil {
		t.Fatal(err)
	}
	w4, w6 := r4.take(), r6.take()
	all4, all6 := w4["nat"]+w4["filter"], w6["nat"]+w6["filter"]
	if m := ipv6Addr.FindAllString(all4, -1); len(m) > 0 {
		t.Errorf("IPv6 addresses in the IPv4 rules: %v\n%s", m, all4)
	}
	if m := ipv4Addr.FindAllString(all6, -1); len(m) > 0 {
		t.Errorf("IPv4 addresses in the IPv6 rules: %v\n%s", m, all6)
	}
	for _, want := range []string{"-d 10.96.0.10/32", "--to-destination 10.244.1.10:8080", "-d 203.0.113.10/32"} {
		if !strings.Contains(all4, want) {
			t.Errorf("IPv4 rules lack %q", want)
		}
	}
	for _, want := range []string{"-d fd00:96::10/128", "--to-destination [fd00:244:2::10]:8080", "-d 2001:db8:e::10/128",
		"-d fd00:96::53/128 -p udp", "--to-destination [fd00:244:1::20]:5353", "--dport 30080 -j " + EXTChain(web.Key)} {
		if !strings.Contains(all6, want) {
			t.Errorf("IPv6 rules lack %q", want)
		}
	}
	if strings.Contains(all4, SVCChain(only6.Key)) {
		t.Error("the IPv6-only port has IPv4 chains")
	}
	// The IPv6-only UDP port loses its endpoint: the IPv6 conntrack entries NATed to it go, none in IPv4.
	only6.IPv6 = &model.Family{ClusterIPs: only6.IPv6.ClusterIPs}
	if err := d.Sync(desired, []string{only6.Key}); err != nil {
		t.Fatal(err)
	}
	want := Flow{OrigDst: netip.MustParseAddr("fd00:96::53"), OrigDstPort: 53, ReplySrc: netip.MustParseAddr("fd00:244:1::20")}
	if len(ct6.flows) != 1 || ct6.flows[0] != want || len(ct4.flows) != 0 {
		t.Errorf("conntrack deletions: IPv6 %v (want %v), IPv4 %v", ct6.flows, want, ct4.flows)
	}
	r4.take()
	if w := r6.take(); !strings.Contains(w["filter"], "-d fd00:96::53/128 -p udp") || !strings.Contains(w["filter"], "CANOPY-SVC-REJECT") {
		t.Errorf("the IPv6 port without endpoints is not rejected:\n%s", w["filter"])
	}
	// web loses its IPv6 side: its IPv6 chains go.
	web.IPv6 = nil
	if err := d.Sync(desired, []string{web.Key}); err != nil {
		t.Fatal(err)
	}
	w6 = r6.take()
	if dl := deleted(w6["nat"]); !strings.Contains(strings.Join(dl, " "), SVCChain(web.Key)) {
		t.Errorf("IPv6 chains of web not deleted: %v\n%s", dl, w6["nat"])
	}
}
