package routes

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"canopy.io/canopy/internal/netnsx"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The batched write path of NetlinkTable: its own NETLINK_ROUTE socket, in the network namespace of the table's
// handle, many requests per write and the acknowledgements read many per recvmmsg.

const (
	batchSndBuf     = 1 << 20          // asked for (SO_SNDBUFFORCE, else SO_SNDBUF); the kernel doubles it
	batchRcvBuf     = 4 << 20          // likewise: room for the acknowledgements of a whole write
	batchMaxMsgs    = 1024             // requests per write, at most
	batchMaxBytes   = 128 << 10        // bytes per write, at most
	ackTruesize     = 2048             // receive buffer an acknowledgement may cost (skb overhead included), rounded up
	ackSlot         = 512              // bytes read of one acknowledgement (an error's extended message included)
	ackVec          = 256              // acknowledgements per recvmmsg, at most
	batchAckTimeout = 30 * time.Second // SO_RCVTIMEO: how long to wait for an acknowledgement the kernel owes
)

// batchMode is how NetlinkTable.Batch reaches the kernel.
type batchMode uint8

const (
	batchUnopened batchMode = iota
	batchSocket             // a socket of its own, kept open, in the handle's namespace
	batchPerCall            // the handle opens a socket per request in the calling thread's namespace: so do we, per batch
	batchSingle             // no batching (see nlBatch.why): one request at a time through the handle
)

// nlBatch is NetlinkTable's batched write state. Its buffers are reused from batch to batch.
type nlBatch struct {
	mode batchMode
	why  error    // batchSingle: why
	f    *os.File // batchSocket: the socket (closes it when lost)
	seq  uint32

	maxMsgs, maxBytes int

	buf   []byte  // the requests of one write
	opIdx []int32 // the op of each request in buf
	acked []bool  // by request in buf

	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrNetlink
	slots []byte // ackSlot bytes per acknowledgement
}

// mmsghdr is struct mmsghdr of recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// BatchMode says how Batch writes: nil when it batches, else why it sends one request at a time through the
// handle (still correct, only slower). It opens the batch socket if that has not happened yet.
func (t *NetlinkTable) BatchMode() error {
	t.bmu.Lock()
	defer t.bmu.Unlock()
	t.openBatch()
	if t.b.mode == batchSingle {
		return t.b.why
	}
	return nil
}

// Close closes the table's batch socket (not its handle, which belongs to the caller). A closed table's Batch
// sends one request at a time through the handle.
func (t *NetlinkTable) Close() error {
	t.bmu.Lock()
	defer t.bmu.Unlock()
	var err error
	if t.b.f != nil {
		err = t.b.f.Close()
		t.b.f = nil
	}
	t.b.mode, t.b.why = batchSingle, errors.New("routes: table closed")
	return err
}

// openBatch decides the batch mode, once. Called with t.bmu held.
func (t *NetlinkTable) openBatch() {
	b := &t.b
	if b.mode != batchUnopened {
		return
	}
	b.mode = batchSingle
	if t.err != nil {
		b.why = t.err
		return
	}
	hfd, ok, err := handleRouteSocket(t.h)
	switch {
	case err != nil:
		b.why = err
	case !ok:
		b.mode = batchPerCall
	default:
		fd, err := openBatchSocketBeside(hfd)
		if err != nil {
			b.why = err
			return
		}
		b.f = os.NewFile(uintptr(fd), "netlink-route-batch")
		b.mode = batchSocket
		b.setLimits(fd)
	}
}

// handleRouteSocket returns the descriptor of h's NETLINK_ROUTE socket. ok is false when h has none: then the
// netlink package opens a socket per request, in the network namespace of the calling thread. The handle does
// not export its sockets; they are read by reflection, checked against the field's expected type (an error if
// the netlink package changed it).
func handleRouteSocket(h *netlink.Handle) (fd int, ok bool, err error) {
	f := reflect.ValueOf(h).Elem().FieldByName("sockets")
	if !f.IsValid() || f.Type() != reflect.TypeFor[map[int]*nl.SocketHandle]() {
		return -1, false, errors.New("routes: cannot find the route socket of the netlink handle (netlink.Handle changed): no batching")
	}
	if f.IsNil() {
		return -1, false, nil
	}
	v := f.MapIndex(reflect.ValueOf(unix.NETLINK_ROUTE))
	if !v.IsValid() || v.IsNil() {
		return -1, false, nil
	}
	sh := (*nl.SocketHandle)(v.UnsafePointer())
	if sh.Socket == nil || sh.Socket.GetFd() < 0 {
		return -1, false, nil
	}
	return sh.Socket.GetFd(), true, nil
}

// openBatchSocketBeside opens a batch socket in the network namespace of the socket hfd (SIOCGSKNS), and checks
// that is where it is: a socket in another namespace (the root one, when a test's handle is in a test namespace)
// is never used.
func openBatchSocketBeside(hfd int) (int, error) {
	want, wantSt, err := socketNetns(hfd)
	if err != nil {
		return -1, fmt.Errorf("routes: network namespace of the netlink handle: %w", err)
	}
	defer unix.Close(want)

	fd := -1
	runtime.LockOSThread()
	var here unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &here) == nil && sameFile(&here, &wantSt) {
		fd, err = newBatchSocket() // the usual case: the handle is where we run
	}
	runtime.UnlockOSThread()
	if fd < 0 && err == nil {
		err = netnsx.Do(fmt.Sprintf("/proc/self/fd/%d", want), func() error {
			var err error
			fd, err = newBatchSocket()
			return err
		})
	}
	if err != nil {
		return -1, fmt.Errorf("routes: batch socket: %w", err)
	}
	got, gotSt, err := socketNetns(fd)
	if err == nil {
		unix.Close(got)
		if !sameFile(&gotSt, &wantSt) {
			err = errors.New("it is not in the handle's network namespace")
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("routes: batch socket: %w", err)
	}
	return fd, nil
}

// socketNetns returns a descriptor of the network namespace of socket fd, and its stat.
func socketNetns(fd int) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	ns, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return -1, st, fmt.Errorf("SIOCGSKNS: %w", err)
	}
	if err := unix.Fstat(ns, &st); err != nil {
		unix.Close(ns)
		return -1, st, err
	}
	return ns, st, nil
}

func sameFile(a, b *unix.Stat_t) bool { return a.Dev == b.Dev && a.Ino == b.Ino }

// newBatchSocket opens a blocking NETLINK_ROUTE socket in the calling thread's network namespace, with short
// acknowledgements (NETLINK_CAP_ACK: the request's header only), the kernel's error messages (NETLINK_EXT_ACK),
// buffers large enough for a batch and a receive timeout.
func newBatchSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	// Best effort: without them the acknowledgements are longer, errors have no message, buffers are smaller
	// (and batches with them, see setLimits).
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, batchSndBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, batchSndBuf)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, batchRcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, batchRcvBuf)
	}
	tv := unix.NsecToTimeval(batchAckTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// setLimits sizes the writes to the socket's buffers: a write must fit the send buffer (the kernel refuses a
// larger one), and the acknowledgements of all its requests must fit the receive buffer (or the kernel drops
// them).
func (b *nlBatch) setLimits(fd int) {
	b.maxMsgs, b.maxBytes = batchMaxMsgs, batchMaxBytes
	if snd, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil {
		b.maxBytes = max(4096, min(b.maxBytes, snd/2))
	}
	if rcv, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil {
		b.maxMsgs = max(16, min(b.maxMsgs, rcv/ackTruesize))
	}
}

// Batch applies ops through the table's batch socket: up to a thousand requests per write, each acknowledged and
// matched to its op by sequence number. See Batcher. Without a batch socket (see BatchMode) it makes the single
// calls (Add, Replace, Delete) one after the other. It is safe for concurrent use; batches are serialised.
func (t *NetlinkTable) Batch(ops []Op) []error {
	if len(ops) == 0 {
		return nil
	}
	t.bmu.Lock()
	defer t.bmu.Unlock()
	t.openBatch()
	b := &t.b
	res := batchErrs{n: len(ops)}
	switch b.mode {
	case batchSocket:
		fd := int(b.f.Fd())
		t.batchOn(fd, ops, &res)
		runtime.KeepAlive(b.f)
	case batchPerCall:
		fd, err := newBatchSocket()
		if err != nil {
			// No socket here: the single calls fail or succeed as they do.
			t.batchSingle(ops, &res)
			break
		}
		b.setLimits(fd)
		t.batchOn(fd, ops, &res)
		unix.Close(fd)
	default:
		t.batchSingle(ops, &res)
	}
	return res.errs
}

func (t *NetlinkTable) batchSingle(ops []Op, res *batchErrs) {
	for i := range ops {
		var err error
		switch op := &ops[i]; op.Kind {
		case OpAdd:
			err = t.Add(op.Route)
		case OpReplace:
			err = t.Replace(op.Route)
		case OpDelete:
			err = t.Delete(op.Route.Dst)
		default:
			err = fmt.Errorf("routes: unknown route operation %v", op.Kind)
		}
		if err != nil {
			res.set(i, err)
		}
	}
}

// batchOn writes ops to socket fd, as many per write as the limits allow, and reads every acknowledgement of a
// write before the next.
func (t *NetlinkTable) batchOn(fd int, ops []Op, res *batchErrs) {
	b := &t.b
	for i := 0; i < len(ops); {
		b.buf, b.opIdx = b.buf[:0], b.opIdx[:0]
		seq0 := b.seq + 1
		for ; i < len(ops) && len(b.opIdx) < b.maxMsgs; i++ {
			mark := len(b.buf)
			buf, err := appendRouteRequest(b.buf, ops[i].Kind, &ops[i].Route, seq0+uint32(len(b.opIdx)), uint32(t.table), uint8(t.protocol))
			if err != nil {
				res.set(i, err)
				continue
			}
			if len(buf) > b.maxBytes && mark > 0 {
				b.buf = buf[:mark] // next write
				break
			}
			b.buf = buf
			b.opIdx = append(b.opIdx, int32(i))
		}
		n := len(b.opIdx)
		if n == 0 {
			continue
		}
		b.seq += uint32(n)
		if err := writeAll(fd, b.buf); err != nil {
			for _, k := range b.opIdx {
				res.set(int(k), fmt.Errorf("routes: netlink write: %w", err))
			}
			continue
		}
		t.readAcks(fd, ops, seq0, res)
	}
}

func writeAll(fd int, buf []byte) error {
	for {
		n, err := unix.Write(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err == nil && n != len(buf) {
			err = fmt.Errorf("short write (%d of %d bytes)", n, len(buf))
		}
		return err
	}
}

// readAcks reads the acknowledgements of the requests in b.buf (sequence numbers seq0 on) and records each
// failure against its op. Acknowledgements of other sequence numbers (left by an earlier, failed batch) are
// skipped. An op whose acknowledgement does not come (the receive buffer overflowed, or the timeout passed) gets
// an error: its outcome is unknown, and a later List tells.
func (t *NetlinkTable) readAcks(fd int, ops []Op, seq0 uint32, res *batchErrs) {
	b := &t.b
	n := len(b.opIdx)
	b.acked = append(b.acked[:0], make([]bool, n)...)
	b.ensureRx()
	left := n
	flags := unix.MSG_WAITFORONE
	var lost error
	onAck := func(a nlAck) {
		k := a.seq - seq0
		if k >= uint32(n) || b.acked[k] {
			return
		}
		b.acked[k] = true
		left--
		if err := t.ackError(a, &ops[b.opIdx[k]]); err != nil {
			res.set(int(b.opIdx[k]), err)
		}
	}
	for left > 0 {
		got, err := b.recvmmsg(fd, min(left, ackVec), flags)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if err == unix.ENOBUFS && lost == nil {
				// The kernel dropped acknowledgements; read what it kept.
				lost, flags = err, unix.MSG_DONTWAIT
				continue
			}
			if lost == nil {
				lost = err
			}
			break
		}
		for j := range got {
			h := &b.hdrs[j]
			if b.names[j].Pid != 0 {
				continue // not from the kernel
			}
			m := b.slots[j*ackSlot : j*ackSlot+min(int(h.len), ackSlot)]
			_ = parseAcks(m, h.hdr.Flags&unix.MSG_TRUNC != 0, true, onAck)
		}
	}
	if left > 0 {
		for k, ok := range b.acked {
			if !ok {
				res.set(int(b.opIdx[k]), fmt.Errorf("routes: %s %s: no acknowledgement from the kernel, outcome unknown: %w", ops[b.opIdx[k]].Kind, ops[b.opIdx[k]].Route.Dst, lost))
			}
		}
	}
}

// ackError is the error of op as the kernel acknowledged it, with the meaning the single calls give it.
func (t *NetlinkTable) ackError(a nlAck, op *Op) error {
	if a.errno == 0 {
		return nil
	}
	var err error = a.errno
	if a.msg != "" {
		err = fmt.Errorf("%w: %s", a.errno, a.msg)
	}
	switch {
	case op.Kind == OpAdd && a.errno == syscall.EEXIST:
		return fmt.Errorf("%w (table %d already has a route to %s): %w", ErrRouteExists, t.table, op.Route.Dst, err)
	case op.Kind == OpDelete && a.errno == syscall.ESRCH:
		return nil
	}
	return err
}

func (b *nlBatch) ensureRx() {
	if len(b.hdrs) == ackVec {
		return
	}
	b.hdrs = make([]mmsghdr, ackVec)
	b.iovs = make([]unix.Iovec, ackVec)
	b.names = make([]unix.RawSockaddrNetlink, ackVec)
	b.slots = make([]byte, ackVec*ackSlot)
	for j := range b.hdrs {
		b.iovs[j].Base = &b.slots[j*ackSlot]
		b.iovs[j].SetLen(ackSlot)
		h := &b.hdrs[j].hdr
		h.Iov = &b.iovs[j]
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&b.names[j]))
	}
}

// recvmmsg reads up to vlen datagrams into the slots.
func (b *nlBatch) recvmmsg(fd, vlen, flags int) (int, error) {
	for j := range vlen {
		b.hdrs[j].hdr.Namelen = unix.SizeofSockaddrNetlink
		b.hdrs[j].hdr.Flags = 0
		b.hdrs[j].len = 0
	}
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(vlen), uintptr(flags), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
