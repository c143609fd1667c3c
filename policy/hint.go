package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	cnihint "canopy.io/canopy/cni/hint"
)

// Hints from the CNI plugin: right after ADD the plugin tells the agent which address a pod got, before the
// kubelet writes it into the Pod's status (which can take a second or more). The controller programs the pod
// with that address at once and answers when the pod's rules exist: the pod's traffic, dropped while it is
// unready, flows from then on. A hint is only ever used for addresses of this node's pod CIDRs (at most one
// per family: a dual-stack pod's IPv4 and IPv6 address, each inside the node's pod CIDR of its family) of a pod
// the API already has on this node; the API's addresses win once it has any.

// hintTTL bounds how long a hint is used while the API shows no address for the pod.
const hintTTL = 2 * time.Minute

type hint struct {
	ips []netip.Addr
	at  time.Time
}

type waiter struct {
	ips []netip.Addr
	ch  chan struct{}
	at  time.Time
}

// Hint records that pod namespace/name got the addresses ips (one, or one per family) and queues a sync. The
// channel is closed once a sync has made every one of them ready (never, if that does not happen: callers time
// out); addresses outside the node's pod CIDRs are never programmed.
func (c *Controller) Hint(namespace, name string, ips ...netip.Addr) (<-chan struct{}, error) {
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return nil, fmt.Errorf("namespace %q: %v", namespace, errs)
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, fmt.Errorf("pod name %q: %v", name, errs)
	}
	if len(ips) == 0 || len(ips) > 2 {
		return nil, fmt.Errorf("%d addresses: want one, or one per family", len(ips))
	}
	for i, ip := range ips {
		if familyOf(ip) == nil || ip.Zone() != "" {
			return nil, fmt.Errorf("address %s: not an IPv4 or IPv6 pod address", ip)
		}
		if i > 0 && ip.Is4() == ips[0].Is4() {
			return nil, fmt.Errorf("addresses %s and %s: two of one family", ips[0], ip)
		}
	}
	ips = slices.Clone(ips)
	ch := make(chan struct{})
	c.hmu.Lock()
	if c.hints == nil {
		c.hints = map[string]hint{}
	}
	c.hints[namespace+"/"+name] = hint{ips: ips, at: time.Now()}
	c.waiters = append(c.waiters, waiter{ips: ips, ch: ch, at: time.Now()})
	c.hmu.Unlock()
	hintsReceived.Inc()
	c.ctrl.EnqueueFull()
	return ch, nil
}

// hinted returns the hinted addresses of a pod without one in the API that lie in the node's pod CIDRs (and
// forgets expired hints).
func (c *Controller) hinted(key string, cidrs []netip.Prefix) []netip.Addr {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	h, ok := c.hints[key]
	if !ok {
		return nil
	}
	if time.Since(h.at) > hintTTL {
		delete(c.hints, key)
		return nil
	}
	var r []netip.Addr
	for _, a := range h.ips {
		if inAny(cidrs, a) {
			r = append(r, a)
		}
	}
	return r
}

// programmed releases the waiters whose address st made ready, forgets hints the API has caught up with
// (apiKnown), and drops waiters nobody can be waiting for any more.
func (c *Controller) programmed(st *State, apiKnown map[string]bool) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	for k := range c.hints {
		if apiKnown[k] {
			delete(c.hints, k)
		}
	}
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		switch {
		case !slices.ContainsFunc(w.ips, func(a netip.Addr) bool { return !st.Ready[a] }):
			close(w.ch)
		case time.Since(w.at) < time.Minute:
			keep = append(keep, w)
		}
	}
	clear(c.waiters[len(keep):])
	c.waiters = keep
}

// ServeHints answers the CNI plugin on a unix socket at path (root only) until ctx ends. Each connection
// carries one JSON hint {"namespace","name","ip"} and gets one JSON answer {"programmed":bool,"error":...}
// after at most wait.
func (c *Controller) ServeHints(ctx context.Context, path string, wait time.Duration, log *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go c.serveHint(conn, wait, log)
		}
	}()
	return nil
}

func (c *Controller) serveHint(conn net.Conn, wait time.Duration, log *slog.Logger) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(wait + time.Second))
	reply := func(programmed bool, err error) { _ = cnihint.Write(conn, programmed, err) }
	h, err := cnihint.Read(conn)
	if err != nil {
		hintsRefused.Inc()
		reply(false, err)
		return
	}
	var ips []netip.Addr
	for _, s := range h.Addresses() {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			hintsRefused.Inc()
			reply(false, fmt.Errorf("bad hint: %w", err))
			return
		}
		ips = append(ips, ip)
	}
	ch, err := c.Hint(h.Namespace, h.Name, ips...)
	if err != nil {
		hintsRefused.Inc()
		log.Warn("refused a CNI hint", "err", err)
		reply(false, err)
		return
	}
	select {
	case <-ch:
		reply(true, nil)
	case <-time.After(wait):
		reply(false, errors.New("the agent has not programmed the pod yet (is the Pod in the API, on this node?)"))
	}
}
