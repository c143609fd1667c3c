//go:build linux

package bfd

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"canopy.io/canopy/internal/testsupport/testns"
)

// testPort is the BFD port of the kernel tests (each Server is alone in its namespace, but not on 3784, so a
// test never meets a real BFD daemon).
const testPort = 13784

// node is a Server running in a test namespace, with the events it reported.
type node struct {
	ns     *testns.NS
	srv    *Server
	events chan Event
	cancel context.CancelFunc
	done   chan error
}

// startNode opens a Server inside ns and runs it until the test ends (or stop).
func startNode(tb testing.TB, ns *testns.NS, locals ...netip.Addr) *node {
	tb.Helper()
	return startNodePort(tb, ns, testPort, locals...)
}

func startNodePort(tb testing.TB, ns *testns.NS, port int, locals ...netip.Addr) *node {
	tb.Helper()
	var srv *Server
	if err := ns.Do(func() (err error) {
		srv, err = New(Config{LocalAddrs: locals, Port: port, Log: testLogger(tb, ns.Name)})
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{ns: ns, srv: srv, events: make(chan Event, 4096), cancel: cancel, done: make(chan error, 1)}
	unsub := srv.Subscribe(func(e Event) {
		select {
		case n.events <- e:
		default:
			tb.Errorf("%s: event queue full", ns.Name)
		}
	})
	go func() { n.done <- srv.Run(ctx) }()
	tb.Cleanup(func() {
		n.stop()
		unsub()
	})
	return n
}

// stop stops the node's event loop (and closes its sockets): its peers hear nothing more from it.
func (n *node) stop() {
	n.cancel()
	<-n.done
	n.done <- nil // for a second stop
}

func (n *node) setPeers(tb testing.TB, peers ...PeerConfig) {
	tb.Helper()
	if err := n.srv.SetPeers(peers); err != nil {
		tb.Fatal(err)
	}
}

func (n *node) status(peer netip.Addr) (Status, bool) {
	for _, st := range n.srv.Sessions() {
		if st.Peer == peer {
			return st, true
		}
	}
	return Status{}, false
}

// waitFor waits until cond holds for the session with peer, or fails the test after timeout.
func (n *node) waitFor(tb testing.TB, peer netip.Addr, timeout time.Duration, what string, cond func(Status) bool) Status {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, ok := n.status(peer)
		if ok && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: session with %s not %s after %v: %+v (found %v)", n.ns.Name, peer, what, timeout, st, ok)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (n *node) waitState(tb testing.TB, peer netip.Addr, want State, timeout time.Duration) Status {
	tb.Helper()
	return n.waitFor(tb, peer, timeout, want.String(), func(st Status) bool { return st.State == want })
}

// nextEvent returns the node's next event, failing the test if none comes within timeout.
func (n *node) nextEvent(tb testing.TB, timeout time.Duration) Event {
	tb.Helper()
	select {
	case e := <-n.events:
		return e
	case <-time.After(timeout):
		tb.Fatalf("%s: no event within %v", n.ns.Name, timeout)
	}
	return Event{}
}

// drainEvents returns the events reported so far.
func (n *node) drainEvents() []Event {
	var out []Event
	for {
		select {
		case e := <-n.events:
			out = append(out, e)
		default:
			return out
		}
	}
}

var (
	addrA  = netip.MustParseAddr("10.99.0.1")
	addrB  = netip.MustParseAddr("10.99.0.2")
	addrA6 = netip.MustParseAddr("fd00:99::1")
	addrB6 = netip.MustParseAddr("fd00:99::2")
)

// pair makes namespaces a and b joined by veth va–vb (IPv4 and IPv6) and a Server in each, not yet peered.
func pair(tb testing.TB) (a, b *node) {
	tb.Helper()
	testns.Require(tb)
	nsA, nsB := testns.New(tb, "bfda"), testns.New(tb, "bfdb")
	testns.Link(tb, nsA, "va", addrA.String()+"/24", nsB, "vb", addrB.String()+"/24")
	nsA.MustRun(tb, "ip", "addr", "add", addrA6.String()+"/64", "dev", "va", "nodad")
	nsB.MustRun(tb, "ip", "addr", "add", addrB6.String()+"/64", "dev", "vb", "nodad")
	return startNode(tb, nsA, addrA, addrA6), startNode(tb, nsB, addrB, addrB6)
}

func peer(p, l netip.Addr, tx, rx time.Duration, mult uint8) PeerConfig {
	return PeerConfig{Peer: p, Local: l, DesiredMinTx: tx, RequiredMinRx: rx, DetectMultiplier: mult}
}

func TestKernelUp(t *testing.T) {
	a, b := pair(t)
	a.setPeers(t, peer(addrB, addrA, 300*ms, 300*ms, 3), peer(addrB6, addrA6, 300*ms, 300*ms, 3))
	b.setPeers(t, peer(addrA, addrB, 300*ms, 300*ms, 3), peer(addrA6, addrB6, 300*ms, 300*ms, 3))
	for _, p := range []netip.Addr{addrB, addrB6} {
		st := a.waitState(t, p, StateUp, 5*time.Second)
		st = a.waitFor(t, p, 2*time.Second, "negotiated", func(st Status) bool { return !st.Polling && st.TxInterval == 300*ms })
		fmt.Printf("%+v\n", st)
	}
}
