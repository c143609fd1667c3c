package iptables

import (
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"canopy.io/canopy/internal/ipt"
)

// NewRestorer returns the host Restorer for flavour f (see ipt.NewRestorer).
func NewRestorer(f ipt.Flavour) Restorer { return ipt.NewRestorer(f) }

// netlinkConntrack deletes conntrack entries (IPv4, or IPv6 with v6) over netlink in the calling thread's
// network namespace.
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
