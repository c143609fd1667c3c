package iptables

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/internal/model"
)

// recorder is a Restorer that records what would be written.
type recorder struct {
	maxChains int
	calls     []restoreCall
	saved     map[string]string // what Save returns per table
	fail      error             // returned (once) by the next Restore
}

type restoreCall struct {
	table string
	data  string
}

func (r *recorder) Restore(table string, data []byte) error {
	if err := r.fail; err != nil {
		r.fail = nil
		return err
	}
	r.calls = append(r.calls, restoreCall{table, string(data)})
	return nil
}

func (r *recorder) MaxChains() int { return r.maxChains }

func (r *recorder) Save(table string) ([]byte, error) { return []byte(r.saved[table]), nil }

// take returns and forgets the restores since the last call, by table.
func (r *recorder) take() map[string]string {
	out := map[string]string{}
	for _, c := range r.calls {
		out[c.table] += c.data
	}
	r.calls = nil
	return out
}

// fakeIPT records the jumps.
type fakeIPT struct{ rules map[string]bool }

func (f *fakeIPT) k(table, chain string, rule []string) string {
	return table + " " + chain + " " + strings.Join(rule, " ")
}
func (f *fakeIPT) Exists(table, chain string, rule ...string) (bool, error) {
	return f.rules[f.k(table, chain, rule)], nil
}
func (f *fakeIPT) Insert(table, chain string, pos int, rule ...string) error {
	if f.rules == nil {
		f.rules = map[string]bool{}
	}
	f.rules[f.k(table, chain, rule)] = true
	return nil
}
func (f *fakeIPT) Append(table, chain string, rule ...string) error {
	return f.Insert(table, chain, 0, rule...)
}
func (f *fakeIPT) DeleteIfExists(table, chain string, rule ...string) error {
	delete(f.rules, f.k(table, chain, rule))
	return nil
}

type fakeCT struct{ flows []Flow }

func (f *fakeCT) DeleteUDP(flows []Flow) error { f.flows = append(f.flows, flows...); return nil }

var (
	podCIDR = netip.MustParsePrefix("10.244.0.0/16")
	testCfg = Config{ClusterCIDRs: []netip.Prefix{podCIDR}}
)

func ep(ip string, port uint16) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: port, Ready: true, Serving: true}
}

func svc(ns, name string, vip string, port uint16, eps ...model.Endpoint) *model.ServicePort {
	return &model.ServicePort{
		Key: ns + "/" + name + ":http/TCP", Namespace: ns, Name: name, PortName: "http", Protocol: model.TCP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr(vip)}, Port: port,
		ClusterEndpoints: eps, ExternalEndpoints: eps,
	}
}

func newTest(cfg Config) (*Proxier, *recorder, *fakeIPT) {
	r, it := &recorder{saved: map[string]string{}}, &fakeIPT{}
	return New(cfg, r, it, nil, nil), r, it
}

func syncOne(t *testing.T, p *Proxier, sps ...*model.ServicePort) {
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

// chainRules returns the "-A chain" lines of chain in a restore input.
func chainRules(data, chain string) []string {
	var out []string
	for _, l := range strings.Split(data, "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, l)
		}
	}
	return out
}

// declared lists the chains a restore input declares (flushes).
func declared(data string) []string {
	var out []string
	for _, l := range strings.Split(data, "\n") {
		if strings.HasPrefix(l, ":") {
			out = append(out, strings.Fields(l[1:])[0])
		}
	}
	return out
}

func deleted(data string) []string {
	var out []string
	for _, l := range strings.Split(data, "\n") {
		if name, ok := strings.CutPrefix(l, "-X "); ok {
			out = append(out, name)
		}
	}
	return out
}

func wantLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got  %s\n want %s", what, strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
}

func TestClusterIPTwoEndpoints(t *testing.T) {
	p, r, it := newTest(testCfg)
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080), ep("10.244.2.10", 8080))
	syncOne(t, p, sp)
	w := r.take()
	nat := w["nat"]
	svcC, sep1, sep2 := SVCChain(sp.Key), SEPChain(sp.Key, netip.MustParseAddr("10.244.1.10"), 8080), SEPChain(sp.Key, netip.MustParseAddr("10.244.2.10"), 8080)
	t.Logf("nat restore:\n%s", nat)
	wantLines(t, "SVC chain", chainRules(nat, svcC), []string{
		"-A " + svcC + ` ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http/TCP cluster IP" -m tcp --dport 80 -j CANOPY-MARK-MASQ`,
		"-A " + svcC + " -m statistic --mode random --probability 0.5000000000 -j " + sep1,
		"-A " + svcC + " -j " + sep2,
	})
	wantLines(t, "SEP chain", chainRules(nat, sep1), []string{
		"-A " + sep1 + " -s 10.244.1.10/32 -j CANOPY-MARK-MASQ",
		"-A " + sep1 + " -p tcp -j DNAT --to-destination 10.244.1.10:8080",
	})
	wantLines(t, "CANOPY-SERVICES", chainRules(nat, ChainServices), []string{
		"-A CANOPY-SERVICES -d 10.96.0.10/32 -p tcp " + `-m comment --comment "default/web:http/TCP cluster IP" -m tcp --dport 80 -j ` + svcC,
		`-A CANOPY-SERVICES -m comment --comment "canopy service nodeports; must be the last rule of this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j CANOPY-NODEPORTS`,
	})
	wantLines(t, "CANOPY-MARK-MASQ", chainRules(nat, ChainMarkMasq), []string{"-A CANOPY-MARK-MASQ -j MARK --or-mark 0x4000"})
	if !strings.HasPrefix(nat, "*nat\n") || !strings.HasSuffix(nat, "COMMIT\n") {
		t.Errorf("not a restore input:\n%s", nat)
	}
	if got := chainRules(w["filter"], ChainFilter); len(got) != 0 {
		t.Errorf("filter rules for a service with endpoints: %v", got)
	}
	if len(it.rules) != len(jumps) {
		t.Errorf("%d jumps, want %d: %v", len(it.rules), len(jumps), it.rules)
	}
	// Three endpoints: 1/3, 1/2, rest.
	sp.ClusterEndpoints = append(sp.ClusterEndpoints, ep("10.244.3.10", 8080))
	syncOne(t, p, sp)
	var probs []string
	for _, l := range chainRules(r.take()["nat"], svcC) {
		if _, after, ok := strings.Cut(l, "--probability "); ok {
			probs = append(probs, strings.Fields(after)[0])
		}
	}
	wantLines(t, "probabilities", probs, []string{"0.3333333333", "0.5000000000"})
}

func TestAffinity(t *testing.T) {
	p, r, _ := newTest(testCfg)
	sp := svc("default", "sticky", "10.96.0.13", 80, ep("10.244.1.10", 8080), ep("10.244.2.10", 8080))
	sp.AffinityClientIP, sp.AffinityTimeout = true, 30*time.Second
	syncOne(t, p, sp)
	nat := r.take()["nat"]
	svcC, sep1, sep2 := SVCChain(sp.Key), SEPChain(sp.Key, netip.MustParseAddr("10.244.1.10"), 8080), SEPChain(sp.Key, netip.MustParseAddr("10.244.2.10"), 8080)
	wantLines(t, "SVC chain", chainRules(nat, svcC)[1:], []string{
		"-A " + svcC + " -m recent --name " + sep1 + " --rcheck --seconds 30 --reap -j " + sep1,
		"-A " + svcC + " -m recent --name " + sep2 + " --rcheck --seconds 30 --reap -j " + sep2,
		"-A " + svcC + " -m statistic --mode random --probability 0.5000000000 -j " + sep1,
		"-A " + svcC + " -j " + sep2,
	})
	wantLines(t, "SEP chain", chainRules(nat, sep2), []string{
		"-A " + sep2 + " -s 10.244.2.10/32 -j CANOPY-MARK-MASQ",
		"-A " + sep2 + " -p tcp -m recent --name " + sep2 + " --set -j DNAT --to-destination 10.244.2.10:8080",
	})
}

func TestNodePortAndExternalIPClusterPolicy(t *testing.T) {
	p, r, _ := newTest(testCfg)
	sp := svc("default", "np", "10.96.0.20", 80, ep("10.244.1.10", 8080), ep("10.244.2.10", 8080))
	sp.NodePort = 30080
	sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.10")}
	sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.51.100.7")}
	syncOne(t, p, sp)
	nat := r.take()["nat"]
	svcC, extC := SVCChain(sp.Key), EXTChain(sp.Key)
	wantLines(t, "EXT chain", chainRules(nat, extC), []string{
		"-A " + extC + ` -m comment --comment "masquerade traffic for default/np:http/TCP external destinations" -j CANOPY-MARK-MASQ`,
		"-A " + extC + " -j " + svcC,
	})
	wantLines(t, "CANOPY-NODEPORTS", chainRules(nat, ChainNodePorts), []string{
		`-A CANOPY-NODEPORTS -p tcp -m comment --comment "default/np:http/TCP" -m tcp --dport 30080 -j ` + extC,
	})
	services := chainRules(nat, ChainServices)
	wantLines(t, "CANOPY-SERVICES", services[:3], []string{
		"-A CANOPY-SERVICES -d 10.96.0.20/32 -p tcp " + `-m comment --comment "default/np:http/TCP cluster IP" -m tcp --dport 80 -j ` + svcC,
		"-A CANOPY-SERVICES -d 203.0.113.10/32 -p tcp " + `-m comment --comment "default/np:http/TCP external IP" -m tcp --dport 80 -j ` + extC,
		"-A CANOPY-SERVICES -d 198.51.100.7/32 -p tcp " + `-m comment --comment "default/np:http/TCP loadbalancer IP" -m tcp --dport 80 -j ` + extC,
	})
	if last := services[len(services)-1]; !strings.HasSuffix(last, "-j CANOPY-NODEPORTS") {
		t.Errorf("last rule of CANOPY-SERVICES is %q, want the jump to CANOPY-NODEPORTS", last)
	}

	// Node port addresses: the jump to CANOPY-NODEPORTS per prefix, or per node IP.
	for _, tc := range []struct {
		cfg  Config
		want []string
	}{
		{Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
			[]string{"-d 192.0.2.0/24 -m addrtype --dst-type LOCAL -j CANOPY-NODEPORTS"}},
		{Config{NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}},
			[]string{"-d 10.0.0.1/32 -j CANOPY-NODEPORTS"}},
	} {
		p, r, _ := newTest(tc.cfg)
		syncOne(t, p, sp)
		var got []string
		for _, l := range chainRules(r.take()["nat"], ChainServices) {
			if strings.HasSuffix(l, "-j CANOPY-NODEPORTS") {
				got = append(got, l[strings.Index(l, `chain" `)+len(`chain" `):])
			}
		}
		wantLines(t, fmt.Sprint(tc.cfg), got, tc.want)
	}
}

func TestExternalPolicyLocal(t *testing.T) {
	p, r, _ := newTest(testCfg)
	local := ep("10.244.1.10", 8080)
	local.Local = true
	sp := svc("default", "local", "10.96.0.30", 80, local, ep("10.244.2.10", 8080))
	sp.NodePort, sp.ExternalPolicyLocal = 30081, true
	sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.11")}
	sp.ExternalEndpoints = []model.Endpoint{local}
	syncOne(t, p, sp)
	w := r.take()
	nat := w["nat"]
	svcC, extC, sepL := SVCChain(sp.Key), EXTChain(sp.Key), SEPChain(sp.Key, local.IP, 8080)
	wantLines(t, "EXT chain", chainRules(nat, extC), []string{
		"-A " + extC + ` -s 10.244.0.0/16 -m comment --comment "pod traffic for default/local:http/TCP external destinations" -j ` + svcC,
		"-A " + extC + ` -m comment --comment "masquerade LOCAL traffic for default/local:http/TCP external destinations" -m addrtype --src-type LOCAL -j CANOPY-MARK-MASQ`,
		"-A " + extC + ` -m comment --comment "route LOCAL traffic for default/local:http/TCP external destinations" -m addrtype --src-type LOCAL -j ` + svcC,
		"-A " + extC + " -j " + sepL,
	})
	if strings.Contains(strings.Join(chainRules(nat, extC), "\n"), "-j CANOPY-MARK-MASQ\n-A "+extC+" -j") {
		t.Error("external traffic marked for masquerade")
	}
	if got := chainRules(w["filter"], ChainFilter); len(got) != 0 {
		t.Errorf("filter rules: %v", got)
	}

	// No local endpoint: external traffic is dropped in filter; pods and the node still reach the service.
	sp.ExternalEndpoints = nil
	syncOne(t, p, sp)
	w = r.take()
	if got := chainRules(w["nat"], extC); len(got) != 3 {
		t.Errorf("EXT chain without local endpoints: %v", got)
	}
	if d := deleted(w["nat"]); len(d) != 0 {
		t.Errorf("deleted %v: the local endpoint still serves cluster traffic", d)
	}
	wantLines(t, "filter", chainRules(w["filter"], ChainFilter), []string{
		`-A CANOPY-SERVICES-FILTER -d 203.0.113.11/32 -p tcp -m comment --comment "default/local:http/TCP has no local endpoints" -m tcp --dport 80 -j DROP`,
		`-A CANOPY-SERVICES-FILTER -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -p tcp -m comment --comment "default/local:http/TCP has no local endpoints" -m tcp --dport 30081 -j DROP`,
	})
}

func TestNoEndpointsRejects(t *testing.T) {
	p, r, _ := newTest(testCfg)
	sp := svc("default", "empty", "10.96.0.11", 80)
	sp.NodePort = 30090
	other := svc("default", "other", "10.96.0.99", 80, ep("10.244.9.9", 80)) // so the next sync is not a full one
	syncOne(t, p, sp, other)
	w := r.take()
	for _, c := range declared(w["nat"]) {
		if perServiceChain.MatchString(c) && strings.HasSuffix(c, SVCChain(sp.Key)[len(prefixSVC):]) {
			t.Errorf("per-service chain %s for a service without endpoints", c)
		}
	}
	if got := chainRules(w["nat"], ChainServices); len(got) != 2 || strings.Contains(got[0], "empty") {
		t.Errorf("CANOPY-SERVICES: %v", got)
	}
	wantLines(t, "filter", chainRules(w["filter"], ChainFilter), []string{
		`-A CANOPY-SERVICES-FILTER -d 10.96.0.11/32 -p tcp -m comment --comment "default/empty:http/TCP has no endpoints" -m tcp --dport 80 -j CANOPY-SVC-REJECT`,
		`-A CANOPY-SERVICES-FILTER -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -p tcp -m comment --comment "default/empty:http/TCP has no endpoints" -m tcp --dport 30090 -j CANOPY-SVC-REJECT`,
	})
	wantLines(t, "reject chain", chainRules(w["filter"], ChainReject), []string{
		`-A CANOPY-SVC-REJECT -p tcp -m comment --comment "service without endpoints" -j REJECT --reject-with tcp-reset`,
		`-A CANOPY-SVC-REJECT -m comment --comment "service without endpoints" -j REJECT --reject-with icmp-port-unreachable`,
	})

	// Endpoints arrive: DNAT in, reject out.
	sp.ClusterEndpoints = []model.Endpoint{ep("10.244.1.10", 8080)}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	syncOne(t, p, sp)
	w = r.take()
	wantLines(t, "filter edits", dispatchEdits(w["filter"]), []string{
		`-D CANOPY-SERVICES-FILTER -d 10.96.0.11/32 -p tcp -m comment --comment "default/empty:http/TCP has no endpoints" -m tcp --dport 80 -j CANOPY-SVC-REJECT`,
		`-D CANOPY-SERVICES-FILTER -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -p tcp -m comment --comment "default/empty:http/TCP has no endpoints" -m tcp --dport 30090 -j CANOPY-SVC-REJECT`,
	})
	wantLines(t, "nat edits", dispatchEdits(w["nat"]), []string{
		"-I CANOPY-SERVICES 1 -d 10.96.0.11/32 -p tcp " + `-m comment --comment "default/empty:http/TCP cluster IP" -m tcp --dport 80 -j ` + SVCChain(sp.Key),
		`-A CANOPY-NODEPORTS -p tcp -m comment --comment "default/empty:http/TCP" -m tcp --dport 30090 -j ` + EXTChain(sp.Key),
	})
	if got := chainRules(w["nat"], SVCChain(sp.Key)); len(got) != 2 {
		t.Errorf("SVC chain: %v", got)
	}
}

func TestMasquerade(t *testing.T) {
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080))
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MasqueradeAll: true, ClusterCIDRs: []netip.Prefix{podCIDR}}, `-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http/TCP cluster IP" -m tcp --dport 80 -j CANOPY-MARK-MASQ`},
		{Config{ClusterCIDRs: []netip.Prefix{podCIDR, netip.MustParsePrefix("10.245.0.0/16")}}, `-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http/TCP cluster IP" -m tcp --dport 80 -j CANOPY-MASQ-NONPOD`},
		{Config{}, `-j ` + SEPChain(sp.Key, netip.MustParseAddr("10.244.1.10"), 8080)},
	} {
		p, r, _ := newTest(tc.cfg)
		syncOne(t, p, sp)
		nat := r.take()["nat"]
		if got := chainRules(nat, SVCChain(sp.Key)); got[0] != "-A "+SVCChain(sp.Key)+" "+tc.want {
			t.Errorf("%+v: first SVC rule %q, want %q", tc.cfg, got[0], tc.want)
		}
		if len(tc.cfg.ClusterCIDRs) == 2 {
			wantLines(t, "non-pod masquerade", chainRules(nat, ChainMasqNonPod), []string{
				"-A CANOPY-MASQ-NONPOD -s 10.244.0.0/16 -j RETURN",
				"-A CANOPY-MASQ-NONPOD -s 10.245.0.0/16 -j RETURN",
				"-A CANOPY-MASQ-NONPOD -j CANOPY-MARK-MASQ",
			})
		}
	}
}

func TestTerminatingEndpoints(t *testing.T) {
	p, r, _ := newTest(testCfg)
	draining := model.Endpoint{IP: netip.MustParseAddr("10.244.2.10"), Port: 8080, Serving: true, Terminating: true}
	notReady := model.Endpoint{IP: netip.MustParseAddr("10.244.3.10"), Port: 8080}
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080), draining, notReady)
	syncOne(t, p, sp)
	nat := r.take()["nat"]
	if strings.Contains(nat, "10.244.2.10") || strings.Contains(nat, "10.244.3.10") {
		t.Errorf("a terminating or unready endpoint gets new connections while a ready one exists:\n%s", nat)
	}
	sp.ClusterEndpoints = []model.Endpoint{draining, notReady}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	syncOne(t, p, sp)
	nat = r.take()["nat"]
	if !strings.Contains(nat, "DNAT --to-destination 10.244.2.10:8080") || strings.Contains(nat, "10.244.3.10") {
		t.Errorf("without ready endpoints the serving terminating one must be used (and only it):\n%s", nat)
	}
}

var chainDecl = regexp.MustCompile(`(?m)^:(CANOPY-(?:SVC|SEP|EXT)-\S+)`)

// TestIncremental: 10,000 services x 2 endpoints, then each kind of change writes only its own chains.
func TestIncremental(t *testing.T) {
	p, r, _ := newTest(testCfg)
	desired := map[string]*model.ServicePort{}
	var keys []string
	mk := func(i int) *model.ServicePort {
		return svc(fmt.Sprintf("ns%d", i/100), fmt.Sprintf("svc%d", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80,
			ep(fmt.Sprintf("10.244.%d.%d", i/250, i%250+1), 8080), ep(fmt.Sprintf("10.245.%d.%d", i/250, i%250+1), 8080))
	}
	for i := range 10000 {
		sp := mk(i)
		desired[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	start := time.Now()
	if err := p.Sync(desired, keys); err != nil {
		t.Fatal(err)
	}
	first := r.take()
	t.Logf("full sync of 10000 services: %v to generate, nat %d bytes, %d chains", time.Since(start), len(first["nat"]), len(chainDecl.FindAllString(first["nat"], -1)))
	if n := len(chainDecl.FindAllString(first["nat"], -1)); n != 30000 {
		t.Fatalf("first sync declared %d per-service chains, want 30000", n)
	}

	perService := func(data string) []string {
		var out []string
		for _, m := range chainDecl.FindAllStringSubmatch(data, -1) {
			out = append(out, m[1])
		}
		slices.Sort(out)
		return out
	}
	sorted := func(s ...string) []string { slices.Sort(s); return s }

	// +1 service: its 3 chains and the dispatch chains, nothing else.
	add := mk(10000)
	desired[add.Key] = add
	if err := p.Sync(desired, []string{add.Key}); err != nil {
		t.Fatal(err)
	}
	w := r.take()
	nat := w["nat"]
	sep1, sep2 := SEPChain(add.Key, add.ClusterEndpoints[0].IP, 8080), SEPChain(add.Key, add.ClusterEndpoints[1].IP, 8080)
	wantLines(t, "chains written for +1 service", perService(nat), sorted(SVCChain(add.Key), sep1, sep2))
	wantLines(t, "shared chains flushed for +1 service", sharedDeclared(nat), nil)
	wantLines(t, "dispatch edits for +1 service", dispatchEdits(nat), []string{
		"-I CANOPY-SERVICES 1 -d 10.96.40.1/32 -p tcp " + `-m comment --comment "ns100/svc10000:http/TCP cluster IP" -m tcp --dport 80 -j ` + SVCChain(add.Key),
	})
	if _, ok := w["filter"]; ok {
		t.Errorf("filter rewritten for a service with endpoints:\n%s", w["filter"])
	}
	for _, l := range strings.Split(nat, "\n") {
		if strings.HasPrefix(l, "-A ") && !strings.HasPrefix(l, "-A "+SVCChain(add.Key)+" ") && !strings.HasPrefix(l, "-A "+sep1+" ") && !strings.HasPrefix(l, "-A "+sep2+" ") {
			t.Fatalf("rule of another chain written: %s", l)
		}
	}
	t.Logf("+1 service: nat %d bytes (full: %d):\n%s", len(nat), len(first["nat"]), nat)
	if len(nat) > 2000 {
		t.Errorf("+1 service wrote %d bytes", len(nat))
	}

	// An endpoint change: the SVC chain, the new SEP, the old SEP deleted; the other SEP and the dispatch
	// chains untouched.
	chg := desired[keys[42]]
	old := chg.ClusterEndpoints[1]
	chg.ClusterEndpoints = []model.Endpoint{chg.ClusterEndpoints[0], ep("10.246.0.42", 8080)}
	chg.ExternalEndpoints = chg.ClusterEndpoints
	if err := p.Sync(desired, []string{chg.Key}); err != nil {
		t.Fatal(err)
	}
	w = r.take()
	nat = w["nat"]
	oldSEP, newSEP := SEPChain(chg.Key, old.IP, 8080), SEPChain(chg.Key, netip.MustParseAddr("10.246.0.42"), 8080)
	wantLines(t, "chains written for an endpoint change", perService(nat), sorted(SVCChain(chg.Key), newSEP, oldSEP))
	wantLines(t, "chains deleted", deleted(nat), []string{oldSEP})
	wantLines(t, "shared chains", sharedDeclared(nat), nil)
	wantLines(t, "dispatch edits", dispatchEdits(nat), nil)
	if _, ok := w["filter"]; ok {
		t.Error("filter rewritten for an endpoint change")
	}
	t.Logf("endpoint change: nat %d bytes:\n%s", len(nat), nat)

	// Removing a service: its chains flushed and deleted, the dispatch chains rewritten.
	del := desired[keys[7]]
	delete(desired, del.Key)
	if err := p.Sync(desired, []string{del.Key}); err != nil {
		t.Fatal(err)
	}
	nat = r.take()["nat"]
	gone := sorted(SVCChain(del.Key), SEPChain(del.Key, del.ClusterEndpoints[0].IP, 8080), SEPChain(del.Key, del.ClusterEndpoints[1].IP, 8080))
	wantLines(t, "chains flushed for a removal", perService(nat), gone)
	wantLines(t, "chains deleted for a removal", sorted(deleted(nat)...), gone)
	wantLines(t, "dispatch edits for a removal", dispatchEdits(nat), []string{
		"-D CANOPY-SERVICES -d 10.96.0.8/32 -p tcp " + `-m comment --comment "ns0/svc7:http/TCP cluster IP" -m tcp --dport 80 -j ` + SVCChain(del.Key),
	})
	if i, j := strings.Index(nat, "-D CANOPY-SERVICES"), strings.Index(nat, "-X "); i < 0 || j < i {
		t.Errorf("chains deleted before the reference to them:\n%s", nat)
	}

	// A sync of an unchanged service writes nothing.
	if err := p.Sync(desired, []string{keys[9]}); err != nil {
		t.Fatal(err)
	}
	if w := r.take(); len(w) != 0 {
		t.Errorf("unchanged service rewrote %v", w)
	}
}

// dispatchEdits lists the in-place edits (-I, -D, -A) of the shared dispatch chains.
func dispatchEdits(data string) []string {
	var out []string
	for _, l := range strings.Split(data, "\n") {
		for _, c := range []string{ChainServices, ChainNodePorts, ChainFilter} {
			for _, op := range []string{"-I ", "-D ", "-A "} {
				if strings.HasPrefix(l, op+c+" ") {
					out = append(out, l)
				}
			}
		}
	}
	return out
}

// sharedDeclared lists the shared chains a restore input flushes.
func sharedDeclared(data string) []string {
	var out []string
	for _, c := range declared(data) {
		if !perServiceChain.MatchString(c) {
			out = append(out, c)
		}
	}
	return out
}

func TestStaleChainsOfAPreviousRun(t *testing.T) {
	p, r, _ := newTest(testCfg)
	sp := svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080))
	keep, drop := SVCChain(sp.Key), SVCChain("default/gone:http/TCP")
	r.saved["nat"] = "*nat\n:PREROUTING ACCEPT [0:0]\n:CANOPY-SERVICES - [0:0]\n:" + keep + " - [0:0]\n:" + drop + " - [0:0]\n:CANOPY-SVC-REJECT - [0:0]\nCOMMIT\n"
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	// Start creates the missing shared chains, leaving the existing ones (still serving) alone.
	w := r.take()
	wantLines(t, "created by Start", declared(w["nat"]), []string{ChainNodePorts, ChainMarkMasq, ChainPostrouting})
	if strings.Contains(w["nat"], "-A ") || strings.Contains(w["nat"], "-X ") {
		t.Errorf("Start wrote rules:\n%s", w["nat"])
	}
	wantLines(t, "created by Start", declared(w["filter"]), []string{ChainFilter, ChainReject})
	syncOne(t, p, sp)
	nat := r.take()["nat"]
	wantLines(t, "deleted", deleted(nat), []string{drop})
	if !slices.Contains(declared(nat), keep) || len(chainRules(nat, keep)) == 0 {
		t.Errorf("%s not adopted", keep)
	}
	// Later syncs do not touch them again.
	sp2 := svc("default", "other", "10.96.0.12", 80, ep("10.244.1.11", 8080))
	syncOne(t, p, sp2)
	if d := deleted(r.take()["nat"]); len(d) != 0 {
		t.Errorf("deleted %v", d)
	}
}

func TestFailedRestoreIsRetried(t *testing.T) {
	p, r, _ := newTest(testCfg)
	a := svc("default", "a", "10.96.0.10", 80, ep("10.244.1.10", 8080))
	b := svc("default", "b", "10.96.0.11", 80, ep("10.244.1.11", 8080))
	desired := map[string]*model.ServicePort{a.Key: a}
	if err := p.Sync(desired, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	r.take()
	desired[b.Key] = b
	r.fail = errors.New("boom")
	if err := p.Sync(desired, []string{b.Key}); err == nil {
		t.Fatal("no error")
	}
	// The next sync, about something else entirely, brings b in too.
	a.ClusterEndpoints = append(a.ClusterEndpoints, ep("10.244.2.10", 8080))
	if err := p.Sync(desired, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	nat := r.take()["nat"]
	if !slices.Contains(declared(nat), SVCChain(b.Key)) || !strings.Contains(nat, "-j "+SVCChain(b.Key)) {
		t.Errorf("failed key not retried:\n%s", nat)
	}
}

func TestUDPConntrackCleanup(t *testing.T) {
	r, ct := &recorder{}, &fakeCT{}
	p := New(testCfg, r, &fakeIPT{}, ct, nil)
	sp := svc("default", "dns", "10.96.0.10", 53, ep("10.244.1.10", 5353), ep("10.244.2.10", 5353))
	sp.Key, sp.Protocol, sp.NodePort = "default/dns:dns/UDP", model.UDP, 30053
	syncOne(t, p, sp)
	if len(ct.flows) != 0 {
		t.Errorf("first sync deleted flows: %v", ct.flows)
	}
	sp.ClusterEndpoints = sp.ClusterEndpoints[:1]
	sp.ExternalEndpoints = sp.ClusterEndpoints
	syncOne(t, p, sp)
	gone := netip.MustParseAddr("10.244.2.10")
	want := []Flow{{OrigDst: netip.MustParseAddr("10.96.0.10"), OrigDstPort: 53, ReplySrc: gone}, {OrigDstPort: 30053, ReplySrc: gone}}
	if !slices.Equal(ct.flows, want) {
		t.Errorf("flows %v, want %v", ct.flows, want)
	}
	// No endpoints, then endpoints again: flows to the VIP recorded meanwhile go.
	ct.flows = nil
	sp.ClusterEndpoints, sp.ExternalEndpoints = nil, nil
	syncOne(t, p, sp)
	ct.flows = nil
	sp.ClusterEndpoints = []model.Endpoint{ep("10.244.1.10", 5353)}
	sp.ExternalEndpoints = sp.ClusterEndpoints
	syncOne(t, p, sp)
	want = []Flow{{OrigDst: netip.MustParseAddr("10.96.0.10"), OrigDstPort: 53}, {OrigDstPort: 30053}}
	if !slices.Equal(ct.flows, want) {
		t.Errorf("flows %v, want %v", ct.flows, want)
	}
}

func TestCleanup(t *testing.T) {
	p, r, it := newTest(testCfg)
	syncOne(t, p, svc("default", "web", "10.96.0.10", 80, ep("10.244.1.10", 8080)))
	r.take()
	sep := SEPChain("x", netip.MustParseAddr("10.0.0.1"), 1)
	r.saved["nat"] = "*nat\n:PREROUTING ACCEPT [0:0]\n:CANOPY-SERVICES - [0:0]\n:CANOPY-POSTROUTING - [0:0]\n:" + sep + " - [0:0]\n:OTHER - [0:0]\nCOMMIT\n"
	r.saved["filter"] = "*filter\n:INPUT ACCEPT [0:0]\n:CANOPY-SVC-REJECT - [0:0]\n:CANOPY-SERVICES-FILTER - [0:0]\nCOMMIT\n"
	if err := p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	w := r.take()
	wantLines(t, "nat deleted", deleted(w["nat"]), []string{ChainServices, sep}) // not egress's CANOPY-POSTROUTING
	wantLines(t, "filter deleted", deleted(w["filter"]), []string{ChainReject, ChainFilter})
	if len(it.rules) != 0 {
		t.Errorf("jumps left: %v", it.rules)
	}
}

// TestChunkedRestore: with a limit on chains per input, a large sync is split: statics in the first input,
// each service port's chains together, the dispatch chains and deletions in the last.
func TestChunkedRestore(t *testing.T) {
	p, r, _ := newTest(testCfg)
	r.maxChains = 1000
	desired, keys := benchServices(10000)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	r.calls = nil
	if err := p.Sync(desired, keys); err != nil {
		t.Fatal(err)
	}
	if len(r.calls) < 30 || len(r.calls) > 32 {
		t.Fatalf("%d restores for 30,000 chains, limit 1,000", len(r.calls))
	}
	seen := map[string]int{}
	for i, c := range r.calls[:len(r.calls)-1] { // the last one is filter
		if c.table != "nat" {
			t.Fatalf("restore %d is %s", i, c.table)
		}
		per := chainDecl.FindAllString(c.data, -1)
		if len(per) > 1000 {
			t.Errorf("restore %d declares %d per-service chains", i, len(per))
		}
		for _, d := range per {
			seen[d[1:]] = i
		}
		if has := slices.Contains(declared(c.data), ChainMarkMasq); has != (i == 0) {
			t.Errorf("restore %d: statics %v", i, has)
		}
		if has := slices.Contains(declared(c.data), ChainServices); has != (i == len(r.calls)-2) {
			t.Errorf("restore %d: dispatch %v", i, has)
		}
	}
	if len(seen) != 30000 {
		t.Errorf("%d chains written", len(seen))
	}
	for _, k := range keys[:100] {
		sp := desired[k]
		i := seen[SVCChain(k)]
		for _, e := range sp.ClusterEndpoints {
			if seen[SEPChain(k, e.IP, e.Port)] != i {
				t.Errorf("%s: chains split over restores", k)
			}
		}
	}
}
