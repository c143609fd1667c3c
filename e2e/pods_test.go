package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pods are made by the canopy-cni plugin from the conflist the agent wrote: they get an address of their
// node's pod CIDR, a Pod object with status.podIPs, and talk to each other over the node's bridge.
func TestPodsOnOneNodeTalkOverTheBridge(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	n := l.Nodes[0]
	a := addPod(t, l, n, "ba")
	b := addPod(t, l, n, "bb")
	for _, p := range []*lab.Pod{a, b} {
		if !n.PodCIDR.Contains(p.IP) {
			t.Errorf("pod %s got %s, outside %s's pod CIDR %s", p.Name, p.IP, n.Name, n.PodCIDR)
		}
		obj, err := l.Kube.CoreV1().Pods("default").Get(ctx, p.PodObjectName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(obj.Status.PodIPs) != 1 || obj.Status.PodIPs[0].IP != p.IP.String() {
			t.Errorf("Pod %s status.podIPs = %v, want %s", obj.Name, obj.Status.PodIPs, p.IP)
		}
	}
	if a.IP == b.IP {
		t.Fatalf("both pods got %s", a.IP)
	}
	eventually(t, 10*time.Second, "ping over the bridge", func(ctx context.Context) error { return a.Ping(ctx, b.IP) })
	eventually(t, 10*time.Second, "ping back", func(ctx context.Context) error { return b.Ping(ctx, a.IP) })
	// Same-node traffic never leaves the node: the pod's source address is kept.
	if got := sourceSeen(t, l, &b.Host, a); got != a.IP {
		t.Errorf("pod %s on the same node sees %s as the client, want %s", b.Name, got, a.IP)
	}
}

// A pod's traffic to a host outside the cluster leaves with the node's address (masqueraded in
// CANOPY-POSTROUTING); traffic to a pod on another node keeps the pod's own address.
func TestPodEgressMasqueradeButPodToPodKeepsSource(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	a := addPod(t, l, l.Nodes[0], "ea")
	b := addPod(t, l, l.Nodes[1], "eb")
	if got := sourceSeen(t, l, l.Ext, a); got != l.Nodes[0].IP {
		t.Errorf("the external host sees pod %s's connection from %s, want the node's %s", a.IP, got, l.Nodes[0].IP)
	}
	if got := sourceSeen(t, l, &b.Host, a); got != a.IP {
		t.Errorf("pod %s on %s sees pod %s's connection from %s: pod-to-pod must not be NATed", b.IP, b.Node.Name, a.IP, got)
	}
	out, err := l.Nodes[0].Exec(ctx, "iptables-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "-A CANOPY-POSTROUTING -s "+l.Nodes[0].PodCIDR.String()) {
		t.Errorf("no masquerade rule for %s in CANOPY-POSTROUTING:\n%s", l.Nodes[0].PodCIDR, out)
	}
}

func addPod(t *testing.T, l *lab.Lab, n *lab.Node, name string) *lab.Pod {
	t.Helper()
	p, err := l.AddPod(context.Background(), n, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.DeletePod(p); err != nil {
			t.Errorf("delete pod %s: %v", name, err)
		}
	})
	return p
}

// sourceSeen starts a TCP server in server's namespace that answers each connection with the client address
// it sees, connects to it from client, and returns that address.
func sourceSeen(t *testing.T, l *lab.Lab, server *lab.Host, client *lab.Pod) netip.Addr {
	t.Helper()
	const port = "8099"
	proc, err := server.Start("echo-source", "socat", "TCP-LISTEN:"+port+",reuseaddr,fork", `SYSTEM:echo $SOCAT_PEERADDR`)
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Kill()
	var got netip.Addr
	eventually(t, 10*time.Second, fmt.Sprintf("connect %s -> %s:%s", client.IP, server.IP, port), func(ctx context.Context) error {
		c, err := client.Dial(ctx, "tcp", net.JoinHostPort(server.IP.String(), port))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		got, err = netip.ParseAddr(strings.TrimSpace(line))
		return err
	})
	return got
}
