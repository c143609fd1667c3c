package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"

	"canopy.io/canopy/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// backend is a lab pod serving its own name on TCP port 8080 (and UDP 5353), labelled for a Service.
func backend(t *testing.T, l *lab.Lab, n *lab.Node, name, app string) *lab.Pod {
	t.Helper()
	p := addPod(t, l, n, name)
	for _, cmd := range [][]string{
		{"socat", "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo " + name},
		{"socat", "UDP-LISTEN:5353,reuseaddr,fork", "SYSTEM:echo " + name},
		{"socat", "TCP-LISTEN:8081,reuseaddr,fork", `SYSTEM:echo $SOCAT_PEERADDR`},
	} {
		if _, err := p.Start(strings.Fields(cmd[1])[0][:3]+"-"+name, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{"app":%q}}}`, app)
	if _, err := l.Kube.CoreV1().Pods("default").Patch(context.Background(), p.PodObjectName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func createService(t *testing.T, l *lab.Lab, svc *corev1.Service) *corev1.Service {
	t.Helper()
	if svc.Namespace == "" {
		svc.Namespace = "default"
	}
	got, err := l.Kube.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.Kube.CoreV1().Services(svc.Namespace).Delete(context.Background(), svc.Name, metav1.DeleteOptions{})
	})
	return got
}

func webService(name, app string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": app}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP},
			{Name: "peer", Port: 81, TargetPort: intstr.FromInt(8081), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: 53, TargetPort: intstr.FromInt(5353), Protocol: corev1.ProtocolUDP},
		}},
	}
}

// dialer is where a test connects from: a lab host or pod (*lab.Host), or a pod in a VM node (*lab.VMPod).
type dialer interface {
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
}

// readLine connects from h to addr over network and returns the first line the server sends.
func readLine(ctx context.Context, h dialer, network, addr string) (string, error) {
	c, err := h.Dial(ctx, network, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp" {
		if _, err := c.Write([]byte("?\n")); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// spread makes n connections and counts the answers.
func spread(t *testing.T, h dialer, addr string, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		name, err := readLine(ctx, h, "tcp", addr)
		cancel()
		if err != nil {
			seen["error: "+err.Error()]++
			continue
		}
		seen[name]++
	}
	return seen
}

// A client pod reaches a ClusterIP service backed by pods on two nodes and traffic spreads over both;
// scaling the backends (EndpointSlices from the real controller-manager) moves traffic within a second.
func TestServiceClusterIPSpreadsAndFollowsScaling(t *testing.T) {
	l := needLab(t)
	a := backend(t, l, l.Nodes[0], "wa", "web")
	backend(t, l, l.Nodes[1], "wb", "web")
	client := addPod(t, l, l.Nodes[2], "cl")
	svc := createService(t, l, webService("web", "web"))
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	eventually(t, 15*time.Second, "both backends answer through the ClusterIP", func(ctx context.Context) error {
		if s := spread(t, &client.Host, vip, 20); s["wa"] == 0 || s["wb"] == 0 {
			return fmt.Errorf("answers: %v", s)
		}
		return nil
	})
	// Scale down: the pod wa goes away; its endpoint leaves the slice.
	if err := l.Kube.CoreV1().Pods("default").Delete(context.Background(), a.PodObjectName(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	eventually(t, 10*time.Second, "all traffic on the remaining backend", func(ctx context.Context) error {
		if s := spread(t, &client.Host, vip, 10); s["wb"] != 10 {
			return fmt.Errorf("answers: %v", s)
		}
		return nil
	})
	t.Logf("scale-down reflected in the data path %s after the Pod was deleted", time.Since(t0).Round(time.Millisecond))
}

// A service without endpoints rejects at once instead of black-holing.
func TestServiceWithoutEndpointsRejectsFast(t *testing.T) {
	l := needLab(t)
	client := addPod(t, l, l.Nodes[0], "rj")
	svc := createService(t, l, webService("empty", "nobody"))
	time.Sleep(time.Second)
	eventually(t, 10*time.Second, "connection refused fast", func(ctx context.Context) error {
		t0 := time.Now()
		_, err := readLine(ctx, &client.Host, "tcp", net.JoinHostPort(svc.Spec.ClusterIP, "80"))
		if err == nil {
			return fmt.Errorf("connected to a service with no endpoints")
		}
		if d := time.Since(t0); d > 500*time.Millisecond {
			return fmt.Errorf("took %s to fail (%v): not rejected", d, err)
		}
		return nil
	})
}

// NodePort from a host behind the ToR, and with externalTrafficPolicy Local the pod sees the client's address.
func TestServiceNodePortFromOutside(t *testing.T) {
	l := needLab(t)
	backend(t, l, l.Nodes[0], "na", "np")
	svc := webService("np", "np")
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	got := createService(t, l, svc)
	var peerPort int32
	for _, p := range got.Spec.Ports {
		if p.Name == "peer" {
			peerPort = p.NodePort
		}
	}
	eventually(t, 15*time.Second, "NodePort with ETP Local keeps the client address", func(ctx context.Context) error {
		line, err := readLine(ctx, l.Ext, "tcp", net.JoinHostPort(l.Nodes[0].IP.String(), fmt.Sprint(peerPort)))
		if err != nil {
			return err
		}
		if a, _ := netip.ParseAddr(line); a != l.Ext.IP {
			return fmt.Errorf("the pod saw %q, want the external client %s", line, l.Ext.IP)
		}
		return nil
	})
}

// ClientIP affinity keeps a client on one backend.
func TestServiceClientIPAffinity(t *testing.T) {
	l := needLab(t)
	backend(t, l, l.Nodes[0], "aa", "aff")
	backend(t, l, l.Nodes[1], "ab", "aff")
	client := addPod(t, l, l.Nodes[2], "ac")
	svc := webService("aff", "aff")
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	got := createService(t, l, svc)
	vip := net.JoinHostPort(got.Spec.ClusterIP, "80")
	eventually(t, 15*time.Second, "the service answers", func(ctx context.Context) error {
		_, err := readLine(ctx, &client.Host, "tcp", vip)
		return err
	})
	if s := spread(t, &client.Host, vip, 20); len(s) != 1 {
		t.Fatalf("with ClientIP affinity the client reached %v", s)
	}
}

// A pod reaches its own service (hairpin), also when it is the backend chosen.
func TestServiceHairpin(t *testing.T) {
	l := needLab(t)
	p := backend(t, l, l.Nodes[0], "hp", "hair")
	got := createService(t, l, webService("hair", "hair"))
	eventually(t, 15*time.Second, "the pod reaches itself through its service", func(ctx context.Context) error {
		name, err := readLine(ctx, &p.Host, "tcp", net.JoinHostPort(got.Spec.ClusterIP, "80"))
		if err != nil {
			return err
		}
		if name != "hp" {
			return fmt.Errorf("answer %q", name)
		}
		return nil
	})
}

// The seeds' DNS path: a pod resolves my-svc.my-ns.svc.cluster.local through a DNS server (e2e/dnsd) behind
// the cluster-DNS ClusterIP, over UDP, and reaches the service; when the DNS server's only pod moves to another
// node, the same resolver flow (same source port) keeps getting answers: the stale UDP conntrack entry to the old
// pod is removed.
func TestServiceDNSPath(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	dnsd := buildDNSD(t)
	// The lab runs no namespace controller (a deleted namespace would stay Terminating for good), so my-ns is
	// created once and kept: TestServiceProxyOnIPTables runs this case again in the same lab, and each run
	// removes only its own objects.
	if _, err := l.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "my-ns"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	// my-svc in my-ns: a selectorless service whose EndpointSlice points at a web pod.
	web := backend(t, l, l.Nodes[0], "mw", "myweb")
	mySvc := createService(t, l, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "my-svc", Namespace: "my-ns"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP}}}})
	port, pname, proto, ready := int32(8080), "http", corev1.ProtocolTCP, true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "my-svc-1", Namespace: "my-ns", Labels: map[string]string{discoveryv1.LabelServiceName: "my-svc"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{web.IP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}
	if _, err := l.Kube.DiscoveryV1().EndpointSlices("my-ns").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.Kube.DiscoveryV1().EndpointSlices("my-ns").Delete(context.Background(), slice.Name, metav1.DeleteOptions{})
	})

	// The cluster DNS: dnsd in a pod, behind ClusterIP 10.96.0.10:53/UDP.
	startDNS := func(n *lab.Node, name string) *lab.Pod {
		p := addPod(t, l, n, name)
		if _, err := p.Start("dnsd", dnsd, "-listen", ":53", "-record", "my-svc.my-ns.svc.cluster.local="+mySvc.Spec.ClusterIP); err != nil {
			t.Fatal(err)
		}
		patch := `{"metadata":{"labels":{"app":"cluster-dns"}}}`
		if _, err := l.Kube.CoreV1().Pods("default").Patch(ctx, p.PodObjectName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dns1 := startDNS(l.Nodes[0], "dns1")
	createService(t, l, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cluster-dns"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "cluster-dns"},
			Ports: []corev1.ServicePort{{Name: "dns", Port: 53, TargetPort: intstr.FromInt(53), Protocol: corev1.ProtocolUDP}}}})

	client := addPod(t, l, l.Nodes[2], "dc")
	resolve := func(ctx context.Context) (string, error) {
		out, err := client.Exec(ctx, dnsd, "-query", "my-svc.my-ns.svc.cluster.local", "-server", "10.96.0.10:53", "-sport", "40053")
		return strings.TrimSpace(out), err
	}
	var addr string
	eventually(t, 15*time.Second, "the pod resolves my-svc.my-ns.svc.cluster.local", func(ctx context.Context) error {
		var err error
		addr, err = resolve(ctx)
		if err != nil {
			return fmt.Errorf("%v: %s", err, addr)
		}
		if addr != mySvc.Spec.ClusterIP {
			return fmt.Errorf("resolved to %q, want %s", addr, mySvc.Spec.ClusterIP)
		}
		return nil
	})
	eventually(t, 10*time.Second, "the pod reaches my-svc by its resolved address", func(ctx context.Context) error {
		name, err := readLine(ctx, &client.Host, "tcp", net.JoinHostPort(addr, "80"))
		if err == nil && name != "mw" {
			err = fmt.Errorf("answer %q", name)
		}
		return err
	})

	// The DNS pod moves to another node; the resolver's flow keeps working.
	if err := l.DeletePod(dns1); err != nil {
		t.Fatal(err)
	}
	startDNS(l.Nodes[1], "dns2")
	t0 := time.Now()
	eventually(t, 10*time.Second, "DNS answers again from the moved pod, on the same flow", func(ctx context.Context) error {
		out, err := resolve(ctx)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	t.Logf("DNS answered again %s after its pod moved", time.Since(t0).Round(time.Millisecond))
}

var dnsdOnce struct {
	sync.Once
	path string
	err  error
}

// buildDNSD builds e2e/dnsd once per test binary.
func buildDNSD(t *testing.T) string {
	t.Helper()
	dnsdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "canopy-dnsd-")
		if err != nil {
			dnsdOnce.err = err
			return
		}
		dnsdOnce.path = filepath.Join(dir, "dnsd")
		out, err := exec.Command("go", "build", "-o", dnsdOnce.path, "./dnsd").CombinedOutput()
		if err != nil {
			dnsdOnce.err = fmt.Errorf("go build ./e2e/dnsd: %v: %s", err, out)
		}
	})
	if dnsdOnce.err != nil {
		t.Fatal(dnsdOnce.err)
	}
	return dnsdOnce.path
}

// A LoadBalancer service with externalTrafficPolicy Local answers its healthCheckNodePort with kube-proxy's
// JSON: 200 on a node with a local endpoint, 503 on one without.
func TestServiceHealthCheckNodePort(t *testing.T) {
	l := needLab(t)
	backend(t, l, l.Nodes[0], "hc", "hc")
	svc := webService("hc", "hc")
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	got := createService(t, l, svc)
	port := got.Spec.HealthCheckNodePort
	if port == 0 {
		t.Fatal("the API server allocated no healthCheckNodePort")
	}
	check := func(n *lab.Node, wantCode int, wantLocal float64) {
		eventually(t, 15*time.Second, fmt.Sprintf("%s:%d answers %d", n.Name, port, wantCode), func(ctx context.Context) error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/healthz", n.IP, port), nil)
			resp, err := l.Ext.HTTPClient().Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var body struct {
				Service        struct{ Namespace, Name string }
				LocalEndpoints float64 `json:"localEndpoints"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				return err
			}
			if resp.StatusCode != wantCode || body.LocalEndpoints != wantLocal || body.Service.Name != "hc" {
				return fmt.Errorf("got %d %+v", resp.StatusCode, body)
			}
			return nil
		})
	}
	check(l.Nodes[0], 200, 1)
	check(l.Nodes[1], 503, 0)
}
