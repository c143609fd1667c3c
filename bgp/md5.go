package bgp

import (
	"errors"
	"net"

	"golang.org/x/sys/unix"
)

// KernelSupportsMD5 reports whether this kernel can sign TCP segments with MD5 (RFC 2385, CONFIG_TCP_MD5SIG),
// which BGP peer passwords need, on a listener made as GoBGP makes it. Without it a session with a password never
// comes up. (A Multipath TCP listener, Go's default since 1.24, refuses the option: the agent turns MPTCP off.)
func KernelSupportsMD5() (bool, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return false, err
	}
	defer l.Close()
	raw, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		return false, err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		sig := unix.TCPMD5Sig{Keylen: 1}
		sig.Addr.Family = unix.AF_INET
		copy(sig.Addr.Data[2:], []byte{127, 0, 0, 2})
		sig.Key[0] = 'x'
		serr = unix.SetsockoptTCPMD5Sig(int(fd), unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig)
	})
	if err != nil {
		return false, err
	}
	if errors.Is(serr, unix.ENOPROTOOPT) {
		return false, nil
	}
	return serr == nil, serr
}
