package cleanup

// IPVS needs a kernel that has it: this test runs in the test VM (internal/testsupport/vmtest) and skips
// elsewhere:
//
//	go build -o /tmp/vmexec ./internal/testsupport/vmtest/cmd/vmexec
//	go test -exec /tmp/vmexec -run TestVM ./internal/cleanup

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	mobyipvs "github.com/moby/ipvs"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/internal/testsupport/vmtest"
	ipvsproxy "canopy.io/canopy/proxy/ipvs"
	"canopy.io/canopy/routes"
)

// ipvsServices lists the namespace's virtual services as "TCP 10.96.0.10:80" (fwmark services as "fwmark N").
func ipvsServices(t *testing.T, ns *testns.NS) []string {
	t.Helper()
	h, err := mobyipvs.New(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range svcs {
		if s.FWMark != 0 {
			out = append(out, fmt.Sprintf("fwmark %d", s.FWMark))
			continue
		}
		a, _ := netip.AddrFromSlice(s.Address)
		if s.AddressFamily == syscall.AF_INET {
			a = a.Unmap()
		}
		out = append(out, describeService(s.Protocol, netip.AddrPortFrom(a, s.Port)))
	}
	slices.Sort(out)
	return out
}

func TestVMIPVSCleanup(t *testing.T) {
	vmtest.Require(t)
	testns.Require(t, "iptables-nft", "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ipset", "nft")
	// Load ip_vs before moby/ipvs resolves its netlink family (once per process).
	if ok, err := ipvsproxy.Available(); !ok {
		t.Fatalf("the VM kernel has no IPVS: %v", err)
	}
	node := testns.New(t, "clean-ipvs")
	// The node's uplink (its address is the node IP) and a foreign dummy holding someone's VIP (keepalived).
	ipBatch := []string{"link add up0 type dummy", "addr add 192.168.0.1/24 dev up0", "link set up0 up",
		"link add vip0 type dummy", "addr add 192.168.50.1/32 dev vip0", "link set vip0 up"}
	for _, c := range ipBatch {
		node.MustRun(t, append([]string{"ip"}, strings.Fields(c)...)...)
	}
	node.MustRun(t, "iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE")
	// Foreign virtual services: on an address of no interface, on the foreign VIP, and by firewall mark.
	h, err := mobyipvs.New(node.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, s := range []*mobyipvs.Service{
		{AddressFamily: syscall.AF_INET, Protocol: syscall.IPPROTO_TCP, Address: net.ParseIP("203.0.113.50").To4(), Port: 80, SchedName: "rr"},
		{AddressFamily: syscall.AF_INET, Protocol: syscall.IPPROTO_TCP, Address: net.ParseIP("192.168.50.1").To4(), Port: 443, SchedName: "rr"},
		{AddressFamily: syscall.AF_INET, FWMark: 7, SchedName: "rr"},
	} {
		if err := h.NewService(s); err != nil {
			t.Fatalf("foreign virtual service %+v: %v", s, err)
		}
	}
	before := map[string]string{
		"ipvs":         strings.Join(ipvsServices(t, node), "\n"),
		"ip link":      stdout(t, node, "ip", "-o", "link", "show"),
		"ip addr":      stdout(t, node, "ip", "-o", "addr", "show"),
		"iptables-nft": stdout(t, node, "iptables-nft-save", "-t", "nat"),
	}
	before["iptables-nft"] = counters.ReplaceAllString(dropComments(before["iptables-nft"]), "[0:0]")

	// Canopy's IPVS back end with one service: ClusterIP (bound to canopy-ipvs0), NodePort (on the node IP),
	// ExternalIP (bound), and its masquerade chain in nat.
	sp := &model.ServicePort{Key: "default/web:http/TCP", Namespace: "default", Name: "web", PortName: "http", Protocol: model.TCP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80, NodePort: 30080,
		ExternalIPs: []netip.Addr{netip.MustParseAddr("198.51.100.10")}}
	eps := []model.Endpoint{{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true}}
	sp.ClusterEndpoints, sp.ExternalEndpoints = eps, eps
	err = node.Do(func() error {
		it, err := ipt.OpenFlavour(ipt.NFT)
		if err != nil {
			return err
		}
		b, err := ipvsproxy.New(ipvsproxy.Config{NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")},
			PodCIDRs: []netip.Prefix{clusterCIDR}, IPT: it, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return err
		}
		defer b.Close()
		return b.Sync(map[string]*model.ServicePort{sp.Key: sp}, []string{sp.Key})
	})
	if err != nil {
		t.Fatal(err)
	}
	ours := []string{"virtual service TCP 10.96.0.10:80", "virtual service TCP 192.168.0.1:30080", "virtual service TCP 198.51.100.10:80"}
	with := ipvsServices(t, node)
	for _, s := range ours {
		if !slices.Contains(with, s) {
			t.Fatalf("the IPVS back end made no %s: %q", s, with)
		}
	}
	if out := stdout(t, node, "ip", "-o", "link", "show", ipvsproxy.Interface); !strings.Contains(out, ipvsproxy.Interface) {
		t.Fatalf("no %s", ipvsproxy.Interface)
	}

	// The operator names the node IP, so the foreign VIP's service (also on a local address) is not taken for
	// a NodePort.
	cfg := Config{RouteProtocol: routes.DefaultProtocol, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")}}
	dry := cfg
	dry.DryRun = true
	r := runCleanup(t, node, dry)
	wantItems := append(slices.Clone(ours), "link canopy-ipvs0 (2 addresses)")
	if got := r.Section("ipvs", "").Removed; !slices.Equal(got, wantItems) || r.Failures() != 0 {
		t.Errorf("dry run lists %q (failures %d), want %q", got, r.Failures(), wantItems)
	}
	if got := ipvsServices(t, node); !slices.Equal(got, with) {
		t.Errorf("the dry run changed the virtual services: %q", got)
	}

	r = runCleanup(t, node, cfg)
	if got := r.Section("ipvs", "").Removed; !slices.Equal(got, wantItems) || r.Failures() != 0 {
		t.Errorf("cleanup removed %q (failures %d), want %q", got, r.Failures(), wantItems)
	}
	if got := r.Section("iptables", "nft").Removed; !slices.Contains(got, "nat: chain "+ipvsproxy.Chain) {
		t.Errorf("iptables (nft) removed %q, want the IPVS masquerade chain", got)
	}
	after := map[string]string{
		"ipvs":         strings.Join(ipvsServices(t, node), "\n"),
		"ip link":      stdout(t, node, "ip", "-o", "link", "show"),
		"ip addr":      stdout(t, node, "ip", "-o", "addr", "show"),
		"iptables-nft": counters.ReplaceAllString(dropComments(stdout(t, node, "iptables-nft-save", "-t", "nat")), "[0:0]"),
	}
	diff(t, "after cleanup", before, after)

	r = runCleanup(t, node, cfg)
	if r.Removed() != 0 || r.Failures() != 0 {
		t.Errorf("second run: %d removed, %d failures", r.Removed(), r.Failures())
	}
}

func dropComments(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
