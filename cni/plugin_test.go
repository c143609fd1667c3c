package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
)

func TestAddCheckDel(t *testing.T) {
	n := newNode(t)
	pod := newTestNS(t, "p1")
	conf := n.conf(t, nil)
	cid := "c1-" + randHex(t, 8)

	res, err := n.add(cid, pod, conf)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	hostName := HostVethName(cid, "eth0")

	// The result.
	if len(res.Interfaces) != 3 {
		t.Fatalf("result has %d interfaces, want 3: %v", len(res.Interfaces), res)
	}
	br, hv, cv := res.Interfaces[0], res.Interfaces[1], res.Interfaces[2]
	if br.Name != "canopy0" || br.Sandbox != "" || hv.Name != hostName || hv.Sandbox != "" || cv.Name != "eth0" || cv.Sandbox != pod.Path {
		t.Errorf("interfaces = %v %v %v", br, hv, cv)
	}
	if cv.Mac == "" || hv.Mac == "" || br.Mac == "" || cv.Mtu != 1500 || hv.Mtu != 1500 {
		t.Errorf("interfaces lack MAC/MTU: %v %v %v", br, hv, cv)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.244.1.2/24" || res.IPs[0].Gateway.String() != "10.244.1.1" ||
		res.IPs[0].Interface == nil || *res.IPs[0].Interface != 2 {
		t.Errorf("ips = %v", res.IPs)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "10.244.1.1" {
		t.Errorf("routes = %v", res.Routes)
	}

	// The node: bridge up with the gateway address, host veth on it with hairpin, forwarding on.
	brLink, err := n.H.LinkByName("canopy0")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := brLink.(*netlink.Bridge); !ok || brLink.Attrs().Flags&net.FlagUp == 0 || brLink.Attrs().MTU != 1500 {
		t.Errorf("canopy0 = %s %+v, want an up bridge with MTU 1500", brLink.Type(), brLink.Attrs())
	}
	addrs, _ := n.H.AddrList(brLink, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.1.1/24" {
		t.Errorf("canopy0 addresses = %v, want 10.244.1.1/24", addrs)
	}
	hostLink, err := n.H.LinkByName(hostName)
	if err != nil {
		t.Fatal(err)
	}
	if hostLink.Attrs().MasterIndex != brLink.Attrs().Index || hostLink.Attrs().MTU != 1500 || hostLink.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host veth %+v: want up, on canopy0, MTU 1500", hostLink.Attrs())
	}
	if pi, err := n.H.LinkGetProtinfo(hostLink); err != nil || !pi.Hairpin {
		t.Errorf("host veth protinfo %+v, %v: want hairpin", pi, err)
	}
	if v := sysctlIn(t, n.Path, "net.ipv4.ip_forward"); v != "1" {
		t.Errorf("node ip_forward = %s, want 1", v)
	}

	// The pod: eth0 up with the address and the default route, lo up.
	eth0, err := pod.H.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().Flags&net.FlagUp == 0 || eth0.Attrs().MTU != 1500 || eth0.Attrs().HardwareAddr.String() != cv.Mac {
		t.Errorf("pod eth0 %+v", eth0.Attrs())
	}
	paddrs, _ := pod.H.AddrList(eth0, netlink.FAMILY_V4)
	if len(paddrs) != 1 || paddrs[0].IPNet.String() != "10.244.1.2/24" {
		t.Errorf("pod eth0 addresses = %v", paddrs)
	}
	routes, _ := pod.H.RouteList(eth0, netlink.FAMILY_V4)
	if !hasDefaultVia(routes, netip.MustParseAddr("10.244.1.1")) {
		t.Errorf("pod routes = %v, want default via 10.244.1.1", routes)
	}
	if lo, _ := pod.H.LinkByName("lo"); lo == nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("pod lo is not up")
	}
	if recs := n.records(t); len(recs) != 1 || recs["10.244.1.2"] != cid+"/eth0" {
		t.Errorf("records = %v", recs)
	}

	// CHECK passes, with and without prevResult.
	if err := n.check(cid, pod, conf); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	withPrevConf := withPrev(t, conf, res)
	if err := n.check(cid, pod, withPrevConf); err != nil {
		t.Errorf("CHECK with prevResult: %v", err)
	}

	// CHECK reports what is wrong: the MTU, the route, the bridge attachment.
	if err := pod.H.LinkSetMTU(eth0, 1400); err != nil {
		t.Fatal(err)
	}
	if err := pod.H.RouteDel(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.244.1.1")}); err != nil {
		t.Fatal(err)
	}
	if err := n.H.LinkSetNoMaster(hostLink); err != nil {
		t.Fatal(err)
	}
	err = n.check(cid, pod, withPrevConf)
	for _, want := range []string{"eth0 in the pod has MTU 1400, want 1500", "no default route via 10.244.1.1", "not attached to bridge canopy0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK after breaking it = %v; want it to say %q", err, want)
		}
	}
	// A CHECK for an attachment that was never made.
	if err := n.check("never-added", pod, conf); err == nil || !strings.Contains(err.Error(), "no address recorded") {
		t.Errorf("CHECK of an unknown container = %v", err)
	}

	// DEL removes the pair and the record; again is fine; an unknown container is fine.
	if err := n.del(cid, pod.Path, withPrevConf); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, err := pod.H.LinkByName("eth0"); err == nil {
		t.Error("pod eth0 still there after DEL")
	}
	if v := n.hostVeths(t); len(v) != 0 {
		t.Errorf("host veths after DEL: %v", v)
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
	for _, c := range []struct{ cid, netns string }{{cid, pod.Path}, {cid, ""}, {"unknown", pod.Path}, {cid, "/var/run/netns/cnp-cni-gone"}} {
		if err := n.del(c.cid, c.netns, conf); err != nil {
			t.Errorf("DEL %s netns %q again: %v", c.cid, c.netns, err)
		}
	}
}

func TestAddRepeatedIsIdempotent(t *testing.T) {
	n := newNode(t)
	pod := newTestNS(t, "p1")
	first := n.mustAdd(t, "c1", pod)
	second := n.mustAdd(t, "c1", pod)
	if first.IPs[0].Address.String() != second.IPs[0].Address.String() || first.Interfaces[2].Mac != second.Interfaces[2].Mac {
		t.Errorf("repeated ADD: %v then %v", first, second)
	}
	if v := n.hostVeths(t); len(v) != 1 {
		t.Errorf("host veths after a repeated ADD: %v", v)
	}
	// An interface by that name that is not ours is refused and left alone.
	other := newTestNS(t, "p2")
	if err := other.H.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	_, err := n.add("c2", other, n.conf(t, nil))
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("ADD over a foreign eth0 = %v", err)
	}
	if _, err := other.H.LinkByName("eth0"); err != nil {
		t.Errorf("the foreign eth0 is gone: %v", err)
	}
	if recs := n.records(t); len(recs) != 1 {
		t.Errorf("records = %v, want only c1's", recs)
	}
}

func TestMTU(t *testing.T) {
	n := newNode(t)
	// No uplink at all: the fallback.
	pod := newTestNS(t, "p1")
	if res := n.mustAdd(t, "c-fallback", pod); res.Interfaces[2].Mtu != 1500 {
		t.Errorf("no uplink: MTU %d, want 1500", res.Interfaces[2].Mtu)
	}
	mustDel(t, n, "c-fallback", pod)

	// An address but no default route (the lab's nodes): that interface's MTU.
	addUplink(t, n.testNS, "fabric0", 1450, "10.99.0.11/24")
	if res := n.mustAdd(t, "c-addr", pod); res.Interfaces[2].Mtu != 1450 {
		t.Errorf("address on fabric0 (1450): MTU %d", res.Interfaces[2].Mtu)
	}
	mustDel(t, n, "c-addr", pod)

	// A default route: its interface wins, the bridge and its ports never count; MTU set on all three.
	up := addUplink(t, n.testNS, "uplink0", 9000, "192.0.2.10/24")
	if err := n.H.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: net.ParseIP("192.0.2.1")}); err != nil {
		t.Fatal(err)
	}
	res := n.mustAdd(t, "c-route", pod)
	if res.Interfaces[2].Mtu != 9000 || res.Interfaces[1].Mtu != 9000 || res.Interfaces[0].Mtu != 9000 {
		t.Errorf("default route via uplink0 (9000): interfaces %v", res.Interfaces)
	}
	if err := n.check("c-route", pod, n.conf(t, nil)); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	mustDel(t, n, "c-route", pod)

	// Overlay overhead is subtracted; an explicit mtu overrides everything.
	res, err := n.add("c-ovl", pod, n.conf(t, map[string]any{"overlayOverhead": 50}))
	if err != nil || res.Interfaces[2].Mtu != 8950 {
		t.Errorf("overlayOverhead 50: %v, %v", res, err)
	}
	mustDel(t, n, "c-ovl", pod)
	res, err = n.add("c-fixed", pod, n.conf(t, map[string]any{"mtu": 1400}))
	if err != nil || res.Interfaces[2].Mtu != 1400 {
		t.Fatalf("mtu 1400: %v, %v", res, err)
	}
	eth0, _ := pod.H.LinkByName("eth0")
	host, _ := n.H.LinkByName(HostVethName("c-fixed", "eth0"))
	br, _ := n.H.LinkByName("canopy0")
	if eth0.Attrs().MTU != 1400 || host.Attrs().MTU != 1400 || br.Attrs().MTU != 1400 {
		t.Errorf("kernel MTUs: pod %d host %d bridge %d, want 1400", eth0.Attrs().MTU, host.Attrs().MTU, br.Attrs().MTU)
	}
	// An overhead that leaves nothing is a config error.
	if _, err := n.add("c-bad", newTestNS(t, "p2"), n.conf(t, map[string]any{"overlayOverhead": 8990})); err == nil ||
		!strings.Contains(err.Error(), "overlayOverhead") {
		t.Errorf("overlayOverhead 8990 on a 9000 uplink = %v", err)
	}
}

func mustDel(tb testing.TB, n *node, cid string, pod *testNS) {
	tb.Helper()
	if err := n.del(cid, pod.Path, n.conf(tb, nil)); err != nil {
		tb.Fatalf("DEL %s: %v", cid, err)
	}
}

// addUplink gives a namespace an "uplink": one end of a veth pair (both ends in the namespace, both up; the kernel
// here may lack the dummy driver) with an MTU and an address.
func addUplink(tb testing.TB, in *testNS, name string, mtu int, addr string) netlink.Link {
	tb.Helper()
	if err := in.H.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: name + "p"}); err != nil {
		tb.Fatalf("add veth %s in %s: %v", name, in.Name, err)
	}
	if peer, err := in.H.LinkByName(name + "p"); err != nil || in.H.LinkSetUp(peer) != nil {
		tb.Fatalf("set %sp up: %v", name, err)
	}
	l, err := in.H.LinkByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		tb.Fatal(err)
	}
	if err := in.H.AddrAdd(l, a); err != nil {
		tb.Fatal(err)
	}
	if err := in.H.LinkSetUp(l); err != nil {
		tb.Fatal(err)
	}
	return l
}

// assertClean fails unless the attachment left nothing: no pod eth0, no host veth, no record.
func assertClean(tb testing.TB, n *node, pod *testNS, cid string) {
	tb.Helper()
	if _, err := pod.H.LinkByName("eth0"); err == nil {
		tb.Errorf("%s: pod eth0 left behind", cid)
	}
	if _, err := n.H.LinkByName(HostVethName(cid, "eth0")); err == nil {
		tb.Errorf("%s: host veth %s left behind", cid, HostVethName(cid, "eth0"))
	}
	for ip, owner := range n.records(tb) {
		if strings.HasPrefix(owner, cid+"/") {
			tb.Errorf("%s: allocation %s left behind", cid, ip)
		}
	}
}

func TestAddRollback(t *testing.T) {
	n := newNode(t)
	conf := n.conf(t, nil)

	// A failure at every stage after something was made leaves nothing of it.
	for _, st := range []string{"allocated", "veth", "attached", "addressed"} {
		t.Run(st, func(t *testing.T) {
			pod := newTestNS(t, "p")
			cid := "fail-" + st
			failAt = func(s string) error {
				if s == st {
					return errors.New("injected failure at " + s)
				}
				return nil
			}
			defer func() { failAt = nil }()
			_, err := n.add(cid, pod, conf)
			if err == nil || !strings.Contains(err.Error(), "injected failure at "+st) {
				t.Fatalf("ADD = %v, want the injected failure", err)
			}
			assertClean(t, n, pod, cid)
			failAt = nil
			// The same pod then attaches normally.
			n.mustAdd(t, cid, pod)
			mustDel(t, n, cid, pod)
		})
	}

	t.Run("veth name collision", func(t *testing.T) {
		pod := newTestNS(t, "p")
		cid := "collide"
		// Something else already holds the host-side name.
		if err := n.H.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: HostVethName(cid, "eth0")}}); err != nil {
			t.Fatal(err)
		}
		_, err := n.add(cid, pod, conf)
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("ADD = %v, want a name collision error", err)
		}
		if _, err := pod.H.LinkByName("eth0"); err == nil {
			t.Error("pod eth0 left behind")
		}
		if recs := n.records(t); len(recs) != 0 {
			t.Errorf("records left behind: %v", recs)
		}
		if _, err := n.H.LinkByName(HostVethName(cid, "eth0")); err != nil {
			t.Errorf("the foreign link was removed: %v", err)
		}
		// DEL does not remove a foreign (non-veth) link either.
		if err := n.del(cid, pod.Path, conf); err != nil {
			t.Errorf("DEL: %v", err)
		}
		if _, err := n.H.LinkByName(HostVethName(cid, "eth0")); err != nil {
			t.Errorf("DEL removed the foreign link: %v", err)
		}
	})

	t.Run("exhausted", func(t *testing.T) {
		small := newNode(t)
		sconf := small.conf(t, map[string]any{"podCIDRs": []string{"10.244.9.0/30"}})
		p1, p2 := newTestNS(t, "p1"), newTestNS(t, "p2")
		if _, err := small.add("first", p1, sconf); err != nil {
			t.Fatal(err)
		}
		_, err := small.add("second", p2, sconf)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || te.Msg != "no free address in 10.244.9.0/30" {
			t.Fatalf("ADD in a full /30 = %#v, want code 11 no free address in 10.244.9.0/30", err)
		}
		assertClean(t, small, p2, "second")
	})

	t.Run("bridge name taken", func(t *testing.T) {
		other := newNode(t)
		if err := other.H.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "canopy0"}, PeerName: "canopy0-peer"}); err != nil {
			t.Fatal(err)
		}
		pod := newTestNS(t, "p")
		_, err := other.add("c", pod, other.conf(t, nil))
		if err == nil || !strings.Contains(err.Error(), "not a bridge") {
			t.Fatalf("ADD = %v, want bridge error", err)
		}
		assertClean(t, other, pod, "c")
	})
}

func TestBadInput(t *testing.T) {
	n := newNode(t)
	pod := newTestNS(t, "p")
	code := func(err error) uint {
		var te *types.Error
		if errors.As(err, &te) {
			return te.Code
		}
		return 0
	}
	for _, tc := range []struct {
		name  string
		args  *skel.CmdArgs
		code  uint
		wants string
	}{
		{"malformed", cmdArgs("c", pod.Path, "eth0", []byte(`{"cniVersion":`)), types.ErrDecodingFailure, "malformed network config JSON"},
		{"missing podCIDRs", cmdArgs("c", pod.Path, "eth0", n.conf(t, map[string]any{"podCIDRs": nil})), types.ErrInvalidNetworkConfig, "podCIDRs: missing"},
		{"bad CIDR", cmdArgs("c", pod.Path, "eth0", n.conf(t, map[string]any{"podCIDRs": []string{"10.244.1.0/24x"}})), types.ErrInvalidNetworkConfig, "podCIDRs[0]"},
		{"wrong type", cmdArgs("c", pod.Path, "eth0", n.conf(t, map[string]any{"mtu": "auto"})), types.ErrInvalidNetworkConfig, "mtu: must be an integer"},
		{"no netns", cmdArgs("c", "", "eth0", n.conf(t, nil)), types.ErrInvalidEnvironmentVariables, "CNI_NETNS is missing"},
		{"netns not there", cmdArgs("c", "/var/run/netns/cnp-cni-does-not-exist", "eth0", n.conf(t, nil)), types.ErrInvalidNetNS, "cnp-cni-does-not-exist"},
		{"netns not a netns", cmdArgs("c", n.DataDir+"-nope", "eth0", n.conf(t, nil)), types.ErrInvalidNetNS, "open the pod network namespace"},
		{"bad ifname", cmdArgs("c", pod.Path, "this-name-is-too-long", n.conf(t, nil)), types.ErrInvalidEnvironmentVariables, "CNI_IFNAME"},
		{"bad container ID", cmdArgs("c/../x", pod.Path, "eth0", n.conf(t, nil)), types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
	} {
		var err error
		_ = n.in(func() error { _, _, err = n.P.Add(tc.args); return nil })
		if err == nil || code(err) != tc.code || !strings.Contains(err.Error(), tc.wants) {
			t.Errorf("%s: ADD = %v (code %d), want code %d mentioning %q", tc.name, err, code(err), tc.code, tc.wants)
		}
	}
	// Nothing was made: no bridge, no veth, no record.
	if names := linkNames(t, n.H); !slices.Equal(names, []string{"lo"}) {
		t.Errorf("node links after bad ADDs: %v", names)
	}
	if _, err := os.Stat(n.DataDir); !os.IsNotExist(err) {
		t.Errorf("data dir created by bad ADDs: %v", err)
	}
	// DEL with a bad config is an error too (it cannot know where the records are).
	if err := n.del("c", pod.Path, []byte(`{`)); code(err) != types.ErrDecodingFailure {
		t.Errorf("DEL with malformed config = %v", err)
	}
}

func TestGCAndStatus(t *testing.T) {
	n := newNode(t)
	pods := map[string]*testNS{}
	for _, cid := range []string{"keep", "gone1", "gone2"} {
		pods[cid] = newTestNS(t, cid)
		n.mustAdd(t, cid, pods[cid])
	}
	gcConf := n.conf(t, map[string]any{"cniVersion": "1.1.0", "cni.dev/valid-attachments": []map[string]string{{"containerID": "keep", "ifname": "eth0"}}})
	if err := n.in(func() error { return n.P.GC(&skel.CmdArgs{StdinData: gcConf}) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	recs := n.records(t)
	if len(recs) != 1 || recs["10.244.1.2"] != "keep/eth0" {
		t.Errorf("records after GC = %v, want only keep's", recs)
	}
	if v := n.hostVeths(t); len(v) != 1 || v[0] != HostVethName("keep", "eth0") {
		t.Errorf("host veths after GC = %v, want only keep's", v)
	}
	if err := n.check("keep", pods["keep"], n.conf(t, nil)); err != nil {
		t.Errorf("CHECK of the kept pod after GC: %v", err)
	}

	// STATUS: fine with a writable dataDir; not with one that cannot exist.
	status := func(conf []byte) error {
		return n.in(func() error { return n.P.Status(&skel.CmdArgs{StdinData: conf}) })
	}
	if err := status(n.conf(t, map[string]any{"cniVersion": "1.1.0"})); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := status(n.conf(t, map[string]any{"cniVersion": "1.1.0", "dataDir": filepath.Join(file, "sub")}))
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "dataDir") {
		t.Errorf("STATUS with an impossible dataDir = %v, want code 50 about dataDir", err)
	}
	if err := status([]byte(`{"cniVersion":"1.1.0","name":"x"}`)); err == nil || !strings.Contains(err.Error(), "podCIDRs") {
		t.Errorf("STATUS with an invalid config = %v", err)
	}
}

func TestCIDRChange(t *testing.T) {
	n := newNode(t)
	p1, p2 := newTestNS(t, "p1"), newTestNS(t, "p2")
	n.mustAdd(t, "old", p1)
	// The node is given another pod CIDR; the agent rewrites the config.
	newConf := n.conf(t, map[string]any{"podCIDRs": []string{"10.244.7.0/24"}})
	res, err := n.add("new", p2, newConf)
	if err != nil {
		t.Fatal(err)
	}
	if res.IPs[0].Address.String() != "10.244.7.2/24" {
		t.Errorf("new pod got %s", res.IPs[0].Address.String())
	}
	br, _ := n.H.LinkByName("canopy0")
	addrs, _ := n.H.AddrList(br, netlink.FAMILY_V4)
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"10.244.1.1/24", "10.244.7.1/24"}) {
		t.Errorf("bridge addresses = %v: the old gateway stays for the old pods, the new one is added", got)
	}
	// The old pod's address is reclaimed by its DEL under the new config.
	if err := n.del("old", p1.Path, newConf); err != nil {
		t.Fatal(err)
	}
	if recs := n.records(t); len(recs) != 1 || recs["10.244.7.2"] != "new/eth0" {
		t.Errorf("records = %v", recs)
	}
}

// TestResultVersions: the result comes in the version the config asks for.
func TestResultVersions(t *testing.T) {
	n := newNode(t)
	for i, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		pod := newTestNS(t, fmt.Sprintf("v%d", i))
		cid := fmt.Sprintf("ver-%d", i)
		var out strings.Builder
		p := &Plugin{Stdout: &out}
		err := n.in(func() error {
			return p.Funcs().Add(cmdArgs(cid, pod.Path, "eth0", n.conf(t, map[string]any{"cniVersion": v})))
		})
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		var got struct {
			CNIVersion string `json:"cniVersion"`
		}
		if err := json.Unmarshal([]byte(out.String()), &got); err != nil || got.CNIVersion != v {
			t.Errorf("%s: result %s (%v)", v, out.String(), err)
		}
		if v != "0.4.0" {
			r, err := current.NewResult([]byte(out.String()))
			if err != nil || len(r.(*current.Result).IPs) != 1 {
				t.Errorf("%s: result does not parse as types/100: %v", v, err)
			}
		}
	}
}
