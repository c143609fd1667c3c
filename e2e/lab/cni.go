package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pods through the CNI plugin: with Config.CNIPlugin set, every agent is told to write its conflist into
// <work>/nodeN/cni/net.d and install the plugin into <work>/nodeN/cni/bin, and AddPod plays the kubelet and
// the container runtime: a network namespace, CNI ADD with the conflist the agent wrote, and a Pod object
// (nodeName, status.podIPs, Running, Ready) in namespace "default"; DeletePod does CNI DEL and deletes the Pod.

func (n *Node) cniDir(sub string) string { return filepath.Join(filepath.Dir(n.LogPath), "cni", sub) }

// cniAgentArgs are the agent flags that make it set up CNI inside the lab's work dir.
func (n *Node) cniAgentArgs() []string {
	c := n.lab.cfg
	if c.CNIPlugin == "" {
		return nil
	}
	return []string{
		"--cni-conf-dir=" + n.cniDir("net.d"), "--cni-bin-dir=" + n.cniDir("bin"), "--cni-plugin=" + c.CNIPlugin,
		"--cni-data-dir=" + n.cniDir("data"), "--service-cluster-ip-range=" + c.ServiceCIDR.String(),
		"--cni-agent-socket=" + filepath.Join(n.cniDir(""), "agent.sock"),
	}
}

// cniConfig waits for the agent's conflist and returns the plugin's network config (the conflist's first plugin
// with the list's name and version), as a runtime hands it to the plugin.
func (n *Node) cniConfig(ctx context.Context) ([]byte, error) {
	path := filepath.Join(n.cniDir("net.d"), "10-canopy.conflist")
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			return pluginConf(b, path)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("node %s: the agent wrote no CNI conflist at %s: %w", n.Name, path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cni runs the installed plugin in the node's namespace.
func (n *Node) cni(ctx context.Context, command, containerID, netnsPath string, conf []byte, args string) ([]byte, error) {
	plugin := filepath.Join(n.cniDir("bin"), "canopy-cni")
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.NS, plugin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+containerID, "CNI_NETNS="+netnsPath,
		"CNI_IFNAME=eth0", "CNI_PATH="+n.cniDir("bin"), "CNI_ARGS="+args)
	cmd.Stdin = strings.NewReader(string(conf))
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		return out, fmt.Errorf("CNI %s on %s: %w: %s %s", command, n.Name, err, out, stderr)
	}
	return out, nil
}

// addPodCNI does what the kubelet and the runtime do: the Pod object exists first (scheduled to node, labels
// set, no IP), then the sandbox gets its network through CNI ADD, then status.podIPs is written.
func (l *Lab) addPodCNI(ctx context.Context, node *Node, name, ns string, o PodOptions) (*Pod, error) {
	conf, err := node.cniConfig(ctx)
	if err != nil {
		return nil, err
	}
	p := l.newPod(node, name, ns, o, conf)
	created, err := l.createPodObject(ctx, p, o.Ports)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok { // the plugin rolls back its own half
			_ = l.Kube.CoreV1().Pods(p.Namespace).Delete(context.Background(), created.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		}
	}()
	if err := l.addNetns(ctx, ns); err != nil {
		return nil, err
	}
	out, err := node.cni(ctx, "ADD", ns, netnsPath(ns), conf, p.cniArgs())
	if err != nil {
		return nil, err
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
			Gateway string `json:"gateway"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		return nil, fmt.Errorf("CNI ADD result %s: %v", out, err)
	}
	// The first address of each family: IP is the IPv4 one (the IPv6 one on an IPv6-only node), IP6 the IPv6
	// one beside an IPv4 one (Config.DualStack).
	var v4, v6, gw4, gw6 netip.Addr
	for _, ip := range res.IPs {
		pfx, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			return nil, err
		}
		gw, _ := netip.ParseAddr(ip.Gateway)
		switch {
		case pfx.Addr().Is4() && !v4.IsValid():
			v4, gw4 = pfx.Addr(), gw
		case pfx.Addr().Is6() && !v6.IsValid():
			v6, gw6 = pfx.Addr(), gw
		}
	}
	p.IP, p.Gateway = v4, gw4
	if v4.IsValid() {
		p.IP6, p.Gateway6 = v6, gw6
	} else {
		p.IP, p.Gateway = v6, gw6
	}
	if o.OnAddress != nil {
		o.OnAddress(p)
	}
	if err := l.setPodStatus(ctx, p, created); err != nil {
		_, _ = node.cni(context.Background(), "DEL", ns, netnsPath(ns), conf, p.cniArgs())
		return nil, err
	}
	ok = true
	return p, nil
}

// newPod is a pod of node before its CNI ADD, with o's namespace and labels or their defaults.
func (l *Lab) newPod(node *Node, name, ns string, o PodOptions, conf []byte) *Pod {
	p := &Pod{Host: Host{Name: name, NS: ns, lab: l}, Node: node, Namespace: o.Namespace, Labels: o.Labels, cniConf: conf}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	if p.Labels == nil {
		p.Labels = map[string]string{"app": name}
	}
	return p
}

// PodObjectName is the Pod object's name for a lab pod.
func (p *Pod) PodObjectName() string { return p.Node.Name + "-" + p.Name }

// cniArgs is CNI_ARGS as the kubelet passes it.
func (p *Pod) cniArgs() string {
	return "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + p.Namespace + ";K8S_POD_NAME=" + p.PodObjectName() + ";K8S_POD_INFRA_CONTAINER_ID=" + p.NS
}

func (l *Lab) createPodObject(ctx context.Context, p *Pod, ports []corev1.ContainerPort) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.PodObjectName(), Namespace: p.Namespace, Labels: p.Labels},
		Spec:       corev1.PodSpec{NodeName: p.Node.Name, Containers: []corev1.Container{{Name: "c", Image: "lab/none", Ports: ports}}},
	}
	created, err := l.Kube.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", p.Namespace, pod.Name, err)
	}
	return created, nil
}

func (l *Lab) setPodStatus(ctx context.Context, p *Pod, created *corev1.Pod) error {
	now := metav1.Now()
	created.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: p.IP.String(), PodIPs: p.podIPs(), HostIP: p.Node.IP.String(),
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		StartTime: &now,
	}
	if _, err := l.Kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod %s/%s status: %w", p.Namespace, created.Name, err)
	}
	return nil
}

// delPodCNI undoes addPodCNI's CNI ADD and Pod object (the namespace is the caller's).
func (l *Lab) delPodCNI(ctx context.Context, p *Pod) error {
	var errs []string
	if _, err := p.Node.cni(ctx, "DEL", p.NS, netnsPath(p.NS), p.cniConf, p.cniArgs()); err != nil {
		errs = append(errs, err.Error())
	}
	err := l.Kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.PodObjectName(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil && !strings.Contains(err.Error(), "not found") {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
