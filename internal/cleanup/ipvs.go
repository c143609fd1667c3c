package cleanup

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	ipvsproxy "canopy.io/canopy/proxy/ipvs"
)

// ipvsAvailable reports whether the kernel has IPVS (its generic netlink family is registered). It never loads
// the module: a kernel that has not loaded ip_vs has no virtual services to remove.
func ipvsAvailable() (bool, error) {
	_, err := netlink.GenlFamilyGet("IPVS")
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.ENOENT):
		return false, nil
	default:
		return false, fmt.Errorf("generic netlink family IPVS: %w", err)
	}
}

// ipvsInventory is what the IPVS back end left: the dummy interface, the addresses bound to it, and the virtual
// services on those addresses or on the node's addresses (what proxy/ipvs.Cleanup removes).
type ipvsInventory struct {
	available bool
	link      bool
	bound     []netip.Addr
	services  []string
}

// nodeAddresses are the global addresses of the namespace's interfaces other than the IPVS dummy (whose
// addresses are Services', not the node's): where NodePort virtual services listen.
func nodeAddresses(h *netlink.Handle) ([]netip.Addr, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	skip := -1
	if l, err := h.LinkByName(ipvsproxy.Interface); err == nil {
		skip = l.Attrs().Index
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.LinkIndex == skip || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		if ip = ip.Unmap(); !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out, nil
}

func takeIPVSInventory(h *netlink.Handle, nodeIPs []netip.Addr) (*ipvsInventory, error) {
	inv := &ipvsInventory{}
	bound := map[netip.Addr]bool{}
	for _, a := range nodeIPs {
		bound[a.Unmap()] = true
	}
	if l, err := h.LinkByName(ipvsproxy.Interface); err == nil {
		inv.link = true
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ipvsproxy.Interface, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				bound[ip.Unmap()] = true
				inv.bound = append(inv.bound, ip.Unmap())
			}
		}
	} else {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("look up %s: %w", ipvsproxy.Interface, err)
		}
	}
	ok, err := ipvsAvailable()
	if err != nil {
		return nil, err
	}
	inv.available = ok
	if !ok {
		return inv, nil
	}
	ih, err := mobyipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("ipvs netlink: %w", err)
	}
	defer ih.Close()
	svcs, err := ih.GetServices()
	if err != nil {
		return nil, fmt.Errorf("ipvs: list services: %w", err)
	}
	for _, s := range svcs {
		a, ok := netip.AddrFromSlice(s.Address)
		if !ok || s.FWMark != 0 {
			continue // Canopy makes no firewall-mark services
		}
		if s.AddressFamily == syscall.AF_INET {
			a = a.Unmap()
		}
		if bound[a] {
			inv.services = append(inv.services, describeService(s.Protocol, netip.AddrPortFrom(a, s.Port)))
		}
	}
	slices.Sort(inv.services)
	return inv, nil
}

func describeService(proto uint16, ap netip.AddrPort) string {
	name := map[uint16]string{syscall.IPPROTO_TCP: "TCP", syscall.IPPROTO_UDP: "UDP", syscall.IPPROTO_SCTP: "SCTP"}[proto]
	if name == "" {
		name = fmt.Sprintf("proto %d", proto)
	}
	return "virtual service " + name + " " + ap.String()
}

func (inv *ipvsInventory) items() []string {
	out := slices.Clone(inv.services)
	if inv.link {
		out = append(out, fmt.Sprintf("link %s (%d addresses)", ipvsproxy.Interface, len(inv.bound)))
	}
	return out
}

// removeIPVS removes the IPVS back end's virtual services and its dummy interface with proxy/ipvs.Cleanup (its
// masquerade chain goes with the other CANOPY- chains), then takes the inventory again: what is left failed.
func removeIPVS(h *netlink.Handle, nodeIPs []netip.Addr, dryRun bool, s *Section) {
	before, err := takeIPVSInventory(h, nodeIPs)
	if err != nil {
		s.fail("inventory", err)
		return
	}
	if !before.available {
		s.Scope = "kernel without IPVS: no virtual services"
	}
	if dryRun {
		for _, it := range before.items() {
			s.removed(it)
		}
		return
	}
	if len(before.items()) == 0 {
		return
	}
	cerr := ipvsproxy.Cleanup("", nodeIPs, nil)
	after, err := takeIPVSInventory(h, nodeIPs)
	if err != nil {
		s.fail("inventory after removal", err)
		return
	}
	// The link's description carries its address count, which the removal changes: compare by kind.
	left := map[string]bool{}
	for _, sv := range after.services {
		left[sv] = true
	}
	for _, sv := range before.services {
		if left[sv] {
			s.fail(sv, orStill(cerr))
		} else {
			s.removed(sv)
		}
	}
	if before.link {
		item := before.items()[len(before.items())-1]
		if after.link {
			s.fail(item, orStill(cerr))
		} else {
			s.removed(item)
		}
	}
}

func orStill(err error) error {
	if err != nil {
		return err
	}
	return errors.New("still there after the removal (re-created by a running agent?)")
}
