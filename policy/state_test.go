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

	wantReady := []string{"10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13", "10.244.1.15", "fd00::7"}
	var ready []string
	for _, a := range sortedReady(st.Ready) {
		ready = append(ready, a.String())
	}
	if !slices.Equal(ready, wantReady) {
		t.Errorf("ready %v, want %v (twins share an address: unready; address-less pods: none)", ready, wantReady)
	}
	if !slices.Equal(st.Conflict, []netip.Addr{addr("10.244.1.14")}) {
		t.Errorf("conflicts %v", st.Conflict)
	}

	in1, _ := PodChains("a/web1")
	in2, _ := PodChains("a/web2")
	inV6, _ := PodChains("a/v6")
	if st.Ingress[addr("10.244.1.10")] != in1 || st.Ingress[addr("10.244.1.11")] != in2 || st.Ingress[addr("fd00::7")] != inV6 || len(st.Ingress) != 4 {
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
	if len(st.Chains6[inV6]) != 2 || st.Chains[inV6] != nil {
		t.Errorf("the IPv6 pod's default-deny chain belongs in ip6tables only: %q / %q", st.Chains6[inV6], st.Chains[inV6])
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

// IPv6: the same layout in ip6tables with inet6 sets; every address in its own family only.
func TestBuildIPv6(t *testing.T) {
	st := Build(nil, nil, Options{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}, Reject: true})
	if s := st.Sets[SetLocal6]; s == nil || s.Family != "inet6" || !slices.Equal(s.Members, []string{"fd00:10:244:1::/64"}) {
		t.Errorf("IPv6 local set %+v", s)
	}
	if s := st.Sets[SetLocal]; !slices.Equal(s.Members, []string{"10.244.1.0/24"}) || s.Family != "inet" {
		t.Errorf("IPv4 local set %+v", s)
	}
	for _, c := range staticChains {
		if len(st.Chains6[c]) == 0 {
			t.Errorf("fixed IPv6 chain %s is empty", c)
		}
	}
	pod := strings.Join(st.Chains6[ChainPod], "\n")
	for _, typ := range []string{"133", "134", "135", "136"} {
		nd := "-p ipv6-icmp -m icmp6 --icmpv6-type " + typ + " -m hl --hl-eq 255 "
		if !strings.Contains(pod, nd) || strings.Index(pod, nd) > strings.Index(pod, SetReady6) {
			t.Errorf("neighbour discovery type %s not returned before the unready check:\n%s", typ, pod)
		}
	}
	if strings.Contains(strings.Join(st.Chains[ChainPod], "\n"), "icmp6") || !strings.Contains(pod, "! --match-set "+SetReady6+" src") {
		t.Errorf("IPv4 pod chain:\n%s\nIPv6:\n%s", strings.Join(st.Chains[ChainPod], "\n"), pod)
	}
	if got := strings.Join(st.Chains6[ChainDenyIn], "\n"); !strings.Contains(got, "--reject-with icmp6-port-unreachable") || !strings.Contains(got, "--reject-with tcp-reset") {
		t.Errorf("IPv6 reject chain:\n%s", got)
	}
	if got := strings.Join(st.Chains[ChainDenyIn], "\n"); strings.Contains(got, "icmp6") {
		t.Errorf("IPv4 reject chain:\n%s", got)
	}

	// A dual-stack pod admitting a selector (pods of both families) and egress to blocks of both families.
	client := Peer{Selector: "ns=a/pod(role=client)", PodIPs: []netip.Addr{addr("10.244.2.5"), addr("fd00:10:244:2::5"), addr("fd00:10:244:3::6")}}
	fws := map[string]*PodFirewall{
		"a/dual": {IngressIsolated: true, EgressIsolated: true,
			Ingress: []Rule{{Peers: []Peer{client}, Ports: []PortRule{{Protocol: corev1.ProtocolTCP, Port: 80, EndPort: 80},
				{Protocol: corev1.ProtocolUDP, Port: 5000, EndPort: 5010}, {Protocol: corev1.ProtocolSCTP}}, Policy: "a/in"}},
			Egress: []Rule{
				{Peers: []Peer{{CIDR: pfx("10.0.0.0/8"), Selector: "cidr(10.0.0.0/8)"}}, Policy: "a/e4"},
				{Peers: []Peer{{CIDR: pfx("2001:db8::/32"), Except: []netip.Prefix{pfx("2001:db8:1::/48"), pfx("10.1.0.0/16")}, Selector: "cidr(2001:db8::/32 -2001:db8:1::/48 -10.1.0.0/16)"}}, Policy: "a/e6"},
				{Peers: []Peer{{CIDR: pfx("::/0"), Except: []netip.Prefix{pfx("fd00::/8")}, Selector: "cidr(::/0 -fd00::/8)"}}, Policy: "a/all6"},
				{Peers: []Peer{{CIDR: pfx("2001:db8::/32"), Except: []netip.Prefix{pfx("2001::/16")}, Selector: "cidr(covered)"}}, Policy: "a/covered"},
			}},
		"a/v6only": {IngressIsolated: true},
		"a/v4only": {},
	}
	pods := []LocalPod{lp("a/dual", "10.244.1.10"), lp("a/dual", "fd00:10:244:1::10"), lp("a/v6only", "fd00:10:244:1::11"),
		lp("a/v4only", "10.244.1.12"), lp("a/mapped", "::ffff:10.244.1.13")}
	st = Build(fws, pods, Options{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}})
	var ready []string
	for _, a := range sortedReady(st.Ready) {
		ready = append(ready, a.String())
	}
	if want := []string{"10.244.1.10", "10.244.1.12", "fd00:10:244:1::10", "fd00:10:244:1::11"}; !slices.Equal(ready, want) || st.Pods != 3 {
		t.Errorf("ready %v (%d pods), want %v (3 pods)", ready, st.Pods, want)
	}
	in, out := PodChains("a/dual")
	if st.Ingress[addr("10.244.1.10")] != in || st.Ingress[addr("fd00:10:244:1::10")] != in || st.Egress[addr("fd00:10:244:1::10")] != out {
		t.Errorf("dispatch %v %v", st.Ingress, st.Egress)
	}
	if st.Chains[in] == nil || st.Chains6[in] == nil || st.Chains[out] == nil || st.Chains6[out] == nil {
		t.Fatal("the dual-stack pod is not isolated in both families")
	}
	body := func(chains map[string][]string, pc string) string {
		var r []string
		for _, l := range chains[pc] {
			if c, ok := strings.CutPrefix(l, "-j "+prefixRules); ok {
				r = append(r, chains[prefixRules+c]...)
			}
		}
		return strings.Join(r, "\n")
	}
	in4, in6 := body(st.Chains, in), body(st.Chains6, in)
	if s := st.Sets[SetName(client.Selector)]; s == nil || s.Family != "inet" || !slices.Equal(s.Members, []string{"10.244.2.5"}) {
		t.Errorf("IPv4 client set %+v", s)
	}
	if s := st.Sets[SetName6(client.Selector)]; s == nil || s.Family != "inet6" || s.Type != "hash:ip" || !slices.Equal(s.Members, []string{"fd00:10:244:2::5", "fd00:10:244:3::6"}) {
		t.Errorf("IPv6 client set %+v", s)
	}
	for _, want := range []string{"-m set --match-set " + SetName6(client.Selector) + " src -p tcp --dport 80 ",
		"-p udp --dport 5000:5010 ", "-p sctp "} {
		if !strings.Contains(in6, want) {
			t.Errorf("IPv6 ingress rules lack %q:\n%s", want, in6)
		}
	}
	if strings.Contains(in4, SetName6(client.Selector)) || !strings.Contains(in4, SetName(client.Selector)) {
		t.Errorf("IPv4 ingress rules:\n%s", in4)
	}
	out4, out6 := body(st.Chains, out), body(st.Chains6, out)
	if !strings.Contains(out4, "-d 10.0.0.0/8 ") || strings.Contains(out4, "a/e6") || strings.Contains(out4, "a/all6") {
		t.Errorf("IPv4 egress rules hold only the IPv4 block:\n%s", out4)
	}
	e6 := SetName6("cidr(2001:db8::/32 -2001:db8:1::/48 -10.1.0.0/16)")
	all6 := SetName6("cidr(::/0 -fd00::/8)")
	if !strings.Contains(out6, "-m set --match-set "+e6+" dst") || !strings.Contains(out6, "-m set --match-set "+all6+" dst") ||
		strings.Contains(out6, "10.0.0.0/8") || strings.Contains(out6, "a/covered") {
		t.Errorf("IPv6 egress rules hold only the IPv6 blocks (and not the one its except covers):\n%s", out6)
	}
	if s := st.Sets[e6]; s == nil || s.Family != "inet6" || s.Type != "hash:net" || !slices.Equal(s.Members, []string{"2001:db8:1::/48 nomatch", "2001:db8::/32"}) {
		t.Errorf("IPv6 except set %+v", s)
	}
	if s := st.Sets[all6]; s == nil || !slices.Equal(s.Members, []string{"8000::/1", "::/1", "fd00::/8 nomatch"}) {
		t.Errorf("IPv6 /0 set %+v: hash:net cannot hold /0", s)
	}
	if st.Sets[SetName("cidr(2001:db8::/32 -2001:db8:1::/48 -10.1.0.0/16)")] != nil {
		t.Error("an IPv6 block got an IPv4 set")
	}

	// A node without an IPv6 pod CIDR builds no IPv6 data path at all.
	st = Build(fws, pods, Options{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24")}})
	if len(st.Chains6) != 0 || st.Sets[SetLocal6] != nil || st.Ready[addr("fd00:10:244:1::10")] || st.Ingress[addr("fd00:10:244:1::11")] != "" || st.Pods != 2 {
		t.Errorf("IPv4-only node: %d IPv6 chains, ready %v, pods %d", len(st.Chains6), st.Ready, st.Pods)
	}
}
