package lab

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// NFTReader reads nftables state (also iptables-nft's: its tables are nftables tables) inside a lab namespace
// over a netfilter netlink socket, one object at a time. The nft command line (1.0.6 here) reads the whole
// ruleset for every command, even `get element`: with 10,000 Services that is a second per look, too slow and
// too heavy to poll. A netlink request for one map element or one chain's rules costs well under a millisecond.
type NFTReader struct {
	NS string

	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// Netfilter netlink constants (linux/netfilter/nfnetlink.h, nf_tables.h).
const (
	nfnlSubsysNFTables = 10
	nftMsgGetRule      = 7
	nftMsgGetSetElem   = 13

	nftaSetElemListTable    = 1
	nftaSetElemListSet      = 2
	nftaSetElemListElements = 3
	nftaListElem            = 1
	nftaSetElemKey          = 1
	nftaSetElemData         = 2
	nftaDataValue           = 1
	nftaDataVerdict         = 2
	nftaVerdictChain        = 2
	nftaRuleTable           = 1
	nftaRuleChain           = 2

	nlaFNested   = 0x8000
	nlaTypeMask  = 0x3fff
	nlmFDumpIntr = 0x10
)

// NFProtoIPv4 is the nftables family of `table ip ...` (and of iptables-nft's IPv4 tables).
const NFProtoIPv4 = unix.NFPROTO_IPV4

// OpenNFTReader opens a netfilter netlink socket inside namespace ns (the socket stays in it).
func OpenNFTReader(ns string) (*NFTReader, error) {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is unlocked only if it is back in its own namespace; otherwise Go ends it with the goroutine.
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			ch <- res{-1, err}
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{-1, fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			if fd >= 0 {
				unix.Close(fd)
			}
			ch <- res{-1, fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- res{fd, serr}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	tv := unix.NsecToTimeval(int64(10 * time.Second))
	if err := unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(r.fd)
		return nil, err
	}
	if err := unix.Bind(r.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(r.fd)
		return nil, err
	}
	return &NFTReader{NS: ns, fd: r.fd, buf: make([]byte, 1<<20)}, nil
}

// Close closes the socket.
func (r *NFTReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// ErrNotFound is returned for a table, chain, set or element that does not exist.
var ErrNotFound = errors.New("not found")

// MapVerdict looks up one element of a verdict map and returns the chain its verdict jumps or goes to ("" for
// another verdict). key is the element's key as the kernel stores it (each field of a concatenation padded to
// 4 bytes; see ConcatKey). ErrNotFound when the element (or the map, or the table) is not there.
func (r *NFTReader) MapVerdict(family byte, table, set string, key []byte) (string, error) {
	elem := nest(nftaListElem, nest(nftaSetElemKey, attr(nftaDataValue, key)))
	msgs, err := r.request(nftMsgGetSetElem, unix.NLM_F_ACK, family,
		attr(nftaSetElemListTable, cstr(table)), attr(nftaSetElemListSet, cstr(set)), nest(nftaSetElemListElements, elem))
	if err != nil {
		return "", err
	}
	for _, m := range msgs {
		elems := findAttr(m, nftaSetElemListElements)
		for _, le := range attrs(elems) {
			data := findAttr(le.data, nftaSetElemData)
			if data == nil {
				continue
			}
			chain := findAttr(findAttr(data, nftaDataVerdict), nftaVerdictChain)
			return string(bytes.TrimRight(chain, "\x00")), nil
		}
	}
	return "", ErrNotFound
}

// ConcatKey builds the key of a concatenation (e.g. ipv4_addr . inet_proto . inet_service) from its fields in
// network byte order: each is padded to a multiple of 4 bytes.
func ConcatKey(fields ...[]byte) []byte {
	var k []byte
	for _, f := range fields {
		k = append(k, f...)
		for len(k)%4 != 0 {
			k = append(k, 0)
		}
	}
	return k
}

// ChainRules returns the raw netlink attributes of each rule of one chain, in order. A chain that is not
// there has no rules.
func (r *NFTReader) ChainRules(family byte, table, chain string) ([][]byte, error) {
	return r.request(nftMsgGetRule, unix.NLM_F_DUMP, family, attr(nftaRuleTable, cstr(table)), attr(nftaRuleChain, cstr(chain)))
}

// ChainDump returns the raw netlink attributes of every rule of one chain and of the anonymous sets and maps
// its rules look up (e.g. a `numgen ... vmap { 0 : goto A, 1 : goto B }`), for searching names in (a chain
// jumped to appears as its name, NUL-terminated). Empty when the chain is not there.
func (r *NFTReader) ChainDump(family byte, table, chain string) ([]byte, error) {
	rules, err := r.ChainRules(family, table, chain)
	if err != nil {
		return nil, err
	}
	out := bytes.Join(rules, nil)
	seen := map[string]bool{}
	for _, m := range anonSetRE.FindAll(out, -1) {
		name := string(bytes.TrimRight(m, "\x00"))
		if seen[name] {
			continue
		}
		seen[name] = true
		elems, err := r.request(nftMsgGetSetElem, unix.NLM_F_DUMP, family, attr(nftaSetElemListTable, cstr(table)), attr(nftaSetElemListSet, cstr(name)))
		if err != nil {
			return nil, fmt.Errorf("anonymous set %s of chain %s: %w", name, chain, err)
		}
		out = append(out, bytes.Join(elems, nil)...)
	}
	return out, nil
}

var anonSetRE = regexp.MustCompile(`__(?:map|set)[0-9]+\x00`)

// SetKeys returns the keys of every element of a set or map. ErrNotFound when it is not there.
func (r *NFTReader) SetKeys(family byte, table, set string) ([][]byte, error) {
	msgs, err := r.request(nftMsgGetSetElem, unix.NLM_F_DUMP, family, attr(nftaSetElemListTable, cstr(table)), attr(nftaSetElemListSet, cstr(set)))
	if err != nil {
		return nil, err
	}
	var keys [][]byte
	for _, m := range msgs {
		for _, le := range attrs(findAttr(m, nftaSetElemListElements)) {
			if k := findAttr(findAttr(le.data, nftaSetElemKey), nftaDataValue); k != nil {
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// request sends one nf_tables request and returns the attributes (after the nfgenmsg header) of every answer.
// A dump that the kernel marks interrupted (the ruleset changed meanwhile) is asked again.
func (r *NFTReader) request(msg uint16, flags uint16, family byte, payload ...[]byte) ([][]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 {
		return nil, errors.New("nft reader closed")
	}
	for try := 0; ; try++ {
		out, intr, err := r.roundTrip(msg, flags, family, payload)
		if err != nil || !intr {
			return out, err
		}
		if try == 10 {
			return nil, errors.New("dump interrupted 10 times")
		}
	}
}

func (r *NFTReader) roundTrip(msg uint16, flags uint16, family byte, payload [][]byte) (out [][]byte, intr bool, err error) {
	r.seq++
	seq := r.seq
	body := []byte{family, unix.NFNETLINK_V0, 0, 0}
	for _, p := range payload {
		body = append(body, p...)
	}
	hdr := make([]byte, unix.SizeofNlMsghdr)
	binary.NativeEndian.PutUint32(hdr[0:], uint32(len(hdr)+len(body)))
	binary.NativeEndian.PutUint16(hdr[4:], nfnlSubsysNFTables<<8|msg)
	binary.NativeEndian.PutUint16(hdr[6:], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(hdr[8:], seq)
	if err := unix.Sendto(r.fd, append(hdr, body...), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false, err
	}
	dump := flags&unix.NLM_F_DUMP == unix.NLM_F_DUMP
	for {
		n, _, err := unix.Recvfrom(r.fd, r.buf, 0)
		if err != nil {
			return nil, false, err
		}
		msgs, err := syscall.ParseNetlinkMessage(r.buf[:n])
		if err != nil {
			return nil, false, err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue // the answer to an earlier request that gave up
			}
			if m.Header.Flags&nlmFDumpIntr != 0 {
				intr = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, intr, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, false, errors.New("short netlink error")
				}
				if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
					if syscall.Errno(-e) == unix.ENOENT {
						return nil, false, ErrNotFound
					}
					return nil, false, syscall.Errno(-e)
				}
				if !dump {
					return out, false, nil // the ACK
				}
			default:
				if len(m.Data) >= 4 {
					out = append(out, append([]byte(nil), m.Data[4:]...))
				}
			}
		}
	}
}

func attr(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func nest(typ uint16, children ...[]byte) []byte {
	return attr(typ|nlaFNested, bytes.Join(children, nil))
}

func cstr(s string) []byte { return append([]byte(s), 0) }

type nlattr struct {
	typ  uint16
	data []byte
}

// attrs splits b into netlink attributes.
func attrs(b []byte) []nlattr {
	var out []nlattr
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		if l < 4 || l > len(b) {
			break
		}
		out = append(out, nlattr{typ: binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask, data: b[4:l]})
		l = (l + 3) &^ 3
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return out
}

// findAttr returns the data of the first attribute of type typ in b, or nil.
func findAttr(b []byte, typ uint16) []byte {
	for _, a := range attrs(b) {
		if a.typ == typ {
			return a.data
		}
	}
	return nil
}
