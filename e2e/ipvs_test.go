package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	"canopy.io/canopy/internal/testsupport/vmtest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The IPVS back end end to end. This machine's kernel has no IPVS, so the test brings up its own lab whose node3 is
// a qemu VM with a stock Debian kernel (e2e/lab/vmnode.go): on the fabric through a tap on the ToR's bridge,
// peering with the ToR and the other nodes, running the real agent with --proxy-mode=ipvs against the lab's
// kube-apiserver, with pods made by canopy-cni in the VM. node1 and node2 are namespace nodes (iptables back end).

// ipvsLab is the lab with its VM node.
type ipvsLab struct {
	*lab.Lab
	vm   *lab.VM
	node *lab.Node // the VM node
}

func TestIPVS(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no lab")
	}
	if os.Getenv(vmNodeStep) == "later" {
		// An emulated VM starved of CPU by the other packages' tests soft-locks (seen on 2 cores).
		t.Skipf("%s=later: make test runs this test alone, in a step of its own after the others", vmNodeStep)
	}
	cfg := lab.Config{Nodes: 3, VMNodes: []int{3}, AgentBin: agentBin(), CNIPlugin: cniBin(),
		PerNodeArgs: map[int][]string{3: {"--proxy-mode=ipvs"}}}
	if err := lab.Preflight(cfg); err != nil {
		skipOrFail(t, "lab cannot run here: %v", err)
	}
	cache := needVMCache(t)
	dnsd := buildDNSD(t) // before the VM boots: the guest sees the host's files through its share
	l := lab.New(t, cfg)
	ctx := context.Background()
	// vmguest goes into the lab's work directory, which goes with the lab (also a stale one).
	guest := filepath.Join(l.WorkDir, "vmguest")
	if out, err := exec.Command("go", "build", "-o", guest, "./vmguest").CombinedOutput(); err != nil {
		t.Fatalf("go build ./e2e/vmguest: %v: %s", err, out)
	}

	n := l.Nodes[2]
	bootCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	vm, err := n.StartVM(bootCtx, lab.VMOptions{CacheDir: cache, Guest: guest})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("VM node logs: agent %s, console %s, vmguest %s", n.LogPath, vm.ConsolePath, vm.GuestLogPath)
		}
	})
	// Like a real node's uplink, the VM reaches the world outside the rack through the ToR.
	if _, err := vm.Exec(ctx, "ip", "route", "add", l.Config().ExternalCIDR.String(), "via", l.ToR.IP.String()); err != nil {
		t.Fatal(err)
	}
	il := &ipvsLab{Lab: l, vm: vm, node: n}
	il.waitReady(t)
	t.Logf("VM node: booted (vmguest answers) %s after qemu started; agent ready (BGP to ToR and nodes, routes, IPVS) %s after qemu started",
		vm.Booted.Round(time.Millisecond), time.Since(vm.Started).Round(time.Millisecond))

	t.Run("AgentChoseIPVS", il.testChoseIPVS)
	t.Run("ClusterIPSpreadsAndFollowsScaling", il.testSpreadAndScaling)
	t.Run("NoEndpointsRejectsFast", il.testReject)
	t.Run("NodePortFromOutside", il.testNodePort)
	t.Run("Hairpin", il.testHairpin)
	t.Run("ClientIPAffinity", il.testAffinity)
	t.Run("UDPDNSSurvivesBackendMove", func(t *testing.T) { il.testDNSMove(t, dnsd) })
}

// waitReady waits until the agent in the VM runs the IPVS proxy and BGP has converged: the ToR is Established
// with every node, the VM's kernel routes to the other nodes' pod CIDRs and theirs to the VM's.
func (il *ipvsLab) waitReady(t *testing.T) {
	t.Helper()
	l := il.Lab
	eventually(t, 90*time.Second, "the VM node's agent is ready", func(ctx context.Context) error {
		if exited, err := il.vm.Proc.Exited(); exited {
			t.Fatalf("the VM ended: %v", err)
		}
		var ips []netip.Addr
		for _, n := range l.Nodes {
			ips = append(ips, n.IP)
		}
		if err := l.ToR.WaitEstablished(ctx, ips...); err != nil {
			return err
		}
		if !strings.Contains(readFile(il.node.LogPath), `msg="service proxy" backend=ipvs`) {
			return fmt.Errorf("no 'service proxy backend=ipvs' in %s yet", il.node.LogPath)
		}
		vmRoutes, err := routesIn(ctx, il.vm.Exec, "proto", "186")
		if err != nil {
			return err
		}
		for _, n := range l.Nodes {
			if n == il.node {
				continue
			}
			if !slices.Equal(vmRoutes[n.PodCIDR], []netip.Addr{n.IP}) {
				return fmt.Errorf("VM: route to %s is %v, want via %s", n.PodCIDR, vmRoutes[n.PodCIDR], n.IP)
			}
			rt, err := kernelRoutes(ctx, n)
			if err != nil {
				return err
			}
			if !slices.Equal(rt[il.node.PodCIDR], []netip.Addr{il.node.IP}) {
				return fmt.Errorf("%s: route to the VM's %s is %v", n.Name, il.node.PodCIDR, rt[il.node.PodCIDR])
			}
		}
		return nil
	})
}

// The agent in the VM chose IPVS (its log says so, and the kernel's IPVS table holds the kubernetes Service).
func (il *ipvsLab) testChoseIPVS(t *testing.T) {
	log := readFile(il.node.LogPath)
	if strings.Contains(log, "this kernel has no IPVS") {
		t.Fatalf("the agent in the VM fell back to iptables:\n%s", log)
	}
	// kubernetes = 10.96.0.1:443 → "TCP  0A600001:01BB rr"
	// Generous deadlines for everything that goes through vmguest: the VM is emulated (TCG), and on a loaded host
	// one exec can take seconds.
	eventually(t, 60*time.Second, "the kubernetes Service in /proc/net/ip_vs", func(ctx context.Context) error {
		out, err := il.vm.Exec(ctx, "cat", "/proc/net/ip_vs")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "TCP  0A600001:01BB") {
			return fmt.Errorf("/proc/net/ip_vs:\n%s", out)
		}
		return nil
	})
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format+" (CI must run this test)", args...)
	}
	t.Skipf(format, args...)
}

// needVMCache prepares the test VM (hack/vm/prepare.sh, cached) and returns its cache directory, or skips (fails
// under CI=true) saying why it cannot be had.
func needVMCache(t *testing.T) string {
	t.Helper()
	wd, _ := os.Getwd()
	script, err := vmtest.FindPrepare(wd)
	if err != nil {
		skipOrFail(t, "the test VM cannot be had: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := vmtest.Prepare(ctx, script)
	if err != nil {
		skipOrFail(t, "the test VM cannot be had: %v", err)
	}
	return dir
}

// vmPod makes a pod in the VM node, deleted when the test ends.
func (il *ipvsLab) vmPod(t *testing.T, name string, labels map[string]string) *lab.VMPod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := il.vm.AddPod(ctx, name, lab.PodOptions{Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := il.vm.DeletePod(ctx, p); err != nil {
			t.Errorf("delete VM pod %s: %v", name, err)
		}
	})
	return p
}

// vmBackend is backend() in the VM node: a pod serving its name on TCP 8080 and UDP 5353 and the client's
// address on TCP 8081, labelled app=<app> once its servers run.
func (il *ipvsLab) vmBackend(t *testing.T, name, app string) *lab.VMPod {
	t.Helper()
	p := il.vmPod(t, name, nil)
	ctx := context.Background()
	for _, cmd := range [][]string{
		{"socat", "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo " + name},
		{"socat", "UDP-LISTEN:5353,reuseaddr,fork", "SYSTEM:echo " + name},
		{"socat", "TCP-LISTEN:8081,reuseaddr,fork", `SYSTEM:echo $SOCAT_PEERADDR`},
	} {
		if err := p.Start(ctx, strings.Fields(cmd[1])[0][:3]+"-"+name, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	// The servers listen before the pod joins the service (as a readiness probe would make sure).
	eventually(t, 10*time.Second, name+"'s servers listen", func(ctx context.Context) error {
		out, err := p.Exec(ctx, "ss", "-Hltun")
		if err == nil && !(strings.Contains(out, ":8080") && strings.Contains(out, ":8081") && strings.Contains(out, ":5353")) {
			err = fmt.Errorf("listening: %s", out)
		}
		return err
	})
	patch := fmt.Sprintf(`{"metadata":{"labels":{"app":%q}}}`, app)
	if _, err := il.Kube.CoreV1().Pods("default").Patch(ctx, p.PodObjectName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// A client pod in the VM reaches a ClusterIP service backed by pods on a namespace node and on the VM node,
// spread over both by IPVS; scaling up (a third backend on node2) and down (one deleted) shows in the data path
// quickly.
func (il *ipvsLab) testSpreadAndScaling(t *testing.T) {
	l := il.Lab
	a := backend(t, l, l.Nodes[0], "wa", "web")
	il.vmBackend(t, "wv", "web")
	client := il.vmPod(t, "cl", nil)
	svc := createService(t, l, webService("web", "web"))
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var s map[string]int
	t0 := time.Now()
	eventually(t, 20*time.Second, "both backends answer through the ClusterIP", func(ctx context.Context) error {
		if s = spread(t, client, vip, 20); s["wa"] == 0 || s["wv"] == 0 || len(s) != 2 {
			return fmt.Errorf("answers: %v", s)
		}
		return nil
	})
	t.Logf("spread over 20 connections: %v (service to both answering: %s)", s, time.Since(t0).Round(time.Millisecond))
	if s["wa"] < 5 || s["wv"] < 5 {
		t.Errorf("IPVS rr spread 20 connections as %v", s)
	}

	// Scale up: wb on node2 joins the service.
	backend(t, l, l.Nodes[1], "wb", "web")
	t0 = time.Now()
	eventually(t, 10*time.Second, "the new backend gets traffic", func(ctx context.Context) error {
		if s = spread(t, client, vip, 6); s["wb"] == 0 {
			return fmt.Errorf("answers: %v", s)
		}
		return nil
	})
	t.Logf("scale-up (3rd backend labelled into the service) reached the data path in %s", time.Since(t0).Round(time.Millisecond))
	s = spread(t, client, vip, 30)
	t.Logf("spread over 30 connections with 3 backends: %v", s)
	if s["wa"] < 5 || s["wb"] < 5 || s["wv"] < 5 {
		t.Errorf("IPVS rr spread 30 connections over 3 backends as %v", s)
	}

	// Scale down: wa's Pod is deleted; its endpoint leaves the slice and IPVS.
	if err := l.Kube.CoreV1().Pods("default").Delete(context.Background(), a.PodObjectName(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	eventually(t, 10*time.Second, "no traffic on the deleted backend", func(ctx context.Context) error {
		if s = spread(t, client, vip, 6); s["wa"] != 0 || s["wb"]+s["wv"] != 6 {
			return fmt.Errorf("answers: %v", s)
		}
		return nil
	})
	t.Logf("scale-down (a backend's Pod deleted) reached the data path in %s", time.Since(t0).Round(time.Millisecond))
}

// A service without endpoints rejects at once (IPVS answers ICMP port unreachable) instead of black-holing.
func (il *ipvsLab) testReject(t *testing.T) {
	client := il.vmPod(t, "rj", nil)
	svc := createService(t, il.Lab, webService("empty", "nobody"))
	var took time.Duration
	eventually(t, 15*time.Second, "connection refused fast", func(ctx context.Context) error {
		t0 := time.Now()
		_, err := readLine(ctx, client, "tcp", net.JoinHostPort(svc.Spec.ClusterIP, "80"))
		took = time.Since(t0)
		if err == nil {
			return fmt.Errorf("connected to a service with no endpoints")
		}
		if !strings.Contains(err.Error(), "refused") || took > time.Second {
			return fmt.Errorf("took %s to fail (%v): not rejected", took, err)
		}
		return nil
	})
	t.Logf("rejected in %s (measured from the host, through vmguest)", took.Round(time.Millisecond))
}

// NodePort on the VM node's address from the external host behind the ToR: with externalTrafficPolicy Local the
// VM pod sees the client's own address; with Cluster a backend on another node answers and sees the VM node's
// address (masqueraded, so the reply comes back through the VM).
func (il *ipvsLab) testNodePort(t *testing.T) {
	l := il.Lab
	nodePort := func(svc *corev1.Service, name string) string {
		for _, p := range svc.Spec.Ports {
			if p.Name == name {
				return net.JoinHostPort(il.node.IP.String(), fmt.Sprint(p.NodePort))
			}
		}
		t.Fatalf("service %s has no port %s", svc.Name, name)
		return ""
	}
	il.vmBackend(t, "nl", "nplocal")
	local := webService("nplocal", "nplocal")
	local.Spec.Type = corev1.ServiceTypeNodePort
	local.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	gotLocal := createService(t, l, local)
	eventually(t, 20*time.Second, "NodePort with ETP Local keeps the client address", func(ctx context.Context) error {
		line, err := readLine(ctx, l.Ext, "tcp", nodePort(gotLocal, "peer"))
		if err != nil {
			return err
		}
		if a, _ := netip.ParseAddr(line); a != l.Ext.IP {
			return fmt.Errorf("the pod saw %q, want the external client %s", line, l.Ext.IP)
		}
		return nil
	})

	backend(t, l, l.Nodes[0], "nc", "npcluster")
	cluster := webService("npcluster", "npcluster")
	cluster.Spec.Type = corev1.ServiceTypeNodePort
	gotCluster := createService(t, l, cluster)
	eventually(t, 20*time.Second, "NodePort with ETP Cluster reaches a backend on another node", func(ctx context.Context) error {
		name, err := readLine(ctx, l.Ext, "tcp", nodePort(gotCluster, "http"))
		if err == nil && name != "nc" {
			err = fmt.Errorf("answer %q", name)
		}
		return err
	})
	line, err := readLine(context.Background(), l.Ext, "tcp", nodePort(gotCluster, "peer"))
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := netip.ParseAddr(line); a != il.node.IP {
		t.Errorf("the backend on node1 saw %q, want the VM node's %s (masqueraded)", line, il.node.IP)
	}
}

// A pod in the VM reaches its own service when IPVS picks itself (hairpin).
func (il *ipvsLab) testHairpin(t *testing.T) {
	p := il.vmBackend(t, "hp", "hair")
	svc := createService(t, il.Lab, webService("hair", "hair"))
	eventually(t, 20*time.Second, "the pod reaches itself through its service", func(ctx context.Context) error {
		name, err := readLine(ctx, p, "tcp", net.JoinHostPort(svc.Spec.ClusterIP, "80"))
		if err == nil && name != "hp" {
			err = fmt.Errorf("answer %q", name)
		}
		return err
	})
}

// ClientIP affinity (IPVS persistence) keeps a client on one backend.
func (il *ipvsLab) testAffinity(t *testing.T) {
	l := il.Lab
	backend(t, l, l.Nodes[0], "aa", "aff")
	il.vmBackend(t, "av", "aff")
	client := il.vmPod(t, "ac", nil)
	svc := webService("aff", "aff")
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	got := createService(t, l, svc)
	vip := net.JoinHostPort(got.Spec.ClusterIP, "80")
	eventually(t, 20*time.Second, "both backends are in IPVS and the service answers", func(ctx context.Context) error {
		out, err := il.vm.Exec(ctx, "cat", "/proc/net/ip_vs")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "Masq"); n < 2 {
			return fmt.Errorf("/proc/net/ip_vs has %d real servers:\n%s", n, out)
		}
		_, err = readLine(ctx, client, "tcp", vip)
		return err
	})
	// A request lost in the emulated VM's control channel (an i/o timeout on a loaded host) is not a second
	// backend: only the answers count, and most must come.
	s := spread(t, client, vip, 20)
	answered, backends := 0, 0
	for k, n := range s {
		if !strings.HasPrefix(k, "error: ") {
			answered += n
			backends++
		}
	}
	if backends != 1 || answered < 15 {
		t.Fatalf("with ClientIP affinity the client reached %v", s)
	}
	t.Logf("affinity: %v", s)
}

// A UDP "cluster DNS" service (e2e/dnsd behind ClusterIP 10.96.0.10:53) keeps answering one resolver flow (same
// source port) from a pod in the VM after its only backend moves from node1 into the VM: IPVS's connection entry
// to the old pod does not black-hole the flow.
func (il *ipvsLab) testDNSMove(t *testing.T, dnsd string) {
	l := il.Lab
	ctx := context.Background()
	const name, answer = "my-svc.my-ns.svc.cluster.local", "10.96.55.55"
	dnsArgs := []string{dnsd, "-listen", ":53", "-record", name + "=" + answer}
	dns1 := addPod(t, l, l.Nodes[0], "dns1")
	if _, err := dns1.Start("dnsd", dnsArgs...); err != nil {
		t.Fatal(err)
	}
	label := func(obj string) {
		patch := `{"metadata":{"labels":{"app":"cluster-dns"}}}`
		if _, err := l.Kube.CoreV1().Pods("default").Patch(ctx, obj, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	label(dns1.PodObjectName())
	createService(t, l, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cluster-dns"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "cluster-dns"},
			Ports: []corev1.ServicePort{{Name: "dns", Port: 53, TargetPort: intstr.FromInt(53), Protocol: corev1.ProtocolUDP}}}})
	client := il.vmPod(t, "dc", nil)
	resolve := func(ctx context.Context) error {
		out, err := client.Exec(ctx, dnsd, "-query", name, "-server", "10.96.0.10:53", "-sport", "40053")
		if err == nil && strings.TrimSpace(out) != answer {
			err = fmt.Errorf("resolved to %q, want %s", out, answer)
		}
		return err
	}
	eventually(t, 20*time.Second, "the pod in the VM resolves through the DNS service", resolve)

	// The DNS pod moves into the VM.
	if err := l.DeletePod(dns1); err != nil {
		t.Fatal(err)
	}
	dns2 := il.vmPod(t, "dns2", nil)
	if err := dns2.Start(ctx, "dnsd", dnsArgs...); err != nil {
		t.Fatal(err)
	}
	label(dns2.PodObjectName())
	t0 := time.Now()
	eventually(t, 60*time.Second, "DNS answers again from the moved pod, on the same flow", resolve)
	t.Logf("DNS answered again %s after the moved pod joined the service", time.Since(t0).Round(time.Millisecond))
}
