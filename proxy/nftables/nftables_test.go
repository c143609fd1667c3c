package nftables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/model"
)

var (
	podCIDR = netip.MustParsePrefix("10.244.0.0/16")
	testCfg = Config{ClusterCIDRs: []netip.Prefix{podCIDR}}
)

type fakeCT struct{ flows []Flow }

func (f *fakeCT) DeleteUDP(flows []Flow) error { f.flows = append(f.flows, flows...); return nil }

// flaky is a Fake whose Run fails while fail returns an error for the transaction's text.
type flaky struct {
	*knftables.Fake
	fail func(tx string) error
	runs int
}

func (f *flaky) Run(ctx context.Context, tx *knftables.Transaction) error {
	f.runs++
	if f.fail != nil {
		if err := f.fail(tx.String()); err != nil {
			return err
		}
	}
	return f.Fake.Run(ctx, tx)
}

func newFake() *flaky { return &flaky{Fake: knftables.NewFake(knftables.IPv4Family, TableName)} }

func newTest(t *testing.T, cfg Config) (*Proxier, *flaky, *fakeCT) {
	t.Helper()
	f, ct := newFake(), &fakeCT{}
	p := New(cfg, f, ct, nil)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	return p, f, ct
}

func ep(ip string, port uint16) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: port, Ready: true, Serving: true}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func svc(ns, name string, vip string, port uint16, eps ...model.Endpoint) *model.ServicePort {
	return &model.ServicePort{
		Key: ns + "/" + name + ":http/TCP", Namespace: ns, Name: name, PortName: "http", Protocol: model.TCP,
		ClusterIPs: []netip.Addr{addr(vip)}, Port: port,
		ClusterEndpoints: eps, ExternalEndpoints: eps,
	}
}

func syncAll(t *testing.T, p *Proxier, sps ...*model.ServicePort) {
	t.Helper()
	desired := map[string]*model.ServicePort{}
	var keys []string
	for _, sp := range sps {
		desired[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	if err := p.Sync(desired, keys); err != nil {
		t.Fatal(err)
	}
}

// rules returns the rules of a chain in the fake ("" for a missing chain: nil).
func rules(f *flaky, chain string) []string {
	f.RLock()
	defer f.RUnlock()
	c := f.Table.Chains[chain]
	if c == nil {
		return nil
	}
	out := make([]string, len(c.Rules))
	for i, r := range c.Rules {
		out[i] = r.Rule
	}
	return out
}

func hasChain(f *flaky, chain string) bool {
	f.RLock()
	defer f.RUnlock()
	return f.Table.Chains[chain] != nil
}

// elem returns the value of a map element ("" if absent).
func elem(f *flaky, m string, key ...string) string {
	f.RLock()
	defer f.RUnlock()
	if e := f.Table.Maps[m].FindElement(key...); e != nil {
		return strings.Join(e.Value, " . ")
	}
	return ""
}

func elements(f *flaky, m string) []string {
	f.RLock()
	defer f.RUnlock()
	var out []string
	for _, e := range f.Table.Maps[m].Elements {
		out = append(out, strings.Join(e.Key, " . ")+" : "+strings.Join(e.Value, " . "))
	}
	slices.Sort(out)
	return out
}

// serviceChains lists the per-service chains and sets in the fake, sorted.
func serviceObjects(f *flaky) []string {
	f.RLock()
	defer f.RUnlock()
	var out []string
	for name := range f.Table.Chains {
		if perServiceChain.MatchString(name) {
			out = append(out, name)
		}
	}
	for name := range f.Table.Sets {
		if affinitySet.MatchString(name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// lastTx returns the lines of the last transaction run.
func lastTx(f *flaky) []string {
	f.RLock()
	defer f.RUnlock()
	if f.LastTransaction == nil {
		return nil
	}
	lines := strings.Split(strings.TrimSpace(f.LastTransaction.String()), "\n")
	for i, l := range lines { // the hash comment of a chain's first rule (TestHashComment checks it)
		lines[i] = hashCommentRE.ReplaceAllString(l, "")
	}
	return lines
}

var hashCommentRE = regexp.MustCompile(` comment "canopy h=[0-9a-f]{16} n=[0-9]+"$`)

func want(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got  %s\n want %s", what, strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func TestNames(t *testing.T) {
	key := "default/web:http/TCP"
	if got := SVCChain(key); !regexp.MustCompile(`^svc-[A-Z2-7]{8}-default/web/http/TCP$`).MatchString(got) || got != SVCChain(key) {
		t.Errorf("SVCChain = %q", got)
	}
	if SVCChain(key) == SVCChain("default/web:https/TCP") || EXTChain(key)[4:] != SVCChain(key)[4:] {
		t.Error("names of different keys collide, or svc-/ext- of one key differ beyond the prefix")
	}
	sep := SEPChain(key, addr("10.244.1.10"), 8080)
	if !strings.HasSuffix(sep, "-default/web/http/TCP__10.244.1.10/8080") || sep == SEPChain(key, addr("10.244.1.10"), 8081) {
		t.Errorf("SEPChain = %q", sep)
	}
	if AffinitySet(key, addr("10.244.1.10"), 8080, time.Minute) == AffinitySet(key, addr("10.244.1.10"), 8080, time.Hour) {
		t.Error("the affinity timeout is not part of the set name")
	}
	// 63-character namespace, name and port name, an odd character: bounded, nft-safe, still unique.
	long := strings.Repeat("n", 63) + "/" + strings.Repeat("s", 63) + ":" + strings.Repeat("p", 63) + "$/SCTP"
	nameOK := regexp.MustCompile(`^[a-z][A-Za-z0-9/_.-]*$`)
	var seen []string
	for i := range 50 {
		for _, n := range []string{SVCChain(long + fmt.Sprint(i)), SEPChain(long+fmt.Sprint(i), addr("10.244.1.10"), 8080),
			AffinitySet(long+fmt.Sprint(i), addr("10.244.1.10"), 8080, time.Hour)} {
			if len(n) > maxNameLen || !nameOK.MatchString(n) || slices.Contains(seen, n) {
				t.Fatalf("name %q (%d characters) too long, not nft-safe or not unique", n, len(n))
			}
			seen = append(seen, n)
		}
	}
}

func TestStaticTable(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	if p.Name() != "nftables" || !slices.Equal(p.Schedulers(), []string{"random"}) {
		t.Errorf("Name %q, Schedulers %v", p.Name(), p.Schedulers())
	}
	f.RLock()
	for _, b := range baseChains {
		c := f.Table.Chains[b.name]
		if c == nil || c.Hook == nil || *c.Hook != b.hook || *c.Type != b.typ || len(c.Rules) != 1 || c.Rules[0].Rule != b.rule {
			t.Errorf("base chain %s: %+v", b.name, c)
		}
	}
	for _, m := range sharedMaps {
		if f.Table.Maps[m] == nil {
			t.Errorf("map %s missing", m)
		}
	}
	f.RUnlock()
	want(t, "services", rules(f, ChainServices), []string{
		"ip daddr . meta l4proto . th dport vmap @service-ips",
		"fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
	})
	want(t, "endpoints-check", rules(f, ChainEndpointsCheck), []string{
		"ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
		"fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports",
	})
	want(t, "reject", rules(f, ChainReject), []string{"meta l4proto tcp reject with tcp reset", "reject"})
	want(t, "masquerading", rules(f, ChainMasquerading), []string{
		"meta mark & 0x4000 == 0 return", "meta mark set meta mark xor 0x4000", "masquerade fully-random"})
	want(t, "mark", rules(f, ChainMarkMasq), []string{"meta mark set meta mark or 0x4000"})

	// Node port addresses: per prefix (on local addresses), per node IP, every local address, none.
	for _, tc := range []struct {
		cfg   Config
		rule  string
		elems []string
	}{
		{Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.7/24")}, NodeIPs: []netip.Addr{addr("10.0.0.1")}},
			"ip daddr @nodeport-ips fib daddr type local meta l4proto . th dport vmap @service-nodeports", []string{"192.0.2.0/24"}},
		{Config{NodeIPs: []netip.Addr{addr("10.0.0.1"), addr("fd00::1")}},
			"ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports", []string{"10.0.0.1"}},
		{Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
			"fib daddr type local meta l4proto . th dport vmap @service-nodeports", nil},
		{Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("fd00::/64")}}, "", nil},
	} {
		_, f, _ := newTest(t, tc.cfg)
		r := rules(f, ChainServices)
		if tc.rule == "" {
			want(t, fmt.Sprint(tc.cfg), r, rules(f, ChainServices)[:1])
			if len(rules(f, ChainEndpointsCheck)) != 1 {
				t.Errorf("%v: node port check without node port addresses", tc.cfg)
			}
		} else {
			want(t, fmt.Sprint(tc.cfg), r[1:], []string{tc.rule})
		}
		f.RLock()
		var got []string
		for _, e := range f.Table.Sets[SetNodePortIPs].Elements {
			got = append(got, e.Key...)
		}
		f.RUnlock()
		want(t, fmt.Sprint(tc.cfg, " nodeport-ips"), got, tc.elems)
	}
}

func TestClusterIPTwoEndpoints(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080), ep("10.244.2.10", 8080))
	syncAll(t, p, sp)
	svcC, sep1, sep2 := SVCChain(sp.Key), SEPChain(sp.Key, addr("10.244.1.10"), 8080), SEPChain(sp.Key, addr("10.244.2.10"), 8080)
	t.Logf("transaction:\n%s", strings.Join(lastTx(f), "\n"))
	want(t, "svc chain", rules(f, svcC), []string{
		"ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
		"numgen random mod 2 == 0 goto " + sep1,
		"goto " + sep2,
	})
	want(t, "sep chain", rules(f, sep1), []string{
		"ip saddr 10.244.1.10 jump mark-for-masquerade",
		"meta l4proto tcp dnat to 10.244.1.10:8080",
	})
	want(t, "service-ips", elements(f, MapServiceIPs), []string{"10.96.0.10 . tcp . 80 : goto " + svcC})
	for _, m := range []string{MapServiceNodePorts, MapNoEndpointServices, MapNoEndpointNodePorts} {
		want(t, m, elements(f, m), nil)
	}
	want(t, "objects", serviceObjects(f), sorted(svcC, sep1, sep2))

	// Three endpoints: 1/3, then 1/2, then the rest; one: a plain goto.
	sp.ClusterEndpoints = append(sp.ClusterEndpoints, ep("10.244.3.10", 8080))
	syncAll(t, p, sp)
	want(t, "three endpoints", rules(f, svcC)[1:], []string{
		"numgen random mod 3 == 0 goto " + sep1,
		"numgen random mod 2 == 0 goto " + sep2,
		"goto " + SEPChain(sp.Key, addr("10.244.3.10"), 8080),
	})
	// More than maxCascade: one numgen vmap.
	var many []model.Endpoint
	var vmap []string
	for i := range maxCascade + 1 {
		e := ep(fmt.Sprintf("10.244.4.%d", i+1), 8080)
		many = append(many, e)
		vmap = append(vmap, fmt.Sprintf("%d : goto %s", i, SEPChain(sp.Key, e.IP, 8080)))
	}
	sp.ClusterEndpoints = many
	syncAll(t, p, sp)
	want(t, "many endpoints", rules(f, svcC)[1:], []string{
		fmt.Sprintf("numgen random mod %d vmap { %s }", maxCascade+1, strings.Join(vmap, " , "))})
	sp.ClusterEndpoints = []model.Endpoint{ep("10.244.1.10", 8080), ep("10.244.2.10", 8080)}
	sp.ClusterEndpoints = sp.ClusterEndpoints[:1]
	syncAll(t, p, sp)
	want(t, "one endpoint", rules(f, svcC)[1:], []string{"goto " + sep1})
	want(t, "objects with one endpoint", serviceObjects(f), sorted(svcC, sep1))
}

func TestAffinity(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	sp := svc("default", "sticky", "10.96.0.13", 80, ep("10.244.1.10", 8080), ep("10.244.2.10", 8080))
	sp.AffinityClientIP, sp.AffinityTimeout = true, 30*time.Second
	syncAll(t, p, sp)
	svcC, sep1, sep2 := SVCChain(sp.Key), SEPChain(sp.Key, addr("10.244.1.10"), 8080), SEPChain(sp.Key, addr("10.244.2.10"), 8080)
	aff1, aff2 := AffinitySet(sp.Key, addr("10.244.1.10"), 8080, 30*time.Second), AffinitySet(sp.Key, addr("10.244.2.10"), 8080, 30*time.Second)
	want(t, "svc chain", rules(f, svcC)[1:], []string{
		"ip saddr @" + aff1 + " goto " + sep1,
		"ip saddr @" + aff2 + " goto " + sep2,
		"numgen random mod 2 == 0 goto " + sep1,
		"goto " + sep2,
	})
	want(t, "sep chain", rules(f, sep2), []string{
		"ip saddr 10.244.2.10 jump mark-for-masquerade",
		"update @" + aff2 + " { ip saddr }",
		"meta l4proto tcp dnat to 10.244.2.10:8080",
	})
	f.RLock()
	s := f.Table.Sets[aff1]
	f.RUnlock()
	if s == nil || s.Timeout == nil || *s.Timeout != 30*time.Second || !slices.Contains(s.Flags, knftables.TimeoutFlag) || s.Type != "ipv4_addr" {
		t.Fatalf("affinity set: %+v", s)
	}

	// A new timeout is a new set; the old ones go.
	sp.AffinityTimeout = time.Minute
	syncAll(t, p, sp)
	want(t, "objects after a timeout change", serviceObjects(f), sorted(svcC, sep1, sep2,
		AffinitySet(sp.Key, addr("10.244.1.10"), 8080, time.Minute), AffinitySet(sp.Key, addr("10.244.2.10"), 8080, time.Minute)))
	// Affinity off: sets gone.
	sp.AffinityClientIP = false
	syncAll(t, p, sp)
	want(t, "objects without affinity", serviceObjects(f), sorted(svcC, sep1, sep2))
	// No timeout given: Kubernetes' default (3 hours).
	sp.AffinityClientIP, sp.AffinityTimeout = true, 0
	syncAll(t, p, sp)
	f.RLock()
	s = f.Table.Sets[AffinitySet(sp.Key, addr("10.244.1.10"), 8080, model.DefaultAffinityTimeout)]
	f.RUnlock()
	if s == nil || *s.Timeout != 3*time.Hour {
		t.Errorf("default affinity timeout: %+v", s)
	}
}

func TestNodePortAndExternalIPClusterPolicy(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	sp := svc("default", "np", "10.96.0.20", 80, ep("10.244.1.10", 8080), ep("10.244.2.10", 8080))
	sp.NodePort = 30080
	sp.ExternalIPs = []netip.Addr{addr("203.0.113.10")}
	sp.LoadBalancerIPs = []netip.Addr{addr("198.51.100.7")}
	syncAll(t, p, sp)
	svcC, extC := SVCChain(sp.Key), EXTChain(sp.Key)
	want(t, "ext chain", rules(f, extC), []string{"jump mark-for-masquerade", "goto " + svcC})
	want(t, "service-ips", elements(f, MapServiceIPs), []string{
		"10.96.0.20 . tcp . 80 : goto " + svcC,
		"198.51.100.7 . tcp . 80 : goto " + extC,
		"203.0.113.10 . tcp . 80 : goto " + extC,
	})
	want(t, "service-nodeports", elements(f, MapServiceNodePorts), []string{"tcp . 30080 : goto " + extC})

	// Internal traffic policy Local with the local endpoint only: external traffic has its own balancing.
	local := ep("10.244.1.10", 8080)
	local.Local = true
	sp.InternalPolicyLocal = true
	sp.ClusterEndpoints = []model.Endpoint{local}
	syncAll(t, p, sp)
	sep1, sep2 := SEPChain(sp.Key, addr("10.244.1.10"), 8080), SEPChain(sp.Key, addr("10.244.2.10"), 8080)
	want(t, "ext chain with its own endpoints", rules(f, extC), []string{
		"jump mark-for-masquerade", "numgen random mod 2 == 0 goto " + sep1, "goto " + sep2})
	want(t, "svc chain", rules(f, svcC)[1:], []string{"goto " + sep1})
}

func TestExternalPolicyLocal(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	local := ep("10.244.1.10", 8080)
	local.Local = true
	sp := svc("default", "local", "10.96.0.30", 80, local, ep("10.244.2.10", 8080))
	sp.NodePort, sp.ExternalPolicyLocal = 30081, true
	sp.ExternalIPs = []netip.Addr{addr("203.0.113.11")}
	sp.ExternalEndpoints = []model.Endpoint{local}
	syncAll(t, p, sp)
	svcC, extC, sepL := SVCChain(sp.Key), EXTChain(sp.Key), SEPChain(sp.Key, local.IP, 8080)
	want(t, "ext chain", rules(f, extC), []string{
		"ip saddr 10.244.0.0/16 goto " + svcC,
		"fib saddr type local jump mark-for-masquerade",
		"fib saddr type local goto " + svcC,
		"goto " + sepL,
	})
	want(t, "no-endpoint-services", elements(f, MapNoEndpointServices), nil)

	// No local endpoint: external traffic is dropped in filter; pods and the node still reach the service.
	sp.ExternalEndpoints = nil
	syncAll(t, p, sp)
	want(t, "ext chain without local endpoints", rules(f, extC), []string{
		"ip saddr 10.244.0.0/16 goto " + svcC,
		"fib saddr type local jump mark-for-masquerade",
		"fib saddr type local goto " + svcC,
	})
	if tx := strings.Join(lastTx(f), "\n"); strings.Contains(tx, "delete chain") {
		t.Errorf("chains deleted: the local endpoint still serves cluster traffic:\n%s", tx)
	}
	want(t, "no-endpoint-services", elements(f, MapNoEndpointServices), []string{"203.0.113.11 . tcp . 80 : drop"})
	want(t, "no-endpoint-nodeports", elements(f, MapNoEndpointNodePorts), []string{"tcp . 30081 : drop"})
	want(t, "service-nodeports", elements(f, MapServiceNodePorts), []string{"tcp . 30081 : goto " + extC})
}

func TestNoEndpointsRejects(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	sp := svc("default", "empty", "10.96.0.11", 80)
	sp.NodePort = 30090
	other := svc("default", "other", "10.96.0.99", 80, ep("10.244.9.9", 80)) // so the next sync is not a full one
	syncAll(t, p, sp, other)
	if hasChain(f, SVCChain(sp.Key)) || hasChain(f, EXTChain(sp.Key)) {
		t.Error("chains for a service without endpoints")
	}
	want(t, "no-endpoint-services", elements(f, MapNoEndpointServices), []string{"10.96.0.11 . tcp . 80 : goto reject-chain"})
	want(t, "no-endpoint-nodeports", elements(f, MapNoEndpointNodePorts), []string{"tcp . 30090 : goto reject-chain"})
	want(t, "service-ips", elements(f, MapServiceIPs), []string{"10.96.0.99 . tcp . 80 : goto " + SVCChain(other.Key)})

	// Endpoints arrive: dispatch in, reject out, in one transaction of this service's objects only.
	sp.ClusterEndpoints = []model.Endpoint{ep("10.244.1.10", 8080)}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	if err := p.Sync(map[string]*model.ServicePort{sp.Key: sp, other.Key: other}, []string{sp.Key}); err != nil {
		t.Fatal(err)
	}
	want(t, "no-endpoint-services", elements(f, MapNoEndpointServices), nil)
	want(t, "no-endpoint-nodeports", elements(f, MapNoEndpointNodePorts), nil)
	want(t, "service-ips", elements(f, MapServiceIPs), []string{
		"10.96.0.11 . tcp . 80 : goto " + SVCChain(sp.Key), "10.96.0.99 . tcp . 80 : goto " + SVCChain(other.Key)})
	want(t, "service-nodeports", elements(f, MapServiceNodePorts), []string{"tcp . 30090 : goto " + EXTChain(sp.Key)})
	for _, l := range lastTx(f) {
		if strings.Contains(l, "10.96.0.99") || strings.Contains(l, SVCChain(other.Key)) {
			t.Errorf("the other service was written: %s", l)
		}
	}
}

func TestMasquerade(t *testing.T) {
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080))
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MasqueradeAll: true, ClusterCIDRs: []netip.Prefix{podCIDR}}, "ip daddr 10.96.0.10 jump mark-for-masquerade"},
		{Config{ClusterCIDRs: []netip.Prefix{podCIDR, netip.MustParsePrefix("10.245.1.0/16")}}, "ip daddr 10.96.0.10 ip saddr != { 10.244.0.0/16, 10.245.0.0/16 } jump mark-for-masquerade"},
		{Config{}, "goto " + SEPChain(sp.Key, addr("10.244.1.10"), 8080)},
	} {
		p, f, _ := newTest(t, tc.cfg)
		syncAll(t, p, sp)
		if got := rules(f, SVCChain(sp.Key)); got[0] != tc.want {
			t.Errorf("%+v: first svc rule %q, want %q", tc.cfg, got[0], tc.want)
		}
	}
	// Two cluster IPs (dual VIPs of one family).
	p, f, _ := newTest(t, testCfg)
	two := svc("default", "two", "10.96.0.12", 80, ep("10.244.1.10", 8080))
	two.ClusterIPs = append(two.ClusterIPs, addr("10.96.0.13"), addr("fd00::13"))
	syncAll(t, p, two)
	want(t, "first svc rule", rules(f, SVCChain(two.Key))[:1], []string{"ip daddr { 10.96.0.12, 10.96.0.13 } ip saddr != 10.244.0.0/16 jump mark-for-masquerade"})
	want(t, "service-ips", elements(f, MapServiceIPs), []string{
		"10.96.0.12 . tcp . 80 : goto " + SVCChain(two.Key), "10.96.0.13 . tcp . 80 : goto " + SVCChain(two.Key)})
}

func TestTerminatingEndpoints(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	draining := model.Endpoint{IP: addr("10.244.2.10"), Port: 8080, Serving: true, Terminating: true}
	notReady := model.Endpoint{IP: addr("10.244.3.10"), Port: 8080}
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080), draining, notReady)
	syncAll(t, p, sp)
	tx := strings.Join(lastTx(f), "\n")
	if strings.Contains(tx, "10.244.2.10") || strings.Contains(tx, "10.244.3.10") {
		t.Errorf("a terminating or unready endpoint gets new connections while a ready one exists:\n%s", tx)
	}
	sp.ClusterEndpoints = []model.Endpoint{draining, notReady}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	syncAll(t, p, sp)
	want(t, "objects", serviceObjects(f), sorted(SVCChain(sp.Key), SEPChain(sp.Key, draining.IP, 8080)))
}

// TestIncremental: 1,000 service ports x 2 endpoints, then each kind of change writes only its own objects.
func TestIncremental(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	desired := map[string]*model.ServicePort{}
	var keys []string
	mk := func(i int) *model.ServicePort {
		return svc(fmt.Sprintf("ns%d", i/100), fmt.Sprintf("svc%d", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80,
			ep(fmt.Sprintf("10.244.%d.%d", i/250, i%250+1), 8080), ep(fmt.Sprintf("10.245.%d.%d", i/250, i%250+1), 8080))
	}
	for i := range 1000 {
		sp := mk(i)
		desired[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	if err := p.Sync(desired, keys); err != nil {
		t.Fatal(err)
	}
	if n := len(serviceObjects(f)); n != 3000 {
		t.Fatalf("%d per-service chains, want 3000", n)
	}
	if n := len(elements(f, MapServiceIPs)); n != 1000 {
		t.Fatalf("%d service-ips elements", n)
	}

	// touches fails the test if the last transaction wrote an object not named in names.
	touches := func(what string, names ...string) {
		t.Helper()
		for _, l := range lastTx(f) {
			if !slices.ContainsFunc(names, func(n string) bool { return strings.Contains(l, n) }) {
				t.Errorf("%s wrote an unrelated object: %s", what, l)
			}
		}
	}

	// +1 service port: 3 chains, 7 rules, 1 element. Nothing else.
	add := mk(1000)
	desired[add.Key] = add
	if err := p.Sync(desired, []string{add.Key}); err != nil {
		t.Fatal(err)
	}
	sep1, sep2 := SEPChain(add.Key, add.ClusterEndpoints[0].IP, 8080), SEPChain(add.Key, add.ClusterEndpoints[1].IP, 8080)
	f.RLock()
	ops := f.LastTransaction.NumOperations()
	f.RUnlock()
	t.Logf("+1 service port: %d operations:\n%s", ops, strings.Join(lastTx(f), "\n"))
	if ops != 11 {
		t.Errorf("+1 service port: %d operations, want 11 (3 chains, 7 rules, 1 element)", ops)
	}
	touches("+1 service port", SVCChain(add.Key), sep1, sep2)

	// An endpoint change: the svc chain rewritten, the new sep chain added, the old one deleted.
	chg := desired[keys[42]]
	old := chg.ClusterEndpoints[1]
	chg.ClusterEndpoints = []model.Endpoint{chg.ClusterEndpoints[0], ep("10.246.0.42", 8080)}
	chg.ExternalEndpoints = chg.ClusterEndpoints
	if err := p.Sync(desired, []string{chg.Key}); err != nil {
		t.Fatal(err)
	}
	oldSEP, newSEP := SEPChain(chg.Key, old.IP, 8080), SEPChain(chg.Key, addr("10.246.0.42"), 8080)
	t.Logf("endpoint change:\n%s", strings.Join(lastTx(f), "\n"))
	touches("endpoint change", SVCChain(chg.Key), oldSEP, newSEP)
	want(t, "endpoint change", lastTx(f), []string{
		"add chain ip canopy " + newSEP,
		"flush chain ip canopy " + SVCChain(chg.Key),
		"flush chain ip canopy " + oldSEP,
		"add rule ip canopy " + SVCChain(chg.Key) + " ip daddr 10.96.0.43 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
		"add rule ip canopy " + SVCChain(chg.Key) + " numgen random mod 2 == 0 goto " + SEPChain(chg.Key, chg.ClusterEndpoints[0].IP, 8080),
		"add rule ip canopy " + SVCChain(chg.Key) + " goto " + newSEP,
		"add rule ip canopy " + newSEP + " ip saddr 10.246.0.42 jump mark-for-masquerade",
		"add rule ip canopy " + newSEP + " meta l4proto tcp dnat to 10.246.0.42:8080",
		"delete chain ip canopy " + oldSEP,
	})

	// Removing a service port: its chains and its element go, nothing else.
	del := desired[keys[7]]
	delete(desired, del.Key)
	if err := p.Sync(desired, []string{del.Key}); err != nil {
		t.Fatal(err)
	}
	touches("removal", SVCChain(del.Key), SEPChain(del.Key, del.ClusterEndpoints[0].IP, 8080), SEPChain(del.Key, del.ClusterEndpoints[1].IP, 8080), "10.96.0.8 . tcp . 80")
	for _, n := range []string{SVCChain(del.Key), SEPChain(del.Key, del.ClusterEndpoints[0].IP, 8080)} {
		if hasChain(f, n) {
			t.Errorf("chain %s of the removed service port is still there", n)
		}
	}
	if v := elem(f, MapServiceIPs, "10.96.0.8", "tcp", "80"); v != "" {
		t.Errorf("element of the removed service port: %s", v)
	}
	if n := len(serviceObjects(f)); n != 3000 {
		t.Errorf("%d per-service chains, want 3000", n)
	}

	// Nothing changed: no transaction at all.
	f.RLock()
	last := f.LastTransaction
	f.RUnlock()
	if err := p.Sync(desired, []string{keys[3], keys[4]}); err != nil {
		t.Fatal(err)
	}
	f.RLock()
	same := f.LastTransaction == last
	f.RUnlock()
	if !same {
		t.Errorf("an unchanged service port was written: %s", lastTx(f))
	}

	// A full sync (the periodic repair) with nothing changed rewrites the shared chains only.
	all := append(slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return k == del.Key }), add.Key)
	if err := p.Sync(desired, all); err != nil {
		t.Fatal(err)
	}
	f.RLock()
	ops = f.LastTransaction.NumOperations()
	f.RUnlock()
	for _, l := range lastTx(f) {
		if strings.Contains(l, "svc-") || strings.Contains(l, "sep-") || strings.Contains(l, "element ip canopy service-ips") {
			t.Errorf("a repair without drift wrote a service port's object: %s", l)
		}
	}
	t.Logf("repair without drift: %d operations", ops)
}

// TestRestartAdopts: a new proxier on the table of an earlier run keeps it serving, rewrites what keys
// produce, and PruneStale deletes only what no key claims.
func TestRestartAdopts(t *testing.T) {
	f := newFake()
	p1 := New(testCfg, f, nil, nil)
	a := svc("default", "a", "10.96.0.20", 80, ep("10.244.1.10", 8080))
	b := svc("default", "b", "10.96.0.21", 80, ep("10.244.2.10", 8080), ep("10.244.2.11", 8080))
	b.AffinityClientIP, b.AffinityTimeout = true, time.Minute
	b.ExternalIPs = []netip.Addr{addr("203.0.113.21")}
	empty := svc("default", "empty", "10.96.0.22", 80)
	syncAll(t, p1, a, b, empty)
	bObjects := sorted(SVCChain(b.Key), EXTChain(b.Key), SEPChain(b.Key, addr("10.244.2.10"), 8080), SEPChain(b.Key, addr("10.244.2.11"), 8080),
		AffinitySet(b.Key, addr("10.244.2.10"), 8080, time.Minute), AffinitySet(b.Key, addr("10.244.2.11"), 8080, time.Minute))
	aObjects := sorted(SVCChain(a.Key), SEPChain(a.Key, addr("10.244.1.10"), 8080))
	before := f.Dump()

	// Restart: b and empty are gone meanwhile, a is unchanged.
	p2 := New(testCfg, f, nil, nil)
	if err := p2.Start(); err != nil {
		t.Fatal(err)
	}
	if f.Dump() != before {
		t.Errorf("Start changed the table:\nbefore\n%s\nafter\n%s", before, f.Dump())
	}
	if err := p2.PruneStale(); err == nil {
		t.Error("PruneStale before the first full sync")
	}
	syncAll(t, p2, a)
	want(t, "objects after the first sync", serviceObjects(f), sorted(slices.Concat(aObjects, bObjects)...))
	if v := elem(f, MapServiceIPs, "10.96.0.21", "tcp", "80"); v != "goto "+SVCChain(b.Key) {
		t.Errorf("b stopped serving before PruneStale: %q", v)
	}
	// a's chains were found with unknown rules: rewritten (flushed), not added; its element was right.
	tx := strings.Join(lastTx(f), "\n")
	for _, c := range aObjects {
		if !strings.Contains(tx, "flush chain ip canopy "+c) {
			t.Errorf("adopted chain %s not rewritten:\n%s", c, tx)
		}
	}
	if strings.Contains(tx, "element") {
		t.Errorf("a's unchanged element was written:\n%s", tx)
	}

	if err := p2.PruneStale(); err != nil {
		t.Fatal(err)
	}
	tx = strings.Join(lastTx(f), "\n")
	t.Logf("prune:\n%s", tx)
	want(t, "objects after PruneStale", serviceObjects(f), aObjects)
	want(t, "service-ips after PruneStale", elements(f, MapServiceIPs), []string{"10.96.0.20 . tcp . 80 : goto " + SVCChain(a.Key)})
	want(t, "no-endpoint-services after PruneStale", elements(f, MapNoEndpointServices), nil)
	if strings.Contains(tx, "10.96.0.20") || strings.Contains(tx, SVCChain(a.Key)) {
		t.Errorf("PruneStale touched a:\n%s", tx)
	}
	// Nothing left to prune.
	runs := f.runs
	if err := p2.PruneStale(); err != nil || f.runs != runs {
		t.Errorf("second PruneStale: %v, wrote %v", err, f.runs != runs)
	}
}

// TestRestartBeforePruneDeletesService: a key that claimed a chain an earlier run left, then goes, takes the
// earlier run's elements pointing at that chain with it (or deleting the chain would fail).
func TestRestartBeforePruneDeletesService(t *testing.T) {
	f := newFake()
	a := svc("default", "a", "10.96.0.20", 80, ep("10.244.1.10", 8080))
	a.NodePort, a.ExternalIPs = 30020, []netip.Addr{addr("203.0.113.20")}
	syncAll(t, New(testCfg, f, nil, nil), a)
	// Restart: a lost its external IP meanwhile (the earlier element stays unclaimed), then a goes.
	p := New(testCfg, f, nil, nil)
	a2 := *a
	a2.ExternalIPs = nil
	syncAll(t, p, &a2)
	if v := elem(f, MapServiceIPs, "203.0.113.20", "tcp", "80"); v != "goto "+EXTChain(a.Key) {
		t.Fatalf("unclaimed element: %q", v)
	}
	if err := p.Sync(map[string]*model.ServicePort{}, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	want(t, "objects", serviceObjects(f), nil)
	want(t, "service-ips", elements(f, MapServiceIPs), nil)
}

// TestSharedDestination: two service ports with the same external IP and port (hostile or mistaken input)
// do not break the sync: the first keeps it, the other gets it when the first lets go.
func TestSharedDestination(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	a := svc("default", "a", "10.96.0.20", 80, ep("10.244.1.10", 8080))
	b := svc("default", "b", "10.96.0.21", 80, ep("10.244.2.10", 8080))
	a.ExternalIPs = []netip.Addr{addr("203.0.113.5")}
	b.ExternalIPs = a.ExternalIPs
	desired := map[string]*model.ServicePort{a.Key: a, b.Key: b}
	if err := p.Sync(desired, []string{a.Key, b.Key}); err != nil {
		t.Fatal(err)
	}
	if v := elem(f, MapServiceIPs, "203.0.113.5", "tcp", "80"); v != "goto "+EXTChain(a.Key) {
		t.Errorf("shared external IP goes to %q, want a's", v)
	}
	// a drops it: b gets it in the same sync, though only a changed.
	a.ExternalIPs = nil
	if err := p.Sync(desired, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	if v := elem(f, MapServiceIPs, "203.0.113.5", "tcp", "80"); v != "goto "+EXTChain(b.Key) {
		t.Errorf("after a let go, the shared external IP goes to %q, want b's", v)
	}
	// a wants it back: b keeps it. b goes: a gets it.
	a.ExternalIPs = b.ExternalIPs
	if err := p.Sync(desired, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	if v := elem(f, MapServiceIPs, "203.0.113.5", "tcp", "80"); v != "goto "+EXTChain(b.Key) {
		t.Errorf("b lost the external IP it had: %q", v)
	}
	delete(desired, b.Key)
	if err := p.Sync(desired, []string{b.Key}); err != nil {
		t.Fatal(err)
	}
	if v := elem(f, MapServiceIPs, "203.0.113.5", "tcp", "80"); v != "goto "+EXTChain(a.Key) {
		t.Errorf("after b went, the shared external IP goes to %q, want a's", v)
	}
	// An external IP equal to the port's own cluster IP: one element, the cluster one.
	a.ExternalIPs = a.ClusterIPs
	if err := p.Sync(desired, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	want(t, "service-ips", elements(f, MapServiceIPs), []string{"10.96.0.20 . tcp . 80 : goto " + SVCChain(a.Key)})
}

// TestFailedSyncIsRetried: a failed transaction changes nothing; the next Sync reads the table and retries
// the failed keys.
func TestFailedSyncIsRetried(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	a := svc("default", "a", "10.96.0.20", 80, ep("10.244.1.10", 8080))
	b := svc("default", "b", "10.96.0.21", 80, ep("10.244.2.10", 8080))
	desired := map[string]*model.ServicePort{a.Key: a, b.Key: b}
	if err := p.Sync(desired, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	f.fail = func(string) error { return errors.New("nft: boom") }
	if err := p.Sync(desired, []string{b.Key}); err == nil {
		t.Fatal("no error")
	}
	f.fail = nil
	// Someone deleted a's chain meanwhile: the inventory after the failure notices.
	tx := f.NewTransaction()
	tx.Delete(&knftables.Element{Map: MapServiceIPs, Key: []string{"10.96.0.20", "tcp", "80"}})
	tx.Delete(&knftables.Chain{Name: SVCChain(a.Key)})
	if err := f.Fake.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(desired, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	if !hasChain(f, SVCChain(b.Key)) || elem(f, MapServiceIPs, "10.96.0.21", "tcp", "80") == "" {
		t.Error("the failed key was not retried")
	}
	if !hasChain(f, SVCChain(a.Key)) || elem(f, MapServiceIPs, "10.96.0.20", "tcp", "80") == "" {
		t.Error("a's objects deleted behind our back were not restored")
	}
}

// TestDeferredChainDeletion: a kernel that refuses to delete a chain in the transaction that removes its last
// reference (before 6.2) gets the chain flushed now and deleted with the next sync.
func TestDeferredChainDeletion(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	a := svc("default", "a", "10.96.0.20", 80, ep("10.244.1.10", 8080))
	b := svc("default", "b", "10.96.0.21", 80, ep("10.244.2.10", 8080))
	desired := map[string]*model.ServicePort{a.Key: a, b.Key: b}
	if err := p.Sync(desired, []string{a.Key, b.Key}); err != nil {
		t.Fatal(err)
	}
	refuse := true
	f.fail = func(tx string) error {
		if refuse && strings.Contains(tx, "delete chain") {
			return errors.New("Error: Could not process rule: Device or resource busy")
		}
		return nil
	}
	delete(desired, a.Key)
	if err := p.Sync(desired, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	if !hasChain(f, SVCChain(a.Key)) || len(rules(f, SVCChain(a.Key))) != 0 {
		t.Errorf("deferred chain: present %v, rules %v (want present and flushed)", hasChain(f, SVCChain(a.Key)), rules(f, SVCChain(a.Key)))
	}
	if elem(f, MapServiceIPs, "10.96.0.20", "tcp", "80") != "" {
		t.Error("a's element survived")
	}
	refuse = false
	if err := p.Sync(desired, nil); err != nil {
		t.Fatal(err)
	}
	want(t, "objects", serviceObjects(f), sorted(SVCChain(b.Key), SEPChain(b.Key, addr("10.244.2.10"), 8080)))
}

// TestRepair: a full sync after the first one reads the table and repairs only what was changed behind our
// back; after PruneStale it also deletes what nobody owns.
func TestRepair(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	a := svc("default", "a", "10.96.0.20", 80, ep("10.244.1.10", 8080))
	b := svc("default", "b", "10.96.0.21", 80, ep("10.244.2.10", 8080))
	c := svc("default", "c", "10.96.0.22", 80)
	syncAll(t, p, a, b, c)
	if err := p.PruneStale(); err != nil {
		t.Fatal(err)
	}
	// Drift: a's element gone, b's chains gone, a rule added to the services chain, c's reject element
	// changed, a stray chain and element.
	tx := f.NewTransaction()
	tx.Delete(&knftables.Element{Map: MapServiceIPs, Key: []string{"10.96.0.20", "tcp", "80"}})
	tx.Delete(&knftables.Element{Map: MapServiceIPs, Key: []string{"10.96.0.21", "tcp", "80"}})
	tx.Delete(&knftables.Chain{Name: SVCChain(b.Key)})
	tx.Delete(&knftables.Chain{Name: SEPChain(b.Key, addr("10.244.2.10"), 8080)})
	tx.Add(&knftables.Rule{Chain: ChainServices, Rule: "drop"})
	tx.Delete(&knftables.Element{Map: MapNoEndpointServices, Key: []string{"10.96.0.22", "tcp", "80"}})
	tx.Add(&knftables.Element{Map: MapNoEndpointServices, Key: []string{"10.96.0.22", "tcp", "80"}, Value: []string{"drop"}})
	stray := SVCChain("default/stray:/TCP")
	tx.Add(&knftables.Chain{Name: stray})
	tx.Add(&knftables.Element{Map: MapServiceIPs, Key: []string{"10.96.9.9", "tcp", "80"}, Value: []string{"goto " + stray}})
	if err := f.Fake.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	syncAll(t, p, a, b, c)
	got := lastTx(f)
	t.Logf("repair:\n%s", strings.Join(got, "\n"))
	if !slices.Contains(got, "add element ip canopy service-ips { 10.96.0.20 . tcp . 80 : goto "+SVCChain(a.Key)+" }") ||
		!slices.Contains(got, "add chain ip canopy "+SEPChain(b.Key, addr("10.244.2.10"), 8080)) ||
		!slices.Contains(got, "add element ip canopy service-ips { 10.96.0.21 . tcp . 80 : goto "+SVCChain(b.Key)+" }") ||
		!slices.Contains(got, "add element ip canopy no-endpoint-services { 10.96.0.22 . tcp . 80 : goto reject-chain }") ||
		!slices.Contains(got, "delete chain ip canopy "+stray) {
		t.Error("drift not repaired")
	}
	for _, l := range got {
		if strings.Contains(l, SVCChain(a.Key)+" ") && !strings.Contains(l, "element") || strings.Contains(l, SEPChain(a.Key, addr("10.244.1.10"), 8080)) {
			t.Errorf("an intact object was rewritten: %s", l)
		}
	}
	want(t, "services", rules(f, ChainServices), []string{
		"ip daddr . meta l4proto . th dport vmap @service-ips",
		"fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
	})
	want(t, "service-ips", elements(f, MapServiceIPs), []string{
		"10.96.0.20 . tcp . 80 : goto " + SVCChain(a.Key), "10.96.0.21 . tcp . 80 : goto " + SVCChain(b.Key)})
	want(t, "sep", rules(f, SEPChain(b.Key, addr("10.244.2.10"), 8080)), []string{
		"ip saddr 10.244.2.10 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.244.2.10:8080"})

	// The whole table deleted: the repair writes everything again.
	tx = f.NewTransaction()
	tx.Delete(&knftables.Table{})
	if err := f.Fake.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	syncAll(t, p, a, b, c)
	want(t, "objects after the table was deleted", serviceObjects(f), sorted(SVCChain(a.Key), SVCChain(b.Key),
		SEPChain(a.Key, addr("10.244.1.10"), 8080), SEPChain(b.Key, addr("10.244.2.10"), 8080)))
	if len(rules(f, ChainServices)) != 2 || len(elements(f, MapServiceIPs)) != 2 || len(elements(f, MapNoEndpointServices)) != 1 {
		t.Error("table not restored")
	}
}

func TestUDPConntrackCleanup(t *testing.T) {
	p, _, ct := newTest(t, testCfg)
	dns := svc("kube-system", "dns", "10.96.0.53", 53, ep("10.244.1.10", 53), ep("10.244.2.10", 53))
	dns.Key, dns.Protocol = "kube-system/dns:dns/UDP", model.UDP
	dns.NodePort = 30053
	other := svc("default", "other", "10.96.0.99", 80, ep("10.244.9.9", 80))
	syncAll(t, p, dns, other)
	if len(ct.flows) != 0 {
		t.Errorf("flows deleted by the first sync: %v", ct.flows)
	}
	desired := map[string]*model.ServicePort{dns.Key: dns, other.Key: other}
	dns.ClusterEndpoints = dns.ClusterEndpoints[:1]
	dns.ExternalEndpoints = dns.ClusterEndpoints
	if err := p.Sync(desired, []string{dns.Key}); err != nil {
		t.Fatal(err)
	}
	want(t, "flows", flowStrings(ct.flows), []string{"10.96.0.53:53 via 10.244.2.10", "invalid IP:30053 via 10.244.2.10"})

	// From no endpoints to one: flows to the VIP (rejected meanwhile) go.
	ct.flows = nil
	dns.ClusterEndpoints, dns.ExternalEndpoints = nil, nil
	if err := p.Sync(desired, []string{dns.Key}); err != nil {
		t.Fatal(err)
	}
	ct.flows = nil
	dns.ClusterEndpoints = []model.Endpoint{ep("10.244.3.10", 53)}
	dns.ExternalEndpoints = dns.ClusterEndpoints
	if err := p.Sync(desired, []string{dns.Key}); err != nil {
		t.Fatal(err)
	}
	want(t, "flows", flowStrings(ct.flows), []string{"10.96.0.53:53 via invalid IP", "invalid IP:30053 via invalid IP"})
}

func flowStrings(flows []Flow) []string {
	var out []string
	for _, f := range flows {
		out = append(out, fmt.Sprintf("%v:%d via %v", f.OrigDst, f.OrigDstPort, f.ReplySrc))
	}
	slices.Sort(out)
	return out
}

func TestCleanup(t *testing.T) {
	p, f, _ := newTest(t, testCfg)
	syncAll(t, p, svc("default", "a", "10.96.0.20", 80, ep("10.244.1.10", 8080)))
	if err := p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	f.RLock()
	gone := f.Table == nil
	f.RUnlock()
	if !gone {
		t.Errorf("table left:\n%s", f.Dump())
	}
	// Again (nothing there), and from a fresh proxier: no error.
	if err := p.Cleanup(); err != nil {
		t.Error(err)
	}
	if err := New(testCfg, f, nil, nil).Cleanup(); err != nil {
		t.Error(err)
	}
	// The proxier works again afterwards.
	syncAll(t, p, svc("default", "a", "10.96.0.20", 80, ep("10.244.1.10", 8080)))
	if len(elements(f, MapServiceIPs)) != 1 {
		t.Error("no sync after Cleanup")
	}
}
