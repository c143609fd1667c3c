package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The ToR role played by BIRD 2 and by gobgpd (RackConfig.ToRKind). Either accepts BGP from any address of its
// rack's subnet, peers with the spine in a multi-rack lab, and forwards by what it learned: BIRD installs its
// routes into the kernel itself (ECMP by `merge paths`); gobgpd cannot, so a second BIRD runs next to it as its
// FIB (birdFIBConf).

// birdConf is a BIRD ToR's configuration.
func (t *ToR) birdConf(c Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, `log stderr all;
router id %s;
timeformat protocol iso long;
protocol device {
	scan time 10;
}
# The rack's subnet, announced to the spine (never into the kernel: it is connected).
protocol direct {
	ipv4;
	interface "br0";
}
protocol kernel {
	ipv4 {
		import none;
		export where source = RTS_BGP;
	};
	merge paths on;
}
`, t.IP)
	if !t.rack.NoNodePeering {
		// GTSM as FRR's ttl-security hops 1; no as-override in BIRD: nodes that share an ASN need allow-own-AS.
		fmt.Fprintf(&b, `protocol bgp nodes {
	local %s as %d;
	neighbor range %s external;
	dynamic name "node";
	ttl security on;
	hold time 9;
	keepalive time 3;
	ipv4 {
		import all;
		export all;
	};
}
`, t.IP, t.ASN, t.rack.Subnet)
	}
	if c.multiRack() {
		fmt.Fprintf(&b, `protocol bgp spine {
	local %s as %d;
	neighbor %s as %d;
	hold time 9;
	keepalive time 3;
	connect delay time 1;
	connect retry time 2;
	error wait time 1, 10;
	ipv4 {
		import all;
		export all;
	};
}
`, t.Uplink, t.ASN, t.SpineIP, c.SpineASN)
	}
	if len(t.announced) > 0 {
		// Announce: originated to every peer, never installed into the kernel (not RTS_BGP).
		b.WriteString("protocol static announced {\n\tipv4;\n")
		for _, p := range t.announced {
			fmt.Fprintf(&b, "\troute %s blackhole;\n", p)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// birdNetworks adds (add) or removes prefixes from what a BIRD router originates: its configuration gets them
// as routes of a static protocol, and `birdc configure` applies it without touching the other protocols'
// sessions.
func (t *ToR) birdNetworks(ctx context.Context, add bool, prefixes []string) error {
	set := slices.Clone(t.announced)
	for _, s := range prefixes {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return err
		}
		p = p.Masked()
		i := slices.Index(set, p)
		switch {
		case add && i < 0:
			set = append(set, p)
		case !add && i >= 0:
			set = slices.Delete(set, i, i+1)
		}
	}
	t.announced = set
	if err := os.WriteFile(filepath.Join(t.Dir, "bird.conf"), []byte(t.birdConf(t.lab.cfg)), 0o644); err != nil {
		return err
	}
	out, err := t.Birdc(ctx, "configure")
	if err == nil && !strings.Contains(out, "Reconfigur") {
		err = fmt.Errorf("unexpected answer")
	}
	if err != nil {
		return fmt.Errorf("%s: birdc configure: %v: %s", t.Name, err, out)
	}
	return nil
}

// startBIRD writes the configuration, starts bird in the foreground (its log on stderr) and waits until birdc
// answers. BIRD runs as root, so it dies with the test process like the lab's other children.
func (l *Lab) startBIRD(ctx context.Context, t *ToR) error {
	logs, err := l.routerDirs(t)
	if err != nil {
		return err
	}
	conf := filepath.Join(t.Dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(t.birdConf(l.cfg)), 0o644); err != nil {
		return err
	}
	t.argv = map[string][]string{"bird": {"bird", "-f", "-c", conf, "-s", t.birdSocket(), "-P", filepath.Join(t.Dir, "bird.pid")}}
	if _, err := l.startProc(t.procPrefix+"bird", t.NS, filepath.Join(logs, "bird.log"), t.argv["bird"]); err != nil {
		return err
	}
	return l.waitFor(ctx, "bird to answer birdc", t.procPrefix+"bird", func() error {
		out, err := t.Birdc(ctx, "show status")
		if err == nil && !strings.Contains(out, "Daemon is up and running") {
			err = fmt.Errorf("unexpected answer: %s", out)
		}
		return err
	})
}

// birdStates are BIRD's BGP states (FRR's names).
var birdStates = map[string]bool{"Idle": true, "Connect": true, "Active": true, "OpenSent": true, "OpenConfirm": true,
	"Established": true, "Close": true, "Down": true}

func (t *ToR) birdSocket() string { return filepath.Join(t.Dir, "bird.ctl") }

// Birdc runs one birdc command (`birdc -s <Dir>/bird.ctl show protocols all`) on a BIRD router.
func (t *ToR) Birdc(ctx context.Context, cmd ...string) (string, error) {
	if t.Kind != ToRBIRD {
		return "", fmt.Errorf("%s is a %s router: no birdc", t.Name, t.Kind)
	}
	return run(ctx, "birdc", append([]string{"-s", t.birdSocket()}, cmd...)...)
}

// birdPeers reads `show protocols all`: each BGP protocol's neighbour address and state (the dynamic ones of
// the node range included; the range's template itself has no address).
func (t *ToR) birdPeers(ctx context.Context) (map[netip.Addr]string, error) {
	out, err := t.Birdc(ctx, "show protocols all")
	if err != nil {
		return nil, err
	}
	res := map[netip.Addr]string{}
	state := ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t"):
			// "node3      BGP        ---        up     2024-…  Established", "spine BGP --- start … Active  Socket: …"
			state = ""
			if f[1] == "BGP" {
				for _, w := range f[4:] {
					if birdStates[w] {
						state = w
						break
					}
				}
			}
		case state != "" && len(f) == 3 && f[0] == "Neighbor" && f[1] == "address:":
			if a, err := netip.ParseAddr(f[2]); err == nil {
				res[a] = state
			}
		}
	}
	return res, nil
}

// gobgpConf is a gobgpd ToR's configuration: nodes of its rack accepted by a dynamic-neighbour peer group (any
// AS: peer-as 0 skips the AS check), the spine as a neighbour, and an iBGP session over loopback to its FIB
// helper (birdFIBConf), which gets every path (add-path) so equal ones become ECMP routes in the kernel.
func (t *ToR) gobgpConf(c Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[global.config]
  as = %d
  router-id = "%s"
  port = 179
[global.use-multiple-paths.config]
  enabled = true
[[neighbors]]
  [neighbors.config]
    neighbor-address = "%s"
    peer-as = %d
    description = "fib"
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.add-paths.config]
    send-max = 16
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.add-paths.config]
      send-max = 16
`, t.ASN, t.IP, fibHelperIP, t.ASN)
	if !t.rack.NoNodePeering {
		fmt.Fprintf(&b, `[[peer-groups]]
  [peer-groups.config]
    peer-group-name = "nodes"
    peer-as = 0
    peer-type = "external"
  [peer-groups.timers.config]
    connect-retry = 2
    hold-time = 9
    keepalive-interval = 3
  [peer-groups.ttl-security.config]
    enabled = true
    ttl-min = 255
  [peer-groups.graceful-restart.config]
    enabled = true
    helper-only = true
  [[peer-groups.afi-safis]]
    [peer-groups.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
[[dynamic-neighbors]]
  [dynamic-neighbors.config]
    prefix = "%s"
    peer-group = "nodes"
`, t.rack.Subnet)
	}
	if c.multiRack() {
		fmt.Fprintf(&b, `[[neighbors]]
  [neighbors.config]
    neighbor-address = "%s"
    peer-as = %d
  [neighbors.timers.config]
    connect-retry = 2
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
`, t.SpineIP, c.SpineASN)
	}
	return b.String()
}

// fibHelperIP is the FIB helper's address (on the ToR namespace's lo) for its iBGP session with gobgpd, which it
// reaches at the ToR's address. (BIRD refuses 127.0.0.0/8 peers.)
const fibHelperIP = "192.0.2.2"

// birdFIBConf is the FIB helper of a gobgpd ToR: BIRD, learning gobgpd's paths over iBGP (add-path) and
// installing them into the kernel, equal paths merged into ECMP routes, next hops resolved through the
// connected routes. It originates and exports nothing. (FRR's zebra would be the usual FIB for gobgpd, but
// gobgpd 3.10's ZAPI client panics on FRR 8.4's messages.)
func (t *ToR) birdFIBConf() string {
	return fmt.Sprintf(`log stderr all;
router id %[1]s;
protocol device {
	scan time 10;
}
protocol direct {
	ipv4;
	interface "*";
}
protocol kernel {
	ipv4 {
		import none;
		export where source = RTS_BGP;
	};
	merge paths on;
}
protocol bgp gobgpd {
	local %[1]s port 1179 as %[3]d;
	neighbor %[2]s port 179 as %[3]d;
	connect delay time 1;
	connect retry time 2;
	error wait time 1, 10;
	ipv4 {
		gateway recursive;
		add paths rx;
		# gobgpd's own routes (the rack's subnet) are connected here already.
		import where bgp_next_hop != %[2]s;
		export none;
	};
}
`, fibHelperIP, t.IP, t.ASN)
}

// startGoBGP starts gobgpd and its FIB helper (BIRD), waits until both answer and gobgpd originates the rack's
// subnet.
func (l *Lab) startGoBGP(ctx context.Context, t *ToR) error {
	logs, err := l.routerDirs(t)
	if err != nil {
		return err
	}
	conf, fib := filepath.Join(t.Dir, "gobgpd.toml"), filepath.Join(t.Dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(t.gobgpConf(l.cfg)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(fib, []byte(t.birdFIBConf()), 0o644); err != nil {
		return err
	}
	t.argv = map[string][]string{
		"gobgpd": {"gobgpd", "-f", conf, "-t", "toml", "--api-hosts", "127.0.0.1:50051", "--pprof-disable", "-l", "info"},
		"bird":   {"bird", "-f", "-c", fib, "-s", t.birdSocket(), "-P", filepath.Join(t.Dir, "bird.pid")},
	}
	if err := ipn(ctx, t.NS, "addr", "add", fibHelperIP+"/32", "dev", "lo"); err != nil {
		return err
	}
	if _, err := l.startProc(t.procPrefix+"gobgpd", t.NS, filepath.Join(logs, "gobgpd.log"), t.argv["gobgpd"]); err != nil {
		return err
	}
	if _, err := l.startProc(t.procPrefix+"bird", t.NS, filepath.Join(logs, "bird.log"), t.argv["bird"]); err != nil {
		return err
	}
	if err := l.waitFor(ctx, "gobgpd to answer", t.procPrefix+"gobgpd", func() error {
		_, err := t.Exec(ctx, "gobgp", "global")
		return err
	}); err != nil {
		return err
	}
	if err := l.waitFor(ctx, "the FIB helper (bird) to answer", t.procPrefix+"bird", func() error {
		_, err := run(ctx, "birdc", "-s", t.birdSocket(), "show status")
		return err
	}); err != nil {
		return err
	}
	if l.cfg.multiRack() {
		return t.Announce(ctx, t.rack.Subnet.String())
	}
	return nil
}

// gobgpPeers reads `gobgp neighbor -j` inside the router's namespace.
func (t *ToR) gobgpPeers(ctx context.Context) (map[netip.Addr]string, error) {
	out, err := t.Exec(ctx, "gobgp", "neighbor", "-j")
	if err != nil {
		return nil, err
	}
	var peers []struct {
		State struct {
			NeighborAddress string `json:"neighbor_address"`
			SessionState    int    `json:"session_state"`
		} `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		return nil, fmt.Errorf("gobgp neighbor -j: %w", err)
	}
	names := []string{"Unknown", "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"}
	res := map[netip.Addr]string{}
	for _, p := range peers {
		a, err := netip.ParseAddr(p.State.NeighborAddress)
		if err != nil || a.String() == fibHelperIP {
			continue
		}
		if p.State.SessionState >= 0 && p.State.SessionState < len(names) {
			res[a] = names[p.State.SessionState]
		}
	}
	return res, nil
}
