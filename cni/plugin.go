package cni

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"

	"canopy.io/canopy/cni/ipam"
)

// Plugin runs the CNI commands. It must be called from the node's network namespace (where the runtime runs the
// plugin binary). The zero value is ready to use.
type Plugin struct {
	// Stdout receives ADD's result; nil means os.Stdout.
	Stdout io.Writer
}

// Funcs wires the plugin into skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			res, cniVersion, err := p.Add(args)
			if err != nil {
				return err
			}
			out, err := res.GetAsVersion(cniVersion)
			if err != nil {
				return types.NewError(types.ErrIncompatibleCNIVersion, "convert the result to cniVersion "+cniVersion, err.Error())
			}
			return out.PrintTo(p.stdout())
		},
		Del:    p.Del,
		Check:  p.Check,
		GC:     p.GC,
		Status: p.Status,
	}
}

func (p *Plugin) stdout() io.Writer {
	if p.Stdout != nil {
		return p.Stdout
	}
	return os.Stdout
}

// failAt, when set (by tests), is called at each stage of ADD; an error it returns fails ADD there, to exercise
// the rollback.
var failAt func(stage string) error

func stage(name string) error {
	if failAt != nil {
		return failAt(name)
	}
	return nil
}

// Index of each interface in the result.
const (
	ifBridge    = 0
	ifHost      = 1
	ifContainer = 2
)

// checkArgs validates the environment a command got.
func checkArgs(args *skel.CmdArgs, needNetns bool) error {
	if needNetns && args.Netns == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is missing: the path of the pod's network namespace is required", "")
	}
	if e := utils.ValidateContainerID(args.ContainerID); e != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID: "+e.Msg, e.Details)
	}
	if e := utils.ValidateInterfaceName(args.IfName); e != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME %q: %s", args.IfName, e.Msg), e.Details)
	}
	return nil
}

func openNetNS(path string) (ns.NetNS, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open the pod network namespace %q: %v", path, err), "")
	}
	return n, nil
}

func allocator(c *Config) (*ipam.Allocator, error) {
	a, err := ipam.New(c.DataDir, c.PodCIDRs)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network config: podCIDRs: "+err.Error(), "")
	}
	return a, nil
}

// Add attaches a pod: node bridge, veth pair, address, default route. It returns the result in the current spec
// version and the version the config asked for. On failure nothing it created is left behind: the veth pair is
// deleted and a newly allocated address released (the bridge, shared by all pods, stays).
func (p *Plugin) Add(args *skel.CmdArgs) (_ *current.Result, cniVersion string, retErr error) {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, "", err
	}
	if err := checkArgs(args, true); err != nil {
		return nil, "", err
	}
	podNS, err := openNetNS(args.Netns)
	if err != nil {
		return nil, "", err
	}
	defer podNS.Close()
	mtu, err := resolveMTU(cfg)
	if err != nil {
		return nil, "", types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	alloc, err := allocator(cfg)
	if err != nil {
		return nil, "", err
	}

	// The node: forwarding on for each family (this is the node's namespace: the plugin runs there), the bridge
	// with its gateways.
	if err := enableForwarding(cfg.PodCIDRs, os.Stderr); err != nil {
		return nil, "", err
	}
	br, err := ensureBridge(cfg.Bridge, mtu, cfg.PodCIDRs)
	if err != nil {
		return nil, "", err
	}

	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	hostName := HostVethName(args.ContainerID, args.IfName)

	// A repeated ADD finds its interface already there: answer with what exists if it is sound, else refuse
	// without touching it.
	var contExists bool
	if err := podNS.Do(func(ns.NetNS) error {
		_, err := netlinksafe.LinkByName(args.IfName)
		if err != nil && !isNotFound(err) {
			return err
		}
		contExists = err == nil
		return nil
	}); err != nil {
		return nil, "", fmt.Errorf("look up %s in %s: %w", args.IfName, args.Netns, err)
	}
	if contExists {
		res, problems := inspect(cfg, args, podNS, mtu, alloc)
		if len(problems) > 0 {
			return nil, "", fmt.Errorf("interface %s already exists in %s and is not a sound canopy attachment of container %s: %s",
				args.IfName, args.Netns, args.ContainerID, strings.Join(problems, "; "))
		}
		return res, cfg.CNIVersion, nil
	}
	if l, err := netlinksafe.LinkByName(hostName); err == nil {
		return nil, "", fmt.Errorf("host interface %s (the name derived from container %s, %s) already exists as a %s link; "+
			"a DEL for that container, or removing the link, clears it", hostName, args.ContainerID, args.IfName, l.Type())
	}

	// The address.
	allocs, err := alloc.Allocate(att)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			return nil, "", types.NewError(types.ErrTryAgainLater, err.Error(), "")
		}
		return nil, "", err
	}
	defer func() {
		if retErr == nil {
			return
		}
		for _, a := range allocs {
			if !a.Existing {
				if _, err := alloc.ReleaseAddr(att, a.Address.Addr()); err != nil {
					fmt.Fprintf(os.Stderr, "canopy-cni: rollback: release %s: %v\n", a.Address.Addr(), err)
				}
			}
		}
	}()
	if err := stage("allocated"); err != nil {
		return nil, "", err
	}

	// The veth pair, made in the pod namespace with the host end moved to ours. From here on, undo it on failure:
	// deleting either end deletes the pair. Neither name existed before, so whatever carries them now is ours.
	var hostIf, contIf net.Interface
	defer func() {
		if retErr == nil {
			return
		}
		if err := podNS.Do(func(ns.NetNS) error {
			if err := ip.DelLinkByName(args.IfName); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
				return err
			}
			return nil
		}); err != nil {
			fmt.Fprintf(os.Stderr, "canopy-cni: rollback: delete %s in %s: %v\n", args.IfName, args.Netns, err)
		}
		if err := ip.DelLinkByName(hostName); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
			fmt.Fprintf(os.Stderr, "canopy-cni: rollback: delete %s: %v\n", hostName, err)
		}
	}()
	if err := podNS.Do(func(hostNS ns.NetNS) error {
		var err error
		hostIf, contIf, err = ip.SetupVethWithName(args.IfName, hostName, mtu, "", hostNS)
		return err
	}); err != nil {
		return nil, "", fmt.Errorf("create veth pair %s (pod) / %s (node): %w", args.IfName, hostName, err)
	}
	if err := stage("veth"); err != nil {
		return nil, "", err
	}

	// The host end: on the bridge, hairpin as configured.
	hostLink, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return nil, "", fmt.Errorf("look up %s after creating it: %w", hostName, err)
	}
	if err := netlink.LinkSetMaster(hostLink, br); err != nil {
		return nil, "", fmt.Errorf("attach %s to bridge %s: %w", hostName, cfg.Bridge, err)
	}
	if err := netlink.LinkSetHairpin(hostLink, cfg.Hairpin); err != nil {
		return nil, "", fmt.Errorf("set hairpin %v on %s: %w", cfg.Hairpin, hostName, err)
	}
	if err := stage("attached"); err != nil {
		return nil, "", err
	}

	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			ifBridge:    {Name: br.Attrs().Name, Mac: br.Attrs().HardwareAddr.String(), Mtu: br.Attrs().MTU},
			ifHost:      {Name: hostIf.Name, Mac: hostLink.Attrs().HardwareAddr.String(), Mtu: hostLink.Attrs().MTU},
			ifContainer: {Name: contIf.Name, Mac: contIf.HardwareAddr.String(), Mtu: contIf.MTU, Sandbox: args.Netns},
		},
	}
	addResultIPs(res, allocs)

	// The pod side: loopback up (pods talk to themselves over localhost), the address, the default route.
	if err := podNS.Do(func(ns.NetNS) error {
		if lo, err := netlinksafe.LinkByName("lo"); err == nil {
			if err := netlink.LinkSetUp(lo); err != nil {
				return fmt.Errorf("set lo up: %w", err)
			}
		}
		// Announce the (possibly reused) address with a gratuitous ARP when the link comes up.
		_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv4/conf/%s/arp_notify", args.IfName), "1")
		if hasV6Alloc(allocs) {
			if err := prepareIPv6(args.IfName); err != nil {
				return err
			}
		}
		return configureIface(args.IfName, res)
	}); err != nil {
		return nil, "", fmt.Errorf("configure %s in %s: %w", args.IfName, args.Netns, err)
	}
	if err := stage("addressed"); err != nil {
		return nil, "", err
	}
	if cfg.AgentSocket != "" && len(res.IPs) > 0 {
		ips := make([]string, 0, len(res.IPs))
		for _, ipc := range res.IPs {
			ips = append(ips, ipc.Address.IP.String())
		}
		notifyAgent(cfg.AgentSocket, args.Args, ips, AgentWait)
	}
	return res, cfg.CNIVersion, nil
}

// configureIface applies a result's addresses and routes to the pod interface and brings it up; it runs in the pod's
// namespace. (The plugins module's ipam.ConfigureIface does the same but drags libcni's invoke package, and with it
// OpenTelemetry, into the build.)
func configureIface(ifName string, res *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("look up %s: %w", ifName, err)
	}
	for _, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &ipc.Address, Flags: addrFlags(a.Unmap())}); err != nil {
			return fmt.Errorf("add address %s to %s: %w", ipc.Address.String(), ifName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", ifName, err)
	}
	for _, r := range res.Routes {
		dst := r.Dst
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &dst, Gw: r.GW, Priority: r.Priority}
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("add route %s via %s dev %s: %w", r.Dst.String(), r.GW, ifName, err)
		}
	}
	return nil
}

// hasV6Alloc reports whether an allocation is IPv6.
func hasV6Alloc(allocs []ipam.Allocation) bool {
	for _, a := range allocs {
		if a.Address.Addr().Is6() {
			return true
		}
	}
	return false
}

// prepareIPv6 readies the pod interface for its IPv6 address, in the pod's namespace: IPv6 on for it and lo (a
// runtime may create namespaces with IPv6 disabled), no duplicate address detection (the address is ours alone, and
// a tentative address is unusable for a second or more: the pod must work as soon as ADD returns; the address is
// also added with IFA_F_NODAD), and an unsolicited neighbour advertisement when the address is added (the IPv6
// arp_notify), so neighbours forget a reused address's old MAC.
func prepareIPv6(ifName string) error {
	for _, dev := range []string{"lo", ifName} {
		if err := ensureSysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", dev), "0"); err != nil {
			return fmt.Errorf("enable IPv6 on %s: %w", dev, err)
		}
	}
	if err := ensureSysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_dad", ifName), "0"); err != nil {
		return err
	}
	_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/ndisc_notify", ifName), "1")
	return nil
}

// addResultIPs fills the IPs (on the container interface) and the default route of each family.
func addResultIPs(res *current.Result, allocs []ipam.Allocation) {
	for _, a := range allocs {
		gw := net.IP(a.Gateway.AsSlice())
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: current.Int(ifContainer),
			Address:   *prefixToIPNet(a.Address),
			Gateway:   gw,
		})
		dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if a.Address.Addr().Is6() {
			dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		res.Routes = append(res.Routes, &types.Route{Dst: dst, GW: gw})
	}
}

// Del detaches a pod: deletes its interface (and with it the veth pair) and releases its address. It succeeds when
// there is nothing to delete: a second DEL, an unknown container, a pod namespace that is already gone.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkArgs(args, false); err != nil {
		return err
	}
	hostName := HostVethName(args.ContainerID, args.IfName)
	if args.Netns != "" {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			l, err := netlinksafe.LinkByName(args.IfName)
			if err != nil {
				if isNotFound(err) {
					return nil
				}
				return err
			}
			// Only a veth whose peer is our host end is ours to delete.
			if _, ok := l.(*netlink.Veth); !ok {
				return nil
			}
			if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
				return err
			}
			return nil
		})
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if err != nil && !errors.As(err, &notExist) && !errors.As(err, &notNS) {
			return fmt.Errorf("delete %s in %s: %w", args.IfName, args.Netns, err)
		}
	}
	// The host end outlives a pod namespace only when the namespace is still around somewhere the runtime did not
	// tell us; delete it if it is a veth on our bridge (anything else of that name is not ours).
	if l, err := netlinksafe.LinkByName(hostName); err == nil {
		br, berr := netlinksafe.LinkByName(cfg.Bridge)
		if _, ok := l.(*netlink.Veth); ok && berr == nil && l.Attrs().MasterIndex == br.Attrs().Index {
			if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
				return fmt.Errorf("delete host veth %s: %w", hostName, err)
			}
		}
	}
	alloc, err := allocator(cfg)
	if err != nil {
		return err
	}
	if _, err := alloc.Release(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		return err
	}
	return nil
}

// Check verifies an attachment: the pod interface with the recorded address, MTU and default route, its host end
// on the bridge, the bridge with its gateway address, forwarding on. The error lists everything that is wrong.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkArgs(args, true); err != nil {
		return err
	}
	podNS, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	alloc, err := allocator(cfg)
	if err != nil {
		return err
	}
	mtu := 0
	if pr := cfg.PrevResult; pr != nil {
		for _, i := range pr.Interfaces {
			if i.Name == args.IfName && i.Sandbox != "" && i.Mtu > 0 {
				mtu = i.Mtu
			}
		}
	}
	if mtu == 0 {
		if mtu, err = resolveMTU(cfg); err != nil {
			return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
		}
	}
	_, problems := inspect(cfg, args, podNS, mtu, alloc)
	if len(problems) > 0 {
		return fmt.Errorf("CHECK of container %s interface %s: %s", args.ContainerID, args.IfName, strings.Join(problems, "; "))
	}
	return nil
}

// inspect compares an attachment as it is with what it should be and returns it as a result, with the problems
// found (none: the result is what ADD returned).
func inspect(cfg *Config, args *skel.CmdArgs, podNS ns.NetNS, mtu int, alloc *ipam.Allocator) (*current.Result, []string) {
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }

	// The address on record.
	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	recs, err := alloc.Get(att)
	if err != nil {
		bad("read address records: %v", err)
	}
	var allocs []ipam.Allocation
	for _, r := range recs {
		if a, ok := alloc.InRange(r.IP); ok {
			allocs = append(allocs, a)
		} else {
			bad("recorded address %s is outside podCIDRs %v", r.IP, cfg.PodCIDRs)
		}
	}
	if len(recs) == 0 && err == nil {
		bad("no address recorded for the attachment in %s", cfg.DataDir)
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Interfaces: make([]*current.Interface, 3)}
	addResultIPs(res, allocs)
	if pr := cfg.PrevResult; pr != nil {
		for _, ipc := range pr.IPs {
			found := false
			for _, a := range allocs {
				if ipc.Address.String() == prefixToIPNet(a.Address).String() {
					found = true
				}
			}
			if !found {
				bad("prevResult address %s is not the recorded one", ipc.Address.String())
			}
		}
	}

	// The node side.
	var brIndex int
	brLink, err := netlinksafe.LinkByName(cfg.Bridge)
	switch {
	case err != nil:
		bad("bridge %s: %v", cfg.Bridge, err)
	case brLink.Type() != "bridge":
		bad("%s is a %s, not a bridge", cfg.Bridge, brLink.Type())
	default:
		brIndex = brLink.Attrs().Index
		res.Interfaces[ifBridge] = &current.Interface{Name: cfg.Bridge, Mac: brLink.Attrs().HardwareAddr.String(), Mtu: brLink.Attrs().MTU}
		if brLink.Attrs().Flags&net.FlagUp == 0 {
			bad("bridge %s is down", cfg.Bridge)
		}
		if addrs, err := netlinksafe.AddrList(brLink, netlink.FAMILY_ALL); err != nil {
			bad("bridge %s: list addresses: %v", cfg.Bridge, err)
		} else {
			for _, a := range allocs {
				gw := netip.PrefixFrom(a.Gateway, a.Address.Bits())
				if have := findAddr(addrs, gw); have == nil {
					bad("bridge %s lacks the gateway address %s", cfg.Bridge, gw)
				} else if why := unusable(have); why != "" {
					bad("the gateway address %s on bridge %s %s", gw, cfg.Bridge, why)
				}
			}
		}
	}
	if hasIPv4(cfg.PodCIDRs) {
		if v, err := sysctl.Sysctl("net/ipv4/ip_forward"); err != nil || strings.TrimSpace(v) != "1" {
			bad("net.ipv4.ip_forward is %q on the node, want 1 (%v)", v, err)
		}
	}
	if hasIPv6(cfg.PodCIDRs) {
		if v, err := sysctl.Sysctl("net/ipv6/conf/all/forwarding"); err != nil || strings.TrimSpace(v) != "1" {
			bad("net.ipv6.conf.all.forwarding is %q on the node, want 1 (%v)", strings.TrimSpace(v), err)
		}
	}
	hostName := HostVethName(args.ContainerID, args.IfName)
	hostIndex, hostPeer := 0, 0
	hostLink, err := netlinksafe.LinkByName(hostName)
	switch {
	case err != nil:
		bad("host veth %s: %v", hostName, err)
	case hostLink.Type() != "veth":
		bad("host interface %s is a %s, not a veth", hostName, hostLink.Type())
	default:
		ha := hostLink.Attrs()
		hostIndex, hostPeer = ha.Index, ha.ParentIndex
		res.Interfaces[ifHost] = &current.Interface{Name: hostName, Mac: ha.HardwareAddr.String(), Mtu: ha.MTU}
		if brIndex != 0 && ha.MasterIndex != brIndex {
			bad("host veth %s is not attached to bridge %s", hostName, cfg.Bridge)
		}
		if ha.Flags&net.FlagUp == 0 {
			bad("host veth %s is down", hostName)
		}
		if ha.MTU != mtu {
			bad("host veth %s has MTU %d, want %d", hostName, ha.MTU, mtu)
		}
		if pi, err := netlinksafe.LinkGetProtinfo(hostLink); err != nil {
			bad("host veth %s: read bridge port flags: %v", hostName, err)
		} else if pi.Hairpin != cfg.Hairpin {
			bad("host veth %s has hairpin %v, want %v", hostName, pi.Hairpin, cfg.Hairpin)
		}
	}

	// The pod side.
	err = podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(args.IfName)
		if err != nil {
			bad("%s in %s: %v", args.IfName, args.Netns, err)
			return nil
		}
		a := l.Attrs()
		res.Interfaces[ifContainer] = &current.Interface{Name: a.Name, Mac: a.HardwareAddr.String(), Mtu: a.MTU, Sandbox: args.Netns}
		if l.Type() != "veth" {
			bad("%s in the pod is a %s, not a veth", args.IfName, l.Type())
		} else if hostIndex != 0 && (a.ParentIndex != hostIndex || hostPeer != a.Index) {
			bad("%s in the pod is not the peer of host veth %s", args.IfName, hostName)
		}
		if a.Flags&net.FlagUp == 0 {
			bad("%s in the pod is down", args.IfName)
		}
		if a.MTU != mtu {
			bad("%s in the pod has MTU %d, want %d", args.IfName, a.MTU, mtu)
		}
		addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			bad("%s in the pod: list addresses: %v", args.IfName, err)
		}
		routes, err := netlinksafe.RouteList(l, netlink.FAMILY_ALL)
		if err != nil {
			bad("%s in the pod: list routes: %v", args.IfName, err)
		}
		for _, al := range allocs {
			if have := findAddr(addrs, al.Address); have == nil {
				bad("%s in the pod lacks its address %s", args.IfName, al.Address)
			} else if why := unusable(have); why != "" {
				bad("the address %s of %s in the pod %s", al.Address, args.IfName, why)
			}
			if !hasDefaultVia(routes, al.Gateway) {
				bad("%s in the pod has no default route via %s", args.IfName, al.Gateway)
			}
		}
		return nil
	})
	if err != nil {
		bad("enter %s: %v", args.Netns, err)
	}
	for i, ifc := range res.Interfaces {
		if ifc == nil {
			res.Interfaces[i] = &current.Interface{}
		}
	}
	return res, problems
}

func hasDefaultVia(routes []netlink.Route, gw netip.Addr) bool {
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.Table != 0 && r.Table != 254 {
			continue
		}
		if g, ok := netip.AddrFromSlice(r.Gw); ok && g.Unmap() == gw {
			return true
		}
	}
	return false
}

// GC releases the addresses of every attachment not in the runtime's list of valid ones, and deletes host veths
// on our bridge that belong to none of them (left behind by a pod namespace that leaked). It goes on past errors
// and reports them all.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	alloc, err := allocator(cfg)
	if err != nil {
		return err
	}
	valid := make([]ipam.Attachment, 0, len(cfg.ValidAttachments))
	validVeth := map[string]bool{}
	for _, a := range cfg.ValidAttachments {
		valid = append(valid, ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
		validVeth[HostVethName(a.ContainerID, a.IfName)] = true
	}
	var errs []error
	if _, err := alloc.GC(valid); err != nil {
		errs = append(errs, err)
	}
	if br, err := netlinksafe.LinkByName(cfg.Bridge); err == nil {
		links, err := netlinksafe.LinkList()
		if err != nil {
			errs = append(errs, fmt.Errorf("list links: %w", err))
		}
		for _, l := range links {
			a := l.Attrs()
			if l.Type() != "veth" || a.MasterIndex != br.Attrs().Index || !isHostVethName(a.Name) || validVeth[a.Name] {
				continue
			}
			if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete stale host veth %s: %w", a.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Status reports the plugin ready when its config is valid and its data directory writable.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("dataDir %s cannot be created: %v", cfg.DataDir, err), "")
	}
	f, err := os.CreateTemp(cfg.DataDir, ".status-")
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("dataDir %s is not writable: %v", cfg.DataDir, err), "")
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("dataDir %s: remove a test file: %v", cfg.DataDir, err), "")
	}
	return nil
}
