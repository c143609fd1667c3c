//go:build linux

package bfd

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config configures a Server.
type Config struct {
	// LocalAddrs are the addresses sessions may use as their local address (at least one). The Server sends
	// from each through a socket of its own bound to it and to a source port in 49152–65535, and receives on
	// Port of every address of their families (one wildcard socket per family).
	LocalAddrs []netip.Addr
	// Port is the UDP port packets are received on and sent to; 0 means 3784 (RFC 5881). Tests use others.
	Port int
	// Log receives session changes and send errors; nil means slog.Default().
	Log *slog.Logger
}

// PeerConfig is one desired session: single hop, from Local to Peer.
type PeerConfig struct {
	Peer netip.Addr
	// Local is our address on the link to Peer; it must be one of Config.LocalAddrs. Unset means the only
	// local address of Peer's family. A link-local Peer needs a link-local Local with a zone (the interface),
	// which then is Peer's zone too.
	Local netip.Addr
	// DesiredMinTx and RequiredMinRx are the intervals we offer, 10 ms to 1 h; 0 means 300 ms. While the
	// session is not Up it sends every second at most (RFC 5880 §6.8.3).
	DesiredMinTx, RequiredMinRx time.Duration
	// DetectMultiplier is how many intervals the peer may miss; 0 means 3.
	DetectMultiplier uint8
}

// Defaults and bounds of PeerConfig.
const (
	DefaultInterval         = 300 * time.Millisecond
	DefaultDetectMultiplier = 3
	MinInterval             = 10 * time.Millisecond
	MaxInterval             = time.Hour
)

func (p PeerConfig) timers() Timers {
	return Timers{DesiredMinTx: p.DesiredMinTx, RequiredMinRx: p.RequiredMinRx, DetectMult: p.DetectMultiplier}
}

// Event is a session's state change. Canopy resets the BGP session on Up → Down and nudges it on → Up.
type Event struct {
	Peer, Local netip.Addr
	Old, New    State
	Diag        Diag // our diagnostic: why it changed (e.g. Control Detection Time Expired)
	At          time.Time
}

// Status is a session as a status command shows it.
type Status struct {
	Peer, Local netip.Addr
	Config      PeerConfig // with defaults filled in
	SessionStatus
	PacketsIn, PacketsOut uint64
	LastStateChange       time.Time // when the session was created, if it never changed
	Removing              bool      // removed from the configuration, sending AdminDown before it goes
	SendError             string    // the last send error, if the last send failed
}

// adminDownPackets is how many AdminDown packets a removed session sends (and for at least the peer's
// Detection Time, RFC 5880 §6.8.16) before it is forgotten.
const adminDownPackets = 3

// rxQueue bounds the packets waiting for the event loop; beyond it they are dropped (reason overload).
const rxQueue = 1024

// Server runs BFD sessions: one event-loop goroutine owns every session and all timers (one time.Timer, set to
// the earliest deadline of a heap); one reader goroutine per receive socket (one per address family) checks
// TTL and format and hands valid packets to the loop. Its methods are safe for concurrent use.
type Server struct {
	log    *slog.Logger
	port   int
	recv   []*net.UDPConn
	send   map[netip.Addr]*sender // by local address without zone
	rx     chan rxPacket
	wake   chan struct{}
	closed chan struct{}
	close  sync.Once

	// peers is the set of peer addresses (without zone) the readers accept packets from; others are dropped
	// (no_session) before they reach the loop. Replaced, never modified.
	peers atomic.Pointer[map[netip.Addr]struct{}]

	mu       sync.Mutex // the loop holds it while it works; Sessions and SetPeers take it briefly
	started  bool
	desired  map[key]PeerConfig
	dirty    bool
	sessions map[key]*entry
	byDiscr  map[uint32]*entry
	timers   deadlines
	subs     []*subscriber

	// The one packet being sent, and the function that sends it, made once so sending allocates nothing.
	wbuf    []byte
	wsa     unix.Sockaddr
	werr    error
	writeFn func(fd uintptr) bool
}

type key struct{ peer, local netip.Addr }

func keyOf(peer, local netip.Addr) key {
	return key{peer.Unmap().WithZone(""), local.Unmap().WithZone("")}
}

type sender struct {
	addr   netip.Addr // the local address, with its zone if it has one
	zoneID uint32     // the interface index of that zone, resolved in New's namespace
	conn   *net.UDPConn
	raw    syscall.RawConn
}

type entry struct {
	key      key
	cfg      PeerConfig
	sess     *Session
	snd      *sender
	sa       unix.Sockaddr
	m        peerMetrics
	in, out  uint64
	changed  time.Time
	sendErr  string
	heapIdx  int
	deadline time.Time

	removing  bool
	adminSent int
	forgetAt  time.Time
}

type rxPacket struct {
	p        Packet
	src, dst netip.Addr
}

// New opens the Server's sockets in the network namespace of the calling thread (a test or an agent that runs
// New inside netnsx.Do gets a Server of that namespace). Nothing is sent before Run.
func New(cfg Config) (*Server, error) {
	if len(cfg.LocalAddrs) == 0 {
		return nil, errors.New("bfd: no local address")
	}
	s := &Server{
		log: cfg.Log, port: cfg.Port,
		send:     map[netip.Addr]*sender{},
		rx:       make(chan rxPacket, rxQueue),
		wake:     make(chan struct{}, 1),
		closed:   make(chan struct{}),
		sessions: map[key]*entry{},
		byDiscr:  map[uint32]*entry{},
		wbuf:     make([]byte, 0, PacketLen),
	}
	s.writeFn = s.write
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.port == 0 {
		s.port = DefaultPort
	}
	empty := map[netip.Addr]struct{}{}
	s.peers.Store(&empty)
	var fam4, fam6 bool
	for _, a := range cfg.LocalAddrs {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			s.Close()
			return nil, fmt.Errorf("bfd: local address %q is not a unicast address", a)
		}
		a = a.Unmap()
		k := a.WithZone("")
		if _, dup := s.send[k]; dup {
			continue
		}
		zoneID, err := zoneIndex(a.Zone())
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("bfd: local address %s: %w", a, err)
		}
		c, err := dial(a)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("bfd: send socket on %s: %w", a, err)
		}
		raw, err := c.SyscallConn()
		if err != nil {
			c.Close()
			s.Close()
			return nil, err
		}
		s.send[k] = &sender{addr: a, zoneID: zoneID, conn: c, raw: raw}
		fam4, fam6 = fam4 || a.Is4(), fam6 || a.Is6()
	}
	for _, v6 := range []bool{false, true} {
		if v6 && !fam6 || !v6 && !fam4 {
			continue
		}
		c, err := listen(v6, s.port)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("bfd: receive socket on port %d: %w", s.port, err)
		}
		s.recv = append(s.recv, c)
	}
	return s, nil
}

// Close closes the sockets; Run returns. Run closes them itself when its context ends.
func (s *Server) Close() {
	s.close.Do(func() {
		close(s.closed)
		for _, c := range s.recv {
			c.Close()
		}
		for _, snd := range s.send {
			snd.conn.Close()
		}
	})
}

// SetPeers makes the configured sessions those of peers: it adds the new ones, updates the timers of changed
// ones (while Up through a Poll Sequence, without a flap) and removes the others (they send AdminDown a few
// times, then are forgotten). Sessions that did not change are not touched. An invalid entry fails the whole
// call and nothing changes. It returns before the loop applies the change.
func (s *Server) SetPeers(peers []PeerConfig) error {
	want := make(map[key]PeerConfig, len(peers))
	var errs []error
	for _, p := range peers {
		n, err := s.normalize(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("bfd peer %s: %w", p.Peer, err))
			continue
		}
		k := keyOf(n.Peer, n.Local)
		if _, dup := want[k]; dup {
			errs = append(errs, fmt.Errorf("bfd peer %s: listed twice with local address %s", n.Peer, n.Local))
			continue
		}
		want[k] = n
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	s.mu.Lock()
	s.desired, s.dirty = want, true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

func (s *Server) normalize(p PeerConfig) (PeerConfig, error) {
	p.Peer = p.Peer.Unmap()
	if !p.Peer.IsValid() || p.Peer.IsUnspecified() || p.Peer.IsMulticast() {
		return p, errors.New("not a unicast address")
	}
	if !p.Local.IsValid() {
		for a := range s.send {
			if a.Is4() == p.Peer.Is4() {
				if p.Local.IsValid() {
					return p, errors.New("no local address given and several of its family configured")
				}
				p.Local = a
			}
		}
		if !p.Local.IsValid() {
			return p, errors.New("no local address of its family configured")
		}
	}
	snd, ok := s.send[p.Local.Unmap().WithZone("")]
	if !ok {
		return p, fmt.Errorf("local address %s is not one of the server's", p.Local)
	}
	if z := p.Local.Zone(); z != "" && z != snd.addr.Zone() {
		return p, fmt.Errorf("local address %s: the server has it with zone %q", p.Local, snd.addr.Zone())
	}
	p.Local = snd.addr
	if p.Local.Is4() != p.Peer.Is4() {
		return p, fmt.Errorf("local address %s is of another family", p.Local)
	}
	switch z := p.Peer.Zone(); {
	case p.Peer.IsLinkLocalUnicast():
		// A link-local peer is on the link of our link-local address: its zone is that address's.
		if snd.addr.Zone() == "" || !p.Local.IsLinkLocalUnicast() {
			return p, fmt.Errorf("a link-local peer needs a link-local local address with a zone, not %s", p.Local)
		}
		if z != "" && z != snd.addr.Zone() && z != strconv.FormatUint(uint64(snd.zoneID), 10) {
			return p, fmt.Errorf("zone %q is not that of local address %s", z, p.Local)
		}
		p.Peer = p.Peer.WithZone(snd.addr.Zone())
	case z != "":
		return p, fmt.Errorf("zone %q on an address that is not link-local", z)
	}
	for _, d := range []*time.Duration{&p.DesiredMinTx, &p.RequiredMinRx} {
		if *d == 0 {
			*d = DefaultInterval
		}
		if *d < MinInterval || *d > MaxInterval {
			return p, fmt.Errorf("interval %v outside %v..%v", *d, MinInterval, MaxInterval)
		}
	}
	if p.DetectMultiplier == 0 {
		p.DetectMultiplier = DefaultDetectMultiplier
	}
	return p, nil
}

// Subscribe calls f with every state change from now on, in order, from a goroutine of its own: a slow f delays
// only its own later events (they queue), never the event loop. cancel stops the calls.
func (s *Server) Subscribe(f func(Event)) (cancel func()) {
	sub := &subscriber{f: f, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	s.mu.Lock()
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	go sub.run(s.closed)
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.subs = slices.DeleteFunc(s.subs, func(x *subscriber) bool { return x == sub })
			s.mu.Unlock()
			close(sub.stop)
		})
	}
}

type subscriber struct {
	f    func(Event)
	mu   sync.Mutex
	q    []Event
	kick chan struct{}
	stop chan struct{}
}

func (sub *subscriber) push(ev Event) {
	sub.mu.Lock()
	sub.q = append(sub.q, ev)
	sub.mu.Unlock()
	select {
	case sub.kick <- struct{}{}:
	default:
	}
}

func (sub *subscriber) run(closed <-chan struct{}) {
	var batch []Event
	for {
		select {
		case <-sub.stop:
			return
		case <-closed:
			return
		case <-sub.kick:
		}
		sub.mu.Lock()
		batch, sub.q = sub.q, batch[:0]
		sub.mu.Unlock()
		for _, ev := range batch {
			select {
			case <-sub.stop:
				return
			default:
			}
			sub.f(ev)
		}
	}
}

// Sessions returns the status of every session, sorted by peer and local address.
func (s *Server) Sessions() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.sessions))
	for _, e := range s.sessions {
		out = append(out, Status{
			Peer: e.cfg.Peer, Local: e.cfg.Local, Config: e.cfg, SessionStatus: e.sess.Status(),
			PacketsIn: e.in, PacketsOut: e.out, LastStateChange: e.changed, Removing: e.removing, SendError: e.sendErr,
		})
	}
	slices.SortFunc(out, func(a, b Status) int {
		if c := a.Peer.Compare(b.Peer); c != 0 {
			return c
		}
		return a.Local.Compare(b.Local)
	})
	return out
}

// Run runs the event loop until ctx ends or Close, then closes the sockets. Call it once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("bfd: Run called twice")
	}
	s.started = true
	s.mu.Unlock()

	var wg sync.WaitGroup
	for _, c := range s.recv {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.read(c)
		}()
	}
	defer wg.Wait()
	defer s.Close()
	defer func() { // the sessions end with the loop: so do their metric series
		s.mu.Lock()
		for _, e := range s.sessions {
			e.m.delete()
		}
		s.mu.Unlock()
	}()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var armed time.Time // the deadline timer is set for; re-arming only on a change spares the runtime work
	for {
		s.mu.Lock()
		now := time.Now()
		if s.dirty {
			s.applyPeers(now)
		}
		s.runTimers(now)
		next := farFuture
		if len(s.timers) > 0 {
			next = s.timers[0].deadline
		}
		s.mu.Unlock()
		if !next.Equal(armed) {
			armed = next
			timer.Reset(next.Sub(now))
		}

		select {
		case <-ctx.Done():
			return nil
		case <-s.closed:
			return nil
		case <-s.wake:
		case <-timer.C:
			armed = time.Time{}
		case r := <-s.rx:
			s.mu.Lock()
			now := time.Now()
			s.handle(&r, now)
		more:
			for range 64 { // take what else is queued while we hold the lock
				select {
				case r = <-s.rx:
					s.handle(&r, now)
				default:
					break more
				}
			}
			s.mu.Unlock()
		}
	}
}

// read is one receive socket's goroutine. Its buffers are allocated once.
func (s *Server) read(c *net.UDPConn) {
	buf := make([]byte, 512)
	oob := make([]byte, oobSize)
	for {
		n, oobn, flags, src, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("BFD receive failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.receive(buf[:n], oob[:oobn], flags, src)
	}
}

// receive filters one datagram from the network, which may be hostile: in O(1) and without allocating, it
// drops (and counts) a TTL / Hop Limit other than 255 (RFC 5881 §5), a malformed packet, one with
// authentication, and one from an address that is no peer's; it queues the rest for the loop.
func (s *Server) receive(b, oob []byte, flags int, src netip.AddrPort) {
	ttl, dst := parseControl(oob)
	if ttl != 255 {
		dropTTL.Inc()
		return
	}
	if flags&unix.MSG_TRUNC != 0 {
		dropMalformed.Inc()
		return
	}
	var r rxPacket
	if err := Decode(b, &r.p); err != nil {
		if err == ErrAuth {
			dropAuth.Inc()
		} else {
			dropMalformed.Inc()
		}
		return
	}
	r.src, r.dst = src.Addr().Unmap().WithZone(""), dst
	if _, ok := (*s.peers.Load())[r.src]; !ok || !dst.IsValid() {
		dropNoSession.Inc()
		return
	}
	select {
	case s.rx <- r:
	default:
		dropOverload.Inc()
	}
}

// handle demultiplexes a packet to its session (by Your Discriminator when non-zero, else by source and
// destination address; either way the addresses must be the session's) and applies it.
func (s *Server) handle(r *rxPacket, now time.Time) {
	var e *entry
	if r.p.YourDiscr != 0 {
		e = s.byDiscr[r.p.YourDiscr]
		if e != nil && (e.key.peer != r.src || e.key.local != r.dst) {
			e = nil
		}
	} else {
		e = s.sessions[key{r.src, r.dst}]
	}
	if e == nil {
		dropNoSession.Inc()
		return
	}
	out := e.sess.Receive(&r.p, now)
	if out.Discarded {
		dropMalformed.Inc()
		return
	}
	e.in++
	e.m.recv.Inc()
	s.apply(e, out, now)
	s.reschedule(e)
}

// runTimers ticks every session whose deadline has come, and forgets removed sessions that are done.
func (s *Server) runTimers(now time.Time) {
	for n := 2*len(s.timers) + 8; n > 0 && len(s.timers) > 0; n-- {
		e := s.timers[0]
		if e.deadline.After(now) {
			return
		}
		if e.removing && e.removable(now) {
			s.forget(e)
			continue
		}
		s.apply(e, e.sess.Tick(now), now)
		s.reschedule(e)
	}
}

func (e *entry) removable(now time.Time) bool {
	return (e.adminSent >= adminDownPackets || e.sess.TxInterval() == 0) && !now.Before(e.forgetAt)
}

// apply carries out a session's output: the state change (metrics, log, events) and the packet.
func (s *Server) apply(e *entry, out Output, now time.Time) {
	if out.Changed {
		e.changed = now
		e.m.changed(out.New)
		s.log.Info("BFD session changed", "peer", e.cfg.Peer, "local", e.cfg.Local,
			"from", out.Old.String(), "to", out.New.String(), "diag", out.Diag.String())
		ev := Event{Peer: e.cfg.Peer, Local: e.cfg.Local, Old: out.Old, New: out.New, Diag: out.Diag, At: now}
		for _, sub := range s.subs {
			sub.push(ev)
		}
	}
	if out.Send {
		s.transmit(e, &out.Packet)
	}
}

// transmit sends one packet without blocking: a full socket buffer loses the packet, as the network could.
func (s *Server) transmit(e *entry, p *Packet) {
	s.wbuf = p.Encode(s.wbuf[:0])
	s.wsa, s.werr = e.sa, nil
	err := e.snd.raw.Write(s.writeFn)
	if err == nil {
		err = s.werr
	}
	if err != nil {
		if msg := err.Error(); msg != e.sendErr {
			s.log.Warn("BFD send failed", "peer", e.cfg.Peer, "local", e.cfg.Local, "err", err)
			e.sendErr = msg
		}
		return
	}
	if e.sendErr != "" {
		s.log.Info("BFD send works again", "peer", e.cfg.Peer, "local", e.cfg.Local)
		e.sendErr = ""
	}
	e.out++
	e.m.sent.Inc()
	if e.removing {
		e.adminSent++
	}
}

func (s *Server) write(fd uintptr) bool {
	s.werr = unix.Sendto(int(fd), s.wbuf, unix.MSG_DONTWAIT, s.wsa)
	return true
}

// applyPeers makes the sessions match s.desired.
func (s *Server) applyPeers(now time.Time) {
	s.dirty = false
	for k, want := range s.desired {
		e := s.sessions[k]
		if e == nil {
			s.add(k, want, now)
			continue
		}
		if e.removing {
			e.removing, e.adminSent = false, 0
			s.apply(e, e.sess.Enable(now), now)
			s.log.Info("BFD session re-added", "peer", want.Peer, "local", want.Local)
		}
		if want.timers() != e.cfg.timers() {
			e.sess.Configure(want.timers(), now)
			s.log.Info("BFD session timers changed", "peer", want.Peer, "local", want.Local,
				"tx", want.DesiredMinTx, "rx", want.RequiredMinRx, "mult", want.DetectMultiplier)
		}
		e.cfg = want
		s.reschedule(e)
	}
	for k, e := range s.sessions {
		if _, ok := s.desired[k]; !ok && !e.removing {
			// The peer's Detection Time of us, before AdminDown slows us down.
			e.forgetAt = now.Add(time.Duration(e.cfg.DetectMultiplier) * e.sess.TxInterval())
			e.removing = true
			s.apply(e, e.sess.AdminDown(DiagAdminDown, now), now)
			s.log.Info("BFD session removed; sending AdminDown", "peer", e.cfg.Peer, "local", e.cfg.Local)
			s.reschedule(e)
		}
	}
	s.publishPeers()
}

func (s *Server) add(k key, p PeerConfig, now time.Time) {
	snd := s.send[k.local]
	var zoneID uint32
	if p.Peer.IsLinkLocalUnicast() {
		zoneID = snd.zoneID
	}
	sa := sockaddr(netip.AddrPortFrom(p.Peer, uint16(s.port)), zoneID)
	var discr uint32
	for discr == 0 || s.byDiscr[discr] != nil {
		discr = rand.Uint32()
	}
	e := &entry{
		key: k, cfg: p, sa: sa, snd: snd, changed: now,
		sess: NewSession(discr, p.timers(), now, rand.Uint64()),
		m:    newPeerMetrics(k.peer.String()),
	}
	e.m.state.Set(float64(StateDown))
	s.sessions[k] = e
	s.byDiscr[discr] = e
	e.deadline = e.nextDeadline()
	heap.Push(&s.timers, e)
	s.log.Info("BFD session added", "peer", p.Peer, "local", p.Local, "discriminator", discr,
		"tx", p.DesiredMinTx, "rx", p.RequiredMinRx, "mult", p.DetectMultiplier)
}

func (s *Server) forget(e *entry) {
	delete(s.sessions, e.key)
	delete(s.byDiscr, e.sess.Status().LocalDiscr)
	heap.Remove(&s.timers, e.heapIdx)
	e.m.delete()
	s.publishPeers()
	s.log.Info("BFD session forgotten", "peer", e.cfg.Peer, "local", e.cfg.Local)
}

// publishPeers gives the readers the new set of peer addresses.
func (s *Server) publishPeers() {
	m := make(map[netip.Addr]struct{}, len(s.sessions))
	for k := range s.sessions {
		m[k.peer] = struct{}{}
	}
	s.peers.Store(&m)
}

var farFuture = time.Unix(1<<62, 0)

func (e *entry) nextDeadline() time.Time {
	d := e.sess.NextDeadline()
	if e.removing && (e.adminSent >= adminDownPackets || e.sess.TxInterval() == 0) && (d.IsZero() || e.forgetAt.Before(d)) {
		d = e.forgetAt
	}
	if d.IsZero() {
		return farFuture
	}
	return d
}

func (s *Server) reschedule(e *entry) {
	if d := e.nextDeadline(); !d.Equal(e.deadline) {
		e.deadline = d
		heap.Fix(&s.timers, e.heapIdx)
	}
}

// deadlines is a min-heap of sessions by deadline.
type deadlines []*entry

func (h deadlines) Len() int           { return len(h) }
func (h deadlines) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h deadlines) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *deadlines) Push(x any) {
	e := x.(*entry)
	e.heapIdx = len(*h)
	*h = append(*h, e)
}
func (h *deadlines) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heapIdx = -1
	return e
}
