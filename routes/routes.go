// Package routes installs BGP-learned routes into the kernel under Canopy's own route protocol number, with ECMP, and removes stale ones.
//
// A Manager holds the desired routes (what BGP selected) and what it has applied to a Table, and issues only the
// kernel calls needed to bring the two together. NetlinkTable is the real Table: it reads and writes only routes
// that carry Canopy's protocol number in one routing table, so routes of other protocols (kernel, static, boot,
// other daemons) and other tables are never touched.
package routes

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// DefaultProtocol is the kernel route protocol number Canopy marks its routes with (186, "bgp" in /etc/iproute2/rt_protos).
const DefaultProtocol = 186

// Route is a destination with one or more next hops (more than one = ECMP multipath route).
type Route struct {
	Dst      netip.Prefix
	NextHops []netip.Addr // sorted, unique
}

func (r Route) String() string {
	return fmt.Sprintf("%s via %v", r.Dst, r.NextHops)
}

// Table is the kernel routing table as Canopy sees it: only routes carrying our protocol number. Small so a fake can stand in.
//
// The Manager passes NextHops slices it shares with its own state: implementations must not modify them, and must
// copy them if they keep them.
//
// A Table may also have a method Add(r Route) error that creates the route and fails (with an error that matches
// ErrRouteExists) when any route to r.Dst with the same metric already exists in the table, whatever its protocol.
// The Manager then uses Add, not Replace, for routes it has not installed itself, so that it never replaces a route
// of another protocol (the kernel's replace does not look at the protocol). NetlinkTable has Add.
//
// A Table may also be a Batcher (Batch(ops []Op) []error): the Manager then sends the kernel changes of SetMany,
// Resync and SweepStale through it, many per call. NetlinkTable is one.
type Table interface {
	Replace(r Route) error         // add or replace (RouteReplace), single next hop or multipath
	Delete(dst netip.Prefix) error // delete our route to dst; deleting a missing route is not an error
	List() ([]Route, error)        // our routes only (filter by protocol), in the configured table
}

// adder is the optional exclusive-create method of a Table (see Table).
type adder interface {
	Add(r Route) error
}

// ErrRouteExists is matched (errors.Is) by the error of an install that was refused because the table already has a
// route to the destination that Canopy did not install, e.g. a connected (proto kernel) or a static route.
var ErrRouteExists = errors.New("a route to this destination that Canopy does not own already exists")

// canonPrefix validates dst and clears any host bits.
func canonPrefix(dst netip.Prefix) (netip.Prefix, error) {
	if !dst.IsValid() {
		return netip.Prefix{}, fmt.Errorf("invalid destination prefix %v", dst)
	}
	if dst.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("destination %v: zones are not supported", dst)
	}
	return dst.Masked(), nil
}

// canonHops validates next hops for dst and returns them sorted and unique. It returns hops itself when it is
// already in that form (the common case: the caller keeps them sorted), and a new slice otherwise; it never
// modifies hops.
func canonHops(dst netip.Prefix, hops []netip.Addr) ([]netip.Addr, error) {
	ok := true
	for i, h := range hops {
		if !h.IsValid() {
			return nil, fmt.Errorf("route %s: invalid next hop %v", dst, h)
		}
		if h.Zone() != "" {
			return nil, fmt.Errorf("route %s: next hop %v: zones are not supported", dst, h)
		}
		if h.Is4In6() && dst.Addr().Is4() {
			ok = false // will be unmapped below
			h = h.Unmap()
		}
		if h.Is4() != dst.Addr().Is4() {
			return nil, fmt.Errorf("route %s: next hop %v is not of the destination's address family", dst, h)
		}
		if h.IsUnspecified() {
			return nil, fmt.Errorf("route %s: unspecified next hop %v", dst, h)
		}
		if i > 0 && ok && hops[i-1].Compare(h) >= 0 {
			ok = false
		}
	}
	if ok {
		return hops, nil
	}
	out := make([]netip.Addr, len(hops))
	for i, h := range hops {
		if h.Is4In6() && dst.Addr().Is4() {
			h = h.Unmap()
		}
		out[i] = h
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}
