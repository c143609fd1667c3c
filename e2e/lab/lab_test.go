package lab_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"canopy.io/canopy/e2e/lab"
)

// standIn is an agent stand-in: it prints its command line, then (if gobgpd is installed) runs gobgpd in the
// node's namespace peering with the ToR the way the agent will (a private ASN per node, the flags' timers), so
// the ToR's BGP configuration is exercised before the agent exists. Without gobgpd it sleeps.
const standIn = `#!/bin/sh
echo "standin-agent args: $*"
for a in "$@"; do
  case "$a" in
    --node-name=*) node=${a#*=} ;;
    --peer-router-ips=*) peer=${a#*=} ;;
    --peer-router-asns=*) asn=${a#*=} ;;
  esac
done
command -v gobgpd >/dev/null || exec sleep infinity
ip=$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
conf="$(dirname "$0")/$node.toml"
cat > "$conf" <<EOF
[global.config]
  as = $((65000 + ${node#node}))
  router-id = "$ip"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "$peer"
    peer-as = $asn
  [neighbors.timers.config]
    connect-retry = 2
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
EOF
exec gobgpd -f "$conf" -p --pprof-disable --api-hosts 127.0.0.1:50051 -l info
`

func writeStandIn(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "standin-agent")
	if err := os.WriteFile(path, []byte(standIn), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLab brings up a 2-node lab with the stand-in agent and checks each part: the API (nodes, pod CIDRs, the
// nodes' own credentials from their namespaces), FRR, pods, BGP between the ToR and the nodes, and that Down
// leaves no namespace and no process.
func TestLab(t *testing.T) {
	t0 := time.Now()
	l := lab.New(t, lab.Config{Nodes: 2, AgentBin: writeStandIn(t)})
	t.Logf("Up took %s", time.Since(t0).Round(time.Millisecond))
	// The checks' deadline starts once the lab is up (under load Up alone has taken most of a minute).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := l.Config()

	t.Run("api", func(t *testing.T) {
		nodes, err := l.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != 2 {
			t.Fatalf("got %d nodes, want 2", len(nodes.Items))
		}
		seen := map[string]bool{}
		for _, n := range l.Nodes {
			if !n.PodCIDR.IsValid() || !cfg.ClusterCIDR.Contains(n.PodCIDR.Addr()) || n.PodCIDR.Bits() != 24 {
				t.Errorf("%s: pod CIDR %v, want a /24 of %s", n.Name, n.PodCIDR, cfg.ClusterCIDR)
			}
			if seen[n.PodCIDR.String()] {
				t.Errorf("%s: pod CIDR %s given twice", n.Name, n.PodCIDR)
			}
			seen[n.PodCIDR.String()] = true
			obj, err := l.Kube.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if obj.Spec.PodCIDR != n.PodCIDR.String() {
				t.Errorf("%s: spec.podCIDR %q, lab says %s", n.Name, obj.Spec.PodCIDR, n.PodCIDR)
			}
			if len(obj.Status.Addresses) == 0 || obj.Status.Addresses[0].Address != n.IP.String() {
				t.Errorf("%s: addresses %v, want InternalIP %s", n.Name, obj.Status.Addresses, n.IP)
			}
		}
	})

	t.Run("node-credentials", func(t *testing.T) {
		// The agent's kubeconfig works from inside its node (dialing from the node namespace, like the agent).
		n := l.Nodes[1]
		rc, err := clientcmd.BuildConfigFromFlags("", n.KubeconfigPath)
		if err != nil {
			t.Fatal(err)
		}
		rc.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) { return n.Dial(ctx, network, addr) }
		kc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kc.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err != nil {
			t.Fatalf("node %s with its own kubeconfig: %v", n.Name, err)
		}
		out, err := l.Kubectl(ctx, "get", "nodes", "-o", "wide")
		if err != nil {
			if _, lerr := os.Stat(filepath.Join(cfg.K8sBinDir, "kubectl")); lerr != nil {
				t.Skipf("no kubectl: %v", lerr)
			}
			t.Fatal(err)
		}
		if !strings.Contains(out, "node1") {
			t.Errorf("kubectl get nodes:\n%s", out)
		}
	})

	t.Run("agent-command-line", func(t *testing.T) {
		for _, n := range l.Nodes {
			log := waitLog(t, n.LogPath, "standin-agent args:")
			for _, want := range []string{"--kubeconfig=" + n.KubeconfigPath, "--node-name=" + n.Name,
				"--cluster-cidr=10.244.0.0/16", "--peer-router-ips=10.99.0.1", "--peer-router-asns=64500",
				"--hold-time=9s", "--keepalive-interval=3s", "--connect-retry=2s", "--log-level=debug"} {
				if !strings.Contains(log, want) {
					t.Errorf("%s: agent command line lacks %s:\n%s", n.Name, want, log)
				}
			}
		}
	})

	t.Run("frr", func(t *testing.T) {
		out, err := l.ToR.Vtysh(ctx, "show bgp summary")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "local AS number 64500") && !strings.Contains(out, "No BGP neighbors") {
			t.Errorf("show bgp summary:\n%s", out)
		}
		if err := l.ToR.Config(ctx, "router bgp 64500", "no such command"); err == nil {
			t.Error("Config accepted a bad line")
		}
	})

	var p1, p2, q1 *lab.Pod
	t.Run("pods", func(t *testing.T) {
		var err error
		if p1, err = l.AddPod(ctx, l.Nodes[0], "p1"); err != nil {
			t.Fatal(err)
		}
		if p2, err = l.AddPod(ctx, l.Nodes[0], "p2"); err != nil {
			t.Fatal(err)
		}
		if q1, err = l.AddPod(ctx, l.Nodes[1], "p1"); err != nil {
			t.Fatal(err)
		}
		if want := l.Nodes[0].PodCIDR.Addr().Next(); p1.Gateway != want {
			t.Errorf("gateway %s, want %s", p1.Gateway, want)
		}
		if p1.IP == p2.IP || !l.Nodes[0].PodCIDR.Contains(p2.IP) {
			t.Errorf("pod addresses %s %s", p1.IP, p2.IP)
		}
		for _, c := range []struct {
			from *lab.Pod
			to   netip.Addr
		}{{p1, p1.Gateway}, {p2, p1.Gateway}, {q1, q1.Gateway}, {p1, p2.IP}, {p1, l.Nodes[0].IP}} {
			if err := c.from.Ping(ctx, c.to); err != nil {
				t.Errorf("%s → %s: %v", c.from.NS, c.to, err)
			}
		}
		if err := l.Ext.Ping(ctx, l.ToR.IP); err != nil {
			t.Errorf("external host → ToR: %v", err)
		}
	})

	t.Run("pod-server", func(t *testing.T) {
		// A background process in a pod, reached from the test process through a socket made in another pod.
		if _, err := exec.LookPath("socat"); err != nil {
			t.Skip("socat not installed")
		}
		if p1 == nil || p2 == nil {
			t.Skip("no pods")
		}
		srv, err := p2.Start("hello", "socat", "TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo hello")
		if err != nil {
			t.Fatal(err)
		}
		var got string
		err = retry(ctx, func() error {
			c, err := p1.Dial(ctx, "tcp", net.JoinHostPort(p2.IP.String(), "8080"))
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, 16)
			n, _ := c.Read(b)
			if got = strings.TrimSpace(string(b[:n])); got != "hello" {
				return errorString("got " + got)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("pod server: %v", err)
		}
		if err := l.DeletePod(p2); err != nil {
			t.Fatal(err)
		}
		if exited, _ := srv.Exited(); !exited {
			t.Error("DeletePod left the pod's process running")
		}
		if _, err := os.Stat("/run/netns/" + p2.NS); err == nil {
			t.Error("DeletePod left the namespace")
		}
	})

	t.Run("bgp", func(t *testing.T) {
		if _, err := exec.LookPath("gobgpd"); err != nil {
			t.Skip("gobgpd not installed: the stand-in agent only sleeps")
		}
		if p1 == nil || q1 == nil {
			t.Skip("no pods")
		}
		if err := l.ToR.WaitEstablished(ctx, l.Nodes[0].IP, l.Nodes[1].IP); err != nil {
			t.Fatal(err)
		}
		// Announce each node's pod CIDR the way the agent will, then the ToR must route to the pods.
		for _, n := range l.Nodes {
			if out, err := n.Exec(ctx, "gobgp", "global", "rib", "add", n.PodCIDR.String()); err != nil {
				t.Fatalf("%s: %v %s", n.Name, err, out)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			routes, err := l.ToR.Routes(ctx)
			if err == nil && len(routes[l.Nodes[0].PodCIDR]) == 1 && len(routes[l.Nodes[1].PodCIDR]) == 1 {
				if routes[l.Nodes[0].PodCIDR][0] != l.Nodes[0].IP {
					t.Errorf("ToR: %s via %v, want %s", l.Nodes[0].PodCIDR, routes[l.Nodes[0].PodCIDR], l.Nodes[0].IP)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ToR did not learn the pod CIDRs: %v %v", routes, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, pod := range []*lab.Pod{p1, q1} {
			if err := retry(ctx, func() error { return l.ToR.Ping(ctx, pod.IP) }); err != nil {
				t.Errorf("ToR → pod %s via BGP route: %v", pod.IP, err)
			}
		}
		// The ToR can originate a prefix to the nodes.
		if err := l.ToR.Announce(ctx, "198.51.100.0/24"); err != nil {
			t.Fatal(err)
		}
		if err := retry(ctx, func() error {
			out, err := l.Nodes[1].Exec(ctx, "gobgp", "global", "rib", "198.51.100.0/24")
			if err == nil && !strings.Contains(out, "198.51.100.0/24") {
				err = errorString("not in the node's RIB: " + out)
			}
			return err
		}); err != nil {
			t.Error(err)
		}
		var b bytes.Buffer
		if err := l.Show(ctx, &b); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"show ip bgp", l.Nodes[0].PodCIDR.String(), "gobgp neighbor", "Establ"} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("Show lacks %q:\n%s", want, b.String())
			}
		}
	})

	t.Run("attach", func(t *testing.T) {
		// What labctl show does for a lab another process made.
		a, err := lab.Attach(cfg.StateRoot, l.Prefix)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Detach()
		if len(a.Nodes) != 2 || a.Nodes[1].PodCIDR != l.Nodes[1].PodCIDR || a.ToR.Dir != l.ToR.Dir || a.Nodes[0].Agent() == nil {
			t.Errorf("attached lab differs: nodes %v, ToR dir %s", a.Nodes, a.ToR.Dir)
		}
		if _, err := a.Kube.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{}); err != nil {
			t.Error(err)
		}
		var b bytes.Buffer
		if err := a.Show(ctx, &b); err != nil || !strings.Contains(b.String(), "show bgp summary") {
			t.Errorf("Show on the attached lab: %v\n%s", err, b.String())
		}
	})

	t.Run("agent-restart", func(t *testing.T) {
		n := l.Nodes[1]
		old := n.Agent().PID()
		if err := n.StopAgent(); err != nil {
			t.Fatal(err) // gobgpd exits 0 on SIGTERM, as the agent must
		}
		if err := n.StartAgent("--extra-flag=1"); err != nil {
			t.Fatal(err)
		}
		if n.Agent().PID() == old {
			t.Error("same pid after restart")
		}
		waitLog(t, n.LogPath, "--extra-flag=1")
	})

	t.Run("down", func(t *testing.T) {
		nss := l.Namespaces()
		var pids []int
		for _, p := range l.Procs() {
			pids = append(pids, p.PID())
		}
		if len(nss) < 6 || len(pids) < 7 {
			t.Fatalf("expected ≥6 namespaces and ≥7 processes, have %v %v", nss, pids)
		}
		t1 := time.Now()
		if err := l.Down(); err != nil {
			t.Fatal(err)
		}
		t.Logf("Down took %s", time.Since(t1).Round(time.Millisecond))
		for _, ns := range nss {
			if _, err := os.Stat("/run/netns/" + ns); err == nil {
				t.Errorf("namespace %s left", ns)
			}
		}
		for _, pid := range pids {
			if _, err := os.Stat(filepath.Join("/proc", itoa(pid))); err == nil {
				t.Errorf("process %d left", pid)
			}
		}
		if _, err := os.Stat(l.WorkDir); err == nil && !t.Failed() {
			t.Errorf("work dir %s left", l.WorkDir)
		}
		if _, err := l.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
			t.Error("API still answers after Down")
		}
		if err := l.Down(); err != nil {
			t.Errorf("second Down: %v", err)
		}
	})
}

// TestUpFailure: when a control-plane process dies, Up fails soon with its log, and leaves nothing behind.
func TestUpFailure(t *testing.T) {
	bins := t.TempDir()
	for name, body := range map[string]string{
		"kube-apiserver":          "#!/bin/sh\necho 'fake apiserver: cannot start' >&2\nexit 3\n",
		"kube-controller-manager": "#!/bin/sh\nexec sleep 600\n",
	} {
		if err := os.WriteFile(filepath.Join(bins, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Our own prefix, so the leak check below looks only at this lab (other packages' labs come and go).
	prefix := fmt.Sprintf("cnpuf%d-", time.Now().UnixNano()%100000)
	cfg := lab.Config{Nodes: 1, K8sBinDir: bins, Logf: t.Logf, Prefix: prefix}
	if err := lab.Preflight(cfg); err != nil {
		t.Skipf("lab cannot run here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	l, err := lab.Up(ctx, cfg)
	if err == nil {
		l.Down()
		t.Fatal("Up succeeded with a kube-apiserver that exits")
	}
	t.Logf("Up failed as it should:\n%v", err)
	if !strings.Contains(err.Error(), "fake apiserver: cannot start") {
		t.Errorf("error lacks the apiserver's log: %v", err)
	}
	// Soon: long before Up's own deadline (30 s), which it would otherwise wait out. Not a tighter bound: under
	// load the network alone has taken 8 s.
	if d := time.Since(t0); d > 20*time.Second || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Up took %s to notice (%v)", d, err)
	}
	after, _ := os.ReadDir("/run/netns")
	for _, e := range after {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("namespace %s left after a failed Up", e.Name())
		}
	}
	out, _ := exec.Command("pgrep", "-f", bins).Output()
	if len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("processes left: %s", out)
	}
}

// TestCleanStale: a lab whose test process died (here: a state file naming a dead owner) is removed by the next
// CleanStale, processes and namespaces included; a kept one is left to DownAll.
func TestCleanStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	root := t.TempDir()
	mk := func(prefix string, keep bool) (ns string, exited chan struct{}) {
		ns = prefix + "x"
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sleeper := exec.Command("ip", "netns", "exec", ns, "sleep", "600")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		exited = make(chan struct{})
		go func() { _ = sleeper.Wait(); close(exited) }()
		t.Cleanup(func() { _ = sleeper.Process.Kill(); <-exited })
		dir := filepath.Join(root, strings.TrimSuffix(prefix, "-"))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		// Owner pid 0: nobody; the sleeper is found through its namespace, not the record.
		state := `{"prefix":"` + prefix + `","ownerPID":0,"keep":` + map[bool]string{true: "true", false: "false"}[keep] +
			`,"ready":true,"namespaces":["` + ns + `"]}`
		if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(state), 0o600); err != nil {
			t.Fatal(err)
		}
		return ns, exited
	}
	staleNS, staleExited := mk("xstale-", false)
	keptNS, keptExited := mk("xkept-", true)

	if err := lab.CleanStale(root, t.Logf); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + staleNS); err == nil {
		t.Error("stale namespace left")
	}
	select {
	case <-staleExited:
	case <-time.After(5 * time.Second):
		t.Error("process in the stale namespace still runs")
	}
	select {
	case <-keptExited:
		t.Error("CleanStale killed the process of a kept lab")
	default:
	}
	if _, err := os.Stat("/run/netns/" + keptNS); err != nil {
		t.Error("kept namespace removed by CleanStale")
	}
	st, err := lab.List(root)
	if err != nil || len(st) != 1 || st[0].Prefix != "xkept-" {
		t.Errorf("List after CleanStale: %+v %v", st, err)
	}
	if err := lab.DownAll(root, false, t.Logf); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + keptNS); err == nil {
		t.Error("DownAll left the kept namespace")
	}
	select {
	case <-keptExited:
	case <-time.After(5 * time.Second):
		t.Error("process in the kept namespace survived DownAll")
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("state left: %v", ents)
	}
}

func waitLog(t *testing.T, path, want string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never contained %q:\n%s", path, want, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func retry(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

func itoa(i int) string { return strconv.Itoa(i) }
