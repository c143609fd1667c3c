package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// State is a BFD session state, numbered as on the wire (RFC 5880 §4.1).
type State uint8

// The session states. The numbers are also the values of the canopy_bfd_session_state gauge.
const (
	StateAdminDown State = 0
	StateDown      State = 1
	StateInit      State = 2
	StateUp        State = 3
)

func (s State) String() string {
	switch s {
	case StateAdminDown:
		return "AdminDown"
	case StateDown:
		return "Down"
	case StateInit:
		return "Init"
	case StateUp:
		return "Up"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Diag is a BFD diagnostic code (RFC 5880 §4.1): why the sender's session last changed state.
type Diag uint8

// The diagnostic codes of RFC 5880 §4.1.
const (
	DiagNone                    Diag = 0
	DiagControlDetectionExpired Diag = 1
	DiagEchoFailed              Diag = 2
	DiagNeighborSignaledDown    Diag = 3
	DiagForwardingPlaneReset    Diag = 4
	DiagPathDown                Diag = 5
	DiagConcatenatedPathDown    Diag = 6
	DiagAdminDown               Diag = 7
	DiagReverseConcatenatedDown Diag = 8
	maxDiag                     Diag = 31 // the field has 5 bits
)

func (d Diag) String() string {
	switch d {
	case DiagNone:
		return "No Diagnostic"
	case DiagControlDetectionExpired:
		return "Control Detection Time Expired"
	case DiagEchoFailed:
		return "Echo Function Failed"
	case DiagNeighborSignaledDown:
		return "Neighbor Signaled Session Down"
	case DiagForwardingPlaneReset:
		return "Forwarding Plane Reset"
	case DiagPathDown:
		return "Path Down"
	case DiagConcatenatedPathDown:
		return "Concatenated Path Down"
	case DiagAdminDown:
		return "Administratively Down"
	case DiagReverseConcatenatedDown:
		return "Reverse Concatenated Path Down"
	}
	return fmt.Sprintf("Diag(%d)", uint8(d))
}

// PacketLen is the length of a BFD Control packet without an authentication section, the only kind we send.
const PacketLen = 24

const version = 1

// Flag bits of the second octet (after the 2 state bits).
const (
	bitPoll       = 1 << 5
	bitFinal      = 1 << 4
	bitCPI        = 1 << 3
	bitAuth       = 1 << 2
	bitDemand     = 1 << 1
	bitMultipoint = 1 << 0
)

// Packet is the mandatory section of a BFD Control packet (RFC 5880 §4.1). Intervals are in microseconds, as on
// the wire. Version and Length are not fields: Encode writes version 1 and length 24, Decode checks them.
type Packet struct {
	Diag       Diag
	State      State
	Poll       bool // P: the sender asks for a Final (a Poll Sequence, §6.5)
	Final      bool // F: the answer to a Poll
	CPI        bool // C: Control Plane Independent
	Auth       bool // A: an authentication section follows (we never set it and discard such packets)
	Demand     bool // D: the sender wishes to run in Demand mode (we never set it and ignore it)
	Multipoint bool // M: reserved for multipoint; must be zero

	DetectMult uint8
	MyDiscr    uint32
	YourDiscr  uint32

	DesiredMinTx      uint32 // µs
	RequiredMinRx     uint32 // µs
	RequiredMinEchoRx uint32 // µs; we always send 0 (no Echo function)
}

// Reasons Decode rejects a packet (RFC 5880 §6.8.6). They are fixed values: checking a hostile packet allocates
// nothing.
var (
	ErrShort      = errors.New("bfd: packet shorter than 24 octets")
	ErrVersion    = errors.New("bfd: version is not 1")
	ErrLength     = errors.New("bfd: Length field below the minimum or beyond the datagram")
	ErrDetectMult = errors.New("bfd: Detect Mult is zero")
	ErrMultipoint = errors.New("bfd: Multipoint bit set")
	ErrMyDiscr    = errors.New("bfd: My Discriminator is zero")
	ErrYourDiscr  = errors.New("bfd: Your Discriminator is zero in a state other than Down or AdminDown")
	ErrAuth       = errors.New("bfd: authentication present, but no session uses authentication")
)

// Decode parses and validates the BFD Control packet in b (one whole UDP payload) into p, following the checks of
// RFC 5880 §6.8.6 that need no session: version 1; Length at least 24 (26 with the A bit) and not beyond the
// datagram; Detect Mult non-zero; Multipoint clear; My Discriminator non-zero; Your Discriminator zero only in
// state Down or AdminDown; and, since no session here uses authentication, the A bit clear (ErrAuth). Octets after
// Length are ignored. It does not allocate.
func Decode(b []byte, p *Packet) error {
	if len(b) < PacketLen {
		return ErrShort
	}
	if b[0]>>5 != version {
		return ErrVersion
	}
	flags := b[1]
	length := int(b[3])
	minLen := PacketLen
	if flags&bitAuth != 0 {
		minLen = PacketLen + 2
	}
	if length < minLen || length > len(b) {
		return ErrLength
	}
	*p = Packet{
		Diag:              Diag(b[0] & 0x1f),
		State:             State(flags >> 6),
		Poll:              flags&bitPoll != 0,
		Final:             flags&bitFinal != 0,
		CPI:               flags&bitCPI != 0,
		Auth:              flags&bitAuth != 0,
		Demand:            flags&bitDemand != 0,
		Multipoint:        flags&bitMultipoint != 0,
		DetectMult:        b[2],
		MyDiscr:           binary.BigEndian.Uint32(b[4:]),
		YourDiscr:         binary.BigEndian.Uint32(b[8:]),
		DesiredMinTx:      binary.BigEndian.Uint32(b[12:]),
		RequiredMinRx:     binary.BigEndian.Uint32(b[16:]),
		RequiredMinEchoRx: binary.BigEndian.Uint32(b[20:]),
	}
	switch {
	case p.DetectMult == 0:
		return ErrDetectMult
	case p.Multipoint:
		return ErrMultipoint
	case p.MyDiscr == 0:
		return ErrMyDiscr
	case p.YourDiscr == 0 && p.State != StateDown && p.State != StateAdminDown:
		return ErrYourDiscr
	case p.Auth:
		return ErrAuth
	}
	return nil
}

// Encode appends the 24-octet wire form of p (version 1, Length 24) to b. Diag keeps its low 5 bits and State its
// low 2 bits.
func (p *Packet) Encode(b []byte) []byte {
	var flags byte = byte(p.State&3) << 6
	for _, f := range [...]struct {
		set bool
		bit byte
	}{{p.Poll, bitPoll}, {p.Final, bitFinal}, {p.CPI, bitCPI}, {p.Auth, bitAuth}, {p.Demand, bitDemand}, {p.Multipoint, bitMultipoint}} {
		if f.set {
			flags |= f.bit
		}
	}
	b = append(b, version<<5|byte(p.Diag&maxDiag), flags, p.DetectMult, PacketLen)
	b = binary.BigEndian.AppendUint32(b, p.MyDiscr)
	b = binary.BigEndian.AppendUint32(b, p.YourDiscr)
	b = binary.BigEndian.AppendUint32(b, p.DesiredMinTx)
	b = binary.BigEndian.AppendUint32(b, p.RequiredMinRx)
	return binary.BigEndian.AppendUint32(b, p.RequiredMinEchoRx)
}

func (p Packet) String() string {
	fl := ""
	for _, f := range [...]struct {
		set bool
		c   string
	}{{p.Poll, "P"}, {p.Final, "F"}, {p.CPI, "C"}, {p.Auth, "A"}, {p.Demand, "D"}, {p.Multipoint, "M"}} {
		if f.set {
			fl += f.c
		}
	}
	return fmt.Sprintf("%s diag=%d [%s] mult=%d my=%#x your=%#x tx=%dµs rx=%dµs echo=%dµs",
		p.State, p.Diag, fl, p.DetectMult, p.MyDiscr, p.YourDiscr, p.DesiredMinTx, p.RequiredMinRx, p.RequiredMinEchoRx)
}
