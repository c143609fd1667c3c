package ipvs

import (
	"canopy.io/canopy/internal/netnsx"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Available reports whether the kernel has IPVS (loading ip_vs if it is a module). moby/ipvs cannot tell:
// without IPVS its New succeeds, its writes return nil and its reads return nothing.
func Available() (bool, error) { return available("", true) }

// available checks for IPVS in the namespace at nsPath; with load, it tries modprobe ip_vs when it is missing.
func available(nsPath string, load bool) (bool, error) {
	var ok bool
	check := func() error {
		if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
			ok = true
			return nil
		}
		_, err := netlink.GenlFamilyGet("IPVS")
		switch {
		case err == nil:
			ok = true
		case errors.Is(err, syscall.ENOENT):
		default:
			return fmt.Errorf("generic netlink family IPVS: %w", err)
		}
		return nil
	}
	if err := inNS(nsPath, check); err != nil || ok || !load {
		return ok, err
	}
	// Not there yet: load the module if there is one (the kernel may lack it; that is not an error).
	if p, err := exec.LookPath("modprobe"); err == nil {
		_ = exec.Command(p, "-q", "ip_vs").Run()
	}
	err := inNS(nsPath, check)
	return ok, err
}

// inNS runs f in the network namespace at nsPath ("" = right here).
func inNS(nsPath string, f func() error) error { return netnsx.Do(nsPath, f) }

func newLinkAddresses(nsPath string) (*linkAddresses, error) {
	var h *netlink.Handle
	var err error
	if nsPath == "" {
		h, err = netlink.NewHandle()
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(nsPath)
		if err != nil {
			return nil, fmt.Errorf("netns %s: %w", nsPath, err)
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &linkAddresses{h: h}, nil
}

func (l *linkAddresses) link() (netlink.Link, error) {
	return l.h.LinkByName(Interface)
}

// Ensure creates the dummy interface (left down, like kube-proxy's kube-ipvs0: its addresses still get local
// routes, and a down NOARP device answers nothing itself) and lists its global addresses.
func (l *linkAddresses) Ensure() ([]netip.Addr, error) {
	link, err := l.link()
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, err
		}
		if err := l.h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: Interface}}); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("create dummy %s: %w", Interface, err)
		}
		if link, err = l.link(); err != nil {
			return nil, err
		}
	}
	list, err := l.h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	bits := 32
	if !a.Is4() {
		bits = 128
	}
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Flags: nodad(a)}
}

func nodad(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return syscall.IFA_F_NODAD
}

func (l *linkAddresses) Add(a netip.Addr) error {
	link, err := l.link()
	if err != nil {
		return err
	}
	// Never take an address the node has on another interface: bound here too, the node would answer for it on
	// every port through IPVS's interface (the Service model refuses node addresses already; this is the last
	// line).
	family := netlink.FAMILY_V4
	if !a.Is4() {
		family = netlink.FAMILY_V6
	}
	if all, err := l.h.AddrList(nil, family); err == nil {
		for _, x := range all {
			if ip, ok := netip.AddrFromSlice(x.IP); ok && ip.Unmap() == a && x.LinkIndex != link.Attrs().Index {
				return fmt.Errorf("%s is an address of another interface (index %d) of this node: not binding it to %s", a, x.LinkIndex, Interface)
			}
		}
	}
	if err := l.h.AddrAdd(link, hostAddr(a)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return err
	}
	return nil
}

func (l *linkAddresses) Del(a netip.Addr) error {
	link, err := l.link()
	if err != nil {
		return err
	}
	if err := l.h.AddrDel(link, hostAddr(a)); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return err
	}
	return nil
}
