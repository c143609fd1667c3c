//go:build linux

package bfd

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// cmsg builds one control message as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	if unix.SizeofPtr == 8 {
		binary.NativeEndian.PutUint64(b, uint64(unix.CmsgLen(len(data))))
		binary.NativeEndian.PutUint32(b[8:], uint32(level))
		binary.NativeEndian.PutUint32(b[12:], uint32(typ))
	} else {
		binary.NativeEndian.PutUint32(b, uint32(unix.CmsgLen(len(data))))
		binary.NativeEndian.PutUint32(b[4:], uint32(level))
		binary.NativeEndian.PutUint32(b[8:], uint32(typ))
	}
	copy(b[unix.SizeofCmsghdr:], data)
	return b
}

func ttlMsg(v6 bool, ttl int) []byte {
	d := binary.NativeEndian.AppendUint32(nil, uint32(ttl))
	if v6 {
		return cmsg(unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT, d)
	}
	return cmsg(unix.IPPROTO_IP, unix.IP_TTL, d)
}

func pktinfoMsg(dst netip.Addr) []byte {
	if dst.Is4() {
		d := make([]byte, unix.SizeofInet4Pktinfo)
		binary.NativeEndian.PutUint32(d, 7) // ifindex
		a := dst.As4()
		copy(d[4:], a[:]) // spec_dst
		copy(d[8:], a[:]) // addr
		return cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, d)
	}
	d := make([]byte, unix.SizeofInet6Pktinfo)
	a := dst.As16()
	copy(d, a[:])
	binary.NativeEndian.PutUint32(d[16:], 7)
	return cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, d)
}

func TestParseControl(t *testing.T) {
	for _, tc := range []struct {
		name    string
		oob     []byte
		ttl     int
		dst     netip.Addr
		comment string
	}{
		{"v4", append(ttlMsg(false, 255), pktinfoMsg(addrA)...), 255, addrA, ""},
		{"v4 reversed", append(pktinfoMsg(addrA), ttlMsg(false, 254)...), 254, addrA, ""},
		{"v6", append(pktinfoMsg(addrA6), ttlMsg(true, 255)...), 255, addrA6, ""},
		{"none", nil, -1, netip.Addr{}, ""},
		{"truncated", ttlMsg(false, 255)[:10], -1, netip.Addr{}, ""},
		{"bad length", func() []byte { b := ttlMsg(false, 255); b[0] = 200; return b }(), -1, netip.Addr{}, ""},
		{"other message", append(cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMP, make([]byte, 16)), ttlMsg(false, 1)...), 1, netip.Addr{}, ""},
	} {
		ttl, dst := parseControl(tc.oob)
		if ttl != tc.ttl || dst != tc.dst {
			t.Errorf("%s: ttl %d dst %v, want %d %v", tc.name, ttl, dst, tc.ttl, tc.dst)
		}
	}
}

// bareServer is a Server without sockets, for the receive path and SetPeers' validation.
func bareServer(locals ...netip.Addr) *Server {
	s := &Server{
		log: slog.New(slog.DiscardHandler), port: testPort, send: map[netip.Addr]*sender{},
		rx: make(chan rxPacket, 1), wake: make(chan struct{}, 1), closed: make(chan struct{}),
		sessions: map[key]*entry{}, byDiscr: map[uint32]*entry{},
	}
	for _, a := range locals {
		s.send[a.WithZone("")] = &sender{addr: a, zoneID: 7}
	}
	s.peers.Store(&map[netip.Addr]struct{}{addrB: {}})
	return s
}

// TestReceiveFilter: the reader's checks on hostile input, each counted under its reason, in O(1) and without
// allocating.
func TestReceiveFilter(t *testing.T) {
	s := bareServer(addrA)
	good := upPacket.Encode(nil)
	oob := append(ttlMsg(false, 255), pktinfoMsg(addrA)...)
	from := netip.AddrPortFrom(addrB, 49152)
	auth := append(upPacket.Encode(nil), 1, 2)
	auth[1] |= bitAuth
	auth[3] = 26
	bad := upPacket.Encode(nil)
	bad[0] = 0
	for _, tc := range []struct {
		name   string
		b, oob []byte
		flags  int
		src    netip.AddrPort
		reason prometheus.Counter
	}{
		{"ttl 254", good, append(ttlMsg(false, 254), pktinfoMsg(addrA)...), 0, from, dropTTL},
		{"hop limit 1", good, append(ttlMsg(true, 1), pktinfoMsg(addrA6)...), 0, netip.AddrPortFrom(addrB6, 1), dropTTL},
		{"no ttl", good, pktinfoMsg(addrA), 0, from, dropTTL},
		{"malformed", bad, oob, 0, from, dropMalformed},
		{"truncated", good, oob, unix.MSG_TRUNC, from, dropMalformed},
		{"auth", auth, oob, 0, from, dropAuth},
		{"unknown source", good, oob, 0, netip.AddrPortFrom(netip.MustParseAddr("10.99.0.77"), 49152), dropNoSession},
		{"no destination", good, ttlMsg(false, 255), 0, from, dropNoSession},
		{"queued", good, oob, 0, from, nil},
		{"queue full", good, oob, 0, from, dropOverload},
	} {
		var before float64
		if tc.reason != nil {
			before = testutil.ToFloat64(tc.reason)
		}
		s.receive(tc.b, tc.oob, tc.flags, tc.src)
		if tc.reason == nil {
			select {
			case r := <-s.rx:
				if r.src != addrB || r.dst != addrA || r.p != upPacket {
					t.Fatalf("%s: queued %+v", tc.name, r)
				}
				s.rx <- r // fill the queue for the next case
			default:
				t.Fatalf("%s: not queued", tc.name)
			}
			continue
		}
		if d := testutil.ToFloat64(tc.reason) - before; d != 1 {
			t.Errorf("%s: counted %v times under its reason", tc.name, d)
		}
	}
	<-s.rx
	ttl254 := append(ttlMsg(false, 254), pktinfoMsg(addrA)...)
	stranger := netip.AddrPortFrom(netip.MustParseAddr("10.99.0.77"), 1)
	if n := testing.AllocsPerRun(200, func() {
		s.receive(good, ttl254, 0, from)
		s.receive(bad, oob, 0, from)
		s.receive(auth, oob, 0, from)
		s.receive(good, oob, 0, stranger)
		s.receive(good, oob, 0, from) // queued, then overload
	}); n != 0 {
		t.Fatalf("the receive path allocates %v times per round", n)
	}
	// In the loop: an unknown discriminator or address pair costs a map lookup.
	r := rxPacket{p: upPacket, src: addrB, dst: addrA}
	before := testutil.ToFloat64(dropNoSession)
	if n := testing.AllocsPerRun(200, func() { s.handle(&r, t0) }); n != 0 {
		t.Fatalf("handle allocates %v times", n)
	}
	if testutil.ToFloat64(dropNoSession)-before < 200 {
		t.Fatal("unknown discriminator not counted as no_session")
	}
}

func TestSetPeersValidation(t *testing.T) {
	s := bareServer(addrA, addrA6, netip.MustParseAddr("10.99.1.1"), netip.MustParseAddr("fe80::a%eth0"))
	for _, tc := range []struct {
		name string
		p    PeerConfig
		want string
	}{
		{"no peer", PeerConfig{Local: addrA}, "unicast"},
		{"multicast peer", PeerConfig{Peer: netip.MustParseAddr("224.0.0.5"), Local: addrA}, "unicast"},
		{"unknown local", PeerConfig{Peer: addrB, Local: netip.MustParseAddr("10.1.1.1")}, "not one of"},
		{"other family", PeerConfig{Peer: addrB, Local: addrA6}, "family"},
		{"ambiguous local", PeerConfig{Peer: addrB}, "several"},
		{"ambiguous local v6", PeerConfig{Peer: addrB6}, "several"},
		{"too fast", PeerConfig{Peer: addrB, Local: addrA, DesiredMinTx: time.Millisecond}, "outside"},
		{"too slow", PeerConfig{Peer: addrB, Local: addrA, RequiredMinRx: 2 * time.Hour}, "outside"},
		{"link-local peer, global local", PeerConfig{Peer: netip.MustParseAddr("fe80::1%eth0"), Local: addrA6}, "needs a link-local"},
		{"link-local peer, other zone", PeerConfig{Peer: netip.MustParseAddr("fe80::1%eth1"), Local: netip.MustParseAddr("fe80::a")}, "not that of"},
		{"local with another zone", PeerConfig{Peer: netip.MustParseAddr("fe80::1"), Local: netip.MustParseAddr("fe80::a%eth1")}, "with zone"},
		{"zone on a global address", PeerConfig{Peer: netip.MustParseAddr("fd00::1%eth0"), Local: addrA6}, "not link-local"},
	} {
		err := s.SetPeers([]PeerConfig{tc.p})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if err := s.SetPeers([]PeerConfig{{Peer: addrB, Local: addrA}, {Peer: addrB, Local: addrA}}); err == nil {
		t.Error("a peer listed twice was accepted")
	}
	if s.dirty || len(s.wake) != 0 {
		t.Fatal("a failed SetPeers changed the desired state")
	}
	if err := s.SetPeers([]PeerConfig{{Peer: addrB6, Local: addrA6}, {Peer: netip.MustParseAddr("::ffff:10.99.0.2"), Local: addrA}}); err != nil {
		t.Fatal(err)
	}
	want := map[key]PeerConfig{
		{addrB6, addrA6}: {Peer: addrB6, Local: addrA6, DesiredMinTx: DefaultInterval, RequiredMinRx: DefaultInterval, DetectMultiplier: 3},
		{addrB, addrA}:   {Peer: addrB, Local: addrA, DesiredMinTx: DefaultInterval, RequiredMinRx: DefaultInterval, DetectMultiplier: 3},
	}
	if len(s.desired) != 2 || s.desired[key{addrB6, addrA6}] != want[key{addrB6, addrA6}] || s.desired[key{addrB, addrA}] != want[key{addrB, addrA}] {
		t.Fatalf("desired %+v", s.desired)
	}
	if !s.dirty || len(s.wake) != 1 {
		t.Fatal("loop not woken")
	}
	if err := s.SetPeers([]PeerConfig{{Peer: netip.MustParseAddr("fe80::1"), Local: netip.MustParseAddr("fe80::a")}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range s.desired {
		if p.Peer.Zone() != "eth0" || p.Local.Zone() != "eth0" {
			t.Fatalf("link-local peer %s local %s: want both in zone eth0", p.Peer, p.Local)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without local addresses")
	}
	if _, err := New(Config{LocalAddrs: []netip.Addr{netip.IPv4Unspecified()}}); err == nil || errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("New with 0.0.0.0: %v", err)
	}
}
