package overlay

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeNone, "none": ModeNone, "VXLAN": ModeVXLAN, " crosssubnet ": ModeCrossSubnet} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"ipip", "cross-subnet", "always"} {
		if _, err := ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q) accepted", in)
		}
	}
}

func TestMACIsStableAndDistinct(t *testing.T) {
	a, err := MAC(addr("10.99.2.15"))
	if err != nil || a.String() != "02:cb:0a:63:02:0f" {
		t.Fatalf("MAC(10.99.2.15) = %v, %v", a, err)
	}
	if a[0]&1 != 0 || a[0]&2 == 0 {
		t.Errorf("%s is not a locally administered unicast MAC", a)
	}
	b, _ := MAC(addr("10.99.2.16"))
	if a.String() == b.String() {
		t.Errorf("two node addresses share the MAC %s", a)
	}
	if m, _ := MAC(addr("::ffff:10.99.2.15")); m.String() != a.String() {
		t.Errorf("4-in-6 form gives %s", m)
	}
	// IPv6 (an IPv6-only node's underlay): hashed, pinned, locally administered unicast, distinct across subnets
	// with the same low bytes.
	m6, err := MAC(addr("fd00:99::11"))
	if err != nil || m6.String() != "06:cb:"+sha4("fd00:99::11") || m6[0]&1 != 0 || m6[0]&2 == 0 {
		t.Errorf("MAC(fd00:99::11) = %v, %v", m6, err)
	}
	if o, _ := MAC(addr("fd00:98::11")); o.String() == m6.String() {
		t.Errorf("fd00:98::11 and fd00:99::11 share %s", o)
	}
	if _, err := MAC(netip.Addr{}); err == nil {
		t.Error("no address got a MAC")
	}
}

func sha4(ip string) string {
	b := addr(ip).As16()
	h := sha256.Sum256(b[:])
	return hex.EncodeToString(h[:1]) + ":" + hex.EncodeToString(h[1:2]) + ":" + hex.EncodeToString(h[2:3]) + ":" + hex.EncodeToString(h[3:4])
}

// Dual stack over the IPv4 underlay: IPv6 pod CIDRs ride the same peer (same MAC and FDB destination) via their
// own VTEP, the network address of the first IPv6 pod CIDR; an IPv4-only configuration ignores them.
func TestDesiredDualStack(t *testing.T) {
	ds := []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")}
	a := NodeInfo{Name: "node1", IP: addr("10.99.0.11"), IP6: addr("fd00:99::11"), PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}}
	b := NodeInfo{Name: "node2", IP: addr("10.99.1.12"), IP6: addr("fd00:99::12"), PodCIDRs: []netip.Prefix{pfx("10.244.2.0/24"), pfx("fd00:10:244:2::/64")}}
	v6only := NodeInfo{Name: "node6", IP: addr("10.99.1.16"), PodCIDRs: []netip.Prefix{pfx("fd00:10:244:6::/64")}}
	self := Self{Name: "node1", IP: a.IP, Subnet: pfx("10.99.0.0/24"), PodCIDRs: a.PodCIDRs}
	p, probs := Desired(ModeCrossSubnet, self, []NodeInfo{a, b, v6only}, ds)
	if len(probs) != 0 || names(p) != "node2,node6" {
		t.Fatalf("peers %s problems %v", names(p), probs)
	}
	if got := p[0]; got.IP != b.IP || got.MAC.String() != "02:cb:0a:63:01:0c" || got.VTEP != addr("10.244.2.0") ||
		got.VTEP6 != addr("fd00:10:244:2::") || !slices.Equal(got.PodCIDRs, b.PodCIDRs) {
		t.Errorf("node2: %v", got)
	}
	if got := p[1]; got.VTEP.IsValid() || got.VTEP6 != addr("fd00:10:244:6::") || len(got.PodCIDRs) != 1 {
		t.Errorf("node6 (IPv6 pod CIDR only): %v", got)
	}
	// IPv4 cluster CIDRs only: the IPv6 pod CIDRs are not routed (as before dual stack).
	if p, _ := Desired(ModeVXLAN, self, []NodeInfo{a, b, v6only}, cluster); names(p) != "node2" || p[0].VTEP6.IsValid() || len(p[0].PodCIDRs) != 1 {
		t.Errorf("IPv4 cluster: %v", p)
	}
	// The IPv6 checks: outside the cluster CIDRs, smaller than /126, overlapping ours or another's, covering a
	// node's IPv6 address.
	for _, c := range []struct {
		cidr, want string
	}{
		{"fd00:20::/64", "outside the cluster CIDRs"},
		{"fd00:10:244:9::4/127", "smaller than /126"},
		{"fd00:10:244:1::/80", "overlaps this node's"},
		{"fd00:10:244:2::/64", "overlaps node2's"},
	} {
		n := NodeInfo{Name: "x", IP: addr("10.99.1.20"), PodCIDRs: []netip.Prefix{pfx("10.244.9.0/24"), pfx(c.cidr)}}
		_, probs := Desired(ModeVXLAN, self, []NodeInfo{a, b, n}, ds)
		if !slices.ContainsFunc(probs, func(p Problem) bool { return p.Node == "x" && strings.Contains(p.Message, c.want) }) {
			t.Errorf("%s: problems %v, want %q", c.cidr, probs, c.want)
		}
	}
	cover := NodeInfo{Name: "x", IP: addr("10.99.1.20"), IP6: addr("fd00:10:244:9::7"), PodCIDRs: []netip.Prefix{pfx("fd00:10:244:9::/64")}}
	if _, probs := Desired(ModeVXLAN, self, []NodeInfo{cover}, ds); len(probs) != 1 || !strings.Contains(probs[0].Message, "covers the node address fd00:10:244:9::7") {
		t.Errorf("covering its own IPv6 address: %v", probs)
	}
}

// An IPv6-only node's tunnel runs over IPv6: peers by their IPv6 addresses (IP6, or IP when that is IPv6),
// hashed MACs, crosssubnet by the IPv6 subnet; a node with only an IPv4 address is refused.
func TestDesiredIPv6Underlay(t *testing.T) {
	c6 := []netip.Prefix{pfx("fd00:10:244::/56")}
	a := NodeInfo{Name: "node1", IP: addr("fd00:99::11"), PodCIDRs: []netip.Prefix{pfx("fd00:10:244:1::/64")}}
	b := NodeInfo{Name: "node2", IP: addr("fd00:99::12"), PodCIDRs: []netip.Prefix{pfx("fd00:10:244:2::/64")}}
	c := NodeInfo{Name: "node3", IP: addr("fd00:98::13"), PodCIDRs: []netip.Prefix{pfx("fd00:10:244:3::/64")}}
	ds := NodeInfo{Name: "node4", IP: addr("10.99.0.14"), IP6: addr("fd00:98::14"), PodCIDRs: []netip.Prefix{pfx("fd00:10:244:4::/64")}}
	v4 := NodeInfo{Name: "node5", IP: addr("10.99.0.15"), PodCIDRs: []netip.Prefix{pfx("fd00:10:244:5::/64")}}
	self := Self{Name: "node1", IP: a.IP, Subnet: pfx("fd00:99::/64"), PodCIDRs: a.PodCIDRs}
	p, probs := Desired(ModeVXLAN, self, []NodeInfo{a, b, c, ds, v4}, c6)
	if names(p) != "node2,node3,node4" || len(probs) != 1 || probs[0].Node != "node5" || !strings.Contains(probs[0].Message, "is not IPv6") {
		t.Fatalf("peers %s problems %v", names(p), probs)
	}
	m, _ := MAC(b.IP)
	if got := p[0]; got.IP != b.IP || got.MAC.String() != m.String() || got.VTEP.IsValid() || got.VTEP6 != addr("fd00:10:244:2::") {
		t.Errorf("node2: %v", got)
	}
	if p[2].IP != ds.IP6 {
		t.Errorf("dual-stack node4 reached at %s, want its IPv6 address", p[2].IP)
	}
	if p, _ := Desired(ModeCrossSubnet, self, []NodeInfo{a, b, c, ds}, c6); names(p) != "node3,node4" {
		t.Errorf("crosssubnet: %s", names(p))
	}
}

// The lab's overlay topology: racks 10.99.0.0/24 and 10.99.1.0/24, an unpeered node in 10.99.2.0/24.
var (
	cluster = []netip.Prefix{pfx("10.244.0.0/16")}
	n1      = NodeInfo{Name: "node1", IP: addr("10.99.0.11"), PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24")}}
	n2      = NodeInfo{Name: "node2", IP: addr("10.99.0.12"), PodCIDRs: []netip.Prefix{pfx("10.244.2.0/24")}}
	n3      = NodeInfo{Name: "node3", IP: addr("10.99.1.13"), PodCIDRs: []netip.Prefix{pfx("10.244.3.0/24"), pfx("fd00:10:244:3::/64")}}
	n5      = NodeInfo{Name: "node5", IP: addr("10.99.2.15"), PodCIDRs: []netip.Prefix{pfx("10.244.5.0/24")}}
	self1   = Self{Name: "node1", IP: n1.IP, Subnet: pfx("10.99.0.0/24"), PodCIDRs: n1.PodCIDRs}
)

func names(ps []Peer) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.Node)
	}
	return strings.Join(s, ",")
}

func TestDesiredModes(t *testing.T) {
	all := []NodeInfo{n5, n3, n2, n1}
	if p, _ := Desired(ModeNone, self1, all, cluster); len(p) != 0 {
		t.Errorf("none: %v", p)
	}
	p, probs := Desired(ModeVXLAN, self1, all, cluster)
	if names(p) != "node2,node3,node5" || len(probs) != 0 {
		t.Errorf("vxlan: peers %s, problems %v", names(p), probs)
	}
	p, _ = Desired(ModeCrossSubnet, self1, all, cluster)
	if names(p) != "node3,node5" {
		t.Fatalf("crosssubnet from node1: %s, want node3,node5 (node2 shares the subnet)", names(p))
	}
	// node3: IPv4 pod CIDRs only, VTEP = the first one's network address, MAC from the node IP.
	if got := p[0]; got.VTEP != addr("10.244.3.0") || len(got.PodCIDRs) != 1 || got.PodCIDRs[0] != pfx("10.244.3.0/24") ||
		got.MAC.String() != "02:cb:0a:63:01:0d" || got.IP != n3.IP {
		t.Errorf("node3 peer: %v", got)
	}
	// From the unpeered node, every rack node is in another subnet.
	self5 := Self{Name: "node5", IP: n5.IP, Subnet: pfx("10.99.2.0/24"), PodCIDRs: n5.PodCIDRs}
	if p, _ := Desired(ModeCrossSubnet, self5, all, cluster); names(p) != "node1,node2,node3" {
		t.Errorf("crosssubnet from node5: %s", names(p))
	}
	// A node without a pod CIDR or an address yet is skipped quietly.
	noAddr := NodeInfo{Name: "noaddr", PodCIDRs: []netip.Prefix{pfx("10.244.9.0/24")}}
	if p, probs := Desired(ModeVXLAN, self1, []NodeInfo{n1, noAddr}, cluster); len(p)+len(probs) != 0 {
		t.Errorf("node without address: %v %v", p, probs)
	}
	if p, probs := Desired(ModeVXLAN, self1, []NodeInfo{n1, {Name: "new", IP: addr("10.99.0.20")}}, cluster); len(p)+len(probs) != 0 {
		t.Errorf("node without pod CIDR: %v %v", p, probs)
	}
}

func TestDesiredRefusesBadNodes(t *testing.T) {
	node := func(name, ip, cidr string) NodeInfo {
		n := NodeInfo{Name: name, PodCIDRs: []netip.Prefix{pfx(cidr)}}
		if ip != "" {
			n.IP = addr(ip)
		}
		return n
	}
	cases := []struct {
		n    NodeInfo
		want string
	}{
		{node("v6", "fd00::9", "10.244.9.0/24"), "not IPv4"},
		{node("lo", "127.0.0.9", "10.244.9.0/24"), "cannot be a tunnel end point"},
		{node("mc", "224.0.0.9", "10.244.9.0/24"), "cannot be a tunnel end point"},
		{node("ll", "169.254.0.9", "10.244.9.0/24"), "cannot be a tunnel end point"},
		{node("bc", "255.255.255.255", "10.244.9.0/24"), "cannot be a tunnel end point"},
		{node("me", "10.99.0.11", "10.244.9.0/24"), "this node's own"},
		{node("outside", "10.99.3.9", "10.55.9.0/24"), "outside the cluster CIDRs"},
		{node("wide", "10.99.3.9", "10.0.0.0/8"), "outside the cluster CIDRs"},
		{node("small", "10.99.3.9", "10.244.9.4/31"), "smaller than /30"},
		{node("mine", "10.99.3.9", "10.244.1.0/25"), "overlaps this node's"},
		{node("cover", "10.244.9.7", "10.244.9.0/24"), "covers the node address"},
	}
	for _, c := range cases {
		p, probs := Desired(ModeVXLAN, self1, []NodeInfo{n1, c.n, n5}, cluster)
		if names(p) != "node5" {
			t.Errorf("%s: peers %s, want node5 only", c.n.Name, names(p))
		}
		if len(probs) != 1 || probs[0].Node != c.n.Name || !strings.Contains(probs[0].Message, c.want) {
			t.Errorf("%s: problems %v, want one containing %q", c.n.Name, probs, c.want)
		}
	}
	// Two nodes claiming one pod CIDR, or one address: both refused, the rest unaffected.
	dup := NodeInfo{Name: "dup", IP: addr("10.99.3.9"), PodCIDRs: n5.PodCIDRs}
	p, probs := Desired(ModeVXLAN, self1, []NodeInfo{n1, n3, n5, dup}, cluster)
	if names(p) != "node3" || len(probs) != 2 {
		t.Errorf("duplicate pod CIDR: peers %s problems %v", names(p), probs)
	}
	same := NodeInfo{Name: "same", IP: n5.IP, PodCIDRs: []netip.Prefix{pfx("10.244.8.0/24")}}
	p, probs = Desired(ModeVXLAN, self1, []NodeInfo{n1, n3, n5, same}, cluster)
	if names(p) != "node3" || len(probs) != 2 {
		t.Errorf("duplicate node address: peers %s problems %v", names(p), probs)
	}
	// Without cluster CIDRs the containment check is off, the rest stays.
	if p, _ := Desired(ModeVXLAN, self1, []NodeInfo{n1, node("outside", "10.99.3.9", "10.55.9.0/24")}, nil); names(p) != "outside" {
		t.Errorf("no cluster CIDRs: %s", names(p))
	}
}
