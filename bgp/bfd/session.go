package bfd

import "time"

// SlowTx is the least transmit interval a session advertises and uses while it is not Up (RFC 5880 §6.8.3: at
// least one second, so a session to a neighbour that does not run BFD costs next to nothing).
const SlowTx = time.Second

// Timers are the parameters of a session that its configuration sets.
type Timers struct {
	DesiredMinTx  time.Duration // bfd.DesiredMinTxInterval once Up (SlowTx or more while not Up)
	RequiredMinRx time.Duration // bfd.RequiredMinRxInterval
	DetectMult    uint8         // bfd.DetectMult
}

// Output is what one call into a Session asks of its caller: at most one packet to send now and at most one
// state change to report. It is a plain value, so driving a session allocates nothing.
type Output struct {
	// Send: transmit Packet to the peer now.
	Send   bool
	Packet Packet

	// Changed: the session went from Old to New; Diag is the local diagnostic that goes with it.
	Changed  bool
	Old, New State
	Diag     Diag

	// Discarded: Receive did not accept the packet (its Your Discriminator is not this session's, or it breaks
	// a rule of RFC 5880 §6.8.6 that Decode cannot check).
	Discarded bool
}

// Session is one BFD session in Asynchronous mode (RFC 5880 §6): the state variables of §6.8.1, the state
// machine of §6.2 as driven by the reception rules of §6.8.6 and the Detection Time of §6.8.4, timer
// negotiation and Poll Sequences (§6.5, §6.8.2, §6.8.3), and jittered periodic transmission (§6.8.7). It does
// no I/O and reads no clock: its caller passes the time into every method, sends the packets it returns, and
// calls Tick at NextDeadline. A Session is not safe for concurrent use.
type Session struct {
	want Timers // configured

	state       State
	remoteState State
	localDiscr  uint32
	remoteDiscr uint32
	localDiag   Diag
	remoteDiag  Diag

	remoteMinRx     time.Duration // bfd.RemoteMinRxInterval
	remoteDesiredTx time.Duration // Desired Min TX of the last packet received
	remoteMult      uint8         // Detect Mult of the last packet received; 0 = none since the last expiry
	remoteDemand    bool

	// advTx/advRx are what our packets advertise; effTx/effRx are in force for our transmit interval and our
	// Detection Time. They differ only during a Poll Sequence (§6.8.3).
	advTx, advRx time.Duration
	effTx, effRx time.Duration
	polling      bool

	lastTx   time.Time // zero until the first packet
	nextTx   time.Time // zero: no periodic transmission
	detectAt time.Time // zero: Detection Time not running

	rng uint64
}

// NewSession returns a session in state Down with local discriminator discr (non-zero, unique on this system),
// the timers t, its first packet due at now, and jitter drawn from a generator seeded with seed.
func NewSession(discr uint32, t Timers, now time.Time, seed uint64) *Session {
	s := &Session{
		want:        t,
		state:       StateDown,
		remoteState: StateDown,
		localDiscr:  discr,
		remoteMinRx: time.Microsecond, // §6.8.1: initialised to 1
		rng:         seed | 1,
		nextTx:      now,
	}
	s.advTx, s.advRx = s.notUpTx(), t.RequiredMinRx
	s.effTx, s.effRx = s.advTx, s.advRx
	return s
}

// notUpTx is bfd.DesiredMinTxInterval while the session is not Up.
func (s *Session) notUpTx() time.Duration { return max(SlowTx, s.want.DesiredMinTx) }

// TxInterval is the negotiated interval between our periodic packets before jitter (§6.8.2): the larger of our
// Desired Min TX in force and the peer's Required Min RX. Zero means the peer asked for no packets at all.
func (s *Session) TxInterval() time.Duration {
	if s.remoteMinRx == 0 {
		return 0
	}
	return max(s.effTx, s.remoteMinRx)
}

// RxInterval is the interval the peer agreed to send at (§6.8.4): the larger of our Required Min RX in force and
// the peer's last Desired Min TX. Zero until a packet arrives.
func (s *Session) RxInterval() time.Duration {
	if s.remoteMult == 0 {
		return 0
	}
	return max(s.effRx, s.remoteDesiredTx)
}

// DetectionTime is the peer's Detect Mult times RxInterval (§6.8.4); zero until a packet arrives.
func (s *Session) DetectionTime() time.Duration {
	return time.Duration(s.remoteMult) * s.RxInterval()
}

// NextDeadline is when the session next needs Tick: its next periodic packet or the end of its Detection Time,
// whichever comes first. Zero means never (no packet is due and the Detection Time is not running).
func (s *Session) NextDeadline() time.Time {
	switch {
	case s.nextTx.IsZero():
		return s.detectAt
	case s.detectAt.IsZero() || s.nextTx.Before(s.detectAt):
		return s.nextTx
	}
	return s.detectAt
}

// Receive applies a packet that Decode accepted and that was demultiplexed to this session (§6.8.6).
func (s *Session) Receive(p *Packet, now time.Time) Output {
	var out Output
	if p.YourDiscr != 0 && p.YourDiscr != s.localDiscr ||
		p.YourDiscr == 0 && p.State != StateDown && p.State != StateAdminDown ||
		p.Auth || p.Multipoint || p.DetectMult == 0 || p.MyDiscr == 0 {
		out.Discarded = true
		return out
	}
	oldTx := s.TxInterval()
	s.remoteDiscr = p.MyDiscr
	s.remoteState = p.State
	s.remoteDiag = p.Diag
	s.remoteDemand = p.Demand
	s.remoteMinRx = usToDuration(p.RequiredMinRx)
	s.remoteDesiredTx = usToDuration(p.DesiredMinTx)
	s.remoteMult = p.DetectMult
	if p.Final && s.polling {
		s.endPoll()
	}
	s.retime(now, oldTx)
	s.detectAt = now.Add(s.DetectionTime())

	if s.state == StateAdminDown {
		return out // §6.8.6: discarded after the variables above are updated; no Final either
	}
	if p.State == StateAdminDown {
		if s.state != StateDown {
			s.setState(StateDown, DiagNeighborSignaledDown, now, &out)
		}
	} else {
		switch s.state {
		case StateDown:
			switch p.State {
			case StateDown:
				s.setState(StateInit, s.localDiag, now, &out)
			case StateInit:
				s.setState(StateUp, DiagNone, now, &out)
			}
		case StateInit:
			if p.State == StateInit || p.State == StateUp {
				s.setState(StateUp, DiagNone, now, &out)
			}
		case StateUp:
			if p.State == StateDown {
				s.setState(StateDown, DiagNeighborSignaledDown, now, &out)
			}
		}
	}
	// Demand mode: we never ask for it, and if the peer does (D bit) we keep sending periodically, which RFC 5880
	// lets the peer live with (it simply receives packets it did not need).
	if out.Changed || p.Poll {
		s.transmit(now, p.Poll, &out)
	}
	return out
}

// Tick runs the timers due at now: the Detection Time (§6.8.4; in Init or Up its expiry takes the session Down
// with diagnostic Control Detection Time Expired, in any state it forgets the peer's discriminator) and the
// periodic transmission (§6.8.7).
func (s *Session) Tick(now time.Time) Output {
	var out Output
	if !s.detectAt.IsZero() && !now.Before(s.detectAt) {
		s.detectAt = time.Time{}
		if s.state == StateInit || s.state == StateUp {
			s.setState(StateDown, DiagControlDetectionExpired, now, &out)
		}
		oldTx := s.TxInterval()
		s.remoteDiscr = 0
		s.remoteState = StateDown
		s.remoteMult = 0
		s.remoteDesiredTx = 0
		s.remoteMinRx = time.Microsecond
		s.retime(now, oldTx)
	}
	if out.Changed || !s.nextTx.IsZero() && !now.Before(s.nextTx) {
		s.transmit(now, false, &out)
	}
	return out
}

// Configure changes the session's timers. While Up, a change of Desired Min TX or Required Min RX starts a Poll
// Sequence (or follows the one under way): a longer transmit interval and a reduced Required Min RX apply when
// the Final arrives, so neither side ever sees a gap it would take for a failure (§6.8.3). While not Up they
// apply at once. A new Detect Mult goes out in the next packet.
func (s *Session) Configure(t Timers, now time.Time) {
	oldTx := s.TxInterval()
	s.want = t
	if s.state == StateUp {
		if !s.polling {
			s.startPoll()
		}
	} else {
		s.advTx, s.advRx = s.notUpTx(), t.RequiredMinRx
		s.effTx, s.effRx = s.advTx, s.advRx
	}
	s.retime(now, oldTx)
}

// AdminDown takes the session to AdminDown with diagnostic diag (§6.8.16); it keeps transmitting (every packet
// saying AdminDown) until Enable, and ignores what it receives but the peer's variables.
func (s *Session) AdminDown(diag Diag, now time.Time) Output {
	var out Output
	if s.state != StateAdminDown {
		s.setState(StateAdminDown, diag, now, &out)
		s.transmit(now, false, &out)
	}
	return out
}

// Enable takes an AdminDown session to Down (§6.8.16); a session in any other state is left alone.
func (s *Session) Enable(now time.Time) Output {
	var out Output
	if s.state == StateAdminDown {
		s.setState(StateDown, s.localDiag, now, &out)
		s.transmit(now, false, &out)
	}
	return out
}

// setState moves the session to state st with local diagnostic diag and records the change in out. Leaving Up
// drops to slow transmission at once and abandons a Poll Sequence; reaching Up clears the diagnostic and polls
// the configured timers in (§6.8.3).
func (s *Session) setState(st State, diag Diag, now time.Time, out *Output) {
	old := s.state
	s.state = st
	s.localDiag = diag
	out.Changed, out.Old, out.New, out.Diag = true, old, st, diag
	oldTx := s.TxInterval()
	if st == StateUp {
		s.startPoll()
	} else {
		s.polling = false
		s.advTx, s.advRx = s.notUpTx(), s.want.RequiredMinRx
		s.effTx, s.effRx = s.advTx, s.advRx
	}
	s.retime(now, oldTx)
}

// startPoll begins a Poll Sequence advertising the configured timers, if they differ from what we advertise.
// What can only make the peer's or our Detection Time safer applies at once: a reduced Desired Min TX (we send
// faster from now on; the peer shortens its Detection Time as soon as it reads the Poll, so waiting for the
// Final would risk a false failure if the Final were lost) and an increased Required Min RX. An increased
// Desired Min TX and a reduced Required Min RX wait for the Final (§6.8.3).
func (s *Session) startPoll() {
	if s.advTx == s.want.DesiredMinTx && s.advRx == s.want.RequiredMinRx {
		return
	}
	s.polling = true
	s.advTx, s.advRx = s.want.DesiredMinTx, s.want.RequiredMinRx
	s.effTx = min(s.effTx, s.advTx)
	s.effRx = max(s.effRx, s.advRx)
}

// endPoll ends the Poll Sequence on its Final: the advertised timers take effect, and if the configuration
// changed meanwhile the next Poll Sequence starts (§6.5: one at a time).
func (s *Session) endPoll() {
	s.polling = false
	s.effTx, s.effRx = s.advTx, s.advRx
	if s.state == StateUp {
		s.startPoll()
	}
}

// retime reschedules the next periodic packet when the transmit interval changed from oldTx: the new interval
// counts from the last packet sent (or now, if that is already past).
func (s *Session) retime(now time.Time, oldTx time.Duration) {
	tx := s.TxInterval()
	if tx == oldTx && (tx == 0) == s.nextTx.IsZero() {
		return
	}
	if tx == 0 {
		s.nextTx = time.Time{}
		return
	}
	next := now
	if !s.lastTx.IsZero() {
		if t := s.lastTx.Add(s.jitter(tx)); t.After(now) {
			next = t
		}
	}
	s.nextTx = next
}

// transmit puts our packet into out (with F if final, else with P during a Poll Sequence; never both, §6.8.7)
// and schedules the next periodic one.
func (s *Session) transmit(now time.Time, final bool, out *Output) {
	out.Send = true
	out.Packet = Packet{
		Diag:          s.localDiag,
		State:         s.state,
		Poll:          s.polling && !final,
		Final:         final,
		DetectMult:    s.want.DetectMult,
		MyDiscr:       s.localDiscr,
		YourDiscr:     s.remoteDiscr,
		DesiredMinTx:  durationToUs(s.advTx),
		RequiredMinRx: durationToUs(s.advRx),
	}
	s.lastTx = now
	if tx := s.TxInterval(); tx > 0 {
		s.nextTx = now.Add(s.jitter(tx))
	} else {
		s.nextTx = time.Time{}
	}
}

// jitter returns interval reduced by a random 0–25 % (§6.8.7), or by 10–25 % when our Detect Mult is 1, so
// that the peer's Detection Time always covers one interval.
func (s *Session) jitter(interval time.Duration) time.Duration {
	// xorshift64*: small, deterministic from the seed, no allocation.
	s.rng ^= s.rng >> 12
	s.rng ^= s.rng << 25
	s.rng ^= s.rng >> 27
	r := s.rng * 2685821657736338717
	const scale = 1 << 20
	u := time.Duration(r >> 44) // uniform in [0, 2^20)
	if s.want.DetectMult == 1 {
		return interval*75/100 + interval*15/100*u/scale
	}
	return interval*75/100 + interval*25/100*u/scale
}

// SessionStatus is a snapshot of a session's protocol variables.
type SessionStatus struct {
	State, RemoteState    State
	LocalDiag, RemoteDiag Diag
	LocalDiscr            uint32
	RemoteDiscr           uint32
	RemoteDetectMult      uint8
	RemoteDemand          bool          // the peer set the D bit (we keep sending regardless)
	Polling               bool          // a Poll Sequence is under way
	TxInterval            time.Duration // negotiated, before jitter
	RxInterval            time.Duration
	DetectionTime         time.Duration
}

// Status returns the session's current variables.
func (s *Session) Status() SessionStatus {
	return SessionStatus{
		State: s.state, RemoteState: s.remoteState,
		LocalDiag: s.localDiag, RemoteDiag: s.remoteDiag,
		LocalDiscr: s.localDiscr, RemoteDiscr: s.remoteDiscr,
		RemoteDetectMult: s.remoteMult, RemoteDemand: s.remoteDemand, Polling: s.polling,
		TxInterval: s.TxInterval(), RxInterval: s.RxInterval(), DetectionTime: s.DetectionTime(),
	}
}

// State is the session's state.
func (s *Session) State() State { return s.state }

func usToDuration(us uint32) time.Duration { return time.Duration(us) * time.Microsecond }

// durationToUs converts to the wire's microseconds, rounding up and saturating (a timer never reads as faster
// than configured).
func durationToUs(d time.Duration) uint32 {
	us := (d + time.Microsecond - 1) / time.Microsecond
	if us < 0 {
		return 0
	}
	if us > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(us)
}
