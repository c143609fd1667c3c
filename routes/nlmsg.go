package routes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// The rtnetlink route requests of the batched write path (NetlinkTable.Batch), encoded here rather than through
// netlink.Route so that a batch reuses one buffer: no allocation per route.
//
// One request is an nlmsghdr, an rtmsg and these attributes:
//
//	RTA_DST        the destination (also for a default route: dst_len 0)
//	RTA_TABLE      the table as a u32 (rtm_table carries it too when it is below 256, else RT_TABLE_UNSPEC)
//	RTA_PRIORITY   0 (add and replace only: the metric every route of ours has; IPv6 makes it 1024)
//	RTA_GATEWAY    the next hop of a single-path route, or
//	RTA_MULTIPATH  one rtnexthop (no flags, weight 1, no device) with an RTA_GATEWAY per next hop
//
// Adds and replaces are unicast routes of universe scope with the table's protocol; no device: the kernel
// resolves it from the gateway, which must be on-link. A delete carries destination, table and protocol, scope
// "nowhere" (any scope) and no type, so the kernel deletes only a route of our protocol in our table. Every
// request asks for an acknowledgement (NLM_F_ACK), which carries its sequence number.

const (
	nlmsgHdrLen = unix.SizeofNlMsghdr  // 16
	rtmsgLen    = unix.SizeofRtMsg     // 12
	rtaHdrLen   = unix.SizeofRtAttr    // 4
	rtnhLen     = unix.SizeofRtNexthop // 8
	nlmsgErrLen = 4 + nlmsgHdrLen      // struct nlmsgerr: error, then the request's header (at least)
)

var ne = binary.NativeEndian

// appendRouteRequest appends the request for op (kind, destination, next hops) with sequence number seq to b. On
// error b is returned unchanged.
func appendRouteRequest(b []byte, kind OpKind, r *Route, seq uint32, table uint32, protocol uint8) ([]byte, error) {
	var typ, flags uint16
	switch kind {
	case OpAdd:
		typ, flags = unix.RTM_NEWROUTE, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL
	case OpReplace:
		typ, flags = unix.RTM_NEWROUTE, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE
	case OpDelete:
		typ, flags = unix.RTM_DELROUTE, unix.NLM_F_REQUEST|unix.NLM_F_ACK
	default:
		return b, fmt.Errorf("routes: unknown route operation %v", kind)
	}
	if !r.Dst.IsValid() {
		return b, fmt.Errorf("routes: invalid destination %v", r.Dst)
	}
	dst := r.Dst.Masked()
	v4 := dst.Addr().Is4()
	if kind != OpDelete {
		if len(r.NextHops) == 0 {
			return b, fmt.Errorf("routes: route %s has no next hop", dst)
		}
		for _, h := range r.NextHops {
			if v4 && h.Is4In6() {
				h = h.Unmap()
			}
			if !h.IsValid() || h.Is4() != v4 {
				return b, fmt.Errorf("routes: route %s: next hop %v is not of the destination's address family", dst, h)
			}
		}
	}

	start := len(b)
	b = ne.AppendUint32(b, 0) // nlmsg_len, set at the end
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, flags)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0) // nlmsg_pid: the kernel's

	family := uint8(unix.AF_INET6)
	if v4 {
		family = unix.AF_INET
	}
	rtTable := uint8(unix.RT_TABLE_UNSPEC)
	if table < 256 {
		rtTable = uint8(table)
	}
	scope, rtype := uint8(unix.RT_SCOPE_UNIVERSE), uint8(unix.RTN_UNICAST)
	if kind == OpDelete {
		scope, rtype = unix.RT_SCOPE_NOWHERE, unix.RTN_UNSPEC
	}
	// rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
	b = append(b, family, uint8(dst.Bits()), 0, 0, rtTable, protocol, scope, rtype)
	b = ne.AppendUint32(b, 0)

	b = appendAddrAttr(b, unix.RTA_DST, dst.Addr())
	b = appendU32Attr(b, unix.RTA_TABLE, table)
	if kind != OpDelete {
		b = appendU32Attr(b, unix.RTA_PRIORITY, 0)
		if len(r.NextHops) == 1 {
			b = appendAddrAttr(b, unix.RTA_GATEWAY, unmapFor(v4, r.NextHops[0]))
		} else {
			mp := len(b)
			b = append(b, 0, 0, 0, 0)
			ne.PutUint16(b[mp+2:], unix.RTA_MULTIPATH)
			for _, h := range r.NextHops {
				nh := len(b)
				// rtnexthop: len, flags, hops (weight - 1), ifindex (0: resolved from the gateway).
				b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
				b = appendAddrAttr(b, unix.RTA_GATEWAY, unmapFor(v4, h))
				ne.PutUint16(b[nh:], uint16(len(b)-nh))
			}
			if len(b)-mp > math.MaxUint16 {
				return b[:start], fmt.Errorf("routes: route %s has too many next hops (%d)", dst, len(r.NextHops))
			}
			ne.PutUint16(b[mp:], uint16(len(b)-mp))
		}
	}
	ne.PutUint32(b[start:], uint32(len(b)-start))
	return b, nil
}

func unmapFor(v4 bool, a netip.Addr) netip.Addr {
	if v4 {
		return a.Unmap()
	}
	return a
}

// appendAddrAttr appends an attribute holding a (4 or 16 byte, so aligned) address.
func appendAddrAttr(b []byte, typ uint16, a netip.Addr) []byte {
	if a.Is4() {
		b = ne.AppendUint16(b, rtaHdrLen+4)
		b = ne.AppendUint16(b, typ)
		v := a.As4()
		return append(b, v[:]...)
	}
	b = ne.AppendUint16(b, rtaHdrLen+16)
	b = ne.AppendUint16(b, typ)
	v := a.As16()
	return append(b, v[:]...)
}

func appendU32Attr(b []byte, typ uint16, v uint32) []byte {
	b = ne.AppendUint16(b, rtaHdrLen+4)
	b = ne.AppendUint16(b, typ)
	return ne.AppendUint32(b, v)
}

// nlAck is an acknowledgement (NLMSG_ERROR) as read from the socket.
type nlAck struct {
	seq   uint32
	errno syscall.Errno // 0: success
	msg   string        // the kernel's extended ack message (NLMSGERR_ATTR_MSG), if any
}

var errShortAck = errors.New("short netlink message")

// parseAcks calls f for every acknowledgement in one datagram b from the kernel (usually one) and skips other
// messages. withMsg: decode extended ack messages of errors (it allocates a string). truncated: b is only the
// start of the datagram (MSG_TRUNC); a message cut short still yields its sequence number and error, which come
// first, and ends the parse.
func parseAcks(b []byte, truncated, withMsg bool, f func(nlAck)) error {
	for len(b) >= nlmsgHdrLen {
		l := int(ne.Uint32(b[0:4]))
		cut := false
		switch {
		case l < nlmsgHdrLen:
			return errShortAck
		case l > len(b) && truncated:
			l, cut = len(b), true
		case l > len(b):
			return errShortAck
		}
		typ, flags, seq := ne.Uint16(b[4:6]), ne.Uint16(b[6:8]), ne.Uint32(b[8:12])
		m := b[nlmsgHdrLen:l]
		if typ == unix.NLMSG_ERROR {
			if len(m) < 4 || (!cut && len(m) < nlmsgErrLen) {
				return errShortAck
			}
			a := nlAck{seq: seq, errno: syscall.Errno(-int32(ne.Uint32(m[0:4])))}
			if a.errno != 0 && withMsg && !cut && flags&unix.NLM_F_ACK_TLVS != 0 {
				a.msg = ackMessage(m, flags)
			}
			f(a)
		}
		if cut {
			return nil
		}
		b = b[min(nlmAlign(l), len(b)):]
	}
	return nil
}

// ackMessage returns NLMSGERR_ATTR_MSG of an nlmsgerr payload m (after the echoed request: all of it, or only its
// header when the kernel capped it).
func ackMessage(m []byte, flags uint16) string {
	tlv := m[nlmsgErrLen:]
	if flags&unix.NLM_F_CAPPED == 0 {
		echoed := int(ne.Uint32(m[4:8]))
		if echoed < nlmsgHdrLen || nlmAlign(echoed) > len(m)-4 {
			return ""
		}
		tlv = m[4+nlmAlign(echoed):]
	}
	for len(tlv) >= rtaHdrLen {
		l, typ := int(ne.Uint16(tlv[0:2])), ne.Uint16(tlv[2:4])
		if l < rtaHdrLen || l > len(tlv) {
			return ""
		}
		if typ == unix.NLMSGERR_ATTR_MSG {
			return unix.ByteSliceToString(tlv[rtaHdrLen:l])
		}
		tlv = tlv[min(nlmAlign(l), len(tlv)):]
	}
	return ""
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
