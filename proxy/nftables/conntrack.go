package nftables

import (
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Flow selects conntrack entries: protocol UDP, original destination OrigDst:OrigDstPort (each optional),
// reply source ReplySrc (optional: the endpoint the flow was NATed to). (The iptables back end's type.)
type Flow struct {
	OrigDst     netip.Addr
	OrigDstPort uint16
	ReplySrc    netip.Addr
}

// Conntrack deletes UDP conntrack entries (nil: no cleanup).
type Conntrack interface {
	DeleteUDP(flows []Flow) error
}

// netlinkConntrack deletes IPv4 (v6: IPv6) conntrack entries over netlink in the calling thread's network
// namespace.
type netlinkConntrack struct{ v6 bool }

func (c netlinkConntrack) DeleteUDP(flows []Flow) error {
	filters := make([]netlink.CustomConntrackFilter, 0, len(flows))
	for _, f := range flows {
		cf := &netlink.ConntrackFilter{}
		if err := cf.AddProtocol(unix.IPPROTO_UDP); err != nil {
			return err
		}
		if f.OrigDst.IsValid() {
			if err := cf.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.OrigDst.AsSlice())); err != nil {
				return err
			}
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
		filters = append(filters, cf)
	}
	if len(filters) == 0 {
		return nil
	}
	fam := netlink.InetFamily(unix.AF_INET)
	if c.v6 {
		fam = unix.AF_INET6
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filters...)
	return err
}

// staleFlows lists the UDP conntrack entries a change of a service port leaves wrong: flows NATed to an
// endpoint that went away, and (unless skipVIPs) flows to its VIPs recorded while it had no endpoints.
func staleFlows(old, cur ctInfo, skipVIPs bool) []Flow {
	var out []Flow
	if old.udp {
		for _, ep := range old.eps {
			if cur.udp && slices.Contains(cur.eps, ep) {
				continue
			}
			for _, vip := range old.vips {
				out = append(out, Flow{OrigDst: vip, OrigDstPort: old.port, ReplySrc: ep})
			}
			if old.nodePort != 0 {
				out = append(out, Flow{OrigDstPort: old.nodePort, ReplySrc: ep})
			}
		}
	}
	if cur.udp && len(cur.eps) > 0 && !skipVIPs {
		for _, vip := range cur.vips {
			out = append(out, Flow{OrigDst: vip, OrigDstPort: cur.port})
		}
		if cur.nodePort != 0 {
			out = append(out, Flow{OrigDstPort: cur.nodePort})
		}
	}
	return out
}
