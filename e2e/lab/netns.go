package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
)

// run runs a short command (in the root namespace: only `ip` itself, which then acts on a named namespace, and
// vtysh, which talks to FRR over unix sockets) and returns its combined output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
		if o := strings.TrimSpace(out.String()); o != "" {
			err = fmt.Errorf("%w: %s", err, o)
		}
	}
	return out.String(), err
}

// execIn runs cmd inside namespace ns.
func execIn(ctx context.Context, ns string, cmd ...string) (string, error) {
	if len(cmd) == 0 {
		return "", errors.New("exec: no command")
	}
	return run(ctx, "ip", append([]string{"netns", "exec", ns}, cmd...)...)
}

// ipn runs `ip -n ns args...`: iproute2 enters the namespace itself, so nothing touches the root namespace.
func ipn(ctx context.Context, ns string, args ...string) error {
	_, err := run(ctx, "ip", append([]string{"-n", ns}, args...)...)
	return err
}

// ipBatch runs several `ip` commands in one process inside ns (faster than one exec each).
func ipBatch(ctx context.Context, ns string, lines ...string) error {
	cmd := exec.CommandContext(ctx, "ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s\n  commands:\n    %s", ns, err, strings.TrimSpace(string(out)), strings.Join(lines, "\n    "))
	}
	return nil
}

func addNetns(ctx context.Context, name string) error {
	_, err := run(ctx, "ip", "netns", "add", name)
	return err
}

// delNetns removes the namespace's bind mount; the kernel frees the namespace (and its veths, whose peers in
// other namespaces vanish with them) once no process or socket holds it.
func delNetns(name string) error {
	if _, err := os.Stat(netnsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, err := run(context.Background(), "ip", "netns", "del", name)
	return err
}

func netnsPath(name string) string { return "/run/netns/" + name }

// listNetns returns the names in /run/netns.
func listNetns() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// netnsPIDs lists the processes whose network namespace is ns (what `ip netns pids` prints).
func netnsPIDs(ns string) ([]int, error) {
	if _, err := os.Stat(netnsPath(ns)); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	out, err := run(context.Background(), "ip", "netns", "pids", ns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// sysctlIn sets a (per-namespace) net sysctl from inside ns.
func sysctlIn(ctx context.Context, ns string, kv ...string) error {
	_, err := execIn(ctx, ns, append([]string{"sysctl", "-q", "-w"}, kv...)...)
	return err
}

// nsDialer makes sockets inside network namespaces for the test process, which itself stays in the root
// namespace (that gets no address or route). It keeps a handle per namespace and tracks the connections, so
// Down can close them: an open socket would keep a deleted namespace alive.
type nsDialer struct {
	mu      sync.Mutex
	handles map[string]netns.NsHandle
	conns   map[*trackedConn]struct{}
	closed  bool
}

func newNSDialer() *nsDialer {
	return &nsDialer{handles: map[string]netns.NsHandle{}, conns: map[*trackedConn]struct{}{}}
}

func (d *nsDialer) handle(ns string) (netns.NsHandle, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, errors.New("lab is down")
	}
	if h, ok := d.handles[ns]; ok {
		return h, nil
	}
	h, err := netns.GetFromPath(netnsPath(ns))
	if err != nil {
		return 0, fmt.Errorf("open netns %s: %w", ns, err)
	}
	d.handles[ns] = h
	return h, nil
}

// forget closes the handle of a namespace about to be deleted.
func (d *nsDialer) forget(ns string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h, ok := d.handles[ns]; ok {
		h.Close()
		delete(d.handles, ns)
	}
	for c := range d.conns {
		if c.ns == ns {
			c.Conn.Close()
			delete(d.conns, c)
		}
	}
}

// Dial creates the socket inside ns: on a locked OS thread it enters ns, dials, and returns to the original
// namespace. If returning fails the thread stays locked and Go ends it with the goroutine, so no goroutine ever
// runs in a lab namespace by accident.
func (d *nsDialer) Dial(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	h, err := d.handle(ns)
	if err != nil {
		return nil, err
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("enter netns %s: %w", ns, err)}
			return
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if rerr := netns.Set(orig); rerr != nil {
			ch <- result{c, err} // thread stays locked and dies with this goroutine
			return
		}
		runtime.UnlockOSThread()
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	tc := &trackedConn{Conn: r.c, ns: ns, d: d}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		r.c.Close()
		return nil, errors.New("lab is down")
	}
	d.conns[tc] = struct{}{}
	d.mu.Unlock()
	return tc, nil
}

// Close closes every connection and namespace handle; later dials fail.
func (d *nsDialer) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for c := range d.conns {
		c.Conn.Close()
	}
	d.conns = map[*trackedConn]struct{}{}
	for ns, h := range d.handles {
		h.Close()
		delete(d.handles, ns)
	}
}

type trackedConn struct {
	net.Conn
	ns   string
	d    *nsDialer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		delete(c.d.conns, c)
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}
