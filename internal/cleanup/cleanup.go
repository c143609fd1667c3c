// Package cleanup has one job: take out of a node's network namespace and file system everything Canopy put
// there, and nothing else — what `canopy cleanup` does when Canopy leaves a node (removed, or replaced by
// another CNI), like `kube-proxy --cleanup`.
//
// Everything of Canopy's carries a mark, and only marked things are removed:
//
//   - kernel routes of Canopy's protocol number (186, --route-protocol) in its table (main, --route-table);
//   - the VXLAN overlay device canopy.vxlan (with its neighbour and FDB entries and routes) and routes of the
//     overlay's protocol (185) in that table;
//   - iptables chains named CANOPY-* in every table, IPv4 and IPv6, in both back ends (iptables-nft and
//     iptables-legacy), and the jumps to them: a rule of any other chain whose -j/-g target is one of those
//     chains (found in iptables-save output, so a jump an older version wrote is found too). Every other rule
//     stays, also one that mentions CANOPY in a comment or jumps to a look-alike (CANOPYX). One
//     iptables-restore per table flushes our chains, deletes the jumps and deletes the chains;
//   - ipsets named CANOPY-* (after the rules that use them);
//   - IPVS virtual services on the addresses bound to the dummy canopy-ipvs0 or on the node's addresses (the
//     IPVS back end's NodePorts), and canopy-ipvs0 itself (proxy/ipvs.Cleanup);
//   - nftables tables named canopy and canopy-<n> (the nftables back end's, any family);
//   - the CNI conflist 10-canopy.conflist and the installed plugin canopy-cni (and temporary files of their
//     atomic writes), the agent's CNI hint socket, and its directory if that is "canopy" and empty;
//   - only with RemovePodNetwork (running pods lose their network): the bridge canopy0 (or the conflist's),
//     the pods' host veths cnp<12 hex>, and the plugin's address records (its data directory).
//
// Never touched: sysctls (net.ipv4.ip_forward, bridge-nf-call-iptables, net.ipv4.vs.*: others may need
// them), loaded kernel modules, other routes, rules, chains, sets, tables and links, conntrack entries, and
// what the standard portmap plugin (chained in the conflist) made. An nft base chain or table that
// iptables-nft created for a jump of ours stays, empty (iptables-save shows it as before).
//
// Every removal is checked by looking again: the Report lists per kind what was removed, what failed (with
// why) and what was skipped because a tool is missing. Run acts in the calling thread's network namespace
// (lock the thread and switch to run it elsewhere: netnsx.Do): every socket and child process is made on the
// calling goroutine. It is safe to run any number of times, with or without an agent ever having run.
package cleanup

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"

	"canopy.io/canopy/cni"
	"canopy.io/canopy/cni/conflist"
	"canopy.io/canopy/policy"
	"canopy.io/canopy/routes"
	"canopy.io/canopy/routes/overlay"
)

// Config says where Canopy's state is (the agent's flags of the same names) and what to remove.
type Config struct {
	RouteProtocol int // kernel route protocol of Canopy's routes, 1..255 (routes.DefaultProtocol)
	RouteTable    int // their table; 0 = main (254)

	CNIConfDir string // where the conflist is; "" = none
	CNIBinDir  string // where the plugin is installed; "" = none
	// CNIDataDir is the plugin's address records; "" = the conflist's dataDir, else cni.DefaultDataDir.
	// Only removed with RemovePodNetwork.
	CNIDataDir string
	// AgentSocket is the agent's CNI hint socket ("" = none; the conflist's agentSocket is removed too).
	AgentSocket string

	// MetricsAddr is the agent's --metrics-addr: a Canopy agent answering there is still running (a warning:
	// it re-creates what cleanup removes). "" = do not check.
	MetricsAddr string

	// NodeIPs are the node's addresses, where the IPVS back end's NodePort virtual services listen; none = every
	// address of the namespace's interfaces (except loopback, link-local and canopy-ipvs0's).
	NodeIPs []netip.Addr

	// RemovePodNetwork also removes the bridge, the pods' veths, the plugin's address records (running pods
	// lose their network) and the plugin binary even while pods are attached.
	RemovePodNetwork bool
	// DryRun changes nothing: the Report says what would be removed.
	DryRun bool
}

// Default is the agent's defaults (what a node running Canopy's DaemonSet has).
func Default() Config {
	return Config{RouteProtocol: routes.DefaultProtocol, RouteTable: syscall.RT_TABLE_MAIN, CNIConfDir: "/etc/cni/net.d",
		CNIBinDir: "/opt/cni/bin", AgentSocket: "/run/canopy/cni.sock", MetricsAddr: "127.0.0.1:9469"}
}

// Validate lists every problem of c, each naming its flag.
func (c Config) Validate() error {
	var probs []string
	if c.RouteProtocol < 1 || c.RouteProtocol > 255 {
		probs = append(probs, fmt.Sprintf("--route-protocol: %d is not in 1..255 (0 would match every route)", c.RouteProtocol))
	}
	if c.RouteTable < 0 || c.RouteTable > 1<<32-1 {
		probs = append(probs, fmt.Sprintf("--route-table: %d is out of range", c.RouteTable))
	}
	for _, d := range []struct{ flag, path string }{{"--cni-conf-dir", c.CNIConfDir}, {"--cni-bin-dir", c.CNIBinDir},
		{"--cni-data-dir", c.CNIDataDir}, {"--cni-agent-socket", c.AgentSocket}} {
		if d.path != "" && !filepath.IsAbs(d.path) {
			probs = append(probs, fmt.Sprintf("%s: %q is not an absolute path", d.flag, d.path))
		}
	}
	if c.CNIDataDir != "" && filepath.Clean(c.CNIDataDir) == "/" {
		probs = append(probs, "--cni-data-dir: / is not the plugin's data directory")
	}
	if len(probs) == 0 {
		return nil
	}
	var err string
	for _, p := range probs {
		err += "  " + p + "\n"
	}
	return fmt.Errorf("%s", err)
}

// neverTouched is what the report says cleanup leaves alone.
var neverTouched = []string{
	"sysctls (net.ipv4.ip_forward, net.bridge.bridge-nf-call-iptables, net.ipv4.vs.*): other components may need them; reset them yourself if nothing does",
	"kernel modules (ip_vs, br_netfilter), conntrack entries, and every route, rule, chain, set, table and link that is not Canopy's",
	"the portmap plugin's chains (CNI-HOSTPORT-*, CNI-DN-*): the runtime removes them with each pod",
}

// Run removes Canopy's state (or with c.DryRun says what it would remove) in the calling thread's network
// namespace and returns the report. It never stops at a failure: every kind is tried.
func Run(c Config) *Report {
	r := &Report{DryRun: c.DryRun, NeverTouched: neverTouched}
	if err := c.Validate(); err != nil {
		s := r.section("config", "")
		s.fail("flags", err)
		return r
	}
	table := c.RouteTable
	if table == 0 {
		table = syscall.RT_TABLE_MAIN
	}

	if c.MetricsAddr != "" && agentMetrics(c.MetricsAddr) {
		r.Warnings = append(r.Warnings, fmt.Sprintf("a Canopy agent answers on %s: it re-creates what cleanup removes; stop it (delete the DaemonSet) and run cleanup again", c.MetricsAddr))
	}

	// The conflist first: from here on the runtime hands no new pod to the plugin.
	files := r.section("files", "")
	info := conflistInfo{}
	if c.CNIConfDir != "" {
		path := filepath.Join(c.CNIConfDir, conflist.FileName)
		info, _ = readConflist(path)
		removeFile(path, c.DryRun, files)
		removeTemps(c.CNIConfDir, conflist.FileName, c.DryRun, files)
	}

	h, err := netlink.NewHandle()
	if err != nil {
		r.section("netlink", "").fail("open", err)
		return r
	}
	defer h.Close()

	removeRoutes(h, c.RouteProtocol, table, c.DryRun, r.section("routes", fmt.Sprintf("table %d, protocol %d", table, c.RouteProtocol)))
	removeOverlay(h, table, c.DryRun, r.section("overlay", overlay.Device))

	for _, b := range Backends {
		s := r.section(b.Family, string(b.Flavor))
		x, err := NewXtables(b.Family, b.Flavor)
		if err != nil {
			s.Skipped = err.Error() + ": its chains could not be checked"
			continue
		}
		removeTables(x, c.DryRun, s)
	}

	sets := r.section("ipsets", "")
	if _, err := exec.LookPath("ipset"); err != nil {
		sets.Skipped = "ipset not found: sets could not be checked"
	} else {
		removeIPSets(policy.ExecIPSets{}, c.DryRun, sets)
	}

	nodeIPs := c.NodeIPs
	if len(nodeIPs) == 0 {
		if nodeIPs, err = nodeAddresses(h); err != nil {
			r.Warnings = append(r.Warnings, fmt.Sprintf("the node's addresses (for IPVS NodePorts): %v", err))
		}
	}
	removeIPVS(h, nodeIPs, c.DryRun, r.section("ipvs", ""))

	nft := r.section("nftables", "")
	if p, err := exec.LookPath("nft"); err != nil {
		nft.Skipped = "nft not found: a table " + NFTTable + " (--proxy-mode=nftables) could not be checked"
	} else {
		removeNFT(NFTBinary{Path: p}, c.DryRun, nft)
	}

	bridge := info.Bridge
	if bridge == "" {
		bridge = cni.DefaultBridge
	}
	removePodLinks(h, bridge, c.RemovePodNetwork, c.DryRun, r.section("links", "pod network"))

	// The plugin binary: a pod still attached needs it for its CNI DEL.
	if c.CNIBinDir != "" {
		attached, err := podVethCount(h)
		plugin := filepath.Join(c.CNIBinDir, conflist.PluginName)
		_, statErr := os.Lstat(plugin)
		switch {
		case statErr != nil:
			removeFile(plugin, c.DryRun, files) // not there (nothing to do), or says why it cannot be looked at
		case err != nil:
			files.fail(plugin, fmt.Errorf("not removed: whether pods are still attached is unknown: %w", err))
		case attached > 0 && !c.RemovePodNetwork:
			files.kept("%s: %d pod(s) are still attached and need it for their CNI DEL; --remove-pod-network (after draining the node) removes it", plugin, attached)
		default:
			removeFile(plugin, c.DryRun, files)
		}
		removeTemps(c.CNIBinDir, conflist.PluginName, c.DryRun, files)
	}
	dataDir := c.CNIDataDir
	if dataDir == "" {
		dataDir = info.DataDir
	}
	if dataDir == "" {
		dataDir = cni.DefaultDataDir
	}
	if c.RemovePodNetwork {
		removeDataDir(dataDir, c.DryRun, files)
	} else if entries, err := os.ReadDir(dataDir); err == nil && len(entries) > 0 {
		files.kept("%s: the pods' address records; --remove-pod-network removes them", dataDir)
	}
	sockets := []string{c.AgentSocket}
	if info.AgentSocket != "" && info.AgentSocket != c.AgentSocket {
		sockets = append(sockets, info.AgentSocket)
	}
	for _, sock := range sockets {
		if sock != "" {
			removeSocket(sock, c.DryRun, files)
		}
	}
	return r
}
