package cleanup

// A node namespace gets foreign state (routes, iptables rules and chains in both back ends and both families, an
// ipset, an nftables table, links, files), then Canopy's state from the real code paths (pod egress, the FORWARD
// accept, the BGP guard, the iptables service proxy, the NetworkPolicy firewall, learned routes, the CNI
// plugin's bridge and veths, the conflist and plugin), and cleanup must bring it back to exactly the
// foreign state.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"canopy.io/canopy/cni"
	"canopy.io/canopy/cni/conflist"
	"canopy.io/canopy/internal/egress"
	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/policy"
	iptproxy "canopy.io/canopy/proxy/iptables"
	"canopy.io/canopy/routes"
)

var kernelTools = []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy", "iptables-nft-save",
	"iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save", "iptables-nft-restore", "iptables-legacy-restore",
	"ip6tables-nft-restore", "ip6tables-legacy-restore", "ipset", "nft"}

// stdout runs a command inside ns and returns its standard output only (iptables-legacy-save warns about nft
// tables on stderr).
func stdout(t *testing.T, ns *testns.NS, cmd ...string) string {
	t.Helper()
	var out []byte
	err := ns.Do(func() error {
		var stderr bytes.Buffer
		c := exec.Command(cmd[0], cmd[1:]...)
		c.Stderr = &stderr
		var err error
		if out, err = c.Output(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(cmd, " "), err, stderr.String())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

var (
	counters  = regexp.MustCompile(`\[\d+:\d+\]`)
	nftCounts = regexp.MustCompile(`packets \d+ bytes \d+`)
)

// snapshot is the namespace's state as the tools print it, normalised (no comments, no counters).
func snapshot(t *testing.T, ns *testns.NS) map[string]string {
	t.Helper()
	snap := map[string]string{
		"ip route":    stdout(t, ns, "ip", "route", "show", "table", "all"),
		"ip -6 route": stdout(t, ns, "ip", "-6", "route", "show", "table", "all"),
		"ip link":     stdout(t, ns, "ip", "-o", "link", "show"),
		"ip addr":     stdout(t, ns, "ip", "-o", "addr", "show"),
		"ipset":       stdout(t, ns, "ipset", "save"),
		"nft tables":  stdout(t, ns, "nft", "list", "tables"),
		"nft foreign": nftCounts.ReplaceAllString(stdout(t, ns, "nft", "list", "table", "inet", "foreign"), "packets 0 bytes 0"),
	}
	for _, b := range []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"} {
		var lines []string
		for _, l := range strings.Split(stdout(t, ns, b+"-save"), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, counters.ReplaceAllString(l, "[0:0]"))
			}
		}
		snap[b+"-save"] = strings.Join(lines, "\n")
	}
	return snap
}

// diff reports the snapshot parts that differ, line by line.
func diff(t *testing.T, what string, want, got map[string]string, only ...string) {
	t.Helper()
	keys := only
	if len(keys) == 0 {
		for k := range want {
			keys = append(keys, k)
		}
		slices.Sort(keys)
	}
	for _, k := range keys {
		if want[k] == got[k] {
			continue
		}
		w, g := strings.Split(want[k], "\n"), strings.Split(got[k], "\n")
		var b strings.Builder
		for _, l := range g {
			if !slices.Contains(w, l) {
				fmt.Fprintf(&b, "  + %s\n", l)
			}
		}
		for _, l := range w {
			if !slices.Contains(g, l) {
				fmt.Fprintf(&b, "  - %s\n", l)
			}
		}
		if b.Len() == 0 {
			b.WriteString("  (same lines, different order)\n")
		}
		t.Errorf("%s: %s differs:\n%s", what, k, b.String())
	}
}

// foreign gives the node state that is not Canopy's: all of it must survive every cleanup.
func foreign(t *testing.T, node *testns.NS) {
	run := func(cmd ...string) { t.Helper(); node.MustRun(t, cmd...) }
	// No DAD: addresses are final at once, so snapshots do not race the kernel.
	run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	run("ip", "link", "add", "fx0", "type", "veth", "peer", "name", "fx1")
	run("ip", "addr", "add", "10.0.0.1/24", "dev", "fx0")
	run("ip", "addr", "add", "fd00::1/64", "dev", "fx0")
	run("ip", "link", "set", "fx0", "up")
	run("ip", "link", "set", "fx1", "up")
	run("ip", "link", "add", "cnp-foreign", "type", "bridge")                                      // looks like ours, is not (no 12 hex digits)
	run("ip", "route", "add", "192.0.2.0/24", "via", "10.0.0.2")                                   // static, proto boot
	run("ip", "route", "add", "10.244.2.0/24", "via", "10.0.0.3", "metric", "100")                 // same destination as one of ours
	run("ip", "route", "add", "198.18.0.0/15", "via", "10.0.0.2", "proto", "187")                  // another daemon's protocol
	run("ip", "route", "add", "203.0.113.0/24", "via", "10.0.0.2", "proto", "186", "table", "100") // our protocol, other table
	run("ip", "-6", "route", "add", "2001:db8:9::/48", "via", "fd00::2")
	for _, f := range []string{"nft", "legacy"} {
		ipt4 := "iptables-" + f
		run(ipt4, "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE")
		run(ipt4, "-t", "nat", "-N", "FOREIGN-NAT")
		run(ipt4, "-t", "nat", "-A", "FOREIGN-NAT", "-p", "tcp", "--dport", "8080", "-j", "RETURN")
		run(ipt4, "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN-NAT")
		run(ipt4, "-N", "FOREIGN")
		run(ipt4, "-A", "FOREIGN", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
		run(ipt4, "-A", "INPUT", "-j", "FOREIGN")
		run(ipt4, "-N", "CANOPYX") // a look-alike: not ours
		run(ipt4, "-A", "CANOPYX", "-j", "RETURN")
		run(ipt4, "-A", "FORWARD", "-j", "CANOPYX")
		run(ipt4, "-A", "FORWARD", "-m", "comment", "--comment", "jump -j CANOPY-SERVICES is not ours", "-j", "ACCEPT")
		run(ipt4, "-A", "FORWARD", "-m", "comment", "--comment", "CANOPY-POL-FORWARD", "-j", "ACCEPT")
		run(ipt4, "-A", "OUTPUT", "-m", "comment", "--comment", "say \"-g CANOPY-BGP-GUARD\"", "-j", "ACCEPT")
		run(ipt4, "-P", "FORWARD", "DROP")
		ipt6 := "ip6tables-" + f
		run(ipt6, "-A", "INPUT", "-s", "2001:db8::/32", "-j", "ACCEPT")
		run(ipt6, "-N", "FOREIGN6")
		run(ipt6, "-A", "FOREIGN6", "-j", "RETURN")
		run(ipt6, "-A", "FORWARD", "-j", "FOREIGN6")
	}
	run("ipset", "create", "FOREIGN", "hash:ip")
	run("ipset", "add", "FOREIGN", "192.0.2.1")
	run("ipset", "create", "CANOPYX", "hash:net")
	run("iptables-nft", "-A", "INPUT", "-m", "set", "--match-set", "FOREIGN", "src", "-j", "ACCEPT")
	run("nft", "add", "table", "inet", "foreign")
	run("nft", "add", "chain", "inet", "foreign", "input", "{ type filter hook input priority 10; policy accept; }")
	run("nft", "add", "rule", "inet", "foreign", "input", "tcp", "dport", "443", "counter", "accept")
}

// nodeDirs are the node's CNI directories and the agent's socket, under a test directory.
type nodeDirs struct {
	conf, bin, data, socket string
}

func newNodeDirs(t *testing.T) nodeDirs {
	root := t.TempDir()
	d := nodeDirs{conf: filepath.Join(root, "etc/cni/net.d"), bin: filepath.Join(root, "opt/cni/bin"),
		data: filepath.Join(root, "var/lib/cni/canopy"), socket: filepath.Join(root, "run/canopy/cni.sock")}
	// Someone else's conflist and plugin share the directories.
	write(t, filepath.Join(d.conf, "05-other.conflist"), `{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}`)
	write(t, filepath.Join(d.bin, "bridge"), "someone else's plugin")
	return d
}

var (
	podCIDR     = netip.MustParsePrefix("10.244.1.0/24")
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	serviceCIDR = netip.MustParsePrefix("10.96.0.0/12")
)

// canopy puts Canopy's state into the node through the code paths the agent runs.
func canopy(t *testing.T, node *testns.NS, d nodeDirs, pods []*testns.NS) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	do := func(what string, f func() error) {
		t.Helper()
		if err := node.Do(f); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// Files: the conflist and the plugin, as nodesetup writes them, and the leftovers of interrupted writes.
	data, err := conflist.Render(conflist.Options{PodCIDRs: []netip.Prefix{podCIDR}, DataDir: d.data, AgentSocket: d.socket, Portmap: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conflist.Write(d.conf, conflist.FileName, data, 0o644); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(d.conf, "."+conflist.FileName+".tmp-4242"), "partial")
	self, _ := os.Executable()
	if _, err := conflist.InstallPlugin(self, d.bin); err != nil {
		t.Fatal(err)
	}
	// The hint socket of an agent that was killed (a stale socket file).
	if err := os.MkdirAll(filepath.Dir(d.socket), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	// Pods through the CNI plugin (bridge canopy0, veths cnp…, address records), without the hint socket.
	var conf struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	pc := conf.Plugins[0]
	pc["cniVersion"], pc["name"] = conf.CNIVersion, conf.Name
	delete(pc, "agentSocket")
	pluginConf, _ := json.Marshal(pc)
	for i, pod := range pods {
		p := &cni.Plugin{Stdout: io.Discard}
		args := &skel.CmdArgs{ContainerID: fmt.Sprintf("pod%d", i), Netns: pod.Path(), IfName: "eth0", Path: d.bin, StdinData: pluginConf}
		do("CNI ADD", func() error { _, _, err := p.Add(args); return err })
	}

	// Learned routes, as the BGP importer installs them (one next hop, ECMP, IPv6), and one of ours a
	// differently configured run left: a device route with a metric.
	do("routes", func() error {
		tbl := routes.NewNetlinkTable(nil, routes.DefaultProtocol, 0)
		for _, r := range []routes.Route{
			{Dst: netip.MustParsePrefix("10.244.2.0/24"), NextHops: []netip.Addr{netip.MustParseAddr("10.0.0.2")}},
			{Dst: netip.MustParsePrefix("10.244.3.0/24"), NextHops: []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")}},
			{Dst: netip.MustParsePrefix("fd10:244:2::/64"), NextHops: []netip.Addr{netip.MustParseAddr("fd00::2")}},
		} {
			if err := tbl.Add(r); err != nil {
				return err
			}
		}
		return nil
	})
	node.MustRun(t, "ip", "route", "add", "198.51.100.0/24", "dev", "fx0", "proto", "186", "metric", "50")

	sp := &model.ServicePort{Key: "default/web:/TCP", Namespace: "default", Name: "web", Protocol: model.TCP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80, NodePort: 30080,
		ExternalIPs: []netip.Addr{netip.MustParseAddr("203.0.113.10")}}
	eps := []model.Endpoint{{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true, Local: true}}
	sp.ClusterEndpoints, sp.ExternalEndpoints = eps, eps
	desired := map[string]*model.ServicePort{sp.Key: sp}

	for _, f := range []ipt.Flavour{ipt.NFT, ipt.Legacy} {
		do("iptables "+string(f), func() error {
			h, err := ipt.OpenFlavour(f)
			if err != nil {
				return err
			}
			// internal/nodesetup: pod egress masquerade, the FORWARD accept, the BGP port guard.
			if err := egress.Apply(h, []netip.Prefix{podCIDR}, []netip.Prefix{clusterCIDR, serviceCIDR}, log); err != nil {
				return err
			}
			if err := egress.ApplyForward(h, []netip.Prefix{clusterCIDR}); err != nil {
				return err
			}
			if err := egress.ApplyBGPGuard(h, []netip.Prefix{clusterCIDR}); err != nil {
				return err
			}
			// The iptables service proxy with one service (ClusterIP, NodePort, ExternalIP).
			p := iptproxy.NewOn(iptproxy.Config{ClusterCIDRs: []netip.Prefix{clusterCIDR}}, h, log)
			if err := p.Sync(desired, []string{sp.Key}); err != nil {
				return err
			}
			if f != ipt.NFT {
				return nil
			}
			// NetworkPolicy: pod0 admits TCP/80 from pod1 only (per-pod and per-policy chains, peer sets).
			fw := policy.NewHost(h, log)
			opts := policy.Options{PodCIDRs: []netip.Prefix{podCIDR}}
			if err := fw.Start(opts); err != nil {
				return err
			}
			a, b := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.244.1.3")
			fws := map[string]*policy.PodFirewall{"ns/p1": {}, "ns/p0": {IngressIsolated: true, Ingress: []policy.Rule{{
				Peers: []policy.Peer{{Selector: "ns=ns/pod(role=client)", PodIPs: []netip.Addr{b}}},
				Ports: []policy.PortRule{{Protocol: "TCP", Port: 80, EndPort: 80}}, Policy: "ns/allow-client"}}}}
			_, err = fw.Sync(policy.Build(fws, []policy.LocalPod{{Key: "ns/p0", IP: a}, {Key: "ns/p1", IP: b}}, opts))
			return err
		})
	}
	// A jump to ours from a foreign chain (ours to remove; the chain and its other rules stay), a goto, and
	// IPv6 chains (none today; dual-stack is coming).
	for _, f := range []string{"nft", "legacy"} {
		node.MustRun(t, "iptables-"+f, "-A", "FOREIGN", "-j", egress.ForwardChain)
		node.MustRun(t, "iptables-"+f, "-I", "FOREIGN", "1", "-p", "udp", "-g", egress.GuardChain)
		node.MustRun(t, "ip6tables-"+f, "-N", "CANOPY-TEST6")
		node.MustRun(t, "ip6tables-"+f, "-A", "CANOPY-TEST6", "-p", "tcp", "--dport", "179", "-j", "DROP")
		node.MustRun(t, "ip6tables-"+f, "-I", "INPUT", "1", "-j", "CANOPY-TEST6")
		node.MustRun(t, "ip6tables-"+f, "-A", "FOREIGN6", "-p", "udp", "-g", "CANOPY-TEST6")
	}
	node.MustRun(t, "ipset", "create", "CANOPY-T-LEFTOVER", "hash:ip") // a temporary set a crashed swap left
	// The nftables back end's table (ip today; inet once dual-stack).
	node.MustRun(t, "nft", "add", "table", "ip", NFTTable)
	node.MustRun(t, "nft", "add", "chain", "ip", NFTTable, "nat-prerouting", "{ type nat hook prerouting priority dstnat; }")
	node.MustRun(t, "nft", "add", "table", "inet", NFTTable)
}

var podNetworkLine = regexp.MustCompile(`canopy0|cnp[0-9a-f]{12}`)

// withoutPodNetwork drops the lines about the bridge canopy0 and the pods' veths.
func withoutPodNetwork(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !podNetworkLine.MatchString(l) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func runCleanup(t *testing.T, node *testns.NS, c Config) *Report {
	t.Helper()
	var r *Report
	start := time.Now()
	if err := node.Do(func() error { r = Run(c); return nil }); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	_ = r.WriteText(&b)
	t.Logf("cleanup (dry run %v, pod network %v) took %v:\n%s", c.DryRun, c.RemovePodNetwork, time.Since(start).Round(time.Millisecond), b.String())
	return r
}

func TestKernelCleanup(t *testing.T) {
	testns.Require(t, kernelTools...)
	node := testns.New(t, "clean")
	pods := []*testns.NS{testns.New(t, "clean-p0"), testns.New(t, "clean-p1")}
	d := newNodeDirs(t)
	foreign(t, node)
	before := snapshot(t, node)
	start := time.Now()
	canopy(t, node, d, pods)
	t.Logf("Canopy's state created in %v", time.Since(start).Round(time.Millisecond))
	with := snapshot(t, node)
	for k := range before {
		if k != "nft foreign" && before[k] == with[k] {
			t.Errorf("Canopy's state does not show in %s: the test would prove nothing there", k)
		}
	}
	cfg := Config{RouteProtocol: routes.DefaultProtocol, CNIConfDir: d.conf, CNIBinDir: d.bin}

	t.Run("dry run changes nothing", func(t *testing.T) {
		dry := cfg
		dry.DryRun = true
		r := runCleanup(t, node, dry)
		if r.Failures() != 0 {
			t.Errorf("%d failures", r.Failures())
		}
		diff(t, "after a dry run", with, snapshot(t, node))
		want := map[string]int{"routes": 4, "ipsets": 4, "nftables": 2, "iptables": 36, "ip6tables": 3}
		for kind, n := range want {
			if got := len(r.Section(kind, "").Removed); got != n {
				t.Errorf("dry run lists %d %s, want %d: %q", got, kind, n, r.Section(kind, "").Removed)
			}
		}
		for _, s := range r.Sections {
			if s.Skipped != "" {
				t.Errorf("%s %s skipped: %s", s.Kind, s.Scope, s.Skipped)
			}
		}
	})

	t.Run("cleanup keeps the pod network", func(t *testing.T) {
		r := runCleanup(t, node, cfg)
		if r.Failures() != 0 {
			t.Fatalf("%d failures", r.Failures())
		}
		after := snapshot(t, node)
		// Everything but the pod network's links (and their addresses and routes) is as before.
		diff(t, "after cleanup", before, after, "iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save",
			"ip6tables-legacy-save", "ipset", "nft tables", "nft foreign")
		// Routes, links and addresses are as before but for the pod network's own (the bridge's addresses and
		// their routes, the veths).
		for _, k := range []string{"ip route", "ip -6 route", "ip link", "ip addr"} {
			if got := withoutPodNetwork(after[k]); got != before[k] {
				diff(t, "after cleanup (pod network aside)", map[string]string{k: before[k]}, map[string]string{k: got})
			}
		}
		links := r.Section("links", "")
		if len(links.Removed) != 0 || len(links.Kept) != 1 || !strings.Contains(links.Kept[0], "--remove-pod-network") {
			t.Errorf("pod network: %+v", links)
		}
		if !strings.Contains(after["ip link"], " canopy0:") || strings.Count(after["ip link"], ": cnp") != 3 { // 2 veths + cnp-foreign
			t.Errorf("pod network links removed without --remove-pod-network:\n%s", after["ip link"])
		}
		for _, p := range []string{filepath.Join(d.conf, conflist.FileName), filepath.Join(d.conf, "."+conflist.FileName+".tmp-4242"), d.socket, filepath.Dir(d.socket)} {
			if exists(p) {
				t.Errorf("%s left", p)
			}
		}
		// Pods are still attached: the plugin stays for their CNI DEL, and so do their address records.
		for _, p := range []string{filepath.Join(d.bin, conflist.PluginName), filepath.Join(d.data, "10.244.1.2"), filepath.Join(d.conf, "05-other.conflist"), filepath.Join(d.bin, "bridge")} {
			if !exists(p) {
				t.Errorf("%s removed", p)
			}
		}
	})

	t.Run("remove-pod-network restores the node exactly", func(t *testing.T) {
		c := cfg
		c.RemovePodNetwork, c.CNIDataDir = true, d.data
		r := runCleanup(t, node, c)
		if r.Failures() != 0 {
			t.Fatalf("%d failures", r.Failures())
		}
		if got := r.Section("links", "").Removed; !slices.Equal(got[len(got)-1:], []string{"bridge canopy0"}) || len(got) != 3 {
			t.Errorf("links removed %q, want 2 pod veths and the bridge", got)
		}
		diff(t, "after cleanup with --remove-pod-network", before, snapshot(t, node))
		for _, p := range []string{filepath.Join(d.bin, conflist.PluginName), d.data} {
			if exists(p) {
				t.Errorf("%s left", p)
			}
		}
		for _, p := range []string{filepath.Join(d.conf, "05-other.conflist"), filepath.Join(d.bin, "bridge")} {
			if !exists(p) {
				t.Errorf("foreign %s removed", p)
			}
		}
		// The pods' ends went with their veths.
		for _, p := range pods {
			if out := p.MustRun(t, "ip", "-o", "link", "show"); strings.Contains(out, "eth0") {
				t.Errorf("%s still has eth0:\n%s", p.Name, out)
			}
		}
	})

	t.Run("twice: nothing to do", func(t *testing.T) {
		c := cfg
		c.RemovePodNetwork, c.CNIDataDir = true, d.data
		r := runCleanup(t, node, c)
		if r.Failures() != 0 || r.Removed() != 0 {
			t.Errorf("second run: %d removed, %d failures", r.Removed(), r.Failures())
		}
		diff(t, "after a second cleanup", before, snapshot(t, node))
	})
}

// TestKernelCleanupFreshNode runs cleanup on a namespace where Canopy never ran: nothing is removed, nothing
// fails, nothing changes.
func TestKernelCleanupFreshNode(t *testing.T) {
	testns.Require(t, kernelTools...)
	node := testns.New(t, "clean-fresh")
	foreign(t, node)
	before := snapshot(t, node)
	d := newNodeDirs(t)
	cfg := Config{RouteProtocol: routes.DefaultProtocol, CNIConfDir: d.conf, CNIBinDir: d.bin,
		CNIDataDir: d.data, AgentSocket: d.socket, RemovePodNetwork: true, MetricsAddr: "127.0.0.1:9469"}
	r := runCleanup(t, node, cfg)
	if r.Failures() != 0 || r.Removed() != 0 || len(r.Warnings) != 0 {
		t.Errorf("%d removed, %d failures, warnings %q on a node Canopy never ran on", r.Removed(), r.Failures(), r.Warnings)
	}
	diff(t, "after cleanup", before, snapshot(t, node))

	// Something answers on the agent's metrics address inside the namespace: not Canopy, then Canopy.
	for _, tc := range []struct {
		body string
		warn bool
	}{{"# HELP node_load1 x\nnode_load1 0.5\n", false}, {"# HELP canopy_bgp_established_peers x\ncanopy_bgp_established_peers 2\n", true}} {
		ln, err := node.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				br := bufio.NewReader(c)
				for l, err := br.ReadString('\n'); err == nil && l != "\r\n"; l, err = br.ReadString('\n') {
				}
				fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n%s", tc.body)
				c.Close()
			}
		}()
		r := runCleanup(t, node, cfg)
		ln.Close()
		if got := len(r.Warnings) == 1 && strings.Contains(r.Warnings[0], "agent answers on 127.0.0.1:9469"); got != tc.warn {
			t.Errorf("metrics %q: warnings %q", tc.body, r.Warnings)
		}
	}
}

// TestKernelCleanupMissingTools runs cleanup with only iptables-nft on PATH: the IPv4 nft chains go, every
// other part says it was skipped and why, and nothing counts as a failure.
func TestKernelCleanupMissingTools(t *testing.T) {
	testns.Require(t, kernelTools...)
	node := testns.New(t, "clean-tools")
	node.MustRun(t, "ipset", "create", "CANOPY-S-LEFT", "hash:ip")
	err := node.Do(func() error {
		h, err := ipt.OpenFlavour(ipt.NFT)
		if err != nil {
			return err
		}
		return egress.ApplyBGPGuard(h, []netip.Prefix{clusterCIDR})
	})
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, tool := range []string{"iptables-nft-save", "iptables-nft-restore"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	path := os.Getenv("PATH")
	t.Setenv("PATH", bin)
	r := runCleanup(t, node, Config{RouteProtocol: routes.DefaultProtocol})
	os.Setenv("PATH", path)
	if r.Failures() != 0 {
		t.Errorf("%d failures", r.Failures())
	}
	if got := r.Section("iptables", "nft").Removed; len(got) != 3 {
		t.Errorf("iptables (nft) removed %q, want the guard's two jumps and its chain", got)
	}
	for _, k := range []struct{ kind, scope, why string }{
		{"iptables", "legacy", "iptables-legacy-save not found"}, {"ip6tables", "nft", "ip6tables-nft-save not found"},
		{"ip6tables", "legacy", "ip6tables-legacy-save not found"}, {"ipsets", "", "ipset not found"}, {"nftables", "", "nft not found"},
	} {
		if s := r.Section(k.kind, k.scope); s == nil || !strings.Contains(s.Skipped, k.why) {
			t.Errorf("%s (%s): %+v, want skipped: %s", k.kind, k.scope, s, k.why)
		}
	}
	if out := node.MustRun(t, "ipset", "list", "-n"); !strings.Contains(out, "CANOPY-S-LEFT") {
		t.Errorf("the set went although ipset was not on PATH: %q", out)
	}
}
