package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func addr(s string) netip.Addr      { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix     { return netip.MustParsePrefix(s) }
func lp(key, ip string) LocalPod    { return LocalPod{Key: key, IP: addr(ip)} }
func ruleChains(st *State) []string { return chainNames(st, prefixRules) }

func chainNames(st *State, prefix string) []string {
	var r []string
	for n := range st.Chains {
		if strings.HasPrefix(n, prefix) {
			r = append(r, n)
		}
	}
	slices.Sort(r)
	return r
}

var opts = Options{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00::/64")}}

func TestBuildFixedChains(t *testing.T) {
	st := Build(nil, nil, opts)
	if got := st.Sets[SetLocal].Members; !slices.Equal(got, []string{"10.244.1.0/24"}) {
		t.Errorf("local set %v: want the IPv4 pod CIDR only", got)
	}
	for _, c := range staticChains {
		if len(st.Chains[c]) == 0 {
			t.Errorf("fixed chain %s is empty", c)
		}
	}
	if got := st.Chains[ChainDenyIn]; !slices.Equal(got, []string{comment(commentDenyIn) + " -j DROP"}) {
		t.Errorf("deny chain %q", got)
	}
	rej := Build(nil, nil, Options{Reject: true, Log: "nflog"})
	if got := strings.Join(rej.Chains[ChainDenyIn], "\n"); !strings.Contains(got, "NFLOG --nflog-group 100") ||
		!strings.Contains(got, "-p tcp "+comment(commentDenyIn)+" -j REJECT --reject-with tcp-reset") ||
		!strings.Contains(got, "REJECT --reject-with icmp-port-unreachable") {
		t.Errorf("reject+nflog deny chain:\n%s", got)
	}
	if got := strings.Join(Build(nil, nil, Options{Log: "log"}).Chains[ChainDenyOut], "\n"); !strings.Contains(got, `-m limit --limit 10/second --limit-burst 20 -j LOG --log-prefix "canopy-policy-out: "`) {
		t.Errorf("log deny chain:\n%s", got)
	}
}

func TestBuildPods(t *testing.T) {
	client := Peer{Selector: "ns=a/pod(role=client)", PodIPs: []netip.Addr{addr("10.244.2.5"), addr("10.244.1.11"), addr("fd00::5")}}
	allowClient := Rule{Peers: []Peer{client}, Ports: []PortRule{
		{Protocol: corev1.ProtocolTCP, Port: 80, EndPort: 80},
		{Protocol: corev1.ProtocolUDP, Port: 5000, EndPort: 5010},
		{Protocol: corev1.ProtocolSCTP},
	}, Policy: "a/allow-client"}
	fws := map[string]*PodFirewall{
		"a/web1":  {IngressIsolated: true, Ingress: []Rule{allowClient}},
		"a/web2":  {IngressIsolated: true, Ingress: []Rule{allowClient}},
		"a/deny":  {IngressIsolated: true, EgressIsolated: true},
		"a/open":  {},
		"a/twin1": {IngressIsolated: true},
		"a/twin2": {},
		"a/v6":    {IngressIsolated: true},
		"a/egress": {EgressIsolated: true, Egress: []Rule{
			{Peers: []Peer{{CIDR: pfx("10.0.0.0/8"), Except: []netip.Prefix{pfx("10.1.0.0/16"), pfx("fd00::/8")}, Selector: "cidr(10.0.0.0/8 -10.1.0.0/16 -fd00::/8)"}}, Policy: "a/e1"},
			{Peers: []Peer{{CIDR: pfx("0.0.0.0/0"), Except: []netip.Prefix{pfx("192.168.0.0/16")}, Selector: "cidr(0.0.0.0/0 -192.168.0.0/16)"}}, Policy: "a/e2"},
			{Peers: []Peer{{CIDR: pfx("172.16.0.0/12"), Except: []netip.Prefix{pfx("172.0.0.0/8")}, Selector: "cidr(whole)"}}, Policy: "a/e3"},
			{Peers: []Peer{{CIDR: pfx("fd00::/8"), Selector: "cidr(v6)"}}, Policy: "a/e4"},
			{Peers: []Peer{{Any: true, Selector: "any"}}, Ports: []PortRule{{Protocol: corev1.ProtocolUDP, Port: 53, EndPort: 53}}, Policy: "a/dns"},
		}},
	}
	pods := []LocalPod{lp("a/web1", "10.244.1.10"), lp("a/web2", "10.244.1.11"), lp("a/deny", "10.244.1.12"),
		lp("a/open", "10.244.1.13"), lp("a/twin1", "10.244.1.14"), lp("a/twin2", "10.244.1.14"),
		lp("a/v6", "fd00::7"), lp("a/egress", "10.244.1.15"), {Key: "a/pending"}}
	st := Build(fws, pods, opts)

	wantReady := []string{"10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13", "10.244.1.15"}
	var ready []string
	for _, a := range sortedReady(st.Ready) {
		ready = append(ready, a.String())
	}
	if !slices.Equal(ready, wantReady) {
		t.Errorf("ready %v, want %v (twins share an address: unready; v6 and address-less pods: none)", ready, wantReady)
	}
	if !slices.Equal(st.Conflict, []netip.Addr{addr("10.244.1.14")}) {
		t.Errorf("conflicts %v", st.Conflict)
	}

	in1, _ := PodChains("a/web1")
	in2, _ := PodChains("a/web2")
	if st.Ingress[addr("10.244.1.10")] != in1 || st.Ingress[addr("10.244.1.11")] != in2 || len(st.Ingress) != 3 {
		t.Errorf("ingress dispatch %v", st.Ingress)
	}
	if st.Chains[in1][1] != st.Chains[in2][1] || len(ruleChains(st)) != 1+5-2 { // allow-client, e1, e2, dns
		t.Errorf("pods with the same rules must share the policy chain:\n%q\n%q\n%v", st.Chains[in1], st.Chains[in2], ruleChains(st))
	}
	setName := SetName(client.Selector)
	if s := st.Sets[setName]; s == nil || s.Type != "hash:ip" || !slices.Equal(s.Members, []string{"10.244.1.11", "10.244.2.5"}) {
		t.Errorf("client set %+v: want the IPv4 pod IPs, sorted", s)
	}
	pr := strings.TrimPrefix(st.Chains[in1][1], "-j ")
	wantRules := []string{
		"-m set --match-set " + setName + " src -p tcp --dport 80 " + comment("a/allow-client") + " -j MARK --set-xmark 0x10000/0x10000",
		"-m set --match-set " + setName + " src -p udp --dport 5000:5010 " + comment("a/allow-client") + " -j MARK --set-xmark 0x10000/0x10000",
		"-m set --match-set " + setName + " src -p sctp " + comment("a/allow-client") + " -j MARK --set-xmark 0x10000/0x10000",
	}
	if got := st.Chains[pr]; !slices.Equal(got, wantRules) {
		t.Errorf("policy chain %s:\n%s\nwant\n%s", pr, strings.Join(got, "\n"), strings.Join(wantRules, "\n"))
	}

	dIn, dOut := PodChains("a/deny")
	if got := st.Chains[dIn]; len(got) != 2 || !strings.HasSuffix(got[1], "-j "+ChainDenyIn) {
		t.Errorf("default-deny ingress chain %q", got)
	}
	if got := st.Chains[dOut]; len(got) != 2 || !strings.HasSuffix(got[1], "-j "+ChainDenyOut) {
		t.Errorf("default-deny egress chain %q", got)
	}

	_, eOut := PodChains("a/egress")
	body := strings.Join(st.Chains[eOut], "\n")
	var egressRules []string
	for _, l := range st.Chains[eOut] {
		if c, ok := strings.CutPrefix(l, "-j "+prefixRules); ok {
			egressRules = append(egressRules, strings.Join(st.Chains[prefixRules+c], "\n"))
		}
	}
	all := strings.Join(egressRules, "\n")
	for _, want := range []string{
		"-m set --match-set " + SetName("cidr(10.0.0.0/8 -10.1.0.0/16 -fd00::/8)") + " dst " + comment("a/e1"),
		"-m set --match-set " + SetName("cidr(0.0.0.0/0 -192.168.0.0/16)") + " dst " + comment("a/e2"),
		"-p udp --dport 53 " + comment("a/dns"),
	} {
		if !strings.Contains(all, want) {
			t.Errorf("egress rules lack %q:\n%s\n(pod chain %s)", want, all, body)
		}
	}
	if strings.Contains(all, "a/e3") || strings.Contains(all, "a/e4") {
		t.Errorf("a block whose except covers it, and an IPv6 block, allow nothing over IPv4:\n%s", all)
	}
	if s := st.Sets[SetName("cidr(10.0.0.0/8 -10.1.0.0/16 -fd00::/8)")]; s == nil || !slices.Equal(s.Members, []string{"10.0.0.0/8", "10.1.0.0/16 nomatch"}) {
		t.Errorf("except set %+v", s)
	}
	if s := st.Sets[SetName("cidr(0.0.0.0/0 -192.168.0.0/16)")]; s == nil || !slices.Equal(s.Members, []string{"0.0.0.0/1", "128.0.0.0/1", "192.168.0.0/16 nomatch"}) {
		t.Errorf("/0 set %+v: hash:net cannot hold /0", s)
	}
}

// A label change that only changes who a selector picks changes set members, never chains.
func TestBuildSelectorChangeTouchesSetsOnly(t *testing.T) {
	mk := func(ips ...string) map[string]*PodFirewall {
		p := Peer{Selector: "ns=a/pod(role=client)"}
		for _, s := range ips {
			p.PodIPs = append(p.PodIPs, addr(s))
		}
		return map[string]*PodFirewall{"a/web": {IngressIsolated: true, Ingress: []Rule{{Peers: []Peer{p}, Policy: "a/p"}}}}
	}
	pods := []LocalPod{lp("a/web", "10.244.1.10")}
	a, b := Build(mk("10.244.2.1"), pods, opts), Build(mk("10.244.2.1", "10.244.3.1"), pods, opts)
	if !reflect.DeepEqual(a.Chains, b.Chains) || !reflect.DeepEqual(a.Ingress, b.Ingress) {
		t.Error("chains differ after a selector membership change")
	}
	if reflect.DeepEqual(a.Sets, b.Sets) {
		t.Error("sets equal after a selector membership change")
	}
}

func TestDiffSorted(t *testing.T) {
	add, del := diffSorted([]string{"a", "c", "d"}, []string{"b", "c", "e"})
	if !slices.Equal(add, []string{"b", "e"}) || !slices.Equal(del, []string{"a", "d"}) {
		t.Errorf("add %v del %v", add, del)
	}
}
