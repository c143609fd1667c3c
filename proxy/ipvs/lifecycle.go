package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"canopy.io/canopy/internal/ipt"
)

// Schedulers are the IPVS schedulers a Service may pick with canopy.io/scheduler.
var Schedulers = []string{"rr", "wrr", "lc", "sh", "mh"}

// Schedulers implements proxy.Backend.
func (b *Backend) Schedulers() []string { return Schedulers }

// Start implements proxy.Backend: New has read the kernel's state and made the interface and chain already.
func (b *Backend) Start() error { return nil }

// PruneStale implements proxy.Backend (see Prune).
func (b *Backend) PruneStale() error { return b.Prune() }

// Cleanup implements proxy.Backend: it removes every virtual service, address and rule of the back end (see
// Cleanup) and forgets them.
func (b *Backend) Cleanup() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := Cleanup(b.cfg.NetNS, b.cfg.NodeIPs, b.cfg.IPT)
	if b.cfg.IPT6 != nil {
		err = errors.Join(err, RemoveMasq(b.cfg.IPT6))
	}
	b.applied, b.owner, b.claims = map[vsKey]*vsState{}, map[vsKey]string{}, map[string]*keyWant{}
	b.bound, b.users, b.hairpin = map[netip.Addr]bool{}, map[netip.Addr]int{}, map[netip.Addr]int{}
	return err
}

// Cleanup removes what the IPVS back end programs in the namespace at nsPath ("" = this one), without a Backend:
// the virtual services of both families on addresses bound to Interface or on nodeIPs (others' virtual services
// stay), Interface itself, and with ipt the masquerade chain and its jump (RemoveMasq with an ip6tables handle
// removes the IPv6 one). Used when the proxy mode changes or the proxy is turned
// off; a kernel without IPVS has nothing to remove but the interface and the chain. Without Interface the IPVS
// back end never ran here (it makes Interface before any virtual service), so no virtual service is touched:
// kube-proxy's IPVS NodePorts on the node's addresses stay when Canopy runs with its proxy off next to it.
func Cleanup(nsPath string, nodeIPs []netip.Addr, ipt IPTables) error {
	var errs []error
	bound := map[netip.Addr]bool{}
	la, err := newLinkAddresses(nsPath)
	if err != nil {
		return err
	}
	defer la.close()
	link, err := la.link()
	if err == nil {
		for _, a := range nodeIPs {
			bound[a.Unmap()] = true
		}
		addrs, err := la.h.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			errs = append(errs, fmt.Errorf("addresses of %s: %w", Interface, err))
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				bound[ip.Unmap()] = true
			}
		}
	}
	if ok, _ := available(nsPath, false); ok {
		h, err := mobyipvs.New(nsPath)
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs netlink: %w", err))
		} else {
			svcs, err := h.GetServices()
			if err != nil {
				errs = append(errs, fmt.Errorf("ipvs: list services: %w", err))
			}
			for _, s := range svcs {
				if k, ok := keyOf(s); ok && s.FWMark == 0 && bound[k.addr] {
					if err := h.DelService(s); err != nil {
						errs = append(errs, fmt.Errorf("ipvs: delete %s: %w", k, err))
					}
				}
			}
			h.Close()
		}
	}
	if link != nil {
		if err := la.h.LinkDel(link); err != nil && !errors.Is(err, syscall.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s: %w", Interface, err))
		}
	}
	if ipt != nil {
		if err := removeMasq(ipt); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemoveMasq deletes the masquerade chain and the jump to it from it (iptables or ip6tables).
func RemoveMasq(it IPTables) error { return removeMasq(it) }

// removeMasq deletes the masquerade chain and the jump to it.
func removeMasq(it IPTables) error {
	if err := ipt.DeleteJumps(it, masqJump); err != nil {
		return err
	}
	return ipt.RemoveChain(it, "nat", Chain)
}
