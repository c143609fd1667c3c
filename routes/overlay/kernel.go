package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

// Kernel is what the controller programs: small enough to fake.
type Kernel interface {
	// LocalSubnet returns the prefix of the local address ip (its subnet on its interface).
	LocalSubnet(ip netip.Addr) (netip.Prefix, error)
	// Apply makes the device (local end ip) and its neighbour, FDB and route entries exactly peers.
	Apply(ip netip.Addr, peers []Peer) error
	// Remove deletes the device, and with it every entry and route through it.
	Remove() error
}

// Tunnel is the Kernel over netlink: the VXLAN device and its entries in one network namespace.
//
// Apply reads the device's neighbour, FDB and route entries back from the kernel each time and changes only what
// differs, so it also repairs drift (an entry someone deleted, a route someone added on the device).
type Tunnel struct {
	h   *netlink.Handle
	cfg TunnelConfig
	log *slog.Logger
}

// TunnelConfig are the device's settings; zero fields take the defaults.
type TunnelConfig struct {
	Device string // Device
	VNI    int    // DefaultVNI
	Port   int    // DefaultPort
	Table  int    // the routes' table; 0 = main
	// Sysctl sets a sysctl of the device's namespace (path relative to /proc/sys, "/"-separated: the device name
	// has a dot) if it is not value already; nil writes /proc/sys of the calling thread's namespace (right when
	// the handle is of that namespace, as the agent's is).
	Sysctl func(path, value string) error
}

// NewTunnel returns a Tunnel acting through h (nil: the calling thread's namespace).
func NewTunnel(h *netlink.Handle, cfg TunnelConfig, log *slog.Logger) *Tunnel {
	if h == nil {
		h = &netlink.Handle{}
	}
	if cfg.Device == "" {
		cfg.Device = Device
	}
	if cfg.VNI == 0 {
		cfg.VNI = DefaultVNI
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Table == 0 {
		cfg.Table = syscall.RT_TABLE_MAIN
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Sysctl == nil {
		cfg.Sysctl = procSysctl
	}
	return &Tunnel{h: h, cfg: cfg, log: log}
}

// uplink returns the link holding local address ip and the address's prefix.
func (t *Tunnel) uplink(ip netip.Addr) (netlink.Link, netip.Prefix, error) {
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := t.h.AddrList(nil, fam)
	if err != nil {
		return nil, netip.Prefix{}, fmt.Errorf("overlay: list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		x, ok := netip.AddrFromSlice(a.IP)
		if !ok || x.Unmap() != ip {
			continue
		}
		ones, _ := a.Mask.Size()
		l, err := t.h.LinkByIndex(a.LinkIndex)
		if err != nil {
			return nil, netip.Prefix{}, fmt.Errorf("overlay: the link of %s: %w", ip, err)
		}
		return l, netip.PrefixFrom(ip, ones).Masked(), nil
	}
	return nil, netip.Prefix{}, fmt.Errorf("overlay: no interface has the node address %s", ip)
}

// LocalSubnet implements Kernel.
func (t *Tunnel) LocalSubnet(ip netip.Addr) (netip.Prefix, error) {
	_, p, err := t.uplink(ip)
	return p, err
}

// ensure makes the device with local end ip (recreating one whose settings differ) and returns it, up.
func (t *Tunnel) ensure(ip netip.Addr) (netlink.Link, error) {
	mac, err := MAC(ip)
	if err != nil {
		return nil, err
	}
	up, _, err := t.uplink(ip)
	if err != nil {
		return nil, err
	}
	mtu := up.Attrs().MTU - Overhead
	if ip.Is6() {
		mtu = up.Attrs().MTU - Overhead6
	}
	want := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: t.cfg.Device, HardwareAddr: mac, MTU: mtu},
		VxlanId: t.cfg.VNI, VtepDevIndex: up.Attrs().Index, SrcAddr: net.IP(ip.AsSlice()), Port: t.cfg.Port, Learning: false}
	if l, err := t.h.LinkByName(t.cfg.Device); err == nil {
		v, ok := l.(*netlink.Vxlan)
		if ok && v.VxlanId == want.VxlanId && v.Port == want.Port && v.SrcAddr.Equal(want.SrcAddr) && !v.Learning &&
			v.VtepDevIndex == want.VtepDevIndex && v.Attrs().HardwareAddr.String() == mac.String() {
			if v.Attrs().MTU != mtu {
				if err := t.h.LinkSetMTU(l, mtu); err != nil {
					return nil, fmt.Errorf("overlay: set %s MTU %d: %w", t.cfg.Device, mtu, err)
				}
			}
			if v.Attrs().Flags&net.FlagUp == 0 {
				if err := t.h.LinkSetUp(l); err != nil {
					return nil, fmt.Errorf("overlay: set %s up: %w", t.cfg.Device, err)
				}
			}
			return l, nil
		}
		t.log.Info("overlay device has other settings: recreating it", "device", t.cfg.Device, "type", l.Type())
		if err := t.h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
			return nil, fmt.Errorf("overlay: delete %s: %w", t.cfg.Device, err)
		}
	}
	if err := t.h.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("overlay: create %s (VNI %d, port %d, local %s): %w", t.cfg.Device, t.cfg.VNI, t.cfg.Port, ip, err)
	}
	l, err := t.h.LinkByName(t.cfg.Device)
	if err != nil {
		return nil, fmt.Errorf("overlay: %s after creating it: %w", t.cfg.Device, err)
	}
	if err := t.h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("overlay: set %s up: %w", t.cfg.Device, err)
	}
	t.log.Info("overlay device created", "device", t.cfg.Device, "vni", t.cfg.VNI, "port", t.cfg.Port, "local", ip, "mac", mac,
		"mtu", mtu, "uplink", up.Attrs().Name)
	return l, nil
}

// Apply implements Kernel. It tries every entry and returns every failure.
func (t *Tunnel) Apply(ip netip.Addr, peers []Peer) error {
	l, err := t.ensure(ip)
	if err != nil {
		return err
	}
	idx := l.Attrs().Index
	var errs []error
	// Neighbours: VTEP -> MAC, permanent.
	wantNeigh := map[netip.Addr]string{}
	wantFDB := map[string]netip.Addr{}
	wantRoute := map[netip.Prefix]netip.Addr{}
	ipv6 := false // IPv6 routes through the device: it needs IPv6 on
	for _, p := range peers {
		wantFDB[p.MAC.String()] = p.IP
		for _, v := range []netip.Addr{p.VTEP, p.VTEP6} {
			if v.IsValid() {
				wantNeigh[v] = p.MAC.String()
			}
		}
		for _, c := range p.PodCIDRs {
			if c.Addr().Is4() && p.VTEP.IsValid() {
				wantRoute[c] = p.VTEP
			} else if c.Addr().Is6() && p.VTEP6.IsValid() {
				wantRoute[c] = p.VTEP6
				ipv6 = true
			}
		}
	}
	if ipv6 {
		// A device with IPv6 disabled takes no IPv6 route (EACCES) and drops the IPv6 packets it receives; a
		// new device inherits net.ipv6.conf.default.disable_ipv6.
		if err := t.cfg.Sysctl("net/ipv6/conf/"+t.cfg.Device+"/disable_ipv6", "0"); err != nil {
			return fmt.Errorf("overlay: enable IPv6 on %s: %w", t.cfg.Device, err)
		}
	}
	neighs, err := t.h.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("overlay: list neighbours of %s: %w", t.cfg.Device, err)
	}
	if neighs6, err := t.h.NeighList(idx, netlink.FAMILY_V6); err == nil {
		neighs = append(neighs, neighs6...)
	} else if ipv6 {
		return fmt.Errorf("overlay: list IPv6 neighbours of %s: %w", t.cfg.Device, err)
	}
	have := map[netip.Addr]bool{}
	for _, n := range neighs {
		if n.LinkIndex != idx {
			continue
		}
		a, _ := netip.AddrFromSlice(n.IP)
		a = a.Unmap()
		if n.State&netlink.NUD_NOARP != 0 || a.IsMulticast() || a.IsLinkLocalUnicast() {
			continue // the kernel's own (IPv6 multicast, link-local): never ours
		}
		if m, ok := wantNeigh[a]; ok && m == n.HardwareAddr.String() && n.State == netlink.NUD_PERMANENT {
			have[a] = true
			continue
		}
		if _, ok := wantNeigh[a]; ok {
			continue // replaced below
		}
		if err := t.h.NeighDel(&n); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("overlay: delete neighbour %s: %w", a, err))
		}
	}
	// FDB: MAC -> node IP, permanent.
	fdb, err := t.h.NeighList(idx, syscall.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("overlay: list FDB of %s: %w", t.cfg.Device, err)
	}
	haveFDB := map[string]bool{}
	for _, n := range fdb {
		if n.LinkIndex != idx {
			continue // the dump may hold other devices' entries
		}
		m := n.HardwareAddr.String()
		dst, _ := netip.AddrFromSlice(n.IP)
		dst = dst.Unmap()
		if w, ok := wantFDB[m]; ok && w == dst && n.State&netlink.NUD_PERMANENT != 0 && !haveFDB[m] {
			haveFDB[m] = true
			continue
		}
		n := n
		n.Family = syscall.AF_BRIDGE
		n.Flags |= netlink.NTF_SELF
		if err := t.h.NeighDel(&n); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("overlay: delete FDB entry %s dst %s: %w", m, dst, err))
		}
	}
	for _, p := range peers {
		if !haveFDB[p.MAC.String()] {
			e := &netlink.Neigh{LinkIndex: idx, Family: syscall.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
				IP: net.IP(p.IP.AsSlice()), HardwareAddr: p.MAC}
			if err := t.h.NeighSet(e); err != nil {
				errs = append(errs, fmt.Errorf("overlay: FDB entry %s dst %s (%s): %w", p.MAC, p.IP, p.Node, err))
			}
		}
		for _, v := range []netip.Addr{p.VTEP, p.VTEP6} {
			if !v.IsValid() || have[v] {
				continue
			}
			fam := netlink.FAMILY_V4
			if v.Is6() {
				fam = netlink.FAMILY_V6
			}
			e := &netlink.Neigh{LinkIndex: idx, Family: fam, State: netlink.NUD_PERMANENT, Type: syscall.RTN_UNICAST,
				IP: net.IP(v.AsSlice()), HardwareAddr: p.MAC}
			if err := t.h.NeighSet(e); err != nil {
				errs = append(errs, fmt.Errorf("overlay: neighbour %s lladdr %s (%s): %w", v, p.MAC, p.Node, err))
			}
		}
	}
	// Routes: pod CIDR via VTEP onlink, our protocol and metric.
	var routes []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := t.h.RouteListFiltered(fam, &netlink.Route{LinkIndex: idx, Table: t.cfg.Table},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
		if err != nil && (fam == netlink.FAMILY_V4 || ipv6) {
			return errors.Join(append(errs, fmt.Errorf("overlay: list routes on %s: %w", t.cfg.Device, err))...)
		}
		routes = append(routes, rs...)
	}
	haveRoute := map[netip.Prefix]bool{}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		dst := netip.PrefixFrom(a.Unmap(), ones)
		gw, _ := netip.AddrFromSlice(r.Gw)
		if w, ok := wantRoute[dst]; ok && w == gw.Unmap() && r.Protocol == Protocol && r.Priority == metric(dst) && r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			haveRoute[dst] = true
			continue
		}
		if r.Protocol != Protocol {
			continue // not ours (the kernel's, an operator's): left alone
		}
		r := r
		if err := t.h.RouteDel(&r); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("overlay: delete route %s: %w", dst, err))
		}
	}
	dsts := make([]netip.Prefix, 0, len(wantRoute))
	for d := range wantRoute {
		dsts = append(dsts, d)
	}
	slices.SortFunc(dsts, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, d := range dsts {
		if haveRoute[d] {
			continue
		}
		r := &netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: d.Addr().AsSlice(), Mask: net.CIDRMask(d.Bits(), d.Addr().BitLen())},
			Gw: net.IP(wantRoute[d].AsSlice()), Flags: int(netlink.FLAG_ONLINK), Protocol: Protocol, Priority: metric(d),
			Table: t.cfg.Table, Scope: netlink.SCOPE_UNIVERSE, Type: syscall.RTN_UNICAST}
		if err := t.h.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("overlay: route %s via %s dev %s onlink: %w", d, wantRoute[d], t.cfg.Device, err))
		}
	}
	return errors.Join(errs...)
}

// Remove implements Kernel: the device goes, and the kernel takes its neighbour, FDB entries and routes with it.
func (t *Tunnel) Remove() error { return RemoveDevice(t.h, t.cfg.Device) }

// RemoveDevice deletes the overlay device name (Device if empty) if it is a VXLAN device; a missing one, or a
// link of that name of another type (not ours), is left as it is and not an error. canopy cleanup and
// --overlay=none use it.
func RemoveDevice(h *netlink.Handle, name string) error {
	_, err := removeDevice(h, name, false)
	return err
}

// FindDevice reports whether the overlay device (a VXLAN link named name, Device if empty) exists.
func FindDevice(h *netlink.Handle, name string) (bool, error) {
	return removeDevice(h, name, true)
}

func removeDevice(h *netlink.Handle, name string, dryRun bool) (bool, error) {
	if h == nil {
		h = &netlink.Handle{}
	}
	if name == "" {
		name = Device
	}
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) {
			return false, nil
		}
		return false, fmt.Errorf("overlay: look up %s: %w", name, err)
	}
	if l.Type() != "vxlan" {
		return false, nil
	}
	if dryRun {
		return true, nil
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		return true, fmt.Errorf("overlay: delete %s: %w", name, err)
	}
	return true, nil
}

// procSysctl sets /proc/sys/<path> to value unless it is already.
func procSysctl(path, value string) error {
	f := filepath.Join("/proc/sys", path)
	if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == value {
		return nil
	}
	return os.WriteFile(f, []byte(value), 0o644)
}

// metric is the tunnel route metric of dst's family.
func metric(dst netip.Prefix) int {
	if dst.Addr().Is6() {
		return Metric6
	}
	return Metric
}
