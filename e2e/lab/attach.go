package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// New brings a lab up for a test: it skips the test (with the reason) where the lab cannot run (not root, a
// binary missing), fails it if Up fails, and tears the lab down in t.Cleanup. When the test failed (or
// CANOPY_LAB_KEEP_LOGS is set) the work directory with every log stays and its path is logged. Progress goes
// to t.Logf unless cfg.Logf is set.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	if err := Preflight(cfg); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("lab cannot run, and CI must run it (make deps k8s build install everything): %v", err)
		}
		t.Skipf("lab cannot run here: %v", err)
	}
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab.Up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CANOPY_LAB_KEEP_LOGS") != "" {
			l.KeepWorkDir()
			t.Logf("lab %s: logs kept in %s", l.Prefix, l.WorkDir)
		}
		if err := l.Down(); err != nil {
			t.Errorf("lab.Down: %v", err)
		}
	})
	return l
}

// Attach rebuilds a *Lab from the state file of a lab another process brought up (make lab), to Show it, run
// commands or a client in it, or take it down. prefix "" picks the only ready lab. Processes are not children
// of the caller: they can be signalled, not reaped; agents started from here are detached like the others.
func Attach(stateRoot, prefix string) (*Lab, error) {
	if stateRoot == "" {
		stateRoot = DefaultStateRoot
	}
	recs, err := readRecords(stateRoot)
	if err != nil {
		return nil, err
	}
	var r *record
	var ready []string
	for _, x := range recs {
		if !x.Ready {
			continue
		}
		ready = append(ready, x.Prefix)
		if prefix == "" || strings.TrimSuffix(x.Prefix, "-") == strings.TrimSuffix(prefix, "-") {
			r = x
		}
	}
	switch {
	case prefix == "" && len(ready) > 1:
		return nil, fmt.Errorf("several labs are up (%s): name one", strings.Join(ready, " "))
	case r == nil && prefix == "":
		return nil, errors.New("no lab is up")
	case r == nil:
		return nil, fmt.Errorf("no ready lab %q under %s", prefix, stateRoot)
	}
	c := r.Config
	c.StateRoot = stateRoot
	c.Logf = func(string, ...any) {}
	l := &Lab{Prefix: r.Prefix, WorkDir: r.WorkDir, AdminKubeconfig: r.AdminKubeconfig, cfg: c, dialer: newNSDialer(),
		namespaces: r.Namespaces, removeWorkDir: r.RemoveWorkDir, ownerPID: r.OwnerPID, ownerStart: r.OwnerStart,
		created: r.Created, ready: true}
	host := func(h hostRecord) Host {
		ip, _ := netip.ParseAddr(h.IP)
		return Host{Name: h.Name, NS: h.NS, IP: ip, lab: l}
	}
	for _, h := range r.Hosts {
		hh := host(h)
		switch h.Name {
		case "tor":
			l.ToR = l.newRouter(1)
			l.ToR.Host = hh
		case "cp":
			l.CP = &hh
		case "ext":
			l.Ext = &hh
		}
	}
	if l.ToR == nil || l.CP == nil || l.Ext == nil {
		return nil, fmt.Errorf("lab %s: state file lacks hosts", r.Prefix)
	}
	for _, p := range r.Procs {
		l.procs = append(l.procs, attachProc(p))
	}
	byName := map[string]*Node{}
	for _, nr := range r.Nodes {
		n := &Node{Host: host(nr.hostRecord), Index: nr.Index, LogPath: nr.LogPath, KubeconfigPath: nr.Kubeconfig,
			nextPod: nr.NextPod}
		n.PodCIDR, _ = netip.ParsePrefix(nr.PodCIDR)
		for _, p := range l.procs {
			if p.Name == "agent-"+n.Name {
				n.agent = p
			}
		}
		l.Nodes = append(l.Nodes, n)
		byName[n.Name] = n
	}
	l.layoutRacks()
	for _, pr := range r.Pods {
		p := &Pod{Host: host(pr.hostRecord), Node: byName[pr.Node]}
		if p.Node != nil {
			p.Gateway = p.Node.PodCIDR.Addr().Next()
		}
		l.pods = append(l.pods, p)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", r.AdminKubeconfig)
	if err != nil {
		return nil, err
	}
	cpNS := l.CP.NS
	rc.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return l.dialer.Dial(ctx, cpNS, network, addr)
	}
	l.rest = rc
	if l.Kube, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, err
	}
	return l, nil
}

// Detach releases what Attach holds in this process (namespace handles, API connections) and leaves the lab
// running. Use Down instead to remove it.
func (l *Lab) Detach() { l.dialer.Close() }
