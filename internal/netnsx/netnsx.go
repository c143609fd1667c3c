// Package netnsx runs a function inside another network namespace without ever leaving a goroutine there by
// mistake: on a locked OS thread that goes back afterwards, or is discarded if it cannot.
package netnsx

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs f on a locked OS thread in the network namespace at path ("" = right here). Children f execs and
// sockets f opens belong to that namespace.
func Do(path string, f func() error) error {
	if path == "" {
		return f()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("back to the original namespace: %w", err)
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Here returns a function that runs f, from any goroutine, in the network namespace of the thread calling Here.
// Every thread not locked to a goroutine is in the same namespace (the node's, in the agent), and when the
// caller's is that one f runs as it is: entering a namespace needs CAP_SYS_ADMIN, which an agent with only the
// network capabilities lacks. A caller on a locked thread in another namespace (a test's) gets f run there (Do),
// not in the namespace of the process's other threads. Call the returned function once.
func Here() func(f func() error) error {
	self, err := netns.Get()
	if err != nil {
		return func(f func() error) error { return f() }
	}
	return func(f func() error) error {
		defer self.Close()
		runtime.LockOSThread() // (the calling goroutine's thread is an unlocked one: the common namespace)
		cur, err := netns.Get()
		same := err == nil && cur.Equal(self)
		if err == nil {
			cur.Close()
		}
		runtime.UnlockOSThread()
		if same {
			return f()
		}
		return Do(fmt.Sprintf("/proc/self/fd/%d", int(self)), f)
	}
}
