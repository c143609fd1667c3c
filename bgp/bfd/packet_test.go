package bfd

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

// upPacket is a valid Up packet as FRR's bfdd sends it at 300 ms.
var upPacket = Packet{
	State: StateUp, DetectMult: 3, MyDiscr: 0x11223344, YourDiscr: 0x55667788,
	DesiredMinTx: 300000, RequiredMinRx: 300000, RequiredMinEchoRx: 50000,
}

func TestEncodeWireFormat(t *testing.T) {
	p := upPacket
	p.Diag = DiagNeighborSignaledDown
	p.Poll = true
	got := hex.EncodeToString(p.Encode(nil))
	// 001 00011 | 11 1 0 0 0 0 0 | 3 | 24 | discriminators | 300000 = 0x000493e0 | 50000 = 0x0000c350
	want := "23e00318" + "11223344" + "55667788" + "000493e0" + "000493e0" + "0000c350"
	if got != want {
		t.Fatalf("Encode = %s, want %s", got, want)
	}
	for _, tc := range []struct {
		name string
		p    Packet
		b1   byte
	}{
		{"final", Packet{Final: true}, 0x10},
		{"cpi", Packet{CPI: true}, 0x08},
		{"auth", Packet{Auth: true}, 0x04},
		{"demand", Packet{Demand: true}, 0x02},
		{"multipoint", Packet{Multipoint: true}, 0x01},
		{"init", Packet{State: StateInit}, 0x80},
		{"down", Packet{State: StateDown}, 0x40},
		{"admindown", Packet{State: StateAdminDown}, 0x00},
	} {
		if b := tc.p.Encode(nil); b[1] != tc.b1 || len(b) != PacketLen || b[3] != PacketLen || b[0] != 0x20 {
			t.Errorf("%s: Encode = %x, want second octet %#02x", tc.name, b, tc.b1)
		}
	}
}

func TestDecodeValid(t *testing.T) {
	b := upPacket.Encode(nil)
	var p Packet
	if err := Decode(b, &p); err != nil || p != upPacket {
		t.Fatalf("Decode = %+v, %v; want %+v", p, err, upPacket)
	}
	// A Length beyond 24 (within the datagram) is allowed; trailing octets are ignored.
	long := append(bytes.Clone(b), 0xde, 0xad, 0xbe, 0xef)
	long[3] = 26
	if err := Decode(long, &p); err != nil || p != upPacket {
		t.Fatalf("Decode(long) = %+v, %v", p, err)
	}
	// Your Discriminator may be zero in Down and AdminDown.
	for _, st := range []State{StateDown, StateAdminDown} {
		q := upPacket
		q.State, q.YourDiscr = st, 0
		if err := Decode(q.Encode(nil), &p); err != nil || p != q {
			t.Errorf("Decode(%s, your=0) = %+v, %v", st, p, err)
		}
	}
}

func TestDecodeMalformed(t *testing.T) {
	valid := func() []byte { return upPacket.Encode(nil) }
	for _, tc := range []struct {
		name string
		b    func() []byte
		want error
	}{
		{"empty", func() []byte { return nil }, ErrShort},
		{"23 octets", func() []byte { return valid()[:23] }, ErrShort},
		{"version 0", func() []byte { b := valid(); b[0] &= 0x1f; return b }, ErrVersion},
		{"version 2", func() []byte { b := valid(); b[0] = 2<<5 | b[0]&0x1f; return b }, ErrVersion},
		{"version 7", func() []byte { b := valid(); b[0] |= 0xe0; return b }, ErrVersion},
		{"length 0", func() []byte { b := valid(); b[3] = 0; return b }, ErrLength},
		{"length 23", func() []byte { b := valid(); b[3] = 23; return b }, ErrLength},
		{"length beyond datagram", func() []byte { b := valid(); b[3] = 25; return b }, ErrLength},
		{"length 255", func() []byte { b := valid(); b[3] = 255; return b }, ErrLength},
		{"auth bit with length 24", func() []byte { b := valid(); b[1] |= bitAuth; return b }, ErrLength},
		{"auth bit with length 26", func() []byte {
			b := append(valid(), 1, 2) // Auth Type 1 (simple password), Auth Len 2: well formed, but we use none
			b[1] |= bitAuth
			b[3] = 26
			return b
		}, ErrAuth},
		{"detect mult 0", func() []byte { b := valid(); b[2] = 0; return b }, ErrDetectMult},
		{"multipoint", func() []byte { b := valid(); b[1] |= bitMultipoint; return b }, ErrMultipoint},
		{"my discriminator 0", func() []byte { b := valid(); copy(b[4:8], []byte{0, 0, 0, 0}); return b }, ErrMyDiscr},
		{"your discriminator 0 in Up", func() []byte { b := valid(); copy(b[8:12], []byte{0, 0, 0, 0}); return b }, ErrYourDiscr},
		{"your discriminator 0 in Init", func() []byte {
			b := valid()
			copy(b[8:12], []byte{0, 0, 0, 0})
			b[1] = b[1]&0x3f | byte(StateInit)<<6
			return b
		}, ErrYourDiscr},
	} {
		var p Packet
		if err := Decode(tc.b(), &p); !errors.Is(err, tc.want) {
			t.Errorf("%s: Decode = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	good := upPacket.Encode(nil)
	bad := bytes.Clone(good)
	bad[0] = 0
	var p Packet
	if n := testing.AllocsPerRun(100, func() {
		_ = Decode(good, &p)
		_ = Decode(bad, &p)
		_ = Decode(good[:10], &p)
	}); n != 0 {
		t.Fatalf("Decode allocates %v times per run", n)
	}
	buf := make([]byte, 0, PacketLen)
	if n := testing.AllocsPerRun(100, func() { buf = upPacket.Encode(buf[:0]) }); n != 0 {
		t.Fatalf("Encode into a buffer allocates %v times per run", n)
	}
}

// FuzzDecode: Decode never panics on any input, and every packet it accepts survives Encode and Decode again
// unchanged (and encodes to the same first 24 octets, but for the Length octet).
func FuzzDecode(f *testing.F) {
	f.Add(upPacket.Encode(nil))
	down := Packet{State: StateDown, DetectMult: 3, MyDiscr: 1, DesiredMinTx: 1000000, RequiredMinRx: 300000}
	f.Add(down.Encode(nil))
	f.Add([]byte{})
	f.Add(make([]byte, 24))
	f.Add(append(upPacket.Encode(nil), 1, 2, 3))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if err := Decode(b, &p); err != nil {
			return
		}
		enc := p.Encode(nil)
		var q Packet
		if err := Decode(enc, &q); err != nil {
			t.Fatalf("re-decoding %x (from %x): %v", enc, b, err)
		}
		if q != p {
			t.Fatalf("round trip changed %+v into %+v", p, q)
		}
		if !bytes.Equal(enc[:3], b[:3]) || !bytes.Equal(enc[4:24], b[4:24]) {
			t.Fatalf("Encode(Decode(%x)) = %x", b, enc)
		}
	})
}
