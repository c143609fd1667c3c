package routes

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
)

// listRetries is how often List retries a route dump that the kernel flagged as interrupted (routes changed
// while it was being dumped) before giving up; an interrupted dump may miss routes.
const listRetries = 5

// NetlinkTable implements Table with a netlink handle (so tests can point it into a network namespace).
//
// It writes routes as unicast, universe scope, metric 0, marked with its protocol, in its table. Next hops carry
// no output device: the kernel resolves it from the gateway, which must be reachable on-link. It is safe for
// concurrent use (the handle serialises requests on its socket).
//
// Batch (see Batcher) writes through a NETLINK_ROUTE socket of the table's own, opened on first use in the
// network namespace of h's route socket (with a nil h, or a handle without sockets: a socket per batch in the
// calling thread's namespace, as the netlink package does per request). Close closes it.
type NetlinkTable struct {
	h        *netlink.Handle
	protocol netlink.RouteProtocol
	table    int
	err      error // set when the configuration is unusable; every method returns it

	bmu sync.Mutex // serialises batches
	b   nlBatch
}

// NewNetlinkTable returns a Table over the routes with the given protocol number in the given table, through h.
// Table 0 or 254 is main. protocol must be in 1..255: protocol 0 would match every route on delete, so a
// NetlinkTable with it refuses all calls. A nil h means the current network namespace with one socket per call.
func NewNetlinkTable(h *netlink.Handle, protocol int, table int) *NetlinkTable {
	t := &NetlinkTable{h: h, protocol: netlink.RouteProtocol(protocol), table: table}
	if t.h == nil {
		t.h = &netlink.Handle{}
	}
	if t.table == 0 {
		t.table = syscall.RT_TABLE_MAIN
	}
	switch {
	case protocol < 1 || protocol > 255:
		t.err = fmt.Errorf("routes: route protocol %d is not in 1..255", protocol)
	case table < 0 || uint64(table) > math.MaxUint32:
		t.err = fmt.Errorf("routes: route table %d is out of range", table)
	}
	return t
}

// Replace adds the route or replaces the route to r.Dst with the same metric (RTM_NEWROUTE, NLM_F_CREATE|NLM_F_REPLACE).
// The kernel replaces whatever route is there, whatever its protocol: use it for routes known to be ours.
func (t *NetlinkTable) Replace(r Route) error {
	nr, err := t.toNetlink(r)
	if err != nil {
		return err
	}
	return t.h.RouteReplace(nr)
}

// Add creates the route (RTM_NEWROUTE, NLM_F_CREATE|NLM_F_EXCL). It fails with an error matching ErrRouteExists
// (and syscall.EEXIST) if the table already has a route to r.Dst with the same metric, of any protocol.
func (t *NetlinkTable) Add(r Route) error {
	nr, err := t.toNetlink(r)
	if err != nil {
		return err
	}
	err = t.h.RouteAdd(nr)
	if errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("%w (table %d already has a route to %s): %w", ErrRouteExists, t.table, r.Dst, err)
	}
	return err
}

// Delete deletes our route to dst. The kernel matches protocol and table, so a route of another protocol to the
// same destination is left alone (and is "missing" as far as we are concerned).
func (t *NetlinkTable) Delete(dst netip.Prefix) error {
	if t.err != nil {
		return t.err
	}
	if !dst.IsValid() {
		return fmt.Errorf("routes: invalid destination %v", dst)
	}
	nr := &netlink.Route{
		Dst:      prefixToIPNet(dst.Masked()),
		Protocol: t.protocol,
		Table:    t.table,
		Scope:    netlink.SCOPE_NOWHERE, // any scope: the kernel only matches scope on delete if it is not "nowhere"
	}
	err := t.h.RouteDel(nr)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// List returns our routes (our protocol, our table), IPv4 and IPv6, next hops sorted. A route of ours without a
// gateway (a device route) is returned with no next hops, so a Manager sees it differs from anything it wants.
func (t *NetlinkTable) List() ([]Route, error) {
	if t.err != nil {
		return nil, t.err
	}
	filter := &netlink.Route{Table: t.table, Protocol: t.protocol}
	mask := netlink.RT_FILTER_TABLE | netlink.RT_FILTER_PROTOCOL
	var out []Route
	for attempt := 0; ; attempt++ {
		out = out[:0]
		err := t.h.RouteListFilteredIter(netlink.FAMILY_ALL, filter, mask, func(nr netlink.Route) bool {
			if r, ok := fromNetlink(&nr); ok {
				out = append(out, r)
			}
			return true
		})
		if errors.Is(err, netlink.ErrDumpInterrupted) && attempt < listRetries {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("routes: list table %d protocol %d: %w", t.table, t.protocol, err)
		}
		return out, nil
	}
}

func (t *NetlinkTable) toNetlink(r Route) (*netlink.Route, error) {
	if t.err != nil {
		return nil, t.err
	}
	if !r.Dst.IsValid() {
		return nil, fmt.Errorf("routes: invalid destination %v", r.Dst)
	}
	nr := &netlink.Route{
		Dst:      prefixToIPNet(r.Dst.Masked()),
		Protocol: t.protocol,
		Table:    t.table,
		Type:     syscall.RTN_UNICAST,
		Scope:    netlink.SCOPE_UNIVERSE,
	}
	switch len(r.NextHops) {
	case 0:
		return nil, fmt.Errorf("routes: route %s has no next hop", r.Dst)
	case 1:
		nr.Gw = r.NextHops[0].AsSlice()
	default:
		nr.MultiPath = make([]*netlink.NexthopInfo, len(r.NextHops))
		for i, h := range r.NextHops {
			nr.MultiPath[i] = &netlink.NexthopInfo{Gw: h.AsSlice()}
		}
	}
	return nr, nil
}

// fromNetlink converts a dumped kernel route. The kernel leaves out RTA_DST for a default route (netlink then
// makes one up, with a 16-byte IPv4 address), and dumps a multipath route as RTA_MULTIPATH (one RTA_GATEWAY per
// next hop, in the kernel's order, not necessarily ours) but a route with one next hop as a plain RTA_GATEWAY,
// whichever way it was installed.
func fromNetlink(nr *netlink.Route) (Route, bool) {
	var r Route
	if nr.Dst == nil {
		switch nr.Family {
		case syscall.AF_INET:
			r.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		case syscall.AF_INET6:
			r.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		default:
			return Route{}, false
		}
	} else {
		a, ok := netip.AddrFromSlice(nr.Dst.IP)
		if !ok {
			return Route{}, false
		}
		if nr.Family == syscall.AF_INET || len(nr.Dst.Mask) == net.IPv4len {
			// netlink fills in a missing default destination as net.IPv4zero, a 16-byte (4-in-6) address.
			a = a.Unmap()
		}
		ones, _ := nr.Dst.Mask.Size()
		r.Dst = netip.PrefixFrom(a, ones).Masked()
	}
	add := func(gw net.IP) {
		if a, ok := netip.AddrFromSlice(gw); ok && len(gw) > 0 {
			if r.Dst.Addr().Is4() {
				a = a.Unmap()
			}
			r.NextHops = append(r.NextHops, a)
		}
	}
	if len(nr.MultiPath) > 0 {
		r.NextHops = make([]netip.Addr, 0, len(nr.MultiPath))
		for _, nh := range nr.MultiPath {
			add(nh.Gw)
		}
	} else if nr.Gw != nil {
		add(nr.Gw)
	}
	if len(r.NextHops) > 1 {
		slices.SortFunc(r.NextHops, netip.Addr.Compare)
		r.NextHops = slices.Compact(r.NextHops)
	}
	return r, true
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
