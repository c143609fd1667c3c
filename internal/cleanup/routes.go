package cleanup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

// RouteTable is the part of a netlink handle cleanup uses for routes.
type RouteTable interface {
	RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error)
	RouteDel(*netlink.Route) error
}

// listOurRoutes returns the routes of protocol proto in table (both families), the kernel's dump filtered by
// the kernel's own fields: a route of another protocol or table is never returned.
func listOurRoutes(h RouteTable, proto, table int) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: table, Protocol: netlink.RouteProtocol(proto)}
	var out []netlink.Route
	var err error
	for range 5 { // a dump the kernel flags as interrupted (routes changed meanwhile) is retried
		out, err = h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var ours []netlink.Route
	for _, r := range out {
		if int(r.Protocol) == proto && r.Table == table {
			ours = append(ours, r)
		}
	}
	return ours, nil
}

// delRequest is the delete request for a listed route: its destination, table, protocol, metric, TOS and type.
// The kernel deletes only a route with that protocol (so never someone else's), whatever its next hops.
func delRequest(r netlink.Route) *netlink.Route {
	d := &netlink.Route{Dst: r.Dst, Family: r.Family, Table: r.Table, Protocol: r.Protocol, Priority: r.Priority,
		Tos: r.Tos, Type: r.Type, Scope: netlink.SCOPE_NOWHERE}
	if d.Dst == nil || d.Dst.IP == nil { // a default route: the request needs an explicit 0/0
		if r.Family == netlink.FAMILY_V6 {
			d.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		} else {
			d.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		}
	}
	return d
}

// describeRoute is a route as `ip route` would show the parts that identify it.
func describeRoute(r netlink.Route) string {
	var b strings.Builder
	if r.Dst == nil || r.Dst.IP == nil {
		b.WriteString("default")
		if r.Family == netlink.FAMILY_V6 {
			b.WriteString(" (IPv6)")
		}
	} else {
		p, _ := netip.ParsePrefix(r.Dst.String())
		b.WriteString(p.String())
	}
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	for _, nh := range r.MultiPath {
		if nh.Gw != nil {
			fmt.Fprintf(&b, " nexthop via %s", nh.Gw)
		}
	}
	if r.Gw == nil && len(r.MultiPath) == 0 && r.LinkIndex > 0 {
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			fmt.Fprintf(&b, " dev %s", l.Attrs().Name)
		}
	}
	if r.Priority != 0 {
		fmt.Fprintf(&b, " metric %d", r.Priority)
	}
	return b.String()
}

// removeRoutes deletes every route of protocol proto in table, then lists again: what is left is a failure.
func removeRoutes(h RouteTable, proto, table int, dryRun bool, s *Section) {
	routes, err := listOurRoutes(h, proto, table)
	if err != nil {
		s.fail("list", err)
		return
	}
	if dryRun {
		for _, r := range routes {
			s.removed(describeRoute(r))
		}
		return
	}
	errs := map[string]error{}
	for _, r := range routes {
		if err := h.RouteDel(delRequest(r)); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs[describeRoute(r)] = err
		}
	}
	left, err := listOurRoutes(h, proto, table)
	if err != nil {
		s.fail("list after removal", err)
		return
	}
	still := map[string]bool{}
	for _, r := range left {
		still[describeRoute(r)] = true
	}
	for _, r := range routes {
		d := describeRoute(r)
		switch {
		case !still[d]:
			s.removed(d)
		case errs[d] != nil:
			s.fail(d, errs[d])
		default:
			s.fail(d, errors.New("still there after deleting it (re-added by a running agent?)"))
		}
	}
}
