package lab

import (
	"context"
	"errors"
	"fmt"
	corev1 "k8s.io/api/core/v1"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Exec runs cmd inside the host's namespace and returns its combined output; the error includes the output.
func (h *Host) Exec(ctx context.Context, cmd ...string) (string, error) {
	return execIn(ctx, h.NS, cmd...)
}

// Dial connects from inside the host's namespace, e.g. to the agent's gRPC API:
//
//	grpc.NewClient("passthrough:///127.0.0.1:50051", grpc.WithContextDialer(
//		func(ctx context.Context, a string) (net.Conn, error) { return node.Dial(ctx, "tcp", a) }), …)
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return h.lab.dialer.Dial(ctx, h.NS, network, addr)
}

// HTTPClient is an HTTP client whose connections start inside the host's namespace (metrics, a pod's server).
func (h *Host) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext:       h.Dial,
			DisableKeepAlives: true,
		},
	}
}

// Ping sends one ICMP echo from the host to dst and waits up to 2 s for the reply.
func (h *Host) Ping(ctx context.Context, dst netip.Addr) error {
	_, err := h.Exec(ctx, "ping", "-n", "-q", "-c", "1", "-W", "2", dst.String())
	return err
}

// Start runs a background process inside the host's namespace (a server in a pod, tcpdump, …); its output goes
// to <WorkDir>/procs/<namespace without prefix>-<name>.log, e.g. procs/n1-web-server.log. Down stops it; so can
// Proc.Stop.
func (h *Host) Start(name string, cmd ...string) (*Proc, error) {
	if len(cmd) == 0 {
		return nil, errors.New("start: no command")
	}
	dir := filepath.Join(h.lab.WorkDir, "procs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	id := strings.TrimPrefix(h.NS, h.lab.Prefix) + "-" + name
	return h.lab.startProc(id, h.NS, filepath.Join(dir, id+".log"), cmd)
}

// AgentArgs is the agent's command line (without the binary) on this node: the standard flags (unless
// Config.NoDefaultAgentArgs), Config.AgentArgs, Config.PerNodeArgs[Index], then extra.
//
//	--kubeconfig=<KubeconfigPath> --node-name=<Name> --cluster-cidr=<ClusterCIDR>
//	--peer-router-ips=<ToR IP> --peer-router-asns=<ToR ASN> --peer-router-ttl-security --hold-time=9s
//	--keepalive-interval=3s --connect-retry=2s --log-level=debug
//
// The ToR is the node's rack's (both ToRs of a dual-homed rack: --peer-router-ips=<a>,<b>); the three
// --peer-router flags are left out with Config.NoToRPeerFlags and in a rack with RackConfig.NoNodePeering.
func (n *Node) AgentArgs(extra ...string) []string {
	c := n.lab.cfg
	var args []string
	if !c.NoDefaultAgentArgs {
		tor := n.lab.ToR
		if n.Rack != nil {
			tor = n.Rack.ToR // the node's own rack's
		}
		args = []string{
			"--kubeconfig=" + n.KubeconfigPath,
			"--node-name=" + n.Name,
			"--cluster-cidr=" + c.ClusterCIDR.String(),
		}
		if !c.NoToRPeerFlags && (n.Rack == nil || !n.Rack.NoNodePeering) {
			ips := tor.IP.String()
			if n.Rack != nil && len(n.Rack.ToRs) > 1 { // a dual-homed rack: both ToRs (one AS)
				ips = joinAddrs(n.Rack.ToRIPs())
			}
			args = append(args,
				"--peer-router-ips="+ips,
				fmt.Sprintf("--peer-router-asns=%d", tor.ASN),
				"--peer-router-ttl-security") // the ToR has ttl-security hops 1 (GTSM both ways)
		}
		args = append(args, "--hold-time=9s", "--keepalive-interval=3s", "--connect-retry=2s",
			"--log-level=debug")
	}
	args = append(args, n.cniAgentArgs()...)
	args = append(args, n.dualStackAgentArgs()...)
	args = append(args, c.AgentArgs...)
	args = append(args, c.PerNodeArgs[n.Index]...)
	return append(args, extra...)
}

// StartAgent starts Config.AgentBin in the node's namespace with AgentArgs(extra...). Up starts every agent
// without extra arguments; restart one with other flags by StopAgent then StartAgent(flags...).
func (n *Node) StartAgent(extra ...string) error { return n.startAgent(nil, extra) }

// StartAgentUnder is StartAgent with wrapper run in front of the agent, e.g. setpriv with a capability
// bounding set, to run the agent with only the capabilities its DaemonSet grants.
func (n *Node) StartAgentUnder(wrapper []string, extra ...string) error {
	return n.startAgent(wrapper, extra)
}

func (n *Node) startAgent(wrapper, extra []string) error {
	l := n.lab
	if l.cfg.AgentBin == "" {
		return errors.New("lab: no agent (Config.AgentBin is empty)")
	}
	if n.IsVM() {
		return fmt.Errorf("lab: %s is a VM: its agent starts with StartVM", n.Name)
	}
	l.mu.Lock()
	if n.agent != nil {
		if exited, _ := n.agent.Exited(); !exited {
			l.mu.Unlock()
			return fmt.Errorf("lab: agent on %s already runs (pid %d)", n.Name, n.agent.pid)
		}
	}
	l.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(n.LogPath), 0o755); err != nil {
		return err
	}
	argv := append(append(append([]string(nil), wrapper...), l.cfg.AgentBin), n.AgentArgs(extra...)...)
	p, err := l.startProc("agent-"+n.Name, n.NS, n.LogPath, argv)
	if err != nil {
		return err
	}
	l.mu.Lock()
	n.agent = p
	l.mu.Unlock()
	return nil
}

// Agent is the node's current agent process, or nil if none was started.
func (n *Node) Agent() *Proc {
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	return n.agent
}

// StopAgent sends SIGTERM and waits up to 10 s. It fails if the agent had to be killed or exited with an error
// (non-zero status, or death by the signal instead of a clean exit); nil if no agent runs.
func (n *Node) StopAgent() error {
	p := n.Agent()
	if p == nil {
		return nil
	}
	if exited, err := p.Exited(); exited {
		if err != nil {
			return fmt.Errorf("agent on %s had already exited: %w", n.Name, err)
		}
		return nil
	}
	if err := p.Stop(10 * time.Second); err != nil {
		return err
	}
	if _, err := p.Exited(); err != nil {
		return fmt.Errorf("agent on %s: %w", n.Name, err)
	}
	return nil
}

// KillAgent SIGKILLs the agent, like a crash: it gets no chance to withdraw routes or close sessions.
func (n *Node) KillAgent() error {
	p := n.Agent()
	if p == nil {
		return nil
	}
	return p.Kill()
}

// Pod is a namespace behind a node, as the CNI plugin will make one: eth0 with the next free address of the
// node's pod CIDR (.10, .11, …) and a default route via the node's bridge canopy0 (the CIDR's first address).
type Pod struct {
	Host
	Node    *Node
	Gateway netip.Addr
	// IP6 and Gateway6 are the pod's IPv6 address and gateway (Config.DualStack, with the CNI plugin).
	IP6, Gateway6 netip.Addr
	// Namespace and Labels are the Pod object's (with the CNI plugin only): "default" and app=<name> unless
	// PodOptions said otherwise.
	Namespace string
	Labels    map[string]string

	cniConf []byte // the network config its CNI ADD used (nil: made by the harness itself)
}

var podNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// bridgeName is the node's pod bridge; the CNI plugin will use the same name.
const bridgeName = "canopy0"

// PodOptions shape the Pod object of a pod made through the CNI plugin.
type PodOptions struct {
	Namespace string            // default "default"; the Namespace object must exist
	Labels    map[string]string // default app=<name>
	Ports     []corev1.ContainerPort
	// OnAddress, if set, runs once CNI ADD has given the pod its address, before status.podIPs is written
	// (while the agents cannot know the address from the API yet).
	OnAddress func(*Pod)
}

// AddPod makes a pod namespace named <prefix>n<i>-<name> behind node.
func (l *Lab) AddPod(ctx context.Context, node *Node, name string) (*Pod, error) {
	return l.AddPodWith(ctx, node, name, PodOptions{})
}

// AddPodWith is AddPod with the Pod object shaped by o (which needs Config.CNIPlugin unless o is zero).
func (l *Lab) AddPodWith(ctx context.Context, node *Node, name string, o PodOptions) (*Pod, error) {
	if !podNameRE.MatchString(name) {
		return nil, fmt.Errorf("pod name %q: want lowercase letters, digits and '-', at most 32", name)
	}
	if !node.PodCIDR.IsValid() {
		return nil, fmt.Errorf("node %s has no pod CIDR", node.Name)
	}
	if node.IsVM() {
		return nil, fmt.Errorf("node %s is a VM: make its pods with VM.AddPod", node.Name)
	}
	ns := fmt.Sprintf("%sn%d-%s", l.Prefix, node.Index, name)
	if l.cfg.CNIPlugin != "" {
		l.mu.Lock()
		for _, p := range l.pods {
			if p.NS == ns {
				l.mu.Unlock()
				return nil, fmt.Errorf("pod %s on %s exists", name, node.Name)
			}
		}
		l.mu.Unlock()
		p, err := l.addPodCNI(ctx, node, name, ns, o)
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		l.pods = append(l.pods, p)
		l.mu.Unlock()
		return p, l.save()
	}
	if o.Namespace != "" || o.Labels != nil || o.Ports != nil || o.OnAddress != nil {
		return nil, fmt.Errorf("pod %s: PodOptions need Config.CNIPlugin", name)
	}
	if !node.PodCIDR.Addr().Is4() {
		return nil, fmt.Errorf("pod %s: node %s has an IPv6 pod CIDR (%s): its pods need Config.CNIPlugin", name, node.Name, node.PodCIDR)
	}
	gw := node.PodCIDR.Addr().Next()
	bits := node.PodCIDR.Bits()
	node.podMu.Lock() // one pod at a time per node: the bridge and the address counter
	defer node.podMu.Unlock()
	l.mu.Lock()
	for _, p := range l.pods {
		if p.NS == ns {
			l.mu.Unlock()
			return nil, fmt.Errorf("pod %s on %s exists", name, node.Name)
		}
	}
	idx := node.nextPod + 1
	l.mu.Unlock()
	ip := nthAddr(node.PodCIDR, 9+idx)
	if !node.PodCIDR.Contains(ip) || ip == nthAddr(node.PodCIDR, 1<<(32-bits)-1) {
		return nil, fmt.Errorf("node %s: pod CIDR %s is full", node.Name, node.PodCIDR)
	}
	if idx == 1 { // the node's first pod: make the bridge
		if err := ipBatch(ctx, node.NS, "link add "+bridgeName+" type bridge",
			fmt.Sprintf("addr add %s/%d dev %s", gw, bits, bridgeName), "link set "+bridgeName+" up"); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	node.nextPod = idx
	l.mu.Unlock()
	if err := l.addNetns(ctx, ns); err != nil {
		return nil, err
	}
	p := &Pod{Host: Host{Name: name, NS: ns, IP: ip, lab: l}, Node: node, Gateway: gw}
	port := fmt.Sprintf("pv%d", idx) // the node side of the veth
	if err := ipBatch(ctx, node.NS,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, ns),
		fmt.Sprintf("link set %s master %s up", port, bridgeName)); err != nil {
		return nil, err
	}
	if err := ipBatch(ctx, ns, "link set lo up",
		fmt.Sprintf("addr add %s/%d dev eth0", ip, bits), "link set eth0 up",
		fmt.Sprintf("route add default via %s", gw)); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.pods = append(l.pods, p)
	l.mu.Unlock()
	return p, l.save()
}

// Pods returns the lab's pods.
func (l *Lab) Pods() []*Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Pod(nil), l.pods...)
}

// DeletePod kills what runs in the pod and deletes its namespace (its veth goes with it).
func (l *Lab) DeletePod(p *Pod) error {
	var procs []*Proc
	l.mu.Lock()
	for _, q := range l.procs {
		if q.NS == p.NS {
			procs = append(procs, q)
		}
	}
	l.mu.Unlock()
	for _, q := range procs {
		if err := q.Kill(); err != nil {
			return err
		}
	}
	l.dialer.forget(p.NS)
	if p.cniConf != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := l.delPodCNI(ctx, p)
		cancel()
		if err != nil {
			return err
		}
	}
	if err := removeNetns([]string{p.NS}, map[int]uint64{}); err != nil {
		return err
	}
	l.mu.Lock()
	for i, q := range l.pods {
		if q == p {
			l.pods = append(l.pods[:i], l.pods[i+1:]...)
			break
		}
	}
	for i, ns := range l.namespaces {
		if ns == p.NS {
			l.namespaces = append(l.namespaces[:i], l.namespaces[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	return l.save()
}
