package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"canopy.io/canopy/e2e/vmguest/wire"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"canopy.io/canopy/internal/testsupport/vmtest"
)

// A node can be a qemu VM instead of a namespace (Config.VMNodes): the stock Debian kernel of hack/vm (which has
// IPVS; this machine's kernel does not), whose virtio NIC is the tap device n<i> on the ToR's bridge, so the VM
// sits on the fabric at node i's address and peers with the ToR like any other node. It sees the host's / read-only
// (9p) under a tmpfs overlay, and its job (init.sh's node mode) runs e2e/vmguest, which starts the real agent with
// the node's standard command line (AgentArgs: the same kubeconfig, credentials and flags) and answers the lab on
// <node IP>:VMGuestPort: commands, background processes and connections, in the VM or in one of its namespaces.
// The lab reaches it from the ToR's namespace, never from the root namespace. qemu runs in the ToR's namespace
// as a lab process, so Down, CleanStale and the watchdog kill it like any other.

// VMGuestPort is where e2e/vmguest listens on the VM node's fabric address.
const VMGuestPort = 7070

// VMOptions says how to boot a VM node.
type VMOptions struct {
	CacheDir string // hack/vm/prepare.sh's cache (vmtest.Prepare)
	Guest    string // the e2e/vmguest binary, built on the host; the guest runs it from the host share
	Memory   int    // MiB; default 1024
	CPUs     int    // default 2
	Accel    string // default: vmtest.Accelerator
	// AgentArgs are appended to the node's AgentArgs (like StartAgent's extra flags).
	AgentArgs []string
}

// VM is a running VM node.
type VM struct {
	Node *Node
	Proc *Proc // qemu, in the ToR's namespace
	// ConsolePath is the guest console (kernel, init.sh); GuestLogPath is vmguest's log. The agent's output goes
	// to Node.LogPath.
	ConsolePath, GuestLogPath string
	Started                   time.Time     // qemu started
	Booted                    time.Duration // from qemu's start until vmguest answered

	addr string
	mu   sync.Mutex
	pods []*VMPod
}

// IsVM reports whether the node is one of Config.VMNodes.
func (n *Node) IsVM() bool { return slices.Contains(n.lab.cfg.VMNodes, n.Index) }

// VM is the node's running VM, or nil.
func (n *Node) VM() *VM {
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	return n.vm
}

// StartVM boots the VM of a node in Config.VMNodes and waits (bounded by ctx) until vmguest answers; the agent
// then starts in the guest on its own. On failure the VM is killed.
func (n *Node) StartVM(ctx context.Context, o VMOptions) (_ *VM, err error) {
	l := n.lab
	if !n.IsVM() {
		return nil, fmt.Errorf("lab: %s is not in Config.VMNodes", n.Name)
	}
	if l.cfg.AgentBin == "" {
		return nil, errors.New("lab: no agent (Config.AgentBin is empty)")
	}
	if v := n.VM(); v != nil {
		if exited, _ := v.Proc.Exited(); !exited {
			return nil, fmt.Errorf("lab: the VM of %s already runs", n.Name)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil, fmt.Errorf("lab: VM node: %w", err)
	}
	if _, err := os.Stat(o.Guest); err != nil {
		return nil, fmt.Errorf("lab: VM node: the vmguest binary: %w", err)
	}
	dir := filepath.Dir(n.LogPath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	v := &VM{Node: n, ConsolePath: filepath.Join(dir, "console.log"), GuestLogPath: filepath.Join(dir, "vmguest.log"),
		addr: net.JoinHostPort(n.IP.String(), fmt.Sprint(VMGuestPort))}

	// The job: vmguest, which starts the agent. Everything it names is a host path the guest sees as it is.
	args := append([]string{"-listen", v.addr, "--", l.cfg.AgentBin}, n.AgentArgs(o.AgentArgs...)...)
	job := filepath.Join(dir, "vm-job.sh")
	script := vmtest.JobScript(o.Guest, args, vmtest.GuestEnv(vmtest.PassEnv(os.Environ())), dir)
	if err := os.WriteFile(job, []byte(script), 0o755); err != nil {
		return nil, err
	}
	esc := func(p string) string { return strings.ReplaceAll(p, ",", ",,") }
	ip := n.IP.As4()
	m := vmtest.Machine{
		CacheDir: o.CacheDir, Accel: o.Accel, Memory: o.Memory, CPUs: o.CPUs, Job: job,
		// ttyS0 console, ttyS1 the agent (appended, like a namespace node's agent.log), ttyS2 vmguest, ttyS3 exit.
		Serial: []string{"file:" + v.ConsolePath, "chardev:agentlog", "file:" + v.GuestLogPath, "file:" + filepath.Join(dir, "vm-exit")},
		Append: []string{fmt.Sprintf("canopy.ip=%s/%d", n.IP, l.cfg.FabricCIDR.Bits()), "canopy.hostname=" + n.Name},
		Extra: []string{
			"-chardev", "file,id=agentlog,append=on,path=" + esc(n.LogPath),
			"-netdev", fmt.Sprintf("tap,id=n0,ifname=n%d,script=no,downscript=no", n.Index),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=n0,mac=52:54:00:%02x:%02x:%02x", ip[1], ip[2], ip[3]),
		},
	}
	qargs, err := m.Args()
	if err != nil {
		return nil, err
	}
	// The tap n<i> is in the ToR's namespace, so qemu runs there (and dies with it).
	v.Started = time.Now()
	p, err := l.startProc("vm-"+n.Name, l.ToR.NS, filepath.Join(dir, "qemu.log"), append([]string{"qemu-system-x86_64"}, qargs...))
	if err != nil {
		return nil, err
	}
	v.Proc = p
	defer func() {
		if err != nil {
			_ = p.Kill()
		}
	}()
	for {
		// Short attempts: until the guest's address is up, a connect waits for ARP in vain.
		cctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
		_, cerr := v.Exec(cctx, "true")
		cancel()
		if cerr == nil {
			break
		}
		if exited, perr := p.Exited(); exited {
			return nil, fmt.Errorf("lab: the VM of %s ended: %v\n%s\n%s", n.Name, perr, tail(v.ConsolePath, 20), tail(p.LogPath, 10))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lab: the VM of %s: vmguest did not answer on %s: %v (last: %v)\n%s\n%s", n.Name, v.addr,
				ctx.Err(), cerr, tail(v.ConsolePath, 20), tail(v.GuestLogPath, 10))
		case <-time.After(100 * time.Millisecond):
		}
	}
	v.Booted = time.Since(v.Started)
	l.mu.Lock()
	n.vm = v
	l.mu.Unlock()
	l.cfg.Logf("lab %s: VM %s booted, vmguest answers on %s (%s)", l.Prefix, n.Name, v.addr, v.Booted.Round(time.Millisecond))
	return v, nil
}

// Stop kills the VM (the agent in it dies like a crashed machine).
func (v *VM) Stop() error { return v.Proc.Kill() }

// send opens a connection to vmguest from the ToR's namespace, sends req and reads the answer line. The
// connection stays open for Dial.
func (v *VM) send(ctx context.Context, req wire.Request) (net.Conn, *bufio.Reader, wire.Response, error) {
	var resp wire.Response
	c, err := v.Node.lab.ToR.Dial(ctx, "tcp", v.addr)
	if err != nil {
		return nil, nil, resp, err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	b, _ := json.Marshal(req)
	r := bufio.NewReader(c)
	if _, err = c.Write(append(b, '\n')); err == nil {
		var line []byte
		if line, err = r.ReadBytes('\n'); err == nil {
			err = json.Unmarshal(line, &resp)
		}
	}
	if err != nil {
		c.Close()
		return nil, nil, resp, fmt.Errorf("vmguest on %s: %s: %w", v.Node.Name, req.Op, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, r, resp, nil
}

func (v *VM) run(ctx context.Context, req wire.Request) (string, error) {
	if d, ok := ctx.Deadline(); ok {
		req.TimeoutMS = int(time.Until(d).Milliseconds())
	}
	c, _, resp, err := v.send(ctx, req)
	if err != nil {
		return "", err
	}
	c.Close()
	if resp.Code != 0 || resp.Err != "" {
		return resp.Out, fmt.Errorf("%s on %s (netns %q): %s: %s", strings.Join(req.Argv, " "), v.Node.Name, req.NS, resp.Err, strings.TrimSpace(resp.Out))
	}
	return resp.Out, nil
}

// Exec runs cmd in the VM and returns its combined output; the error includes the output.
func (v *VM) Exec(ctx context.Context, cmd ...string) (string, error) {
	return v.run(ctx, wire.Request{Op: "exec", Argv: cmd})
}

// ExecIn runs cmd in network namespace ns of the VM ("" = the VM's own).
func (v *VM) ExecIn(ctx context.Context, ns string, cmd ...string) (string, error) {
	return v.run(ctx, wire.Request{Op: "exec", NS: ns, Argv: cmd})
}

// Start runs cmd in the background in namespace ns of the VM; its output goes to /run/vmguest/<ns>-<name>.log in
// the guest. It dies with its namespace (DeletePod) or the VM.
func (v *VM) Start(ctx context.Context, ns, name string, cmd ...string) error {
	_, err := v.run(ctx, wire.Request{Op: "start", NS: ns, Name: name, Argv: cmd})
	return err
}

// Dial connects from inside namespace ns of the VM ("" = the VM's own); vmguest relays the bytes (for UDP, each
// Write is one datagram).
func (v *VM) Dial(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	c, r, resp, err := v.send(ctx, wire.Request{Op: "dial", NS: ns, Network: network, Addr: addr})
	if err != nil {
		return nil, err
	}
	if resp.Err != "" {
		c.Close()
		return nil, fmt.Errorf("dial %s %s from %s (netns %q): %s", network, addr, v.Node.Name, ns, resp.Err)
	}
	return &relayConn{Conn: c, r: r}, nil
}

// relayConn reads what the answer line's reader already buffered first.
type relayConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *relayConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// VMPod is a pod in a VM node: a namespace in the guest made by canopy-cni from the conflist the agent in the VM
// wrote, and a Pod object, as Lab.AddPod makes them on namespace nodes.
type VMPod struct {
	Name, NS    string // NS: <prefix>n<i>-<name>, in the guest
	IP, Gateway netip.Addr
	Namespace   string
	Labels      map[string]string
	VM          *VM

	pod *Pod // the Pod object's view
}

// PodObjectName is the Pod object's name.
func (p *VMPod) PodObjectName() string { return p.pod.PodObjectName() }

// Exec runs cmd inside the pod.
func (p *VMPod) Exec(ctx context.Context, cmd ...string) (string, error) {
	return p.VM.ExecIn(ctx, p.NS, cmd...)
}

// Dial connects from inside the pod.
func (p *VMPod) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.VM.Dial(ctx, p.NS, network, addr)
}

// Start runs cmd in the background inside the pod.
func (p *VMPod) Start(ctx context.Context, name string, cmd ...string) error {
	return p.VM.Start(ctx, p.NS, name, cmd...)
}

// Ping sends one ICMP echo from the pod to dst and waits up to 2 s for the reply.
func (p *VMPod) Ping(ctx context.Context, dst netip.Addr) error {
	_, err := p.Exec(ctx, "ping", "-n", "-q", "-c", "1", "-W", "2", dst.String())
	return err
}

// cniConfig waits for the conflist the agent in the VM writes and returns the plugin's network config.
func (v *VM) cniConfig(ctx context.Context) ([]byte, error) {
	path := filepath.Join(v.Node.cniDir("net.d"), "10-canopy.conflist")
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := v.Exec(cctx, "cat", path)
		cancel()
		if err == nil {
			return pluginConf([]byte(out), path)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("node %s: the agent wrote no CNI conflist at %s in the VM: %w (%v)", v.Node.Name, path, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// pluginConf is the conflist's first plugin with the list's name and version, as a runtime hands it over.
func pluginConf(b []byte, path string) ([]byte, error) {
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(list.Plugins) == 0 {
		return nil, fmt.Errorf("%s: no plugins", path)
	}
	conf := list.Plugins[0]
	conf["cniVersion"], conf["name"] = list.CNIVersion, list.Name
	return json.Marshal(conf)
}

func (v *VM) cni(ctx context.Context, command string, p *VMPod, conf []byte) (string, error) {
	n := v.Node
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > 30*time.Second {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	return v.run(ctx, wire.Request{Op: "exec", Argv: []string{filepath.Join(n.cniDir("bin"), "canopy-cni")}, Stdin: string(conf),
		Env: []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + p.NS, "CNI_NETNS=" + netnsPath(p.NS), "CNI_IFNAME=eth0",
			"CNI_PATH=" + n.cniDir("bin"), "CNI_ARGS=" + p.pod.cniArgs()}})
}

// AddPod makes a pod in the VM as Lab.AddPodWith does on a namespace node: the Pod object, a namespace
// <prefix>n<i>-<name> in the guest, CNI ADD there, then status.podIPs. o.OnAddress is not supported.
func (v *VM) AddPod(ctx context.Context, name string, o PodOptions) (_ *VMPod, err error) {
	n, l := v.Node, v.Node.lab
	if !podNameRE.MatchString(name) {
		return nil, fmt.Errorf("pod name %q: want lowercase letters, digits and '-', at most 32", name)
	}
	if o.OnAddress != nil {
		return nil, errors.New("VM pods: PodOptions.OnAddress is not supported")
	}
	ns := fmt.Sprintf("%sn%d-%s", l.Prefix, n.Index, name)
	v.mu.Lock()
	for _, q := range v.pods {
		if q.NS == ns {
			v.mu.Unlock()
			return nil, fmt.Errorf("pod %s on %s exists", name, n.Name)
		}
	}
	v.mu.Unlock()
	conf, err := v.cniConfig(ctx)
	if err != nil {
		return nil, err
	}
	pod := l.newPod(n, name, ns, o, conf)
	p := &VMPod{Name: name, NS: ns, Namespace: pod.Namespace, Labels: pod.Labels, VM: v, pod: pod}
	created, err := l.createPodObject(ctx, pod, o.Ports)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_, _ = v.Exec(context.Background(), "ip", "netns", "del", ns)
			_ = l.Kube.CoreV1().Pods(pod.Namespace).Delete(context.Background(), created.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		}
	}()
	if _, err := v.Exec(ctx, "ip", "netns", "add", ns); err != nil {
		return nil, err
	}
	out, err := v.cni(ctx, "ADD", p, conf)
	if err != nil {
		return nil, err
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
			Gateway string `json:"gateway"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
		return nil, fmt.Errorf("CNI ADD result %s: %v", out, err)
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		return nil, err
	}
	p.IP, pod.IP = pfx.Addr(), pfx.Addr()
	p.Gateway, _ = netip.ParseAddr(res.IPs[0].Gateway)
	pod.Gateway = p.Gateway
	if err := l.setPodStatus(ctx, pod, created); err != nil {
		_, _ = v.cni(context.Background(), "DEL", p, conf)
		return nil, err
	}
	v.mu.Lock()
	v.pods = append(v.pods, p)
	v.mu.Unlock()
	return p, nil
}

// DeletePod kills what runs in the pod, runs CNI DEL, deletes its namespace in the guest and its Pod object (if
// still there).
func (v *VM) DeletePod(ctx context.Context, p *VMPod) error {
	var errs []error
	if _, err := v.Exec(ctx, "bash", "-c", "ip netns pids "+vmtest.Quote(p.NS)+" | xargs -r kill -9"); err != nil {
		errs = append(errs, err)
	}
	if _, err := v.cni(ctx, "DEL", p, p.pod.cniConf); err != nil {
		errs = append(errs, err)
	}
	if _, err := v.Exec(ctx, "ip", "netns", "del", p.NS); err != nil {
		errs = append(errs, err)
	}
	err := v.Node.lab.Kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.PodObjectName(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil && !strings.Contains(err.Error(), "not found") {
		errs = append(errs, err)
	}
	v.mu.Lock()
	if i := slices.Index(v.pods, p); i >= 0 {
		v.pods = slices.Delete(v.pods, i, i+1)
	}
	v.mu.Unlock()
	return errors.Join(errs...)
}

// Pods returns the VM's pods.
func (v *VM) Pods() []*VMPod {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.pods)
}
