package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HostVethPrefix starts the name of every host-side veth the plugin makes.
const HostVethPrefix = "cnp"

var hostVethRE = regexp.MustCompile(`^` + HostVethPrefix + `[0-9a-f]{12}$`)

// HostVethName is the node-side name of an attachment's veth: "cnp" + the first 12 hex digits of
// sha256(containerID + "/" + ifname), 15 characters (the kernel's limit). It depends only on the attachment, so DEL
// and CHECK find the veth without any stored state.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:12]
}

// isHostVethName reports whether name has the shape of a name HostVethName makes.
func isHostVethName(name string) bool { return hostVethRE.MatchString(name) }

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV)
}

// ensureBridge makes the node bridge exist, be up, have mtu, and carry the gateway address of every pod CIDR. It
// runs in the node's network namespace. An existing bridge is adopted; a link of that name that is not a bridge is
// an error. Other addresses on the bridge (an earlier pod CIDR whose pods still run) are left alone.
func ensureBridge(name string, mtu int, cidrs []netip.Prefix) (*netlink.Bridge, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("bridge %q: look up: %w", name, err)
	}
	created := false
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = mtu
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("bridge %q: create: %w", name, err)
		} else if err == nil {
			created = true
		}
		if l, err = netlinksafe.LinkByName(name); err != nil {
			return nil, fmt.Errorf("bridge %q: look up after creating it: %w", name, err)
		}
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("bridge %q: a link of that name exists and is a %s, not a bridge", name, l.Type())
	}
	if created {
		// We own the bridge's routes; and pin its MAC, which otherwise follows the lowest port MAC as pods come
		// and go (each change makes every pod re-ARP its gateway).
		_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_ra", name), "0")
		if err := netlink.LinkSetHardwareAddr(br, br.HardwareAddr); err != nil {
			return nil, fmt.Errorf("bridge %q: pin MAC address: %w", name, err)
		}
	}
	if br.MTU != mtu {
		if err := netlink.LinkSetMTU(br, mtu); err != nil {
			return nil, fmt.Errorf("bridge %q: set MTU %d: %w", name, mtu, err)
		}
	}
	if br.Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("bridge %q: set up: %w", name, err)
		}
	}
	have, err := netlinksafe.AddrList(br, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("bridge %q: list addresses: %w", name, err)
	}
	if hasIPv6(cidrs) {
		// A node (or a bridge made by someone else) may have IPv6 off by default; the gateway needs it on.
		if err := ensureSysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", name), "0"); err != nil {
			return nil, fmt.Errorf("bridge %q: enable IPv6: %w", name, err)
		}
	}
	for _, c := range cidrs {
		gw := gatewayPrefix(c)
		if hasAddr(have, gw) {
			continue
		}
		// The IPv6 gateway skips duplicate address detection (the pod CIDR is this node's alone): usable at once,
		// not a second later.
		a := &netlink.Addr{IPNet: prefixToIPNet(gw), Flags: addrFlags(gw.Addr())}
		if err := netlink.AddrAdd(br, a); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("bridge %q: add gateway address %s: %w", name, gw, err)
		}
	}
	l, err = netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("bridge %q: look up: %w", name, err)
	}
	if br, ok = l.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("bridge %q: replaced by a %s while being set up", name, l.Type())
	}
	return br, nil
}

// gatewayPrefix is the bridge address for a pod CIDR: its first address with the CIDR's length (10.244.1.1/24).
func gatewayPrefix(c netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(c.Masked().Addr().Next(), c.Bits())
}

func hasAddr(addrs []netlink.Addr, p netip.Prefix) bool { return findAddr(addrs, p) != nil }

// findAddr returns the address p (same address and prefix length) among addrs, or nil.
func findAddr(addrs []netlink.Addr, p netip.Prefix) *netlink.Addr {
	for i, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if ok && ip.Unmap() == p.Addr() && ones == p.Bits() {
			return &addrs[i]
		}
	}
	return nil
}

// addrFlags are the flags an address of ours is added with: IFA_F_NODAD for IPv6 (no duplicate address
// detection: addresses come from our own allocator, and a tentative address cannot be used for about a second).
func addrFlags(ip netip.Addr) int {
	if ip.Is6() && !ip.Is4In6() {
		return unix.IFA_F_NODAD
	}
	return 0
}

// unusable says why an IPv6 address cannot be used yet or at all ("" when it can).
func unusable(a *netlink.Addr) string {
	switch {
	case a.Flags&unix.IFA_F_DADFAILED != 0:
		return "failed duplicate address detection"
	case a.Flags&unix.IFA_F_TENTATIVE != 0:
		return "is tentative (duplicate address detection still running)"
	}
	return ""
}

func hasIPv6(cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.Addr().Is6() {
			return true
		}
	}
	return false
}

func hasIPv4(cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.Addr().Is4() {
			return true
		}
	}
	return false
}

// ensureSysctl sets a sysctl (a path under /proc/sys) to value unless it already has it, in the calling
// thread's network namespace.
func ensureSysctl(name, value string) error {
	if v, err := sysctl.Sysctl(name); err == nil && strings.TrimSpace(v) == value {
		return nil
	}
	if _, err := sysctl.Sysctl(name, value); err != nil {
		return fmt.Errorf("set %s=%s: %w", strings.ReplaceAll(name, "/", "."), value, err)
	}
	return nil
}

// enableForwarding turns on forwarding for the families of cidrs in the node's namespace: net.ipv4.ip_forward,
// net.ipv6.conf.all.forwarding. Turning IPv6 forwarding on makes the kernel drop the default routes learned from
// router advertisements on every interface whose accept_ra is not 2 (and stop learning them): that is the node's
// business (accept_ra=2 on its uplink), and we only warn (on stderr, which the runtime logs) when it happens.
func enableForwarding(cidrs []netip.Prefix, warn io.Writer) error {
	if hasIPv4(cidrs) {
		if err := ip.EnableIP4Forward(); err != nil {
			return fmt.Errorf("enable net.ipv4.ip_forward: %w", err)
		}
	}
	if !hasIPv6(cidrs) {
		return nil
	}
	const fwd = "net/ipv6/conf/all/forwarding"
	if v, err := sysctl.Sysctl(fwd); err == nil && strings.TrimSpace(v) == "1" {
		return nil
	}
	for _, r := range raDefaultRoutesAtRisk() {
		fmt.Fprintf(warn, "canopy-cni: turning on net.ipv6.conf.all.forwarding for the IPv6 pod CIDR: the kernel drops the "+
			"router-advertised default route %s and stops accepting router advertisements on %s unless "+
			"net.ipv6.conf.%s.accept_ra=2 is set before (see the package documentation)\n", r.route, r.dev, r.dev)
	}
	if _, err := sysctl.Sysctl(fwd, "1"); err != nil {
		return fmt.Errorf("enable net.ipv6.conf.all.forwarding (is IPv6 disabled on the node?): %w", err)
	}
	return nil
}

type raRoute struct{ route, dev string }

// raDefaultRoutesAtRisk lists IPv6 default routes learned from router advertisements on interfaces whose
// accept_ra is not 2: those enabling forwarding removes.
func raDefaultRoutesAtRisk() []raRoute {
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: syscall.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil
	}
	var out []raRoute
	for _, r := range routes {
		if r.Protocol != unix.RTPROT_RA {
			continue
		}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		dev := l.Attrs().Name
		if v, err := sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_ra", dev)); err == nil && strings.TrimSpace(v) == "2" {
			continue
		}
		out = append(out, raRoute{route: fmt.Sprintf("default via %s dev %s", r.Gw, dev), dev: dev})
	}
	return out
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// uplinkMTU finds the MTU of the node's uplink, in the calling thread's network namespace: the interface of the
// default route (IPv4, then IPv6, main table), else the interface of the first non-loopback, non-link-local
// address, else FallbackMTU. The bridge and its ports never count. It returns the MTU and where it came from.
func uplinkMTU(bridge string) (int, string) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return FallbackMTU, fmt.Sprintf("fallback (listing links failed: %v)", err)
	}
	byIndex := make(map[int]netlink.Link, len(links))
	bridgeIndex := 0
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
		if l.Attrs().Name == bridge {
			bridgeIndex = l.Attrs().Index
		}
	}
	candidate := func(index int) (netlink.Link, bool) {
		l, ok := byIndex[index]
		if !ok {
			return nil, false
		}
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Index == bridgeIndex || (bridgeIndex != 0 && a.MasterIndex == bridgeIndex) || a.MTU <= 0 {
			return nil, false
		}
		return l, true
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlinksafe.RouteListFiltered(fam, &netlink.Route{Table: syscall.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			continue
		}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			if l, ok := candidate(idx); ok {
				return l.Attrs().MTU, "default route via " + l.Attrs().Name
			}
		}
	}
	addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
	if err == nil {
		for _, a := range addrs {
			if a.IPNet == nil || a.IP.IsLoopback() || a.IP.IsLinkLocalUnicast() {
				continue
			}
			if l, ok := candidate(a.LinkIndex); ok {
				return l.Attrs().MTU, "address " + a.IPNet.String() + " on " + l.Attrs().Name
			}
		}
	}
	return FallbackMTU, "fallback (no default route and no address outside the bridge)"
}

// resolveMTU is the MTU for the pod interfaces: the configured one, or the uplink's minus the overlay overhead.
func resolveMTU(c *Config) (int, error) {
	if c.MTU != 0 {
		return c.MTU, nil
	}
	up, from := uplinkMTU(c.Bridge)
	m := up - c.OverlayOverhead
	if m < MinMTU {
		return 0, fmt.Errorf("mtu: the uplink MTU %d (%s) minus overlayOverhead %d is %d, below the minimum %d", up, from, c.OverlayOverhead, m, MinMTU)
	}
	if m < MinIPv6MTU && hasIPv6(c.PodCIDRs) {
		return 0, fmt.Errorf("mtu: the uplink MTU %d (%s) minus overlayOverhead %d is %d, below IPv6's minimum %d, and podCIDRs has an IPv6 CIDR",
			up, from, c.OverlayOverhead, m, MinIPv6MTU)
	}
	return m, nil
}
