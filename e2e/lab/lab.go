package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Lab is a running virtual data centre. Its exported fields are set by Up and not changed afterwards (except
// Node.PodCIDR, set before Up returns).
type Lab struct {
	Prefix  string // of every namespace name, e.g. "cnpk3x9q2-"
	WorkDir string // logs, kubeconfigs, certificates (layout in docs/lab.md)
	// AdminKubeconfig is a system:masters kubeconfig for https://<cp>:6443, usable from any lab namespace
	// (`ip netns exec <cp> kubectl --kubeconfig …`), not from the root namespace.
	AdminKubeconfig string

	// Kube is an admin client for the test process, which stays in the root namespace: its sockets are
	// created inside the control-plane namespace.
	Kube kubernetes.Interface

	ToR   *ToR  // rack 1's; FRR's configuration and sockets are in <StateRoot>/<prefix>/tor
	CP    *Host // control plane: etcd (127.0.0.1:2379 inside), kube-apiserver (.2:6443), controller-manager
	Ext   *Host // an external client behind the ToR (ExternalCIDR .10, default route via the ToR or the spine)
	Nodes []*Node
	// Racks are the racks, rack 1 first (a single-rack lab has one: the whole fabric, whose ToR is ToR).
	Racks []*Rack
	// Spine is the spine router of a multi-rack lab (FRR; racks.go), nil with one rack.
	Spine *ToR

	cfg    Config
	pki    *pki
	rest   *rest.Config
	dialer *nsDialer

	mu            sync.Mutex
	namespaces    []string
	procs         []*Proc
	kcmArgv       []string // kube-controller-manager, started once the apiserver is ready
	pods          []*Pod
	fabricHosts   int
	removeWorkDir bool
	ownerPID      int
	ownerStart    uint64
	created       time.Time
	ready         bool
	keepLogs      bool

	downOnce sync.Once
	downErr  error
}

// Host is one network namespace of the lab with an address on a lab link.
type Host struct {
	Name string     // "tor", "cp", "ext", "node1", or a pod's name
	NS   string     // network namespace, e.g. "cnpk3x9q2-n1"
	IP   netip.Addr // on the fabric (ToR, cp, nodes), the external link (ext) or the node bridge (pods)
	lab  *Lab
}

// Node is a worker: a namespace on the fabric, a Node object with a pod CIDR, and (if Config.AgentBin) the agent.
type Node struct {
	Host
	Index          int // 1 for node1
	Rack           *Rack
	PodCIDR        netip.Prefix
	LogPath        string // the agent's stdout and stderr, appended across restarts
	KubeconfigPath string // the agent's credentials (user system:canopy:<name>, Config.AgentGroups)
	// PodCIDR6 is the node's IPv6 pod CIDR (Config.DualStack).
	PodCIDR6 netip.Prefix

	agent   *Proc
	nextPod int // pods made so far (addresses .10, .11, …); the first made bridge canopy0
	podMu   sync.Mutex
	vm      *VM // Config.VMNodes: the running VM (StartVM), guarded by lab.mu
}

// Up builds a lab: namespaces and links, the control plane, the ToR's FRR, Node objects (waiting for their pod
// CIDRs) and the agents. On any failure it tears down what it made. ctx bounds the waiting, not the lab's life.
func Up(ctx context.Context, cfg Config) (_ *Lab, err error) {
	begin := time.Now()
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := Preflight(c); err != nil {
		return nil, err
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if err := CleanStale(c.StateRoot, c.Logf); err != nil {
		c.Logf("lab: cleaning stale labs: %v", err)
	}
	if _, err := os.Stat(stateDir(c.StateRoot, c.Prefix)); err == nil {
		return nil, fmt.Errorf("lab: prefix %s is in use (%s)", c.Prefix, stateDir(c.StateRoot, c.Prefix))
	}
	l := &Lab{Prefix: c.Prefix, cfg: c, dialer: newNSDialer(), ownerPID: os.Getpid(), created: time.Now()}
	l.ownerStart, _ = startTime(l.ownerPID)
	if err := l.save(); err != nil {
		return nil, fmt.Errorf("lab: state: %w", err)
	}
	defer func() {
		if err != nil {
			if derr := l.Down(); derr != nil {
				err = errors.Join(err, fmt.Errorf("and tearing down: %w", derr))
			}
		}
	}()
	if err := l.makeWorkDir(); err != nil {
		return nil, err
	}
	if !c.Keep {
		w, err := startWatchdog(l.Prefix, filepath.Join(l.WorkDir, "watchdog.log"))
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		l.procs = append(l.procs, w)
		l.mu.Unlock()
	}
	l.layout()
	step := func(what string, f func() error) error {
		t0 := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("lab %s: %s: %w", l.Prefix, what, err)
		}
		c.Logf("lab %s: %s (%s)", l.Prefix, what, time.Since(t0).Round(time.Millisecond))
		return nil
	}
	if err := step("network", func() error { return l.buildNetwork(ctx) }); err != nil {
		return nil, err
	}
	if err := step("certificates and kubeconfigs", l.writeCredentials); err != nil {
		return nil, err
	}
	if err := step("control plane started", l.startControlPlane); err != nil {
		return nil, err
	}
	frr := make(chan error, 1)
	go func() { frr <- l.startFRR(ctx) }()
	if err := step("kube-apiserver ready", func() error { return l.waitAPIServer(ctx) }); err != nil {
		<-frr
		return nil, err
	}
	if err := l.startControllerManager(); err != nil {
		<-frr
		return nil, err
	}
	if err := step("nodes registered, pod CIDRs assigned", func() error { return l.registerNodes(ctx) }); err != nil {
		<-frr
		return nil, err
	}
	if err := step("FRR answers", func() error { return <-frr }); err != nil {
		return nil, err
	}
	if c.DualStack {
		if err := step("ToR: IPv6 unicast on the node sessions", func() error { return l.torIPv6(ctx) }); err != nil {
			return nil, err
		}
	}
	if c.multiRack() {
		if err := step("fabric routed (ToRs and spine)", func() error { return l.waitFabric(ctx) }); err != nil {
			return nil, err
		}
	}
	if c.BeforeAgents != nil {
		if err := step("before the agents", func() error { return c.BeforeAgents(ctx, l) }); err != nil {
			return nil, err
		}
	}
	if c.AgentBin != "" {
		if err := step("agents started", func() error {
			for _, n := range l.Nodes {
				if n.IsVM() {
					continue // its agent starts in the VM (StartVM)
				}
				if err := n.StartAgent(); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	l.ready = true
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return nil, err
	}
	if err := l.writeEnv(); err != nil {
		return nil, err
	}
	c.Logf("lab %s: up in %s, work dir %s", l.Prefix, time.Since(begin).Round(time.Millisecond), l.WorkDir)
	return l, nil
}

func (l *Lab) makeWorkDir() error {
	root := l.cfg.WorkRoot
	if root == "" {
		root = os.TempDir()
	}
	l.WorkDir = filepath.Join(root, "canopy-lab-"+strings.TrimSuffix(l.Prefix, "-"))
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(l.WorkDir, 0o755); err != nil {
		return err
	}
	l.mu.Lock()
	l.removeWorkDir = true
	l.mu.Unlock()
	l.AdminKubeconfig = filepath.Join(l.WorkDir, "admin.kubeconfig")
	return l.save()
}

// layout names the hosts and gives them their addresses.
func (l *Lab) layout() {
	c := l.cfg
	l.ToR = l.newRouter(1)
	l.CP = &Host{Name: "cp", NS: l.Prefix + "cp", IP: nthAddr(c.FabricCIDR, 2), lab: l}
	l.Ext = &Host{Name: "ext", NS: l.Prefix + "ext", IP: nthAddr(c.ExternalCIDR, 10), lab: l}
	for i := 1; i <= c.Nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		l.Nodes = append(l.Nodes, &Node{
			Host:           Host{Name: name, NS: fmt.Sprintf("%sn%d", l.Prefix, i), IP: nthAddr(c.FabricCIDR, 10+i), lab: l},
			Index:          i,
			LogPath:        filepath.Join(l.WorkDir, name, "agent.log"),
			KubeconfigPath: filepath.Join(l.WorkDir, name, "kubeconfig"),
		})
	}
	l.layoutRacks()
}

// buildNetwork makes the namespaces and wires them to the ToR's bridge. Everything is created directly inside
// the lab's namespaces (`ip -n`); the root namespace gets nothing.
func (l *Lab) buildNetwork(ctx context.Context) error {
	c := l.cfg
	if c.multiRack() {
		return l.buildFabric(ctx)
	}
	fabricBits := c.FabricCIDR.Bits()
	members := []*Host{l.CP}
	for _, n := range l.Nodes {
		members = append(members, &n.Host)
	}
	for i, h := range append([]*Host{&l.ToR.Host, l.Ext}, members...) {
		if i >= 3 && l.Nodes[i-3].IsVM() {
			continue // a VM: no namespace
		}
		if err := l.addNetns(ctx, h.NS); err != nil {
			return err
		}
	}
	tor := []string{
		"link set lo up",
		"link add br0 type bridge",
		fmt.Sprintf("addr add %s/%d dev br0%s", l.ToR.IP, fabricBits, c.nodad()),
		"link set br0 up",
		fmt.Sprintf("link add ext type veth peer name eth0 netns %s", l.Ext.NS),
		fmt.Sprintf("addr add %s/%d dev ext%s", nthAddr(c.ExternalCIDR, 1), c.ExternalCIDR.Bits(), c.nodad()),
		"link set ext up",
	}
	for i, m := range members {
		port := "cp"
		if i > 0 {
			port = fmt.Sprintf("n%d", i)
		}
		if i > 0 && l.Nodes[i-1].IsVM() { // its port is a tap, which qemu opens (vmnode.go)
			tor = append(tor, "tuntap add dev "+port+" mode tap", fmt.Sprintf("link set %s master br0 up", port))
			continue
		}
		tor = append(tor,
			fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, m.NS),
			fmt.Sprintf("link set %s master br0 up", port))
	}
	if err := ipBatch(ctx, l.ToR.NS, tor...); err != nil {
		return err
	}
	if err := sysctlIn(ctx, l.ToR.NS, c.forwardingSysctl()); err != nil {
		return err
	}
	if err := ipBatch(ctx, l.Ext.NS, "link set lo up",
		fmt.Sprintf("addr add %s/%d dev eth0%s", l.Ext.IP, c.ExternalCIDR.Bits(), c.nodad()), "link set eth0 up",
		fmt.Sprintf("route add default via %s", nthAddr(c.ExternalCIDR, 1))); err != nil {
		return err
	}
	// The control plane has a default route via the ToR (it may need to reach pods); nodes only with
	// Config.NodeDefaultRoute, else every route beyond the fabric comes from BGP.
	if err := ipBatch(ctx, l.CP.NS, "link set lo up",
		fmt.Sprintf("addr add %s/%d dev eth0%s", l.CP.IP, fabricBits, c.nodad()), "link set eth0 up",
		fmt.Sprintf("route add default via %s", l.ToR.IP)); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(l.Nodes))
	for i, n := range l.Nodes {
		if n.IsVM() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmds := []string{"link set lo up", fmt.Sprintf("addr add %s/%d dev eth0%s", n.IP, fabricBits, c.nodad()), "link set eth0 up"}
			if c.NodeDefaultRoute {
				cmds = append(cmds, fmt.Sprintf("route add default via %s", l.ToR.IP))
			}
			if err := ipBatch(ctx, n.NS, cmds...); err != nil {
				errs[i] = err
				return
			}
			errs[i] = sysctlIn(ctx, n.NS, c.forwardingSysctl())
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return l.buildNetwork6(ctx)
}

// addNetns records the namespace in the state file, then creates it (so a crash in between leaks nothing).
func (l *Lab) addNetns(ctx context.Context, ns string) error {
	l.mu.Lock()
	l.namespaces = append(l.namespaces, ns)
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return err
	}
	return addNetns(ctx, ns)
}

func (l *Lab) writeCredentials() error {
	var names []string
	for _, n := range l.Nodes {
		names = append(names, n.Name)
	}
	p, err := makePKI(filepath.Join(l.WorkDir, "pki"), l.CP.IP, l.cfg.ServiceCIDR, names, l.cfg.AgentGroups)
	if err != nil {
		return err
	}
	l.pki = p
	server := "https://" + netip.AddrPortFrom(l.CP.IP, apiPort).String()
	if err := writeKubeconfig(l.AdminKubeconfig, server, p.caPEM, "admin", p.adminToken); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		if err := os.MkdirAll(filepath.Dir(n.KubeconfigPath), 0o755); err != nil {
			return err
		}
		if err := writeKubeconfig(n.KubeconfigPath, server, p.caPEM, "system:canopy:"+n.Name, p.nodeTokens[n.Name]); err != nil {
			return err
		}
	}
	l.rest = l.restConfig(server, p.caPEM, p.adminToken)
	l.Kube, err = kubernetes.NewForConfig(l.rest)
	return err
}

// RestConfig returns a copy of the admin rest.Config behind Kube (dialing inside the control-plane namespace),
// for other clients (dynamic, apiextensions, a second identity with BearerToken changed).
func (l *Lab) RestConfig() *rest.Config { return rest.CopyConfig(l.rest) }

// startProc starts a lab process and records it.
func (l *Lab) startProc(name, ns, logPath string, argv []string) (*Proc, error) {
	p, err := startProc(name, ns, logPath, argv, spawnOpts{detach: l.cfg.Keep}, func(p *Proc) {
		l.cfg.Logf("lab %s: %s (pid %d) exited unexpectedly: %v; log %s", l.Prefix, p.Name, p.pid, p.err, p.LogPath)
	})
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, l.save()
}

// procsFailed returns an error (with the log's tail) if a named process has exited (the latest of that name: a
// daemon a test killed and started again counts as running).
func (l *Lab) procsFailed(names ...string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range names {
		var last *Proc
		for _, p := range l.procs {
			if p.Name == n {
				last = p
			}
		}
		if last == nil {
			continue
		}
		if exited, err := last.Exited(); exited {
			return fmt.Errorf("%s exited: %v\n%s", last.Name, err, tail(last.LogPath, 20))
		}
	}
	return nil
}

func (l *Lab) logPath(name string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.procs {
		if p.Name == name {
			return p.LogPath
		}
	}
	return ""
}

// waitFor polls check until it succeeds, ctx ends, or process proc exits.
func (l *Lab) waitFor(ctx context.Context, what, proc string, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		if perr := l.procsFailed(proc); perr != nil {
			return perr
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %v (last: %v)\n%s", what, ctx.Err(), err, tail(l.logPath(proc), 15))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Procs returns the lab's processes (running or exited), in start order.
func (l *Lab) Procs() []*Proc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Proc(nil), l.procs...)
}

// Namespaces returns the names of the lab's network namespaces.
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.namespaces...)
}

// Config returns the lab's configuration with defaults filled in.
func (l *Lab) Config() Config { return l.cfg }

// Exec runs cmd inside namespace ns and returns its combined output; the error includes the output.
func (l *Lab) Exec(ctx context.Context, ns string, cmd ...string) (string, error) {
	return execIn(ctx, ns, cmd...)
}

// Kubectl runs kubectl (from K8sBinDir) with the admin kubeconfig inside the control-plane namespace.
func (l *Lab) Kubectl(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{filepath.Join(l.cfg.K8sBinDir, "kubectl"), "--kubeconfig=" + l.AdminKubeconfig}, args...)
	return l.CP.Exec(ctx, argv...)
}

// KeepWorkDir makes Down leave the work directory (logs) in place; New calls it when a test failed.
func (l *Lab) KeepWorkDir() {
	l.mu.Lock()
	l.keepLogs = true
	l.mu.Unlock()
}

// Down stops every process, deletes every namespace, and removes the work directory if Up made it (unless Keep
// or KeepWorkDir). Agents get SIGTERM and 5 s; everything else SIGKILL. It is idempotent.
func (l *Lab) Down() error {
	l.downOnce.Do(func() { l.downErr = l.down() })
	return l.downErr
}

func (l *Lab) down() error {
	t0 := time.Now()
	procs := l.Procs()
	var wg sync.WaitGroup
	for _, p := range procs {
		if !strings.HasPrefix(p.Name, "agent-") {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Stop(5 * time.Second); err != nil {
				l.cfg.Logf("lab %s: %v", l.Prefix, err)
			}
		}()
	}
	wg.Wait()
	var errs []error
	for _, p := range procs {
		if err := p.Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	l.dialer.Close()
	rec := l.snapshot()
	keep := l.cfg.Keep || l.keepLogs
	if err := teardown(l.cfg.StateRoot, rec, keep); err != nil {
		errs = append(errs, err)
	}
	l.cfg.Logf("lab %s: down in %s", l.Prefix, time.Since(t0).Round(time.Millisecond))
	return errors.Join(errs...)
}

// snapshot is the state record of the lab now.
func (l *Lab) snapshot() *record {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := &record{
		Prefix: l.Prefix, Created: l.created, OwnerPID: l.ownerPID, OwnerStart: l.ownerStart,
		Keep: l.cfg.Keep && l.ready, Ready: l.ready, WorkDir: l.WorkDir, RemoveWorkDir: l.removeWorkDir,
		Namespaces: append([]string(nil), l.namespaces...), Config: l.cfg, AdminKubeconfig: l.AdminKubeconfig,
	}
	for _, p := range l.procs {
		if exited, _ := p.Exited(); !exited {
			r.Procs = append(r.Procs, p.record())
		}
	}
	if l.ToR != nil {
		for _, h := range []*Host{&l.ToR.Host, l.CP, l.Ext} {
			r.Hosts = append(r.Hosts, hostRecord{Name: h.Name, NS: h.NS, IP: h.IP.String()})
		}
	}
	for _, n := range l.Nodes {
		pc := ""
		if n.PodCIDR.IsValid() {
			pc = n.PodCIDR.String()
		}
		r.Nodes = append(r.Nodes, nodeRecord{hostRecord: hostRecord{Name: n.Name, NS: n.NS, IP: n.IP.String()},
			Index: n.Index, PodCIDR: pc, LogPath: n.LogPath, Kubeconfig: n.KubeconfigPath, NextPod: n.nextPod})
	}
	for _, p := range l.pods {
		r.Pods = append(r.Pods, podRecord{hostRecord: hostRecord{Name: p.Name, NS: p.NS, IP: p.IP.String()}, Node: p.Node.Name})
	}
	sort.Strings(r.Namespaces)
	return r
}

// saveMu makes saves one at a time: the routers start in parallel, and two writers of the one temporary file
// race (the second rename finds it gone).
var saveMu sync.Mutex

func (l *Lab) save() error {
	saveMu.Lock()
	defer saveMu.Unlock()
	return writeRecord(l.cfg.StateRoot, l.snapshot())
}

// tail returns the last n lines of a file, indented, for error messages.
func tail(path string, n int) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  --- " + path + " (tail)\n  " + strings.Join(lines, "\n  ")
}
