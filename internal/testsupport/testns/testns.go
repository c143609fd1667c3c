// Package testns gives tests network namespaces of their own: uniquely named, removed when the test ends
// (pass or fail), created and entered only on locked, separate OS threads so the test's own threads stay in
// the root namespace. Nothing here touches the root namespace.
package testns

import (
	"canopy.io/canopy/internal/netnsx"
	"canopy.io/canopy/internal/testsupport"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is a network namespace a test created.
type NS struct {
	Name string
}

// Require skips the test (fails it under CI=true) unless it runs as root with `ip` and every tool listed on PATH.
func Require(tb testing.TB, tools ...string) {
	tb.Helper()
	testsupport.Require(tb, append([]string{testsupport.Root, "ip"}, tools...)...)
}

// New creates namespace cnp-<tag>-<random> with lo up, removed (with every process inside) at test end.
func New(tb testing.TB, tag string) *NS {
	tb.Helper()
	Require(tb)
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	name := fmt.Sprintf("cnp-%s-%s", tag, hex.EncodeToString(rnd[:]))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name}
	tb.Cleanup(func() {
		if out, _ := exec.Command("ip", "netns", "pids", name).Output(); len(out) > 0 {
			for _, pid := range strings.Fields(string(out)) {
				if pid == fmt.Sprint(os.Getpid()) {
					continue // our own main thread may have been in the namespace
				}
				_ = exec.Command("kill", "-9", pid).Run()
			}
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
	})
	ns.MustRun(tb, "ip", "link", "set", "lo", "up")
	return ns
}

// Path is the namespace's bind mount (what CNI_NETNS and setns take).
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// Handle returns a netlink handle that acts inside the namespace, closed at test end. It fails the test if the
// namespace turns out to be the root namespace.
func (n *NS) Handle(tb testing.TB) *netlink.Handle {
	tb.Helper()
	ns, err := netns.GetFromName(n.Name)
	if err != nil {
		tb.Fatalf("open %s: %v", n.Name, err)
	}
	defer ns.Close()
	if root, err := netns.GetFromPid(1); err == nil {
		same := root.Equal(ns)
		root.Close()
		if same {
			tb.Fatalf("namespace %s is the root namespace", n.Name)
		}
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		tb.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	tb.Cleanup(h.Close)
	return h
}

// Run runs a command inside the namespace.
func (n *NS) Run(ctx context.Context, cmd ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, cmd...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s: %w: %s", n.Name, strings.Join(cmd, " "), err, out)
	}
	return string(out), nil
}

// MustRun runs a command inside the namespace and fails the test if it fails.
func (n *NS) MustRun(tb testing.TB, cmd ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Run(ctx, cmd...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// Do runs f on a locked OS thread switched into the namespace; exec'd children inherit it. The thread goes
// back to its namespace afterwards; if it cannot, it stays locked and the runtime discards it, so no goroutine
// ever runs in the namespace by mistake.
func (n *NS) Do(f func() error) error { return netnsx.Do(n.Path(), f) }

// Listen opens a listener inside the namespace (the socket stays in it whatever thread later uses it).
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) { l, err = net.Listen(network, addr); return err })
	return l, err
}

// Dial connects from inside the namespace.
func (n *NS) Dial(network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) { c, err = net.DialTimeout(network, addr, 5*time.Second); return err })
	return c, err
}

// Link joins two namespaces with a veth pair: ifA in a with addrA (CIDR, may be ""), ifB in b with addrB.
func Link(tb testing.TB, a *NS, ifA, addrA string, b *NS, ifB, addrB string) {
	tb.Helper()
	a.MustRun(tb, "ip", "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b.Name)
	for _, s := range []struct {
		ns       *NS
		ifc, cid string
	}{{a, ifA, addrA}, {b, ifB, addrB}} {
		if s.cid != "" {
			s.ns.MustRun(tb, "ip", "addr", "add", s.cid, "dev", s.ifc)
		}
		s.ns.MustRun(tb, "ip", "link", "set", s.ifc, "up")
	}
}
