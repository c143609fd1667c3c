package routes

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Test network: two veth pairs' worth of next hops without any dummy interface. Both ends of one veth pair live in
// the test namespace: veth0 has 10.99.0.1/24, veth1 has 10.99.1.1/24, so any 10.99.0.x and 10.99.1.x is an on-link
// gateway.
const (
	testLinkA = "cnpveth0"
	testLinkB = "cnpveth1"
	testAddrA = "10.99.0.1/24"
	testAddrB = "10.99.1.1/24"
)

// testNS is a network namespace created by a test, with a netlink handle into it.
type testNS struct {
	Name string
	H    *netlink.Handle
}

// newTestNS creates a uniquely named network namespace (cnp-rt-<random>) with the test network, and removes it when
// the test ends, pass or fail. The calling goroutine's thread never leaves the root namespace: the namespace is
// created on a separate locked thread, which is discarded if it cannot switch back. It skips the test when not
// root or when namespaces cannot be created. Nothing here writes to the root namespace.
func newTestNS(tb testing.TB) *testNS {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: needs root to create a network namespace")
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		tb.Fatal(err)
	}
	name := "cnp-rt-" + hex.EncodeToString(rnd[:])

	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name) // switches this thread into the new namespace
		if serr := netns.Set(orig); serr != nil {
			// Stuck in another namespace: return with the thread locked, so the runtime terminates it.
			if err == nil {
				ns.Close()
				err = serr
			}
			ch <- result{err: fmt.Errorf("switch back to the original netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{ns: ns, err: err}
	}()
	res := <-ch
	if res.err != nil {
		_ = os.Remove(filepath.Join("/var/run/netns", name)) // NewNamed may leave its mount point file
		tb.Skipf("skipping: cannot create network namespace %s: %v", name, res.err)
	}
	ns := res.ns
	rootBefore := rootOwnRoutes(tb)
	tb.Cleanup(func() {
		if after := rootOwnRoutes(tb); after != rootBefore {
			tb.Errorf("the root namespace's protocol %d routes went from %d to %d during the test", DefaultProtocol, rootBefore, after)
		}
	})
	tb.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("delete netns %s: %v", name, err)
		}
	})
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		tb.Fatalf("netlink handle in %s: %v", name, err)
	}
	tb.Cleanup(h.Close)

	// Refuse to go on unless the handle really points elsewhere than the root namespace.
	root, err := netns.GetFromPid(1)
	if err == nil {
		defer root.Close()
		if root.Equal(ns) {
			tb.Fatalf("test namespace %s is the root namespace", name)
		}
	}

	lo, err := h.LinkByName("lo")
	if err != nil {
		tb.Fatalf("lo in %s: %v", name, err)
	}
	mustNL(tb, "set lo up", h.LinkSetUp(lo))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: testLinkA}, PeerName: testLinkB}
	if err := h.LinkAdd(veth); err != nil {
		tb.Skipf("skipping: cannot create a veth pair in %s: %v", name, err)
	}
	for _, l := range []struct{ name, addr string }{{testLinkA, testAddrA}, {testLinkB, testAddrB}} {
		link, err := h.LinkByName(l.name)
		if err != nil {
			tb.Fatalf("%s in %s: %v", l.name, name, err)
		}
		addr, err := netlink.ParseAddr(l.addr)
		if err != nil {
			tb.Fatal(err)
		}
		mustNL(tb, "add address "+l.addr, h.AddrAdd(link, addr))
		mustNL(tb, "set "+l.name+" up", h.LinkSetUp(link))
	}
	return &testNS{Name: name, H: h}
}

func mustNL(tb testing.TB, what string, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}

// allRoutes returns every IPv4 route in every table of the namespace, as the kernel dumps them.
func (n *testNS) allRoutes(tb testing.TB) []netlink.Route {
	tb.Helper()
	rs, err := n.H.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: syscall.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		tb.Fatalf("list routes in %s: %v", n.Name, err)
	}
	return rs
}

// find returns the routes to dst in table (0 = any) as the kernel has them.
func (n *testNS) find(tb testing.TB, dst string, table int) []netlink.Route {
	tb.Helper()
	_, ipnet, err := net.ParseCIDR(dst)
	if err != nil {
		tb.Fatal(err)
	}
	var out []netlink.Route
	for _, r := range n.allRoutes(tb) {
		d := r.Dst
		if d == nil {
			d = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		}
		if d.String() == ipnet.String() && (table == 0 || r.Table == table) {
			out = append(out, r)
		}
	}
	return out
}

// addForeign adds a route as another program would (ip route add ... proto <proto> table <table>).
func (n *testNS) addForeign(tb testing.TB, dst, gw string, proto, table int) {
	tb.Helper()
	_, ipnet, err := net.ParseCIDR(dst)
	if err != nil {
		tb.Fatal(err)
	}
	r := &netlink.Route{Dst: ipnet, Gw: net.ParseIP(gw), Protocol: netlink.RouteProtocol(proto), Table: table}
	mustNL(tb, fmt.Sprintf("add %s via %s proto %d table %d", dst, gw, proto, table), n.H.RouteAdd(r))
}

// rootOwnRoutes counts the routes with our protocol in the namespace of the calling thread, which is the root (the
// tests never move their threads). It only reads.
func rootOwnRoutes(tb testing.TB) int {
	tb.Helper()
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: syscall.RT_TABLE_UNSPEC, Protocol: DefaultProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		tb.Fatalf("list root namespace routes: %v", err)
	}
	return len(rs)
}
