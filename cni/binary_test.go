package cni

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// These tests run the built plugin binary the way a runtime does: in the node namespace (ip netns exec), CNI_*
// environment, config on stdin, result or error object on stdout.

func (n *node) execAdd(tb testing.TB, cid string, pod *testNS, conf []byte) *current.Result {
	tb.Helper()
	r := n.execPlugin(tb, "ADD", cid, pod.Path, conf)
	if r.Err != nil {
		tb.Fatalf("ADD %s: %v\nstdout: %s\nstderr: %s", cid, r.Err, r.Stdout, r.Stderr)
	}
	res, err := current.NewResult(r.Stdout)
	if err != nil {
		tb.Fatalf("ADD %s printed %q: %v", cid, r.Stdout, err)
	}
	return res.(*current.Result)
}

func TestBinaryPodToPod(t *testing.T) {
	n := newNode(t)
	p1, p2 := newTestNS(t, "p1"), newTestNS(t, "p2")
	conf := n.conf(t, nil)
	r1 := n.execAdd(t, "pod-one", p1, conf)
	r2 := n.execAdd(t, "pod-two", p2, conf)
	ip1, ip2 := r1.IPs[0].Address.IP.String(), r2.IPs[0].Address.IP.String()
	if ip1 == ip2 {
		t.Fatalf("both pods got %s", ip1)
	}
	if v := sysctlIn(t, n.Path, "net.ipv4.ip_forward"); v != "1" {
		t.Errorf("node ip_forward = %s", v)
	}

	// Pod to pod over the bridge, both ways; pod to its gateway; the node to a pod.
	for _, c := range []struct{ from, to string }{{p1.Name, ip2}, {p2.Name, ip1}, {p1.Name, "10.244.1.1"}, {n.Name, ip1}} {
		if err := ping(t, c.from, c.to); err != nil {
			t.Error(err)
		}
	}
	// A pod reaches itself through its own address.
	if err := ping(t, p1.Name, ip1); err != nil {
		t.Error(err)
	}

	// Containers of one pod talk over localhost: two processes in p1's namespace.
	_, lo := startHelper(t, p1.Name, "echo-server", "127.0.0.1:0")
	runHelperClient(t, p1.Name, lo)
	// And TCP from the other pod, over the bridge, to a server on the pod address.
	_, addr := startHelper(t, p1.Name, "echo-server", net.JoinHostPort(ip1, "0"))
	runHelperClient(t, p2.Name, addr)

	// CHECK with the prevResult a runtime sends; then DEL; then DEL again.
	for _, c := range []struct {
		cid string
		pod *testNS
		res *current.Result
	}{{"pod-one", p1, r1}, {"pod-two", p2, r2}} {
		pc := withPrev(t, conf, c.res)
		if r := n.execPlugin(t, "CHECK", c.cid, c.pod.Path, pc); r.Err != nil {
			t.Errorf("CHECK %s: %v %s %s", c.cid, r.Err, r.Stdout, r.Stderr)
		}
		for i := 0; i < 2; i++ {
			if r := n.execPlugin(t, "DEL", c.cid, c.pod.Path, pc); r.Err != nil {
				t.Errorf("DEL #%d %s: %v %s %s", i+1, c.cid, r.Err, r.Stdout, r.Stderr)
			}
		}
	}
	if err := ping(t, p1.Name, ip2); err == nil {
		t.Error("p1 still reaches p2 after DEL")
	}
	if v := n.hostVeths(t); len(v) != 0 {
		t.Errorf("host veths after DEL: %v", v)
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
}

func TestBinaryErrors(t *testing.T) {
	n := newNode(t)
	pod := newTestNS(t, "p")
	for _, tc := range []struct {
		name, command string
		conf          []byte
		code          uint
		wants         string
	}{
		{"malformed", "ADD", []byte(`{"cniVersion":"1.0.0","name":"canopy",`), types.ErrDecodingFailure, "error unmarshall network config"},
		{"wrong type", "ADD", n.conf(t, map[string]any{"podCIDRs": "10.244.1.0/24"}), types.ErrInvalidNetworkConfig, "podCIDRs: must be a list of strings"},
		{"two ipv6", "ADD", n.conf(t, map[string]any{"podCIDRs": []string{"fd00::/64", "fd01::/64"}}), types.ErrInvalidNetworkConfig, "a second IPv6 pod CIDR"},
		{"unsupported version", "ADD", n.conf(t, map[string]any{"cniVersion": "0.2.0"}), types.ErrIncompatibleCNIVersion, "incompatible CNI versions"},
		{"check on nothing", "CHECK", n.conf(t, nil), types.ErrInternal, "no address recorded"},
	} {
		r := n.execPlugin(t, tc.command, "c1", pod.Path, tc.conf)
		e := r.cniError(t)
		if e.Code != tc.code || !strings.Contains(e.Msg+" "+e.Details, tc.wants) {
			t.Errorf("%s: error %+v, want code %d mentioning %q", tc.name, e, tc.code, tc.wants)
		}
	}
	// VERSION answers without a config.
	r := n.execPlugin(t, "VERSION", "", "", nil)
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if r.Err != nil || json.Unmarshal(r.Stdout, &v) != nil || strings.Join(v.SupportedVersions, ",") != "0.4.0,1.0.0,1.1.0" {
		t.Errorf("VERSION: %v %s", r.Err, r.Stdout)
	}
	if names := linkNames(t, n.H); len(names) != 1 {
		t.Errorf("node links after failed commands: %v", names)
	}
}

// TestBinaryConcurrentAdds runs many plugin processes at once, as a runtime starting a burst of pods does: each
// gets its own address (the data directory's flock), the shared bridge is created once, and all pods work.
func TestBinaryConcurrentAdds(t *testing.T) {
	n := newNode(t)
	conf := n.conf(t, nil)
	const pods = 16
	podNS := make([]*testNS, pods)
	for i := range podNS {
		podNS[i] = newTestNS(t, fmt.Sprintf("c%d", i))
	}
	pluginBinary(t)
	results := make([]execResult, pods)
	var wg sync.WaitGroup
	for i := range podNS {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = n.execPlugin(t, "ADD", fmt.Sprintf("burst-%d", i), podNS[i].Path, conf)
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i, r := range results {
		if r.Err != nil {
			t.Fatalf("ADD %d: %v %s %s", i, r.Err, r.Stdout, r.Stderr)
		}
		res, err := current.NewResult(r.Stdout)
		if err != nil {
			t.Fatal(err)
		}
		ip := res.(*current.Result).IPs[0].Address.IP.String()
		if j, dup := seen[ip]; dup {
			t.Fatalf("pods %d and %d both got %s", j, i, ip)
		}
		seen[ip] = i
	}
	if recs := n.records(t); len(recs) != pods {
		t.Errorf("%d records, want %d", len(recs), pods)
	}
	for ip := range seen {
		if err := ping(t, podNS[0].Name, ip); err != nil {
			t.Error(err)
		}
	}
	for i := range podNS {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = n.execPlugin(t, "DEL", fmt.Sprintf("burst-%d", i), podNS[i].Path, conf)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.Err != nil {
			t.Errorf("DEL %d: %v %s", i, r.Err, r.Stdout)
		}
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
}
