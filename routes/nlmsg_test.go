package routes

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Unit tests of the batch path's message encoding and acknowledgement parsing: no kernel.

// decodedReq is one route request as netlink's own parsers (syscall.ParseNetlinkMessage, nl.DeserializeRtMsg,
// nl.ParseRouteAttr, nl.DeserializeRtNexthop) read it.
type decodedReq struct {
	Type, Flags                     uint16
	Seq, Pid                        uint32
	Family, DstLen, SrcLen, Tos     uint8
	Table, Protocol, Scope, RtnType uint8
	RtmFlags                        uint32
	Dst                             netip.Addr
	TableAttr                       uint32
	Priority                        int64 // -1: absent
	Gateway                         netip.Addr
	MultiPath                       []netip.Addr // RTA_MULTIPATH gateways, in order
	NexthopFields                   []uint32     // per rtnexthop: flags<<16 | hops<<8, then ifindex
	Other                           []uint16     // attributes not expected
}

func decodeRequests(t *testing.T, b []byte) []decodedReq {
	t.Helper()
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		t.Fatalf("ParseNetlinkMessage: %v", err)
	}
	var out []decodedReq
	for _, m := range msgs {
		d := decodedReq{Type: m.Header.Type, Flags: m.Header.Flags, Seq: m.Header.Seq, Pid: m.Header.Pid, Priority: -1}
		rt := nl.DeserializeRtMsg(m.Data)
		d.Family, d.DstLen, d.SrcLen, d.Tos = rt.Family, rt.Dst_len, rt.Src_len, rt.Tos
		d.Table, d.Protocol, d.Scope, d.RtnType, d.RtmFlags = rt.Table, rt.Protocol, rt.Scope, rt.Type, rt.Flags
		attrs, err := nl.ParseRouteAttr(m.Data[rt.Len():])
		if err != nil {
			t.Fatalf("ParseRouteAttr: %v", err)
		}
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.RTA_DST:
				d.Dst, _ = netip.AddrFromSlice(a.Value)
			case unix.RTA_TABLE:
				d.TableAttr = ne.Uint32(a.Value)
			case unix.RTA_PRIORITY:
				d.Priority = int64(ne.Uint32(a.Value))
			case unix.RTA_GATEWAY:
				d.Gateway, _ = netip.AddrFromSlice(a.Value)
			case unix.RTA_MULTIPATH:
				buf := a.Value
				for len(buf) > 0 {
					nh := nl.DeserializeRtNexthop(buf)
					if int(nh.RtNexthop.Len) < rtnhLen || int(nh.RtNexthop.Len) > len(buf) {
						t.Fatalf("bad rtnexthop length %d of %d", nh.RtNexthop.Len, len(buf))
					}
					d.NexthopFields = append(d.NexthopFields, uint32(nh.Flags)<<16|uint32(nh.Hops)<<8, uint32(nh.Ifindex))
					sub, err := nl.ParseRouteAttr(buf[rtnhLen:nh.RtNexthop.Len])
					if err != nil {
						t.Fatal(err)
					}
					for _, s := range sub {
						if s.Attr.Type != unix.RTA_GATEWAY {
							t.Fatalf("next hop attribute %d", s.Attr.Type)
						}
						gw, _ := netip.AddrFromSlice(s.Value)
						d.MultiPath = append(d.MultiPath, gw)
					}
					buf = buf[rtaAlignOf(int(nh.RtNexthop.Len)):]
				}
			default:
				d.Other = append(d.Other, a.Attr.Type)
			}
		}
		out = append(out, d)
	}
	return out
}

func rtaAlignOf(n int) int { return (n + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1) }

// referenceRequest builds the same request with netlink's own serialisers (nl.NetlinkRequest, nl.RtMsg,
// nl.RtAttr, nl.RtNexthop), attribute by attribute as routeHandle does, plus RTA_TABLE and RTA_PRIORITY.
func referenceRequest(kind OpKind, dst netip.Prefix, hops []netip.Addr, seq, table uint32, proto uint8) []byte {
	var req *nl.NetlinkRequest
	var msg *nl.RtMsg
	switch kind {
	case OpAdd:
		req, msg = nl.NewNetlinkRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK), nl.NewRtMsg()
	case OpReplace:
		req, msg = nl.NewNetlinkRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK), nl.NewRtMsg()
	case OpDelete:
		req, msg = nl.NewNetlinkRequest(unix.RTM_DELROUTE, unix.NLM_F_ACK), nl.NewRtDelMsg()
	}
	req.Seq = seq
	dst = dst.Masked()
	msg.Family = unix.AF_INET6
	if dst.Addr().Is4() {
		msg.Family = unix.AF_INET
	}
	msg.Dst_len = uint8(dst.Bits())
	msg.Protocol = proto
	msg.Table = unix.RT_TABLE_UNSPEC
	if table < 256 {
		msg.Table = uint8(table)
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
	req.AddData(nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(table)))
	if kind != OpDelete {
		req.AddData(nl.NewRtAttr(unix.RTA_PRIORITY, nl.Uint32Attr(0)))
		if len(hops) == 1 {
			req.AddData(nl.NewRtAttr(unix.RTA_GATEWAY, hops[0].AsSlice()))
		} else {
			var buf []byte
			for _, h := range hops {
				rtnh := &nl.RtNexthop{Children: []nl.NetlinkRequestData{nl.NewRtAttr(unix.RTA_GATEWAY, h.AsSlice())}}
				buf = append(buf, rtnh.Serialize()...)
			}
			req.AddData(nl.NewRtAttr(unix.RTA_MULTIPATH, buf))
		}
	}
	return req.Serialize()
}

func TestEncodeRouteRequest(t *testing.T) {
	const ack = unix.NLM_F_REQUEST | unix.NLM_F_ACK
	for _, tc := range []struct {
		name   string
		kind   OpKind
		dst    string
		hops   []netip.Addr
		table  uint32
		proto  uint8
		want   decodedReq
		sorted []netip.Addr // hops as the reference encodes them, when they differ from hops
	}{
		{
			name: "add v4 single", kind: OpAdd, dst: "10.1.2.0/24", hops: addrs("10.99.0.2"), table: 254, proto: 186,
			want: decodedReq{Type: unix.RTM_NEWROUTE, Flags: ack | unix.NLM_F_CREATE | unix.NLM_F_EXCL, Family: unix.AF_INET, DstLen: 24,
				Table: 254, Protocol: 186, Scope: unix.RT_SCOPE_UNIVERSE, RtnType: unix.RTN_UNICAST,
				Dst: netip.MustParseAddr("10.1.2.0"), TableAttr: 254, Priority: 0, Gateway: netip.MustParseAddr("10.99.0.2")},
		},
		{
			name: "replace v4 ecmp, host bits masked", kind: OpReplace, dst: "10.1.2.77/24", hops: addrs("10.99.0.2", "10.99.1.2", "10.99.1.3"), table: 254, proto: 186,
			want: decodedReq{Type: unix.RTM_NEWROUTE, Flags: ack | unix.NLM_F_CREATE | unix.NLM_F_REPLACE, Family: unix.AF_INET, DstLen: 24,
				Table: 254, Protocol: 186, Scope: unix.RT_SCOPE_UNIVERSE, RtnType: unix.RTN_UNICAST,
				Dst: netip.MustParseAddr("10.1.2.0"), TableAttr: 254, Priority: 0,
				MultiPath: addrs("10.99.0.2", "10.99.1.2", "10.99.1.3"), NexthopFields: []uint32{0, 0, 0, 0, 0, 0}},
		},
		{
			name: "delete v4", kind: OpDelete, dst: "10.1.2.0/24", hops: addrs("10.99.0.2"), table: 254, proto: 186,
			want: decodedReq{Type: unix.RTM_DELROUTE, Flags: ack, Family: unix.AF_INET, DstLen: 24,
				Table: 254, Protocol: 186, Scope: unix.RT_SCOPE_NOWHERE, RtnType: unix.RTN_UNSPEC,
				Dst: netip.MustParseAddr("10.1.2.0"), TableAttr: 254, Priority: -1},
			sorted: []netip.Addr{},
		},
		{
			name: "default route, 4-in-6 next hop", kind: OpAdd, dst: "0.0.0.0/0", hops: addrs("::ffff:10.99.0.2"), table: 254, proto: 186,
			want: decodedReq{Type: unix.RTM_NEWROUTE, Flags: ack | unix.NLM_F_CREATE | unix.NLM_F_EXCL, Family: unix.AF_INET, DstLen: 0,
				Table: 254, Protocol: 186, Scope: unix.RT_SCOPE_UNIVERSE, RtnType: unix.RTN_UNICAST,
				Dst: netip.MustParseAddr("0.0.0.0"), TableAttr: 254, Priority: 0, Gateway: netip.MustParseAddr("10.99.0.2")},
			sorted: addrs("10.99.0.2"),
		},
		{
			name: "add v6 ecmp, table above 255", kind: OpAdd, dst: "2001:db8:50::/64", hops: addrs("2001:db8:98::2", "2001:db8:99::2"), table: 1000, proto: 200,
			want: decodedReq{Type: unix.RTM_NEWROUTE, Flags: ack | unix.NLM_F_CREATE | unix.NLM_F_EXCL, Family: unix.AF_INET6, DstLen: 64,
				Table: unix.RT_TABLE_UNSPEC, Protocol: 200, Scope: unix.RT_SCOPE_UNIVERSE, RtnType: unix.RTN_UNICAST,
				Dst: netip.MustParseAddr("2001:db8:50::"), TableAttr: 1000, Priority: 0,
				MultiPath: addrs("2001:db8:98::2", "2001:db8:99::2"), NexthopFields: []uint32{0, 0, 0, 0}},
		},
		{
			name: "delete v6 in table 100", kind: OpDelete, dst: "2001:db8:50::/64", table: 100, proto: 186,
			want: decodedReq{Type: unix.RTM_DELROUTE, Flags: ack, Family: unix.AF_INET6, DstLen: 64,
				Table: 100, Protocol: 186, Scope: unix.RT_SCOPE_NOWHERE, RtnType: unix.RTN_UNSPEC,
				Dst: netip.MustParseAddr("2001:db8:50::"), TableAttr: 100, Priority: -1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Route{Dst: pfx(tc.dst), NextHops: tc.hops}
			prefix := []byte("keep")
			b, err := appendRouteRequest(prefix, tc.kind, &r, 4242, tc.table, tc.proto)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b[:4], prefix) {
				t.Fatal("appendRouteRequest changed the bytes before it")
			}
			b = b[4:]
			got := decodeRequests(t, b)
			if len(got) != 1 {
				t.Fatalf("%d messages", len(got))
			}
			want := tc.want
			want.Seq = 4242
			if !equalDecoded(got[0], want) {
				t.Fatalf("decoded\n got  %+v\n want %+v", got[0], want)
			}
			hops := tc.hops
			if tc.sorted != nil {
				hops = tc.sorted
			}
			if ref := referenceRequest(tc.kind, pfx(tc.dst), hops, 4242, tc.table, tc.proto); !bytes.Equal(b, ref) {
				t.Fatalf("bytes differ from netlink's serialisers:\n got  %x\n want %x", b, ref)
			}
		})
	}
}

func equalDecoded(a, b decodedReq) bool {
	return a.Type == b.Type && a.Flags == b.Flags && a.Seq == b.Seq && a.Pid == b.Pid && a.Family == b.Family &&
		a.DstLen == b.DstLen && a.SrcLen == b.SrcLen && a.Tos == b.Tos && a.Table == b.Table && a.Protocol == b.Protocol &&
		a.Scope == b.Scope && a.RtnType == b.RtnType && a.RtmFlags == b.RtmFlags && a.Dst == b.Dst &&
		a.TableAttr == b.TableAttr && a.Priority == b.Priority && a.Gateway == b.Gateway &&
		slices.Equal(a.MultiPath, b.MultiPath) && slices.Equal(a.NexthopFields, b.NexthopFields) && len(a.Other) == 0 && len(b.Other) == 0
}

func TestEncodeManyRequestsInOneBuffer(t *testing.T) {
	var b []byte
	ops := []Op{
		{Kind: OpAdd, Route: Route{Dst: pfx("10.1.0.0/24"), NextHops: addrs("10.99.0.2")}},
		{Kind: OpReplace, Route: Route{Dst: pfx("10.2.0.0/24"), NextHops: addrs("10.99.0.2", "10.99.1.2")}},
		{Kind: OpDelete, Route: Route{Dst: pfx("10.3.0.0/24")}},
		{Kind: OpAdd, Route: Route{Dst: pfx("2001:db8::/64"), NextHops: addrs("2001:db8:99::2")}},
	}
	for i := range ops {
		var err error
		if b, err = appendRouteRequest(b, ops[i].Kind, &ops[i].Route, uint32(100+i), 254, 186); err != nil {
			t.Fatal(err)
		}
	}
	got := decodeRequests(t, b)
	if len(got) != len(ops) {
		t.Fatalf("%d messages, want %d", len(got), len(ops))
	}
	for i, d := range got {
		if d.Seq != uint32(100+i) || d.Dst != ops[i].Route.Dst.Addr() {
			t.Fatalf("message %d: seq %d dst %v", i, d.Seq, d.Dst)
		}
	}
}

func TestEncodeRefusesBadRequests(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind OpKind
		r    Route
	}{
		{"invalid destination", OpAdd, Route{NextHops: addrs("10.99.0.2")}},
		{"no next hop", OpReplace, Route{Dst: pfx("10.1.0.0/24")}},
		{"next hop of another family", OpAdd, Route{Dst: pfx("10.1.0.0/24"), NextHops: addrs("10.99.0.2", "2001:db8::1")}},
		{"v4 next hop for v6", OpAdd, Route{Dst: pfx("2001:db8::/64"), NextHops: addrs("10.99.0.2")}},
		{"invalid next hop", OpAdd, Route{Dst: pfx("10.1.0.0/24"), NextHops: []netip.Addr{{}}}},
		{"unknown kind", OpKind(9), Route{Dst: pfx("10.1.0.0/24"), NextHops: addrs("10.99.0.2")}},
		{"invalid delete", OpDelete, Route{}},
	} {
		b, err := appendRouteRequest([]byte("x"), tc.kind, &tc.r, 1, 254, 186)
		if err == nil || string(b) != "x" {
			t.Errorf("%s: err %v, buffer %q", tc.name, err, b)
		}
	}
}

func TestEncodeAllocatesNothing(t *testing.T) {
	ecmp := Route{Dst: pfx("10.1.0.0/24"), NextHops: addrs("10.99.0.2", "10.99.1.2")}
	single := Route{Dst: pfx("2001:db8::/64"), NextHops: addrs("2001:db8:99::2")}
	b := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		b = b[:0]
		b, _ = appendRouteRequest(b, OpAdd, &ecmp, 1, 254, 186)
		b, _ = appendRouteRequest(b, OpReplace, &single, 2, 1000, 186)
		b, _ = appendRouteRequest(b, OpDelete, &ecmp, 3, 254, 186)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run", allocs)
	}
}

// ackMsg builds an NLMSG_ERROR as the kernel sends it for request req (whose header it echoes, capped or whole).
func ackMsg(req []byte, errno syscall.Errno, capped bool, extMsg string) []byte {
	var payload []byte
	payload = ne.AppendUint32(payload, uint32(-int32(errno)))
	flags := uint16(0)
	if capped || errno == 0 {
		payload = append(payload, req[:nlmsgHdrLen]...)
		if errno != 0 {
			flags |= unix.NLM_F_CAPPED
		}
	} else {
		payload = append(payload, req...)
		for len(payload)%4 != 0 {
			payload = append(payload, 0)
		}
	}
	if extMsg != "" {
		flags |= unix.NLM_F_ACK_TLVS
		v := append([]byte(extMsg), 0)
		payload = ne.AppendUint16(payload, uint16(rtaHdrLen+len(v)))
		payload = ne.AppendUint16(payload, unix.NLMSGERR_ATTR_MSG)
		payload = append(payload, v...)
		for len(payload)%4 != 0 {
			payload = append(payload, 0)
		}
	}
	var b []byte
	b = ne.AppendUint32(b, uint32(nlmsgHdrLen+len(payload)))
	b = ne.AppendUint16(b, unix.NLMSG_ERROR)
	b = ne.AppendUint16(b, flags)
	b = ne.AppendUint32(b, ne.Uint32(req[8:12])) // the request's sequence number
	b = ne.AppendUint32(b, 1234)                 // our port id
	return append(b, payload...)
}

func TestParseAcks(t *testing.T) {
	r := Route{Dst: pfx("10.1.0.0/24"), NextHops: addrs("10.99.0.2", "10.99.1.2")}
	req := func(seq uint32) []byte {
		b, err := appendRouteRequest(nil, OpAdd, &r, seq, 254, 186)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var dgram []byte
	dgram = append(dgram, ackMsg(req(7), 0, true, "")...)
	dgram = append(dgram, ackMsg(req(8), syscall.ENETUNREACH, true, "Nexthop has invalid gateway")...)
	dgram = append(dgram, ackMsg(req(9), syscall.EEXIST, false, "")...)
	dgram = append(dgram, ackMsg(req(10), syscall.EINVAL, false, "uncapped message")...)
	done := []byte{16, 0, 0, 0, unix.NLMSG_DONE, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0}
	dgram = append(dgram, done...) // not an ack: skipped

	var got []nlAck
	if err := parseAcks(dgram, false, true, func(a nlAck) { got = append(got, a) }); err != nil {
		t.Fatal(err)
	}
	want := []nlAck{{7, 0, ""}, {8, syscall.ENETUNREACH, "Nexthop has invalid gateway"}, {9, syscall.EEXIST, ""}, {10, syscall.EINVAL, "uncapped message"}}
	if !slices.Equal(got, want) {
		t.Fatalf("acks\n got  %+v\n want %+v", got, want)
	}
	got = nil
	_ = parseAcks(dgram, false, false, func(a nlAck) { got = append(got, a) })
	if got[1].msg != "" || got[1].errno != syscall.ENETUNREACH {
		t.Fatalf("without messages: %+v", got[1])
	}

	// Truncated input: an error, never a panic, and what came before is reported.
	for cut := 1; cut < len(dgram); cut++ {
		_ = parseAcks(dgram[:cut], false, true, func(nlAck) {})
		_ = parseAcks(dgram[:cut], true, true, func(nlAck) {})
	}
	one := ackMsg(req(7), 0, true, "")
	got = nil
	if err := parseAcks(append(slices.Clone(one), one[:20]...), false, true, func(a nlAck) { got = append(got, a) }); !errors.Is(err, errShortAck) || len(got) != 1 {
		t.Fatalf("truncated second message: err %v, %d acks", err, len(got))
	}

	// A long uncapped error (the whole request echoed) read into a short slot (MSG_TRUNC): sequence number and
	// error still count.
	big := Route{Dst: pfx("2001:db8::/64")}
	for i := range 40 {
		big.NextHops = append(big.NextHops, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}))
	}
	bigReq, err := appendRouteRequest(nil, OpAdd, &big, 77, 254, 186)
	if err != nil {
		t.Fatal(err)
	}
	long := ackMsg(bigReq, syscall.ENETUNREACH, false, "Nexthop has invalid gateway")
	if len(long) <= ackSlot {
		t.Fatalf("ack of %d bytes fits a slot", len(long))
	}
	got = nil
	if err := parseAcks(long[:ackSlot], true, true, func(a nlAck) { got = append(got, a) }); err != nil || len(got) != 1 || got[0] != (nlAck{seq: 77, errno: syscall.ENETUNREACH}) {
		t.Fatalf("truncated long ack: err %v, acks %+v", err, got)
	}
	if err := parseAcks(long[:ackSlot], false, true, func(nlAck) {}); !errors.Is(err, errShortAck) {
		t.Fatalf("cut without MSG_TRUNC: err %v", err)
	}
}
