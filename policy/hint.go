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
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	cnihint "canopy.io/canopy/cni/hint"
)

// Hints from the CNI plugin: right after ADD the plugin tells the agent which address a pod got, before the
// kubelet writes it into the Pod's status (which can take a second or more). The controller programs the pod
// with that address at once and answers when the pod's rules exist: the pod's traffic, dropped while it is
// unready, flows from then on. A hint only ever names an address of this node's pod CIDRs for a pod the API
// already has on this node; the API's address wins once it is there.

// hintTTL bounds how long a hint is used while the API shows no address for the pod.
const hintTTL = 2 * time.Minute

type hint struct {
	ip netip.Addr
	at time.Time
}

type waiter struct {
	ip netip.Addr
	ch chan struct{}
	at time.Time
}

// Hint records that pod namespace/name got ip and queues a sync. The channel is closed once a sync has made ip
// ready (never, if that does not happen: callers time out).
func (c *Controller) Hint(namespace, name string, ip netip.Addr) (<-chan struct{}, error) {
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return nil, fmt.Errorf("namespace %q: %v", namespace, errs)
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, fmt.Errorf("pod name %q: %v", name, errs)
	}
	if !ip.Is4() {
		return nil, fmt.Errorf("address %s: only IPv4 pods are policed", ip)
	}
	ch := make(chan struct{})
	c.hmu.Lock()
	if c.hints == nil {
		c.hints = map[string]hint{}
	}
	c.hints[namespace+"/"+name] = hint{ip: ip, at: time.Now()}
	c.waiters = append(c.waiters, waiter{ip: ip, ch: ch, at: time.Now()})
	c.hmu.Unlock()
	hintsReceived.Inc()
	c.ctrl.EnqueueFull()
	return ch, nil
}

// hinted returns the hinted address of a pod without one in the API (and forgets expired hints).
func (c *Controller) hinted(key string) (netip.Addr, bool) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	h, ok := c.hints[key]
	if !ok {
		return netip.Addr{}, false
	}
	if time.Since(h.at) > hintTTL {
		delete(c.hints, key)
		return netip.Addr{}, false
	}
	return h.ip, true
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
		case st.Ready[w.ip]:
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
	ip, err := netip.ParseAddr(h.IP)
	if err != nil {
		hintsRefused.Inc()
		reply(false, fmt.Errorf("bad hint: %w", err))
		return
	}
	ch, err := c.Hint(h.Namespace, h.Name, ip)
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
