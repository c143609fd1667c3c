package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kube-proxy, the reference service proxy, as a lab process in a node's namespace: benchmarks time Canopy's
// proxy against it on the same API objects. hack/build-kube-proxy.sh builds it (the control plane's version)
// next to the control-plane binaries.

// KubeProxyServiceAccount is the identity kube-proxy runs under in the lab, as kubeadm sets it up: the
// ServiceAccount kube-system/kube-proxy bound to the bootstrap ClusterRole system:node-proxier.
const KubeProxyServiceAccount = "kube-proxy"

// KubeProxyBin is $CANOPY_KUBE_PROXY_BIN if set, else kube-proxy in DefaultK8sBinDir (where
// hack/build-kube-proxy.sh puts it).
func KubeProxyBin() string {
	if b := os.Getenv("CANOPY_KUBE_PROXY_BIN"); b != "" {
		return b
	}
	return filepath.Join(DefaultK8sBinDir(), "kube-proxy")
}

// KubeProxy is a kube-proxy process in a node's namespace.
type KubeProxy struct {
	*Proc
	Node    *Node
	Mode    string    // iptables, nftables, ipvs
	Started time.Time // just before the process was started
	Bin     string
}

// KubeProxyKubeconfig makes kube-proxy's identity (ServiceAccount kube-system/kube-proxy, bound to
// system:node-proxier, as kubeadm does) and returns a kubeconfig with a token of it (see
// ServiceAccountKubeconfig). Idempotent.
func (l *Lab) KubeProxyKubeconfig(ctx context.Context) (string, error) {
	bind := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "canopy-lab:node-proxier"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:node-proxier"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "kube-system", Name: KubeProxyServiceAccount}},
	}
	if _, err := l.Kube.RbacV1().ClusterRoleBindings().Create(ctx, bind, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("kube-proxy's ClusterRoleBinding: %w", err)
	}
	return l.ServiceAccountKubeconfig(ctx, "kube-system", KubeProxyServiceAccount)
}

// KubeProxyArgs is kube-proxy's command line (without the binary) on node n in mode: its credentials, the node
// name, the cluster CIDR (local traffic detection), the node IP, its metrics and health servers on the node's
// loopback, conntrack's global table size left alone (not settable from a network namespace), log level 2 (one
// line per sync with its duration), then extra.
func (l *Lab) KubeProxyArgs(n *Node, kubeconfig, mode string, extra ...string) []string {
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + n.Name,
		"--proxy-mode=" + mode,
		"--cluster-cidr=" + l.cfg.ClusterCIDR.String(),
		"--bind-address=" + n.IP.String(),
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--conntrack-max-per-core=0",
		"--v=2",
	}
	return append(args, extra...)
}

// StartKubeProxy starts bin (KubeProxyBin() when "") in node n's namespace in mode (--proxy-mode), with
// KubeProxyArgs(extra...). Its log is <WorkDir>/<node>/kube-proxy.log, appended across restarts. Stop it with
// Stop (kube-proxy leaves its rules in the kernel; CleanupKubeProxy removes them); Down kills it.
func (l *Lab) StartKubeProxy(ctx context.Context, n *Node, mode, bin string, extra ...string) (*KubeProxy, error) {
	if n.IsVM() {
		return nil, fmt.Errorf("lab: %s is a VM", n.Name)
	}
	if bin == "" {
		bin = KubeProxyBin()
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("lab: kube-proxy: %w (hack/build-kube-proxy.sh builds it)", err)
	}
	kc, err := l.KubeProxyKubeconfig(ctx)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(l.WorkDir, n.Name, "kube-proxy.log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	argv := append([]string{bin}, l.KubeProxyArgs(n, kc, mode, extra...)...)
	started := time.Now()
	p, err := l.startProc("kube-proxy-"+n.Name, n.NS, logPath, argv)
	if err != nil {
		return nil, err
	}
	return &KubeProxy{Proc: p, Node: n, Mode: mode, Started: started, Bin: bin}, nil
}

// Stop sends SIGTERM and waits up to 10 s (then SIGKILL). kube-proxy leaves its rules in the kernel.
func (k *KubeProxy) Stop() error {
	if k == nil || k.Proc == nil {
		return nil
	}
	return k.Proc.Stop(10 * time.Second)
}

// CleanupKubeProxy runs `kube-proxy --cleanup` in node n's namespace: it removes the rules of every mode
// (iptables, ipvs, nftables) a kube-proxy left there.
func (l *Lab) CleanupKubeProxy(ctx context.Context, n *Node, bin string) error {
	if bin == "" {
		bin = KubeProxyBin()
	}
	out, err := n.Exec(ctx, bin, "--cleanup", "--v=0")
	if err != nil {
		return fmt.Errorf("kube-proxy --cleanup on %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// ProcUsage is what a process used so far, from /proc/<pid>/stat and status.
type ProcUsage struct {
	User, System time.Duration // the process's own CPU time (all its threads)
	// ChildUser and ChildSystem are the CPU times of children it waited for (iptables-restore, nft, ...).
	ChildUser, ChildSystem time.Duration
	RSS                    int64 // resident set size in bytes (VmRSS)
}

// CPU is the process's own CPU time.
func (u ProcUsage) CPU() time.Duration { return u.User + u.System }

// ChildCPU is the CPU time of its waited-for children.
func (u ProcUsage) ChildCPU() time.Duration { return u.ChildUser + u.ChildSystem }

// Total is own and children's CPU time.
func (u ProcUsage) Total() time.Duration { return u.CPU() + u.ChildCPU() }

// Sub is the CPU used between an earlier reading o and u (RSS is u's).
func (u ProcUsage) Sub(o ProcUsage) ProcUsage {
	return ProcUsage{User: u.User - o.User, System: u.System - o.System,
		ChildUser: u.ChildUser - o.ChildUser, ChildSystem: u.ChildSystem - o.ChildSystem, RSS: u.RSS}
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat's times (100 on every Linux architecture Go runs on).
const clockTick = 10 * time.Millisecond

// Usage reads the process's CPU times (its own and its waited-for children's) and RSS. It fails once the
// process has exited.
func (p *Proc) Usage() (ProcUsage, error) {
	if exited, _ := p.Exited(); exited {
		return ProcUsage{}, fmt.Errorf("%s has exited", p.Name)
	}
	return ReadUsage(p.pid)
}

// Children returns the pids of the process's running children (e.g. an iptables-restore or nft it waits for).
func (p *Proc) Children() ([]int, error) {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(p.pid) + "/task")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/task/" + t.Name() + "/children")
		if err != nil {
			continue // the thread ended
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out, nil
}

// SettledUsage waits (up to timeout) until the process has no running child, so that the CPU of the children
// it forked is in cutime/cstime, then reads Usage. After timeout it reads Usage anyway.
func (p *Proc) SettledUsage(timeout time.Duration) (ProcUsage, error) {
	deadline := time.Now().Add(timeout)
	for {
		kids, err := p.Children()
		if err != nil || len(kids) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p.Usage()
}

// ReadUsage reads /proc/<pid>/stat (utime, stime, cutime, cstime) and VmRSS of /proc/<pid>/status.
func ReadUsage(pid int) (ProcUsage, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcUsage{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ProcUsage{}, fmt.Errorf("pid %d: odd stat line", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3; utime is field 14
	if len(f) < 15 {
		return ProcUsage{}, fmt.Errorf("pid %d: short stat line", pid)
	}
	var t [4]time.Duration
	for j := range t {
		v, err := strconv.ParseInt(f[11+j], 10, 64)
		if err != nil {
			return ProcUsage{}, fmt.Errorf("pid %d: stat field %d: %w", pid, 14+j, err)
		}
		t[j] = time.Duration(v) * clockTick
	}
	u := ProcUsage{User: t[0], System: t[1], ChildUser: t[2], ChildSystem: t[3]}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ProcUsage{}, err
	}
	for _, line := range strings.Split(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return ProcUsage{}, fmt.Errorf("pid %d: VmRSS %q: %w", pid, rest, err)
			}
			u.RSS = kb << 10
			return u, nil
		}
	}
	return ProcUsage{}, errors.New("no VmRSS in /proc/" + strconv.Itoa(pid) + "/status")
}
