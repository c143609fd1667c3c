package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Flow selects UDP conntrack entries: original destination OrigDst (a virtual address) and port OrigDstPort, and
// optionally reply source ReplySrc (the real server IPVS sent the flow to).
type Flow struct {
	OrigDst     netip.Addr
	OrigDstPort uint16
	ReplySrc    netip.Addr
}

func (f Flow) String() string {
	s := "udp " + netip.AddrPortFrom(f.OrigDst, f.OrigDstPort).String()
	if f.ReplySrc.IsValid() {
		s += " via " + f.ReplySrc.String()
	}
	return s
}

// Conntrack deletes UDP conntrack entries (flows of both families).
//
// With net.ipv4.vs.conntrack=1 every IPVS connection has a conntrack entry; a UDP "connection" lives as long as
// packets keep coming, so a client that keeps its socket would keep reaching a real server that is gone (or,
// for a virtual service that had none, its unanswered entry from before). kube-proxy deletes those entries; so
// does this back end, for IPv4 and IPv6 alike.
type Conntrack interface {
	DeleteUDP(flows []Flow) error
}

// udpFlows are the conntrack entries a change of the UDP virtual service k from cur to w leaves wrong: those
// through each real server it no longer has, and when it gets its first serving real server (weight > 0),
// every entry to it (made while nothing served). w nil: the virtual service goes, every entry to it (if it
// had real servers).
func udpFlows(k vsKey, cur, w *vsState) []Flow {
	if k.proto != syscall.IPPROTO_UDP {
		return nil
	}
	if w == nil {
		if cur == nil || len(cur.dests) == 0 {
			return nil
		}
		return []Flow{{OrigDst: k.addr, OrigDstPort: k.port}}
	}
	serving := func(st *vsState) bool {
		if st == nil {
			return false
		}
		for _, weight := range st.dests {
			if weight > 0 {
				return true
			}
		}
		return false
	}
	if !serving(cur) && serving(w) {
		return []Flow{{OrigDst: k.addr, OrigDstPort: k.port}} // covers every real server's entries too
	}
	var out []Flow
	if cur != nil {
		for _, d := range sortedDests(cur.dests) {
			if _, ok := w.dests[d]; !ok {
				out = append(out, Flow{OrigDst: k.addr, OrigDstPort: k.port, ReplySrc: d.addr})
			}
		}
	}
	return out
}

// netlinkConntrack deletes conntrack entries over netlink in one network namespace.
type netlinkConntrack struct{ h *netlink.Handle }

func newNetlinkConntrack(nsPath string) (*netlinkConntrack, error) {
	var h *netlink.Handle
	var err error
	if nsPath == "" {
		h, err = netlink.NewHandle(syscall.NETLINK_NETFILTER)
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(nsPath)
		if err != nil {
			return nil, fmt.Errorf("netns %s: %w", nsPath, err)
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns, syscall.NETLINK_NETFILTER)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink conntrack: %w", err)
	}
	return &netlinkConntrack{h: h}, nil
}

func (c *netlinkConntrack) close() { c.h.Close() }

// DeleteUDP deletes the entries of flows, one netlink dump per family that has flows.
func (c *netlinkConntrack) DeleteUDP(flows []Flow) error {
	var byFam [2][]netlink.CustomConntrackFilter
	for _, f := range flows {
		cf := &netlink.ConntrackFilter{}
		if err := cf.AddProtocol(syscall.IPPROTO_UDP); err != nil {
			return err
		}
		if err := cf.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.OrigDst.AsSlice())); err != nil {
			return err
		}
		if f.OrigDstPort != 0 {
			if err := cf.AddPort(netlink.ConntrackOrigDstPort, f.OrigDstPort); err != nil {
				return err
			}
		}
		if f.ReplySrc.IsValid() {
			if err := cf.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.ReplySrc.AsSlice())); err != nil {
				return err
			}
		}
		byFam[fam(f.OrigDst)] = append(byFam[fam(f.OrigDst)], cf)
	}
	var errs []error
	for i, fs := range byFam {
		if len(fs) == 0 {
			continue
		}
		family := netlink.InetFamily(syscall.AF_INET)
		if i == 1 {
			family = syscall.AF_INET6
		}
		if _, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, family, fs...); err != nil {
			errs = append(errs, fmt.Errorf("conntrack (family %d): %w", family, err))
		}
	}
	return errors.Join(errs...)
}
