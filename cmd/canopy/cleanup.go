package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"canopy.io/canopy/internal/cleanup"
)

const cleanupUsage = `Usage: canopy cleanup [flags]

Removes everything Canopy put on this node, and nothing else: run it (as root, in the node's network
namespace) after stopping the agent, when Canopy leaves the node or another CNI replaces it.

Removed: kernel routes of --route-protocol in --route-table; iptables chains CANOPY-* and every jump to
them (IPv4 and IPv6, iptables-nft and iptables-legacy); ipsets CANOPY-*; IPVS virtual services on
canopy-ipvs0's and the node's addresses, and canopy-ipvs0; nftables tables "canopy" and "canopy-<n>";
the CNI conflist 10-canopy.conflist, the canopy-cni plugin (kept while pods are attached, unless
--remove-pod-network), the hint socket and its directory if empty.
Only with --remove-pod-network (drain the node first: RUNNING PODS LOSE THEIR NETWORK): the bridge canopy0,
the pods' veths cnp*, and the plugin's address records (--cni-data-dir).
Never touched: sysctls (net.ipv4.ip_forward and others may be needed by other components), kernel modules,
and every route, rule, chain, set, table, link and file that is not Canopy's. A missing tool (ip6tables,
ipset, nft, ...) skips its part, and the report says so.

Exit status: 0 when nothing of Canopy's is left (or, with --dry-run, the inventory worked), 1 when something
of Canopy's could not be removed, 2 for bad flags.

Flags:
`

// runCleanup is `canopy cleanup [flags]`: flags into a cleanup.Config, the cleanup, the report on stdout. It
// returns the exit status.
func runCleanup(args []string, stdout, stderr io.Writer) int {
	c := cleanup.Default()
	fs := pflag.NewFlagSet("canopy cleanup", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, cleanupUsage)
		fs.PrintDefaults()
	}
	fs.IntVar(&c.RouteProtocol, "route-protocol", c.RouteProtocol, "kernel route protocol of Canopy's routes (the agent's --route-protocol)")
	fs.IntVar(&c.RouteTable, "route-table", c.RouteTable, "kernel routing table of Canopy's routes (the agent's --route-table; 254 = main)")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", c.CNIConfDir, "where the agent wrote 10-canopy.conflist (empty = skip)")
	fs.StringVar(&c.CNIBinDir, "cni-bin-dir", c.CNIBinDir, "where the agent installed canopy-cni (empty = skip)")
	fs.StringVar(&c.CNIDataDir, "cni-data-dir", "", "the plugin's address records, removed with --remove-pod-network (default: the conflist's dataDir, else /var/lib/cni/canopy)")
	fs.StringVar(&c.AgentSocket, "cni-agent-socket", c.AgentSocket, "the agent's CNI hint socket (empty = skip)")
	var nodeIPs stringList
	fs.Var(&nodeIPs, "node-ip", "the node's addresses, where IPVS NodePort virtual services listen (repeatable; default: every address of this namespace's interfaces, so name them if another IPVS user has virtual services on a node address)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "the agent's metrics address: a Canopy agent answering there is still running, and cleanup warns (empty = don't check)")
	fs.BoolVar(&c.RemovePodNetwork, "remove-pod-network", false, "also remove the bridge, the pods' veths and address records: running pods lose their network")
	fs.BoolVar(&c.DryRun, "dry-run", false, "print what would be removed; change nothing")
	output := fs.StringP("output", "o", "text", "report format: text or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "canopy cleanup: %v\n", err)
		return 2
	}
	var probs []string
	if fs.NArg() > 0 {
		probs = append(probs, fmt.Sprintf("unexpected arguments %q", fs.Args()))
	}
	for _, s := range nodeIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			probs = append(probs, fmt.Sprintf("--node-ip: %q is not an IP address", s))
			continue
		}
		c.NodeIPs = append(c.NodeIPs, a)
	}
	if *output != "text" && *output != "json" {
		probs = append(probs, fmt.Sprintf("-o/--output: %q is neither text nor json", *output))
	}
	if err := c.Validate(); err != nil {
		probs = append(probs, strings.Split(strings.TrimRight(err.Error(), "\n"), "\n")...)
	}
	if len(probs) > 0 {
		fmt.Fprintln(stderr, "canopy cleanup: invalid flags:")
		for _, p := range probs {
			fmt.Fprintln(stderr, "  "+strings.TrimSpace(p))
		}
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "canopy cleanup: warning: not running as root: most of Canopy's state can be neither read nor removed")
	}
	r := cleanup.Run(c)
	var err error
	if *output == "json" {
		err = r.WriteJSON(stdout)
	} else {
		err = r.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "canopy cleanup: %v\n", err)
		return 1
	}
	if r.Failures() > 0 {
		return 1
	}
	return 0
}
