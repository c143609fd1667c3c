//go:build linux

package bfd

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"canopy.io/canopy/internal/testsupport/testns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// schedSlack is how late, beyond the Detection Time, a test accepts a Down event: the session's deadline is
// exact, but on a loaded machine the loop's goroutine may run that much later. Every measurement is logged.
const schedSlack = 100 * ms

// slackProbe measures how late this process's goroutines are being scheduled while a timing check runs: a
// goroutine sleeps 5 ms at a time and keeps the largest overshoot until the test ends. On a machine so loaded
// that a plain sleep wakes hundreds of milliseconds late, a Down event is late by as much through no fault of
// the session's deadline; the checks allow schedSlack plus what the probe saw (logged), so they still catch a
// wrong deadline (a Detection Time off by an interval) on a quiet machine, and do not fail on a starved one.
// Start it just before the measured window; slack returns the allowance so far.
func slackProbe(t *testing.T) (slack func() time.Duration) {
	var worst atomic.Int64
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		for {
			t0 := time.Now()
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if late := int64(time.Since(t0) - 5*time.Millisecond); late > worst.Load() {
				worst.Store(late)
			}
		}
	}()
	return func() time.Duration {
		late := time.Duration(worst.Load())
		if late > 20*ms {
			t.Logf("the machine is loaded: a 5 ms sleep woke up to %v late; the check allows that much more", late.Round(time.Millisecond))
		}
		return schedSlack + late
	}
}

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

// drainEvents returns the events reported so far. Events are delivered asynchronously: it returns once none
// has come for 50 ms.
func (n *node) drainEvents() []Event {
	var out []Event
	for {
		select {
		case e := <-n.events:
			out = append(out, e)
		case <-time.After(50 * ms):
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

// upPair returns two nodes peered over IPv4 and IPv6 at 300 ms × 3, Up, with their events drained.
func upPair(t *testing.T) (a, b *node) {
	t.Helper()
	a, b = pair(t)
	a.setPeers(t, peer(addrB, addrA, 300*ms, 300*ms, 3), peer(addrB6, addrA6, 300*ms, 300*ms, 3))
	b.setPeers(t, peer(addrA, addrB, 300*ms, 300*ms, 3), peer(addrA6, addrB6, 300*ms, 300*ms, 3))
	for _, n := range []struct {
		n     *node
		peers []netip.Addr
	}{{a, []netip.Addr{addrB, addrB6}}, {b, []netip.Addr{addrA, addrA6}}} {
		for _, p := range n.peers {
			n.n.waitFor(t, p, 5*time.Second, "Up with 300 ms negotiated", func(st Status) bool {
				return st.State == StateUp && !st.Polling && st.TxInterval == 300*ms && st.DetectionTime == 900*ms
			})
		}
	}
	return a, b
}

func TestKernelUp(t *testing.T) {
	start := time.Now()
	a, b := upPair(t)
	t.Logf("Up over IPv4 and IPv6 in %v", time.Since(start).Round(time.Millisecond))
	events := a.drainEvents()
	for _, p := range []netip.Addr{addrB, addrB6} {
		// In order: Down → Init → Up, or Down → Up (when the peer's Init arrives first).
		var seq []State
		for _, e := range events {
			if e.Peer == p {
				if len(seq) > 0 && seq[len(seq)-1] != e.Old {
					t.Fatalf("events out of order: %v then %+v", seq, e)
				}
				seq = append(seq, e.New)
			}
		}
		if len(seq) == 0 || seq[len(seq)-1] != StateUp || len(seq) > 2 {
			t.Fatalf("events for %s: %v", p, seq)
		}
		st, _ := a.status(p)
		bst, _ := b.status(st.Local)
		if st.RemoteDiscr != bst.LocalDiscr || st.LocalDiscr != bst.RemoteDiscr || st.RemoteState != StateUp ||
			st.PacketsIn == 0 || st.PacketsOut == 0 || st.LastStateChange.Before(start) || st.SendError != "" {
			t.Fatalf("status %+v / %+v", st, bst)
		}
		if v := testutil.ToFloat64(sessionState.WithLabelValues(p.String())); v != float64(StateUp) {
			t.Fatalf("canopy_bfd_session_state{peer=%s} = %v", p, v)
		}
		if testutil.ToFloat64(packetsSent.WithLabelValues(p.String())) == 0 || testutil.ToFloat64(packetsReceived.WithLabelValues(p.String())) == 0 ||
			testutil.ToFloat64(stateChanges.WithLabelValues(p.String(), "Up")) != 1 {
			t.Fatalf("packet or state change counters of %s not counted", p)
		}
	}
	// The source port is in 49152–65535 (RFC 5881 §4).
	out := a.ns.MustRun(t, "ss", "-Hnua")
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		i := strings.LastIndex(f[3], ":")
		port, _ := strconv.Atoi(f[3][i+1:])
		addr, _ := netip.ParseAddr(strings.Trim(f[3][:i], "[]"))
		if port != testPort && (port < srcPortMin || addr != addrA && addr != addrA6) {
			t.Errorf("unexpected socket %s", l)
		}
	}
}

// TestKernelFailure: the peer's loop stops, or its link goes down: we go Down within the Detection Time with
// diagnostic Control Detection Time Expired; with the link back, both come Up again.
func TestKernelFailure(t *testing.T) {
	t.Run("peer stops", func(t *testing.T) {
		a, b := upPair(t)
		time.Sleep(time.Duration(rand.Int64N(int64(300 * ms)))) // fail at a random point of the interval
		a.drainEvents()
		slack := slackProbe(t)
		start := time.Now()
		b.stop()
		for range 2 {
			e := a.nextEvent(t, 2*time.Second)
			took := e.At.Sub(start)
			t.Logf("%s: Down %v after the peer stopped", e.Peer, took.Round(time.Millisecond))
			if e.Old != StateUp || e.New != StateDown || e.Diag != DiagControlDetectionExpired || took > 900*ms+slack() {
				t.Fatalf("%+v after %v", e, took)
			}
		}
	})
	t.Run("link down", func(t *testing.T) {
		a, b := upPair(t)
		// Linux drops a link's IPv6 addresses when it goes down, unless told to keep them.
		b.ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.vb.keep_addr_on_down=1")
		time.Sleep(time.Duration(rand.Int64N(int64(300 * ms))))
		a.drainEvents()
		b.drainEvents()
		slack := slackProbe(t)
		start := time.Now()
		b.ns.MustRun(t, "ip", "link", "set", "vb", "down")
		for _, n := range []*node{a, a, b, b} {
			e := n.nextEvent(t, 2*time.Second)
			took := e.At.Sub(start)
			t.Logf("%s: %s Down %v after link down", n.ns.Name, e.Peer, took.Round(time.Millisecond))
			if e.New != StateDown || e.Diag != DiagControlDetectionExpired || took > 900*ms+slack() {
				t.Fatalf("%+v after %v", e, took)
			}
		}
		b.ns.MustRun(t, "ip", "link", "set", "vb", "up")
		for _, p := range []netip.Addr{addrB, addrB6} {
			a.waitState(t, p, StateUp, 10*time.Second)
		}
		t.Logf("Up again %v after link up", time.Since(start).Round(time.Millisecond))
	})
}

// sendRaw sends payload from src (an address in ns) to dst with the given TTL / Hop Limit.
func sendRaw(tb testing.TB, ns *testns.NS, src netip.Addr, dst netip.AddrPort, ttl int, payloads ...[]byte) {
	tb.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if err := setsockopt(mustRaw(tb, c), func(fd int) error {
		if src.Is4() {
			return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl)
		}
		return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, ttl)
	}); err != nil {
		tb.Fatal(err)
	}
	for _, p := range payloads {
		if _, err := c.WriteToUDPAddrPort(p, dst); err != nil {
			tb.Fatal(err)
		}
	}
}

func mustRaw(tb testing.TB, c *net.UDPConn) syscall.RawConn {
	raw, err := c.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// waitCount waits until counter c has grown by want since before.
func waitCount(tb testing.TB, c prometheus.Counter, before, want float64, what string) {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for testutil.ToFloat64(c)-before < want {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: counted %v, want %v", what, testutil.ToFloat64(c)-before, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestKernelGTSM: a packet that would take the session down (AdminDown, right discriminators, from the peer's
// address) is ignored and counted (reason ttl) when its TTL / Hop Limit is 254; at 255 it takes effect.
func TestKernelGTSM(t *testing.T) {
	a, b := upPair(t)
	for _, c := range []struct{ peer, local netip.Addr }{{addrB, addrA}, {addrB6, addrA6}} {
		a.drainEvents()
		st, _ := a.status(c.peer)
		p := Packet{State: StateAdminDown, Diag: DiagAdminDown, DetectMult: 3, MyDiscr: st.RemoteDiscr, YourDiscr: st.LocalDiscr,
			DesiredMinTx: 300000, RequiredMinRx: 300000}
		dst := netip.AddrPortFrom(c.local, testPort)
		before := testutil.ToFloat64(dropTTL)
		sendRaw(t, b.ns, c.peer, dst, 254, p.Encode(nil))
		waitCount(t, dropTTL, before, 1, "TTL 254")
		time.Sleep(50 * ms)
		if evs := a.drainEvents(); len(evs) != 0 {
			t.Fatalf("a packet with TTL 254 changed the session: %+v", evs)
		}
		if st, _ := a.status(c.peer); st.State != StateUp {
			t.Fatalf("%+v", st)
		}
		// The same packet with TTL 255 is accepted: the session goes Down, then comes back Up.
		sendRaw(t, b.ns, c.peer, dst, 255, p.Encode(nil))
		e := a.nextEvent(t, time.Second)
		if e.Peer != c.peer || e.New != StateDown || e.Diag != DiagNeighborSignaledDown {
			t.Fatalf("TTL 255: %+v", e)
		}
		a.waitState(t, c.peer, StateUp, 5*time.Second)
	}
}

// TestKernelHostileInput: malformed packets, packets with authentication, from unknown addresses, to unknown
// discriminators are dropped and counted under their reason; a flood of them allocates nothing in the Server
// and leaves the sessions Up.
func TestKernelHostileInput(t *testing.T) {
	a, b := upPair(t)
	a.drainEvents()
	stranger := netip.MustParseAddr("10.99.0.66")
	b.ns.MustRun(t, "ip", "addr", "add", stranger.String()+"/24", "dev", "vb")
	st, _ := a.status(addrB)
	dst := netip.AddrPortFrom(addrA, testPort)
	valid := Packet{State: StateUp, DetectMult: 3, MyDiscr: st.RemoteDiscr, YourDiscr: st.LocalDiscr, DesiredMinTx: 300000, RequiredMinRx: 300000}
	malformed := valid.Encode(nil)
	malformed[2] = 0 // Detect Mult 0
	auth := append(valid.Encode(nil), 1, 2)
	auth[1] |= bitAuth
	auth[3] = 26
	wrongDiscr := valid
	wrongDiscr.YourDiscr++
	for _, tc := range []struct {
		name    string
		src     netip.Addr
		payload []byte
		reason  prometheus.Counter
	}{
		{"malformed", addrB, malformed, dropMalformed},
		{"garbage", addrB, []byte("GET / HTTP/1.0\r\n\r\n"), dropMalformed},
		{"auth", addrB, auth, dropAuth},
		{"unknown source", stranger, valid.Encode(nil), dropNoSession},
		{"unknown discriminator", addrB, wrongDiscr.Encode(nil), dropNoSession},
	} {
		before := testutil.ToFloat64(tc.reason)
		sendRaw(t, b.ns, tc.src, dst, 255, tc.payload)
		waitCount(t, tc.reason, before, 1, tc.name)
	}

	// A flood: 20,000 valid packets from a stranger, 20,000 malformed ones from the peer, 20,000 with TTL 254.
	const n = 20000
	var payloads, valids [][]byte
	for range n {
		payloads = append(payloads, malformed)
		valids = append(valids, valid.Encode(nil))
	}
	var ms0, ms1 runtime.MemStats
	counters := []prometheus.Counter{dropNoSession, dropMalformed, dropTTL, dropOverload}
	before := make([]float64, len(counters))
	for i, c := range counters {
		before[i] = testutil.ToFloat64(c)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	start := time.Now()
	sendRaw(t, b.ns, stranger, dst, 255, valids...)
	sendRaw(t, b.ns, addrB, dst, 255, payloads...)
	sendRaw(t, b.ns, addrB, dst, 254, payloads...)
	sent := time.Since(start)
	// Wait until the Server has worked through what the kernel queued (the counts stop moving).
	var counted [4]float64
	total := -1.0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * ms)
		sum := 0.0
		for i, c := range counters {
			counted[i] = testutil.ToFloat64(c) - before[i]
			sum += counted[i]
		}
		if sum == total {
			break
		}
		total = sum
	}
	runtime.ReadMemStats(&ms1)
	allocs := ms1.Mallocs - ms0.Mallocs
	t.Logf("flood of %d packets sent in %v; dropped no_session %v, malformed %v, ttl %v, overload %v (the rest the kernel dropped: socket buffer full); %d allocations in the whole process meanwhile",
		3*n, sent.Round(time.Millisecond), counted[0], counted[1], counted[2], counted[3], allocs)
	if total < 2000 {
		t.Fatalf("flood: only %v packets reached the Server", total)
	}
	if float64(allocs) > total/10 {
		t.Fatalf("flood: %d allocations for %v packets: the receive path allocates", allocs, total)
	}
	if evs := a.drainEvents(); len(evs) != 0 {
		t.Fatalf("the flood changed sessions: %+v", evs)
	}
	for _, p := range []netip.Addr{addrB, addrB6} {
		if st, _ := a.status(p); st.State != StateUp {
			t.Fatalf("%+v", st)
		}
	}
}

// TestKernelTimerChange: timers changed on an Up session on either side go through Poll/Final and never flap
// the session; the negotiated intervals follow.
func TestKernelTimerChange(t *testing.T) {
	a, b := upPair(t)
	a.drainEvents()
	b.drainEvents()
	both := func(tmA, tmB [2]time.Duration, txA, detectA time.Duration) {
		t.Helper()
		a.setPeers(t, peer(addrB, addrA, tmA[0], tmA[1], 3), peer(addrB6, addrA6, 300*ms, 300*ms, 3))
		b.setPeers(t, peer(addrA, addrB, tmB[0], tmB[1], 3), peer(addrA6, addrB6, 300*ms, 300*ms, 3))
		st := a.waitFor(t, addrB, 5*time.Second, "renegotiated", func(st Status) bool {
			return !st.Polling && st.TxInterval == txA && st.DetectionTime == detectA
		})
		t.Logf("A tx/rx %v, B tx/rx %v: A sends every %v, detects in %v", tmA, tmB, st.TxInterval, st.DetectionTime)
		time.Sleep(2 * detectA)
	}
	both([2]time.Duration{100 * ms, 100 * ms}, [2]time.Duration{100 * ms, 100 * ms}, 100*ms, 300*ms)
	both([2]time.Duration{1000 * ms, 100 * ms}, [2]time.Duration{100 * ms, 100 * ms}, 1000*ms, 300*ms)
	both([2]time.Duration{100 * ms, 100 * ms}, [2]time.Duration{100 * ms, 2000 * ms}, 2000*ms, 300*ms)
	both([2]time.Duration{300 * ms, 300 * ms}, [2]time.Duration{300 * ms, 300 * ms}, 300*ms, 900*ms)
	if evs := append(a.drainEvents(), b.drainEvents()...); len(evs) != 0 {
		t.Fatalf("timer changes flapped sessions: %+v", evs)
	}
}

// TestKernelRemove: a removed peer is told AdminDown (it goes Down with Neighbor Signaled Session Down at once)
// and forgotten after a few packets, with its metric series; re-adding it (while still being removed, or
// after) brings it Up again; the session that stayed is never touched.
func TestKernelRemove(t *testing.T) {
	a, b := upPair(t)
	a.drainEvents()
	b.drainEvents()
	keep := peer(addrB6, addrA6, 300*ms, 300*ms, 3)
	a.setPeers(t, keep)
	e := b.nextEvent(t, 500*ms)
	if e.Peer != addrA || e.New != StateDown || e.Diag != DiagNeighborSignaledDown {
		t.Fatalf("peer's event %+v", e)
	}
	e = a.nextEvent(t, 500*ms)
	if e.Peer != addrB || e.New != StateAdminDown || e.Diag != DiagAdminDown {
		t.Fatalf("our event %+v", e)
	}
	if st, ok := a.status(addrB); !ok || !st.Removing || st.State != StateAdminDown {
		t.Fatalf("while removing: %+v %v", st, ok)
	}
	start := time.Now()
	for {
		if _, ok := a.status(addrB); !ok {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("removed session never forgotten")
		}
		time.Sleep(10 * ms)
	}
	t.Logf("forgotten %v after removal", time.Since(start).Round(time.Millisecond))
	if hasSeries(t, sessionState, addrB.String()) || hasSeries(t, packetsSent, addrB.String()) || hasSeries(t, stateChanges, addrB.String()) {
		t.Fatal("metric series of the removed peer remain")
	}
	if !hasSeries(t, sessionState, addrB6.String()) {
		t.Fatal("metric series of the kept peer went")
	}
	// Meanwhile the peer stays Down and keeps asking.
	if st, _ := b.status(addrA); st.State == StateUp {
		t.Fatalf("%+v", st)
	}

	a.setPeers(t, peer(addrB, addrA, 300*ms, 300*ms, 3), keep)
	a.waitState(t, addrB, StateUp, 5*time.Second)
	b.waitState(t, addrA, StateUp, 5*time.Second)

	// Removed and re-added before it is forgotten: the same session (discriminator) comes back.
	st0, _ := a.status(addrB)
	a.setPeers(t, keep)
	a.waitState(t, addrB, StateAdminDown, time.Second)
	a.setPeers(t, peer(addrB, addrA, 300*ms, 300*ms, 3), keep)
	st := a.waitState(t, addrB, StateUp, 5*time.Second)
	if st.LocalDiscr != st0.LocalDiscr || st.Removing {
		t.Fatalf("re-added: %+v, was %+v", st, st0)
	}
	for _, e := range a.drainEvents() {
		if e.Peer == addrB6 {
			t.Fatalf("the kept session changed: %+v", e)
		}
	}
}

// hasSeries reports whether collector c has a series with label value v.
func hasSeries(tb testing.TB, c prometheus.Collector, v string) bool {
	tb.Helper()
	ch := make(chan prometheus.Metric, 1024)
	c.Collect(ch)
	close(ch)
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			tb.Fatal(err)
		}
		for _, l := range d.GetLabel() {
			if l.GetValue() == v {
				return true
			}
		}
	}
	return false
}

// TestKernelLinkLocal: IPv6 link-local peers, with zones, come Up and detect a failure.
func TestKernelLinkLocal(t *testing.T) {
	testns.Require(t)
	nsA, nsB := testns.New(t, "bfda"), testns.New(t, "bfdb")
	testns.Link(t, nsA, "va", "", nsB, "vb", "")
	nsA.MustRun(t, "ip", "addr", "add", "fe80::a/64", "dev", "va", "nodad")
	nsB.MustRun(t, "ip", "addr", "add", "fe80::b/64", "dev", "vb", "nodad")
	llA, llB := netip.MustParseAddr("fe80::a%va"), netip.MustParseAddr("fe80::b%vb")
	a, b := startNode(t, nsA, llA), startNode(t, nsB, llB)
	a.setPeers(t, PeerConfig{Peer: netip.MustParseAddr("fe80::b%va")}) // Local: the only IPv6 address
	b.setPeers(t, PeerConfig{Peer: netip.MustParseAddr("fe80::a%vb"), Local: llB})
	st := a.waitFor(t, netip.MustParseAddr("fe80::b%va"), 5*time.Second, "Up", func(st Status) bool {
		return st.State == StateUp && st.TxInterval == DefaultInterval
	})
	if st.Local != llA {
		t.Fatalf("%+v", st)
	}
	a.drainEvents()
	b.stop()
	if e := a.nextEvent(t, 2*time.Second); e.New != StateDown || e.Diag != DiagControlDetectionExpired {
		t.Fatalf("%+v", e)
	}
}
