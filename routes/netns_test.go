package routes

import (
	"canopy.io/canopy/internal/testsupport"
	"canopy.io/canopy/internal/testsupport/testns"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
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
	NS   *testns.NS
}

// newTestNS creates a network namespace of the test's own (internal/testsupport/testns: cnp-rt-<random>, removed when the
// test ends, pass or fail) with the test network, and checks the root namespace gained no route of ours.
func newTestNS(tb testing.TB) *testNS {
	tb.Helper()
	tns := testns.New(tb, "rt")
	name := tns.Name
	rootBefore := rootOwnRoutes(tb)
	tb.Cleanup(func() {
		if after := rootOwnRoutes(tb); after != rootBefore {
			tb.Errorf("the root namespace's protocol %d routes went from %d to %d during the test", DefaultProtocol, rootBefore, after)
		}
	})
	h := tns.Handle(tb)

	lo, err := h.LinkByName("lo")
	if err != nil {
		tb.Fatalf("lo in %s: %v", name, err)
	}
	mustNL(tb, "set lo up", h.LinkSetUp(lo))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: testLinkA}, PeerName: testLinkB}
	if err := h.LinkAdd(veth); err != nil {
		testsupport.Unavailable(tb, "cannot create a veth pair in %s: %v", name, err)
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
	return &testNS{Name: name, H: h, NS: tns}
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
