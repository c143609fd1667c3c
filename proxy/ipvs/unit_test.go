package ipvs

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"canopy.io/canopy/internal/model"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var (
	nodeIP = netip.MustParseAddr("192.168.0.1")
	podNet = netip.MustParsePrefix("10.244.0.0/16")
)

func ep(ip string, ready, serving, terminating bool) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: ready, Serving: serving, Terminating: terminating}
}

func ready(ip string) model.Endpoint { return ep(ip, true, true, false) }

// svc is a ClusterIP service port with ready endpoints.
func svc(i int, eps ...model.Endpoint) *model.ServicePort {
	return &model.ServicePort{
		Key: fmt.Sprintf("ns/s%d:http/TCP", i), Namespace: "ns", Name: fmt.Sprintf("s%d", i), PortName: "http",
		Protocol: model.TCP, Port: 80,
		ClusterIPs:       []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
		ClusterEndpoints: eps, ExternalEndpoints: eps,
	}
}

type rig struct {
	h   *fakeHandle
	a   *fakeAddrs
	ipt *fakeIPT
	b   *Backend
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{h: newFakeHandle(), a: newFakeAddrs(), ipt: newFakeIPT()}
	r.open(t)
	return r
}

// open (re)creates the backend on the rig's fake kernel, as an agent restart would.
func (r *rig) open(t *testing.T) {
	t.Helper()
	b, err := New(Config{
		NodeIPs: []netip.Addr{nodeIP}, PodCIDRs: []netip.Prefix{podNet},
		Handle: r.h, Addresses: r.a, IPT: r.ipt, SkipSysctls: true, Log: quiet, Conntrack: &fakeConntrack{},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
}

func (r *rig) sync(t *testing.T, desired map[string]*model.ServicePort, changed ...string) {
	t.Helper()
	if err := r.b.Sync(desired, changed); err != nil {
		t.Fatal(err)
	}
}

func all(m map[string]*model.ServicePort) []string { return slices.Sorted(maps.Keys(m)) }

func tcp(addr string, port uint16) vsKey {
	return vsKey{syscall.IPPROTO_TCP, netip.MustParseAddr(addr), port}
}

func TestWeights(t *testing.T) {
	for _, tc := range []struct {
		name string
		eps  []model.Endpoint
		want map[string]int
	}{
		{"ready", []model.Endpoint{ready("10.0.0.1"), ready("10.0.0.2")}, map[string]int{"10.0.0.1": 1, "10.0.0.2": 1}},
		{"terminating drains while one is ready",
			[]model.Endpoint{ready("10.0.0.1"), ep("10.0.0.2", false, true, true)}, map[string]int{"10.0.0.1": 1, "10.0.0.2": 0}},
		{"no ready: serving terminating ones take traffic",
			[]model.Endpoint{ep("10.0.0.1", false, true, true), ep("10.0.0.2", false, false, true)}, map[string]int{"10.0.0.1": 1, "10.0.0.2": 0}},
		{"not ready and not terminating: left out", []model.Endpoint{ready("10.0.0.1"), ep("10.0.0.2", false, false, false)}, map[string]int{"10.0.0.1": 1}},
		{"other family left out", []model.Endpoint{ready("10.0.0.1"), ready("fd00::1")}, map[string]int{"10.0.0.1": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]int{}
			for k, w := range Weights(tc.eps, true) {
				got[k.addr.String()] = w
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSyncProgramsEveryFrontEndAndNoOpWritesNothing(t *testing.T) {
	r := newRig(t)
	sp := svc(1, ready("10.244.1.2"), ready("10.244.2.2"))
	sp.NodePort = 30080
	sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.7")}
	sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.51.100.9")}
	sp.ExternalEndpoints = sp.ExternalEndpoints[:1]
	sp.ExternalPolicyLocal = true
	sp.Scheduler = "wrr"
	sp.AffinityClientIP, sp.AffinityTimeout = true, 90*time.Second
	d := map[string]*model.ServicePort{sp.Key: sp}
	r.sync(t, d, sp.Key)

	want := map[vsKey][]string{
		tcp("10.96.0.1", 80):      {"10.244.1.2:8080=1", "10.244.2.2:8080=1"},
		tcp("192.168.0.1", 30080): {"10.244.1.2:8080=1"},
		tcp("203.0.113.7", 80):    {"10.244.1.2:8080=1"},
		tcp("198.51.100.9", 80):   {"10.244.1.2:8080=1"},
	}
	if len(r.h.svcs) != len(want) {
		t.Fatalf("%d virtual services, want %d: %v", len(r.h.svcs), len(want), slices.Collect(maps.Keys(r.h.svcs)))
	}
	for k, w := range want {
		s := r.h.svcs[k]
		if s == nil {
			t.Fatalf("no virtual service %v", k)
		}
		if s.SchedName != "wrr" || s.Flags&svcFlagPersistent == 0 || s.Timeout != 90 {
			t.Errorf("%v: scheduler %q flags %#x timeout %d, want wrr, persistent, 90", k, s.SchedName, s.Flags, s.Timeout)
		}
		if got := r.h.weights(k); !slices.Equal(got, w) {
			t.Errorf("%v: real servers %v, want %v", k, got, w)
		}
	}
	wantAddrs := []string{"10.96.0.1", "198.51.100.9", "203.0.113.7"} // not the node IP
	var gotAddrs []string
	for a := range r.a.addrs {
		gotAddrs = append(gotAddrs, a.String())
	}
	slices.Sort(gotAddrs)
	if !slices.Equal(gotAddrs, wantAddrs) {
		t.Errorf("bound %v, want %v", gotAddrs, wantAddrs)
	}
	rules := strings.Join(r.ipt.chain(Chain), "\n")
	for _, k := range []string{"tcp/192.168.0.1:30080", "tcp/203.0.113.7:80", "tcp/198.51.100.9:80"} {
		if !strings.Contains(rules, localComment+k) {
			t.Errorf("no Local exception for %s in\n%s", k, rules)
		}
	}
	if strings.Contains(rules, "10.96.0.1") {
		t.Errorf("a Local exception for the ClusterIP:\n%s", rules)
	}

	// The same desired state again: not one write anywhere.
	r.h.reset()
	r.a.adds, r.a.dels = 0, 0
	r.ipt.resetWrites()
	r.sync(t, d, sp.Key)
	if r.h.writes() != 0 || r.a.adds+r.a.dels != 0 || r.ipt.writes() != 0 {
		t.Errorf("no-op Sync wrote: ipvs %v, addresses +%d -%d, iptables %d", r.h.calls, r.a.adds, r.a.dels, r.ipt.writes())
	}

	// Deleting the key removes everything it made.
	r.sync(t, map[string]*model.ServicePort{}, sp.Key)
	if len(r.h.svcs) != 0 || len(r.a.addrs) != 0 {
		t.Errorf("left behind: services %v, addresses %v", slices.Collect(maps.Keys(r.h.svcs)), r.a.addrs)
	}
	if rules := r.ipt.chain(Chain); len(rules) != 2 {
		t.Errorf("chain after delete: %q, want only the static rules", rules)
	}
}

// Adding one service to 10,000 issues exactly that service's calls, and reads nothing back from the kernel.
func TestAddOneToTenThousand(t *testing.T) {
	r := newRig(t)
	d := map[string]*model.ServicePort{}
	for i := range 10000 {
		sp := svc(i, ready("10.244.1.2"), ready("10.244.2.2"))
		d[sp.Key] = sp
	}
	r.sync(t, d, all(d)...)
	if len(r.h.svcs) != 10000 {
		t.Fatalf("%d virtual services, want 10000", len(r.h.svcs))
	}
	r.h.reset()
	r.a.adds = 0
	sp := svc(10000, ready("10.244.3.2"), ready("10.244.4.2"))
	d[sp.Key] = sp
	start := time.Now()
	r.sync(t, d, sp.Key)
	elapsed := time.Since(start)
	want := map[string]int{"NewService": 1, "NewDestination": 2}
	if !maps.Equal(r.h.calls, want) || r.a.adds != 1 {
		t.Errorf("calls %v and %d address adds, want %v and 1", r.h.calls, r.a.adds, want)
	}
	t.Logf("one service added to 10,000 in %v", elapsed)

	// One endpoint of one service goes: one call.
	r.h.reset()
	sp2 := svc(42, ready("10.244.1.2"))
	d[sp2.Key] = sp2
	r.sync(t, d, sp2.Key)
	if want := map[string]int{"DelDestination": 1}; !maps.Equal(r.h.calls, want) {
		t.Errorf("calls %v, want %v", r.h.calls, want)
	}
}

func TestEndpointChanges(t *testing.T) {
	r := newRig(t)
	sp := svc(1, ready("10.244.1.2"), ready("10.244.2.2"))
	d := map[string]*model.ServicePort{sp.Key: sp}
	r.sync(t, d, sp.Key)
	k := tcp("10.96.0.1", 80)

	for _, step := range []struct {
		name  string
		eps   []model.Endpoint
		want  []string
		calls map[string]int
	}{
		{"second drains", []model.Endpoint{ready("10.244.1.2"), ep("10.244.2.2", false, true, true)},
			[]string{"10.244.1.2:8080=1", "10.244.2.2:8080=0"}, map[string]int{"UpdateDestination": 1}},
		{"first terminates too: serving terminating ones take traffic",
			[]model.Endpoint{ep("10.244.1.2", false, true, true), ep("10.244.2.2", false, true, true)},
			[]string{"10.244.1.2:8080=1", "10.244.2.2:8080=1"}, map[string]int{"UpdateDestination": 1}},
		{"replaced", []model.Endpoint{ready("10.244.3.2")},
			[]string{"10.244.3.2:8080=1"}, map[string]int{"NewDestination": 1, "DelDestination": 2}},
		{"none: the virtual service stays, empty", nil, nil, map[string]int{"DelDestination": 1}},
	} {
		r.h.reset()
		sp = svc(1, step.eps...)
		d[sp.Key] = sp
		r.sync(t, d, sp.Key)
		if got := r.h.weights(k); !slices.Equal(got, step.want) {
			t.Errorf("%s: real servers %v, want %v", step.name, got, step.want)
		}
		if !maps.Equal(r.h.calls, step.calls) {
			t.Errorf("%s: calls %v, want %v", step.name, r.h.calls, step.calls)
		}
	}
}

func TestSchedulerAffinityAndSharedAddress(t *testing.T) {
	r := newRig(t)
	http := svc(1, ready("10.244.1.2"))
	https := svc(1, ready("10.244.1.2"))
	https.Key, https.PortName, https.Port = "ns/s1:https/TCP", "https", 443
	d := map[string]*model.ServicePort{http.Key: http, https.Key: https}
	r.sync(t, d, all(d)...)

	r.h.reset()
	http2 := *http
	http2.Scheduler, http2.AffinityClientIP = "lc", true
	d[http.Key] = &http2
	r.sync(t, d, http.Key)
	if want := map[string]int{"UpdateService": 1}; !maps.Equal(r.h.calls, want) {
		t.Errorf("calls %v, want %v", r.h.calls, want)
	}
	if s := r.h.svcs[tcp("10.96.0.1", 80)]; s.SchedName != "lc" || s.Timeout != 10800 {
		t.Errorf("scheduler %q timeout %d, want lc 10800", s.SchedName, s.Timeout)
	}

	// The two ports share the ClusterIP: it stays bound until both are gone.
	delete(d, http.Key)
	r.sync(t, d, http.Key)
	if !r.a.addrs[netip.MustParseAddr("10.96.0.1")] {
		t.Error("ClusterIP unbound while port 443 still uses it")
	}
	delete(d, https.Key)
	r.sync(t, d, https.Key)
	if len(r.a.addrs) != 0 || len(r.h.svcs) != 0 {
		t.Errorf("left behind: %v %v", r.a.addrs, r.h.svcs)
	}
}

// A restarted backend reads the kernel back: re-syncing the same state writes nothing, and Prune removes only
// what no key claims on Canopy's addresses.
func TestRestartRestoreAndPrune(t *testing.T) {
	r := newRig(t)
	a, b := svc(1, ready("10.244.1.2")), svc(2, ready("10.244.2.2"))
	a.NodePort = 30001
	a.ExternalPolicyLocal = true
	d := map[string]*model.ServicePort{a.Key: a, b.Key: b}
	r.sync(t, d, all(d)...)
	// Someone else's virtual service on an address that is not Canopy's.
	foreign := toService(tcp("172.16.0.1", 53), &vsState{sched: "rr"})
	if err := r.h.NewService(foreign); err != nil {
		t.Fatal(err)
	}

	r.open(t) // restart; b was deleted while the agent was down
	delete(d, b.Key)
	r.h.reset()
	r.a.adds, r.a.dels = 0, 0
	r.ipt.resetWrites()
	r.sync(t, d, all(d)...)
	if r.h.writes() != 0 || r.a.adds+r.a.dels != 0 || r.ipt.writes() != 0 {
		t.Errorf("re-sync after restart wrote: %v, addresses +%d -%d, iptables %d", r.h.calls, r.a.adds, r.a.dels, r.ipt.writes())
	}
	if err := r.b.Prune(); err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"DelService": 1}; !maps.Equal(r.h.calls, want) || r.a.dels != 1 {
		t.Errorf("prune: calls %v, %d unbinds; want %v and 1", r.h.calls, r.a.dels, want)
	}
	if _, ok := r.h.svcs[tcp("10.96.0.2", 80)]; ok {
		t.Error("stale virtual service of the deleted service survived Prune")
	}
	if _, ok := r.h.svcs[tcp("172.16.0.1", 53)]; !ok {
		t.Error("Prune removed a virtual service that is not Canopy's")
	}
	if _, ok := r.h.svcs[tcp("192.168.0.1", 30001)]; !ok {
		t.Error("Prune removed a claimed NodePort")
	}
}

func TestParseLocal(t *testing.T) {
	k := tcp("192.168.0.1", 30080)
	line := "-A " + Chain + " " + spec(localRule(k))
	got, ok := parseLocal(line)
	if !ok || got != k {
		t.Errorf("parseLocal(%q) = %v %v, want %v", line, got, ok, k)
	}
}

// A local endpoint gets one hairpin rule (before the pod network's RETURN) however many service ports it
// backs; the rule goes with the last of them, and a restart reads it back (Prune removes one nobody claims).
func TestHairpinRules(t *testing.T) {
	r := newRig(t)
	local := ready("10.244.0.5")
	local.Local = true
	a, b := svc(1, local, ready("10.244.1.2")), svc(2, local)
	d := map[string]*model.ServicePort{a.Key: a, b.Key: b}
	r.sync(t, d, all(d)...)
	rule := spec(hairpinRule(local.IP))
	chain := r.ipt.chain(Chain)
	if i := slices.Index(chain, rule); i < 0 || count(chain, rule) != 1 || i > slices.IndexFunc(chain, func(s string) bool { return strings.Contains(s, "RETURN") }) {
		t.Fatalf("want one hairpin rule for %s before the RETURN rules:\n%s", local.IP, strings.Join(chain, "\n"))
	}
	if strings.Contains(strings.Join(chain, "\n"), "10.244.1.2") {
		t.Errorf("a hairpin rule for a remote endpoint:\n%s", strings.Join(chain, "\n"))
	}
	if got, ok := parseHairpin("-A " + Chain + " " + rule); !ok || got != local.IP {
		t.Errorf("parseHairpin = %v %v", got, ok)
	}
	delete(d, a.Key)
	r.sync(t, d, a.Key)
	if !slices.Contains(r.ipt.chain(Chain), rule) {
		t.Fatal("the hairpin rule went while service 2 still has the endpoint")
	}
	r.open(t) // restart: the rule is read back, not added twice
	r.ipt.resetWrites()
	r.sync(t, d, all(d)...)
	if r.ipt.writes() != 0 || count(r.ipt.chain(Chain), rule) != 1 {
		t.Errorf("re-sync after restart: %d iptables writes, chain:\n%s", r.ipt.writes(), strings.Join(r.ipt.chain(Chain), "\n"))
	}
	r.open(t) // restart after service 2 was deleted: Prune removes the unclaimed rule
	r.sync(t, map[string]*model.ServicePort{}, b.Key)
	if err := r.b.Prune(); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(r.ipt.chain(Chain), rule) {
		t.Errorf("Prune left the unclaimed hairpin rule:\n%s", strings.Join(r.ipt.chain(Chain), "\n"))
	}
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// A failed write is reported, and the next Sync of the key (or any Sync, for a failed deletion) repairs it.
func TestFailedWritesAreRepaired(t *testing.T) {
	r := newRig(t)
	sp := svc(1, ready("10.244.1.2"), ready("10.244.2.2"))
	d := map[string]*model.ServicePort{sp.Key: sp}
	r.h.fail["NewDestination"] = 1
	if err := r.b.Sync(d, []string{sp.Key}); err == nil {
		t.Fatal("Sync hid a failed NewDestination")
	}
	r.sync(t, d, sp.Key)
	if got := r.h.weights(tcp("10.96.0.1", 80)); len(got) != 2 {
		t.Errorf("after the retry: %v, want both real servers", got)
	}

	r.h.fail["DelService"] = 1
	if err := r.b.Sync(map[string]*model.ServicePort{}, []string{sp.Key}); err == nil {
		t.Fatal("Sync hid a failed DelService")
	}
	other := svc(2, ready("10.244.1.2"))
	d = map[string]*model.ServicePort{other.Key: other}
	r.sync(t, d, other.Key) // an unrelated key: the pending deletion goes through too
	if _, ok := r.h.svcs[tcp("10.96.0.1", 80)]; ok {
		t.Error("the virtual service whose deletion failed is still there")
	}
	r.h.reset()
	r.sync(t, d, other.Key)
	if r.h.writes() != 0 {
		t.Errorf("no-op Sync after repairs wrote %v", r.h.calls)
	}
}
