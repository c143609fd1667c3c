//go:build linux

package bfd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultPort is the UDP port of single-hop BFD Control packets (RFC 5881 §4).
const DefaultPort = 3784

// RFC 5881 §4: the source port of BFD Control packets is in 49152–65535.
const (
	srcPortMin = 49152
	srcPortMax = 65535
)

// tosCS6 is the traffic class of our packets (DSCP CS6, network control), as routers and FRR send BFD.
const tosCS6 = 0xc0

// listen opens the receive socket of one address family: bound to the wildcard address and port, reporting
// each datagram's TTL / Hop Limit and destination address as control messages.
func listen(v6 bool, port int) (*net.UDPConn, error) {
	network, addr := "udp4", fmt.Sprintf("0.0.0.0:%d", port)
	if v6 {
		network, addr = "udp6", fmt.Sprintf("[::]:%d", port) // Go sets IPV6_V6ONLY for udp6
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return setsockopt(c, func(fd int) error {
			if v6 {
				return errors.Join(
					unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, 1),
					unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1))
			}
			return errors.Join(
				unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVTTL, 1),
				unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1))
		})
	}}
	pc, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// dial opens the send socket of one local address: bound to it and to a free source port in 49152–65535,
// sending with TTL / Hop Limit 255 and traffic class CS6. It never reads; its receive buffer is the smallest.
func dial(local netip.Addr) (*net.UDPConn, error) {
	v6 := local.Is6()
	network := "udp4"
	if v6 {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return setsockopt(c, func(fd int) error {
			errs := []error{unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0)}
			if v6 {
				errs = append(errs,
					unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 255),
					unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tosCS6))
			} else {
				errs = append(errs,
					unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, 255),
					unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, tosCS6))
			}
			return errors.Join(errs...)
		})
	}}
	const span = srcPortMax - srcPortMin + 1
	start := rand.IntN(span)
	var lastErr error
	for i := range span {
		port := srcPortMin + (start+i)%span
		pc, err := lc.ListenPacket(context.Background(), network, netip.AddrPortFrom(local, uint16(port)).String())
		if err == nil {
			return pc.(*net.UDPConn), nil
		}
		lastErr = err
		if !errors.Is(err, unix.EADDRINUSE) {
			break
		}
	}
	return nil, fmt.Errorf("no source port in %d-%d on %s: %w", srcPortMin, srcPortMax, local, lastErr)
}

func setsockopt(c syscall.RawConn, f func(fd int) error) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = f(int(fd)) }); err != nil {
		return err
	}
	return serr
}

// oobSize fits the control messages listen asks for (TTL or Hop Limit, and packet info) with room to spare.
var oobSize = unix.CmsgSpace(4) + unix.CmsgSpace(unix.SizeofInet6Pktinfo) + 64

// parseControl reads the TTL (IP_TTL) or Hop Limit (IPV6_HOPLIMIT) and the header's destination address
// (IP_PKTINFO / IPV6_PKTINFO) from a datagram's control messages. ttl is -1 and dst invalid when missing. It
// does not allocate.
func parseControl(b []byte) (ttl int, dst netip.Addr) {
	ttl = -1
	const hdr = unix.SizeofCmsghdr
	for len(b) >= hdr {
		var length int
		var level, typ int32
		if unix.SizeofPtr == 8 {
			length = int(binary.NativeEndian.Uint64(b))
			level, typ = int32(binary.NativeEndian.Uint32(b[8:])), int32(binary.NativeEndian.Uint32(b[12:]))
		} else {
			length = int(binary.NativeEndian.Uint32(b))
			level, typ = int32(binary.NativeEndian.Uint32(b[4:])), int32(binary.NativeEndian.Uint32(b[8:]))
		}
		if length < hdr || length > len(b) {
			break
		}
		data := b[hdr:length]
		switch {
		case level == unix.IPPROTO_IP && typ == unix.IP_TTL && len(data) >= 4,
			level == unix.IPPROTO_IPV6 && typ == unix.IPV6_HOPLIMIT && len(data) >= 4:
			ttl = int(int32(binary.NativeEndian.Uint32(data)))
		case level == unix.IPPROTO_IP && typ == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			dst = netip.AddrFrom4([4]byte(data[8:12])) // struct in_pktinfo: ifindex, spec_dst, addr
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			dst = netip.AddrFrom16([16]byte(data[:16])) // struct in6_pktinfo: addr, ifindex
		}
		next := unix.CmsgSpace(length - hdr)
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return ttl, dst
}

// sockaddr is the kernel form of a peer's address and port (zoneID: the interface of a link-local address),
// built once per session so that sending allocates nothing.
func sockaddr(ap netip.AddrPort, zoneID uint32) unix.Sockaddr {
	a := ap.Addr()
	if a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16(), ZoneId: zoneID}
}

// zoneIndex resolves an address's zone (an interface name or index) in the calling thread's namespace.
func zoneIndex(zone string) (uint32, error) {
	if zone == "" {
		return 0, nil
	}
	if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
		return uint32(n), nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, fmt.Errorf("zone %q: %w", zone, err)
	}
	return uint32(ifi.Index), nil
}
