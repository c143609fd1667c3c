package bfd

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	ms         = time.Millisecond
	localDiscr = 0x1001
	peerDiscr  = 0x2002
)

var timers300 = Timers{DesiredMinTx: 300 * ms, RequiredMinRx: 300 * ms, DetectMult: 3}

// from is a packet from the peer in state st, at 300 ms × 3, addressed to our session.
func from(st State) *Packet {
	p := &Packet{State: st, DetectMult: 3, MyDiscr: peerDiscr, YourDiscr: localDiscr,
		DesiredMinTx: 300000, RequiredMinRx: 300000}
	return p
}

func withPoll(p *Packet) *Packet  { p.Poll = true; return p }
func withFinal(p *Packet) *Packet { p.Final = true; return p }

// sessionIn returns a session driven into state st by packets (and the Detection Time running, but for a
// fresh Down session), and the time of its last input.
func sessionIn(t *testing.T, st State) (*Session, time.Time) {
	t.Helper()
	s := NewSession(localDiscr, timers300, t0, 1)
	now := t0
	step := func(p *Packet) {
		now = now.Add(10 * ms)
		s.Receive(p, now)
	}
	switch st {
	case StateDown:
		step(from(StateAdminDown)) // Down stays Down, Detection Time runs
	case StateInit:
		step(from(StateDown))
	case StateUp:
		step(from(StateDown))
		step(from(StateUp))
		step(withFinal(from(StateUp))) // end the Poll Sequence that going Up started
	case StateAdminDown:
		step(from(StateDown))
		now = now.Add(ms)
		s.AdminDown(DiagAdminDown, now)
	}
	if s.State() != st {
		t.Fatalf("setting up: state %s, want %s", s.State(), st)
	}
	return s, now
}

// TestFSM covers every transition of the state diagram of RFC 5880 §6.2 (and the administrative ones of
// §6.8.16), each with the diagnostic §6.8.6 gives it, and checks that a state change sends a packet at once.
func TestFSM(t *testing.T) {
	type event int
	const (
		rxAdminDown event = iota
		rxDown
		rxInit
		rxUp
		timer
		adminDown
		enable
	)
	names := map[event]string{rxAdminDown: "rx AdminDown", rxDown: "rx Down", rxInit: "rx Init", rxUp: "rx Up",
		timer: "Detection Time expires", adminDown: "admin down", enable: "admin enable"}
	for _, tc := range []struct {
		from State
		ev   event
		to   State
		diag Diag // the local diagnostic afterwards
	}{
		// Down: ADMIN DOWN, UP, TIMER keep it Down; DOWN → Init; INIT → Up.
		{StateDown, rxAdminDown, StateDown, DiagNone},
		{StateDown, rxDown, StateInit, DiagNone},
		{StateDown, rxInit, StateUp, DiagNone},
		{StateDown, rxUp, StateDown, DiagNone},
		{StateDown, timer, StateDown, DiagNone},
		// Init: DOWN keeps it; INIT, UP → Up; ADMIN DOWN, TIMER → Down.
		{StateInit, rxAdminDown, StateDown, DiagNeighborSignaledDown},
		{StateInit, rxDown, StateInit, DiagNone},
		{StateInit, rxInit, StateUp, DiagNone},
		{StateInit, rxUp, StateUp, DiagNone},
		{StateInit, timer, StateDown, DiagControlDetectionExpired},
		// Up: INIT, UP keep it; DOWN, ADMIN DOWN, TIMER → Down.
		{StateUp, rxAdminDown, StateDown, DiagNeighborSignaledDown},
		{StateUp, rxDown, StateDown, DiagNeighborSignaledDown},
		{StateUp, rxInit, StateUp, DiagNone},
		{StateUp, rxUp, StateUp, DiagNone},
		{StateUp, timer, StateDown, DiagControlDetectionExpired},
		// Administrative control (§6.8.16): any state → AdminDown; enable → Down; AdminDown ignores the peer.
		{StateDown, adminDown, StateAdminDown, DiagAdminDown},
		{StateInit, adminDown, StateAdminDown, DiagAdminDown},
		{StateUp, adminDown, StateAdminDown, DiagAdminDown},
		{StateAdminDown, rxAdminDown, StateAdminDown, DiagAdminDown},
		{StateAdminDown, rxDown, StateAdminDown, DiagAdminDown},
		{StateAdminDown, rxInit, StateAdminDown, DiagAdminDown},
		{StateAdminDown, rxUp, StateAdminDown, DiagAdminDown},
		{StateAdminDown, timer, StateAdminDown, DiagAdminDown},
		{StateAdminDown, enable, StateDown, DiagAdminDown},
		{StateUp, enable, StateUp, DiagNone},
	} {
		t.Run(tc.from.String()+"/"+names[tc.ev], func(t *testing.T) {
			s, now := sessionIn(t, tc.from)
			var out Output
			switch tc.ev {
			case rxAdminDown, rxDown, rxInit, rxUp:
				now = now.Add(10 * ms)
				p := from(State(tc.ev)) // the events are numbered as the states
				if tc.ev == rxDown || tc.ev == rxAdminDown {
					p.YourDiscr = 0 // a peer that went Down may have forgotten us; allowed in these states
				}
				out = s.Receive(p, now)
			case timer:
				dt := s.DetectionTime()
				if dt == 0 {
					t.Fatal("Detection Time not running")
				}
				now = now.Add(dt - ms)
				if o := s.Tick(now); o.Changed {
					t.Fatalf("changed before the Detection Time: %+v", o)
				}
				now = now.Add(ms)
				out = s.Tick(now)
			case adminDown:
				out = s.AdminDown(DiagAdminDown, now)
			case enable:
				out = s.Enable(now)
			}
			if s.State() != tc.to || s.Status().LocalDiag != tc.diag {
				t.Fatalf("state %s diag %s, want %s diag %s", s.State(), s.Status().LocalDiag, tc.to, tc.diag)
			}
			changed := tc.from != tc.to
			if out.Changed != changed || changed && (out.Old != tc.from || out.New != tc.to || out.Diag != tc.diag) {
				t.Fatalf("output %+v, want change %v %s→%s diag %s", out, changed, tc.from, tc.to, tc.diag)
			}
			if changed && (!out.Send || out.Packet.State != tc.to || out.Packet.Diag != tc.diag) {
				t.Fatalf("a state change must send the new state at once: %+v", out)
			}
			if tc.ev == timer && s.Status().RemoteDiscr != 0 {
				t.Fatalf("Detection Time expired but bfd.RemoteDiscr = %#x (§6.8.1: must be zeroed)", s.Status().RemoteDiscr)
			}
		})
	}
}

// TestReceiveRules covers the steps of RFC 5880 §6.8.6 that a session applies.
func TestReceiveRules(t *testing.T) {
	t.Run("updates the peer's variables", func(t *testing.T) {
		s := NewSession(localDiscr, timers300, t0, 1)
		p := &Packet{State: StateDown, Diag: DiagControlDetectionExpired, DetectMult: 5, MyDiscr: 77,
			DesiredMinTx: 2000000, RequiredMinRx: 500000, Demand: true}
		s.Receive(p, t0)
		st := s.Status()
		if st.RemoteDiscr != 77 || st.RemoteState != StateDown || st.RemoteDiag != DiagControlDetectionExpired ||
			st.RemoteDetectMult != 5 || !st.RemoteDemand {
			t.Fatalf("status %+v", st)
		}
		if st.TxInterval != SlowTx || st.RxInterval != 2*time.Second || st.DetectionTime != 10*time.Second {
			t.Fatalf("tx %v rx %v detect %v", st.TxInterval, st.RxInterval, st.DetectionTime)
		}
		if s.State() != StateInit {
			t.Fatalf("state %s", s.State())
		}
	})
	t.Run("your discriminator not ours", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		p := from(StateDown)
		p.YourDiscr = 999
		if out := s.Receive(p, now); !out.Discarded || out.Changed || out.Send || s.State() != StateUp {
			t.Fatalf("%+v, state %s", out, s.State())
		}
	})
	t.Run("your discriminator zero in Up or Init", func(t *testing.T) {
		for _, st := range []State{StateUp, StateInit} {
			s, now := sessionIn(t, StateUp)
			p := from(st)
			p.YourDiscr = 0
			if out := s.Receive(p, now); !out.Discarded {
				t.Fatalf("%s: %+v", st, out)
			}
		}
	})
	t.Run("authentication, multipoint, zero mult or discriminator", func(t *testing.T) {
		for _, mod := range []func(*Packet){
			func(p *Packet) { p.Auth = true }, func(p *Packet) { p.Multipoint = true },
			func(p *Packet) { p.DetectMult = 0 }, func(p *Packet) { p.MyDiscr = 0 },
		} {
			s, now := sessionIn(t, StateUp)
			p := from(StateDown)
			mod(p)
			if out := s.Receive(p, now); !out.Discarded || s.State() != StateUp {
				t.Fatalf("%+v: %+v", p, out)
			}
		}
	})
	t.Run("poll answered with final in every state but AdminDown", func(t *testing.T) {
		for _, st := range []State{StateDown, StateInit, StateUp, StateAdminDown} {
			s, now := sessionIn(t, st)
			p := withPoll(from(StateAdminDown)) // changes no state anywhere... but Init/Up
			if st == StateInit {
				p = withPoll(from(StateDown))
			} else if st == StateUp {
				p = withPoll(from(StateUp))
			}
			out := s.Receive(p, now.Add(ms))
			if st == StateAdminDown {
				if out.Send {
					t.Fatalf("AdminDown answered a Poll: %+v", out)
				}
				continue
			}
			if !out.Send || !out.Packet.Final || out.Packet.Poll {
				t.Fatalf("%s: a Poll must be answered at once with F (and not P): %+v", st, out)
			}
			if out.Packet.YourDiscr != peerDiscr || out.Packet.MyDiscr != localDiscr {
				t.Fatalf("%s: discriminators %+v", st, out.Packet)
			}
		}
	})
	t.Run("AdminDown discards but learns the peer", func(t *testing.T) {
		s, now := sessionIn(t, StateAdminDown)
		p := from(StateUp)
		p.MyDiscr, p.RequiredMinRx = 4242, 2000000
		out := s.Receive(p, now.Add(ms))
		if out.Changed || s.Status().RemoteDiscr != 4242 || s.TxInterval() != 2*time.Second {
			t.Fatalf("%+v %+v", out, s.Status())
		}
	})
	t.Run("AdminDown from the peer when Down changes nothing", func(t *testing.T) {
		s := NewSession(localDiscr, timers300, t0, 1)
		if out := s.Receive(from(StateAdminDown), t0); out.Changed || s.Status().LocalDiag != DiagNone {
			t.Fatalf("%+v", out)
		}
	})
}

// TestNegotiation: our transmit interval is max(our Desired Min TX, the peer's Required Min RX) (§6.8.2), the
// Detection Time the peer's Detect Mult × max(our Required Min RX, the peer's Desired Min TX) (§6.8.4); while
// not Up we advertise and use at least 1 s (§6.8.3).
func TestNegotiation(t *testing.T) {
	for _, tc := range []struct {
		name               string
		ours               Timers
		peerTx, peerRx     uint32 // µs
		peerMult           uint8
		tx, rx, detect     time.Duration // once Up and the Poll Sequence is over
		downTx, downDetect time.Duration // while Down (peer in Down, sending slowly)
	}{
		{"equal", timers300, 300000, 300000, 3, 300 * ms, 300 * ms, 900 * ms, SlowTx, 3 * time.Second},
		{"peer wants slower rx", timers300, 300000, 500000, 3, 500 * ms, 300 * ms, 900 * ms, SlowTx, 3 * time.Second},
		{"peer sends slower", timers300, 800000, 100000, 5, 300 * ms, 800 * ms, 4 * time.Second, SlowTx, 5 * time.Second},
		{"we want slower rx", Timers{100 * ms, 400 * ms, 2}, 100000, 100000, 3, 100 * ms, 400 * ms, 1200 * ms, SlowTx, 3 * time.Second},
		{"slow config", Timers{2 * time.Second, 2 * time.Second, 3}, 300000, 300000, 3, 2 * time.Second, 2 * time.Second, 6 * time.Second, 2 * time.Second, 6 * time.Second},
		{"mult 1", Timers{100 * ms, 100 * ms, 1}, 50000, 50000, 1, 100 * ms, 100 * ms, 100 * ms, SlowTx, SlowTx},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSession(localDiscr, tc.ours, t0, 1)
			if out := s.Tick(t0); !out.Send || out.Packet.DesiredMinTx != durationToUs(tc.downTx) ||
				out.Packet.RequiredMinRx != durationToUs(tc.ours.RequiredMinRx) || out.Packet.DetectMult != tc.ours.DetectMult ||
				out.Packet.RequiredMinEchoRx != 0 {
				t.Fatalf("first packet %+v", out)
			}
			peer := func(st State, slow bool) *Packet {
				p := &Packet{State: st, DetectMult: tc.peerMult, MyDiscr: peerDiscr, YourDiscr: localDiscr,
					DesiredMinTx: tc.peerTx, RequiredMinRx: tc.peerRx}
				if slow {
					p.DesiredMinTx = max(p.DesiredMinTx, 1000000)
				}
				return p
			}
			s.Receive(peer(StateDown, true), t0.Add(ms))
			if s.TxInterval() != max(tc.downTx, time.Duration(tc.peerRx)*time.Microsecond) || s.DetectionTime() != tc.downDetect {
				t.Fatalf("Init: tx %v detect %v, want %v %v", s.TxInterval(), s.DetectionTime(), tc.downTx, tc.downDetect)
			}
			out := s.Receive(peer(StateUp, true), t0.Add(2*ms))
			if s.State() != StateUp || !out.Send {
				t.Fatalf("not Up: %+v", out)
			}
			if tc.ours.DesiredMinTx < SlowTx != out.Packet.Poll || out.Packet.DesiredMinTx != durationToUs(tc.ours.DesiredMinTx) {
				t.Fatalf("going Up must poll the configured timers in: %+v", out.Packet)
			}
			// The peer answers our Poll and polls its own timers in.
			s.Receive(withFinal(peer(StateUp, true)), t0.Add(3*ms))
			out = s.Receive(withPoll(peer(StateUp, false)), t0.Add(4*ms))
			if !out.Packet.Final || s.Status().Polling {
				t.Fatalf("%+v %+v", out, s.Status())
			}
			if s.TxInterval() != tc.tx || s.RxInterval() != tc.rx || s.DetectionTime() != tc.detect {
				t.Fatalf("tx %v rx %v detect %v; want %v %v %v", s.TxInterval(), s.RxInterval(), s.DetectionTime(), tc.tx, tc.rx, tc.detect)
			}
		})
	}
}

// TestPollSequence: a timer change while Up polls; a longer TX interval and a shorter Required Min RX wait for
// the Final (§6.8.3); one Poll Sequence at a time; going Down abandons it.
func TestPollSequence(t *testing.T) {
	t.Run("slower tx waits for the final", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		s.Configure(Timers{time.Second, 300 * ms, 3}, now)
		if !s.Status().Polling || s.TxInterval() != 300*ms {
			t.Fatalf("%+v", s.Status())
		}
		out := s.Tick(s.NextDeadline())
		if !out.Send || !out.Packet.Poll || out.Packet.DesiredMinTx != 1000000 {
			t.Fatalf("periodic packet during the Poll Sequence: %+v", out.Packet)
		}
		if gap := s.NextDeadline().Sub(s.lastTx); gap > 300*ms {
			t.Fatalf("next packet in %v before the Final", gap)
		}
		s.Receive(withFinal(from(StateUp)), now.Add(400*ms))
		if s.Status().Polling || s.TxInterval() != time.Second {
			t.Fatalf("after the Final: %+v", s.Status())
		}
		if out := s.Tick(s.NextDeadline()); out.Packet.Poll {
			t.Fatalf("P after the Final: %+v", out.Packet)
		}
	})
	t.Run("faster tx applies at once", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		p := from(StateUp)
		p.RequiredMinRx = 50000
		s.Receive(p, now)
		s.Configure(Timers{100 * ms, 300 * ms, 3}, now)
		if !s.Status().Polling || s.TxInterval() != 100*ms {
			t.Fatalf("%+v", s.Status())
		}
		if d := s.NextDeadline().Sub(now); d > 100*ms {
			t.Fatalf("next packet in %v", d)
		}
	})
	t.Run("shorter rx waits for the final, longer applies at once", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		s.Configure(Timers{300 * ms, 100 * ms, 3}, now)
		p := from(StateUp)
		p.DesiredMinTx = 100000
		s.Receive(p, now.Add(ms))
		if s.DetectionTime() != 900*ms {
			t.Fatalf("detection %v before the Final, want 900ms", s.DetectionTime())
		}
		f := *p
		s.Receive(withFinal(&f), now.Add(2*ms))
		if s.DetectionTime() != 300*ms {
			t.Fatalf("detection %v after the Final, want 300ms", s.DetectionTime())
		}
		s.Configure(Timers{300 * ms, 500 * ms, 3}, now.Add(3*ms))
		s.Receive(p, now.Add(4*ms))
		if s.DetectionTime() != 1500*ms || !s.Status().Polling {
			t.Fatalf("detection %v, want 1.5s at once", s.DetectionTime())
		}
	})
	t.Run("one at a time", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		s.Configure(Timers{500 * ms, 300 * ms, 3}, now)
		s.Configure(Timers{700 * ms, 300 * ms, 3}, now.Add(ms))
		if out := s.Tick(s.NextDeadline()); out.Packet.DesiredMinTx != 500000 || !out.Packet.Poll {
			t.Fatalf("a second change must not alter the Poll under way: %+v", out.Packet)
		}
		s.Receive(withFinal(from(StateUp)), now.Add(2*ms))
		if !s.Status().Polling || s.TxInterval() != 500*ms {
			t.Fatalf("after the first Final: %+v", s.Status())
		}
		if out := s.Tick(s.NextDeadline()); out.Packet.DesiredMinTx != 700000 || !out.Packet.Poll {
			t.Fatalf("second Poll: %+v", out.Packet)
		}
		s.Receive(withFinal(from(StateUp)), now.Add(3*ms))
		if s.Status().Polling || s.TxInterval() != 700*ms {
			t.Fatalf("after the second Final: %+v", s.Status())
		}
	})
	t.Run("a final without a poll is ignored", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		if out := s.Receive(withFinal(from(StateUp)), now.Add(ms)); out.Changed || out.Send {
			t.Fatalf("%+v", out)
		}
	})
	t.Run("going down abandons the poll and slows down", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		s.Configure(Timers{200 * ms, 300 * ms, 3}, now)
		out := s.Receive(from(StateDown), now.Add(ms))
		if s.State() != StateDown || s.Status().Polling || out.Packet.Poll || out.Packet.DesiredMinTx != 1000000 ||
			s.TxInterval() != SlowTx {
			t.Fatalf("%+v %+v", out.Packet, s.Status())
		}
	})
	t.Run("timer change while not Up applies at once without a poll", func(t *testing.T) {
		s, now := sessionIn(t, StateInit)
		s.Configure(Timers{2 * time.Second, 50 * ms, 4}, now)
		out := s.Tick(s.NextDeadline())
		if s.Status().Polling || out.Packet.Poll || out.Packet.DesiredMinTx != 2000000 || out.Packet.RequiredMinRx != 50000 ||
			out.Packet.DetectMult != 4 || s.TxInterval() != 2*time.Second {
			t.Fatalf("%+v %+v", out.Packet, s.Status())
		}
	})
	t.Run("detect mult change goes out at once", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		s.Configure(Timers{300 * ms, 300 * ms, 5}, now)
		if out := s.Tick(s.NextDeadline()); out.Packet.DetectMult != 5 || out.Packet.Poll || s.Status().Polling {
			t.Fatalf("%+v", out.Packet)
		}
	})
}

// TestTransmission: jitter per §6.8.7 (75–100 % of the interval, 75–90 % with Detect Mult 1), nothing periodic
// when the peer's Required Min RX is zero.
func TestTransmission(t *testing.T) {
	for _, mult := range []uint8{3, 1} {
		s, now := sessionIn(t, StateUp)
		s.Configure(Timers{100 * ms, 100 * ms, mult}, now)
		s.Receive(withFinal(from(StateUp)), now)
		p := from(StateUp)
		p.RequiredMinRx = 100000
		s.Receive(p, now)
		lo, hi := 75*ms, 100*ms
		if mult == 1 {
			hi = 90 * ms
		}
		last := time.Time{}
		minGap, maxGap := time.Hour, time.Duration(0)
		for i := 0; i < 2000; i++ {
			now = s.NextDeadline()
			out := s.Tick(now)
			if !out.Send {
				t.Fatalf("tick without send at %v", now)
			}
			s.Receive(p, now) // keep the Detection Time from expiring
			if !last.IsZero() {
				gap := now.Sub(last)
				minGap, maxGap = min(minGap, gap), max(maxGap, gap)
			}
			last = now
		}
		if minGap < lo || maxGap > hi || minGap > lo+2*ms || maxGap < hi-2*ms {
			t.Fatalf("mult %d: gaps %v..%v, want within and spanning %v..%v", mult, minGap, maxGap, lo, hi)
		}
	}
	t.Run("peer asks for nothing", func(t *testing.T) {
		s, now := sessionIn(t, StateUp)
		p := from(StateUp)
		p.RequiredMinRx = 0
		s.Receive(p, now)
		if s.TxInterval() != 0 || s.NextDeadline() != s.detectAt {
			t.Fatalf("tx %v, next %v", s.TxInterval(), s.NextDeadline())
		}
		if out := s.Receive(withPoll(p), now.Add(ms)); !out.Send || !out.Packet.Final {
			t.Fatalf("a Poll is answered regardless: %+v", out)
		}
	})
}

// link simulates two sessions joined by a lossless path with a fixed delay, on a virtual clock.
type link struct {
	a, b   *Session
	delay  time.Duration
	now    time.Time
	cut    bool
	flight []flight
	events []Output // state changes of a
	at     []time.Time
}

type flight struct {
	at    time.Time
	toA   bool
	p     Packet
	valid bool
}

func (l *link) handle(out Output, fromA bool) {
	if out.Changed && fromA {
		l.events = append(l.events, out)
		l.at = append(l.at, l.now)
	}
	if out.Send && !l.cut {
		l.flight = append(l.flight, flight{at: l.now.Add(l.delay), toA: !fromA, p: out.Packet, valid: true})
	}
}

// run advances the virtual clock to until, delivering packets and ticking sessions in time order.
func (l *link) run(until time.Time) {
	for {
		next, what := until, 0
		if d := l.a.NextDeadline(); !d.IsZero() && d.Before(next) {
			next, what = d, 1
		}
		if d := l.b.NextDeadline(); !d.IsZero() && d.Before(next) {
			next, what = d, 2
		}
		fi := -1
		for i, f := range l.flight {
			if f.at.Before(next) {
				next, what, fi = f.at, 3, i
			}
		}
		if what == 0 {
			l.now = until
			return
		}
		l.now = next
		switch what {
		case 1:
			l.handle(l.a.Tick(next), true)
		case 2:
			l.handle(l.b.Tick(next), false)
		case 3:
			f := l.flight[fi]
			l.flight = append(l.flight[:fi], l.flight[fi+1:]...)
			if f.toA {
				l.handle(l.a.Receive(&f.p, next), true)
			} else {
				l.handle(l.b.Receive(&f.p, next), false)
			}
		}
	}
}

// TestTwoSessions drives two sessions against each other: they come Up within a few slow intervals, survive
// timer changes both ways with no flap, and one detects the path failing within its Detection Time.
func TestTwoSessions(t *testing.T) {
	l := &link{a: NewSession(1, timers300, t0, 7), b: NewSession(2, timers300, t0.Add(333*ms), 9), delay: ms, now: t0}
	l.run(t0.Add(3 * time.Second))
	if l.a.State() != StateUp || l.b.State() != StateUp {
		t.Fatalf("not Up after 3s: %s %s", l.a.State(), l.b.State())
	}
	if l.a.TxInterval() != 300*ms || l.b.TxInterval() != 300*ms || l.a.Status().Polling || l.b.Status().Polling {
		t.Fatalf("timers not negotiated: %+v %+v", l.a.Status(), l.b.Status())
	}
	for i, tm := range []Timers{{100 * ms, 100 * ms, 3}, {2 * time.Second, 2 * time.Second, 2}, {50 * ms, 300 * ms, 1},
		{1500 * ms, 50 * ms, 3}, {300 * ms, 300 * ms, 3}} {
		l.a.Configure(tm, l.now)
		l.run(l.now.Add(10 * time.Second))
		if len(l.events) != 1 {
			t.Fatalf("change %d (%+v): flapped: %+v", i, tm, l.events[1:])
		}
		if l.a.Status().Polling {
			t.Fatalf("change %d: Poll Sequence never ended", i)
		}
	}
	l.cut = true
	cutAt := l.now
	l.run(l.now.Add(5 * time.Second))
	if len(l.events) != 2 || l.events[1].New != StateDown || l.events[1].Diag != DiagControlDetectionExpired {
		t.Fatalf("events %+v", l.events)
	}
	// The last packet came 0–1 interval before the cut; detection is 3 intervals after it.
	if d := l.at[1].Sub(cutAt); d < 600*ms || d > 900*ms {
		t.Fatalf("detected %v after the cut, want 600ms..900ms", d)
	}
}

func TestSessionDoesNotAllocate(t *testing.T) {
	s, now := sessionIn(t, StateUp)
	p := from(StateUp)
	if n := testing.AllocsPerRun(1000, func() {
		now = now.Add(50 * ms)
		_ = s.Receive(p, now)
		_ = s.Tick(s.NextDeadline())
	}); n != 0 {
		t.Fatalf("%v allocations per packet", n)
	}
}
