package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ToR is the top-of-rack router: a Linux bridge (the rack's L2 segment) and FRR (zebra + bgpd) in one namespace.
// It accepts BGP from any address of the fabric subnet (peer group NODES, remote-as external) and installs what
// it learns into its kernel, so it routes between nodes, pods and the external host. A rack's ToR may be BIRD or
// gobgpd instead (Kind; racks.go), and the spine of a multi-rack lab is a ToR-shaped FRR router too.
type ToR struct {
	Host
	ASN uint32
	// Kind is the routing software (ToRFRR unless RackConfig.ToRKind said otherwise).
	Kind ToRKind
	// Dir is FRR's directory: configs, pid files and the vty sockets (`vtysh --vty_socket <Dir>`). Its logs are
	// <WorkDir>/tor/zebra.log and bgpd.log (rack r > 1: tor<r>/, the spine: spine/). BIRD keeps its config and
	// control socket (bird.ctl) here, gobgpd its config and its FIB helper's (a BIRD: bird.conf, bird.ctl).
	Dir string
	// Uplink is the ToR's address on its link to the spine, SpineIP the spine's end (multi-rack only).
	Uplink, SpineIP netip.Addr

	argv       map[string][]string // each daemon's command line, for RestartDaemon
	announced  []netip.Prefix      // a BIRD router's Announce'd prefixes (its static protocol "announced")
	procPrefix string              // of its processes' names: "" (rack 1), "tor2-", "spine-"
	logDir     string              // under WorkDir: "tor", "tor2", "spine"
	rack       *Rack               // nil for the spine
}

// Rack is the ToR's rack (nil for the spine).
func (t *ToR) Rack() *Rack { return t.rack }

// mainDaemon is the process whose death means the router is gone.
func (t *ToR) mainDaemon() string {
	switch t.Kind {
	case ToRBIRD:
		return "bird"
	case ToRGoBGP:
		return "gobgpd"
	}
	return "bgpd"
}

const peerGroup = "NODES"

// bgpdConf is an FRR ToR's bgpd.conf. A single-rack lab's is the historical one; in a multi-rack lab the ToR
// also peers with the spine and announces its rack's subnet, and RackConfig may drop the node listen range
// (NoNodePeering) or as-override (NoASOverride).
func (t *ToR) bgpdConf(c Config) string {
	subnet, rc := c.FabricCIDR, RackConfig{}
	if t.rack != nil {
		subnet, rc = t.rack.Subnet, c.rack(t.rack.Index)
	}
	conf := t.baseBgpdConf(subnet)
	if c.IPv6Only {
		conf = t.bgpdConf6(subnet)
	}
	if !c.multiRack() && !rc.NoNodePeering && !rc.NoASOverride {
		return conf
	}
	var out []string
	for _, line := range strings.Split(conf, "\n") {
		switch {
		case rc.NoNodePeering && strings.HasPrefix(line, " bgp listen range"):
			continue
		case rc.NoASOverride && strings.HasSuffix(line, " as-override"):
			continue
		case c.multiRack() && line == " address-family ipv4 unicast":
			out = append(out, fmt.Sprintf(" neighbor %s remote-as %d", t.SpineIP, c.SpineASN),
				fmt.Sprintf(" neighbor %s description spine", t.SpineIP), line, "  network "+subnet.String())
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

func (t *ToR) baseBgpdConf(subnet netip.Prefix) string {
	return t.singleRackConf(subnet, t.IP.String(), "", "ipv4")
}

// singleRackConf is the single-rack ToR's bgpd.conf: router ID routerID, extra global lines (each ending in a
// newline) after it, and the node peer group (listen range subnet) in address-family <family> unicast.
func (t *ToR) singleRackConf(subnet netip.Prefix, routerID, extra, family string) string {
	return fmt.Sprintf(`hostname %[1]s
log timestamp precision 3
router bgp %[2]d
 bgp router-id %[3]s
%[6]s no bgp ebgp-requires-policy
 no bgp network import-check
 bgp bestpath as-path multipath-relax
 bgp log-neighbor-changes
 timers bgp 3 9
 neighbor %[4]s peer-group
 neighbor %[4]s remote-as external
 neighbor %[4]s ttl-security hops 1
 neighbor %[4]s bfd profile canopy
 bgp listen range %[5]s peer-group %[4]s
 address-family %[7]s unicast
  neighbor %[4]s activate
  neighbor %[4]s as-override
  maximum-paths 16
 exit-address-family
exit
`, t.NS, t.ASN, routerID, peerGroup, subnet, extra, family)
}

// startFRR starts the ToRs and the spine (racks.go); the name stays from the single-rack days.
func (l *Lab) startFRR(ctx context.Context) error { return l.startRouters(ctx) }

// routerDirs makes the router's directory and its log directory (returned).
func (l *Lab) routerDirs(t *ToR) (logs string, err error) {
	if len(filepath.Join(t.Dir, "zserv.api")) > 100 {
		return "", fmt.Errorf("router socket path under %s is too long for a unix socket; use a shorter StateRoot", t.Dir)
	}
	logs = filepath.Join(l.WorkDir, t.logDir)
	for _, d := range []string{t.Dir, logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	return logs, nil
}

// chownFRR gives dir and everything in it to user frr.
func chownFRR(dir string) error {
	u, err := user.Lookup("frr")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	})
}

// frrDaemon is the command line of FRR daemon name for router t.
func (l *Lab) frrDaemon(t *ToR, name string) []string {
	return []string{filepath.Join(l.cfg.FRRDir, name),
		"-F", "datacenter", "-f", filepath.Join(t.Dir, name+".conf"), "-i", filepath.Join(t.Dir, name+".pid"),
		"-z", filepath.Join(t.Dir, "zserv.api"), "--vty_socket", t.Dir, "-P", "0", "--limit-fds", "1024", "--log", "stdout"}
}

// startZebra starts FRR's zebra for router t (an FRR router's, or gobgpd's FIB) and waits for its zserv socket.
func (l *Lab) startZebra(ctx context.Context, t *ToR, logs string) error {
	zserv := filepath.Join(t.Dir, "zserv.api")
	if _, err := l.startProc(t.procPrefix+"zebra", t.NS, filepath.Join(logs, "zebra.log"), l.frrDaemon(t, "zebra")); err != nil {
		return err
	}
	return l.waitFor(ctx, "zebra's zserv socket", t.procPrefix+"zebra", func() error {
		_, err := os.Stat(zserv)
		return err
	})
}

// startFRRDaemons starts zebra, waits for its zserv socket, starts bfdd (if bfd) and bgpd with bgpdConf and
// waits until vtysh gets an answer. FRR drops privileges to user frr, so its directory belongs to frr.
func (l *Lab) startFRRDaemons(ctx context.Context, t *ToR, bgpdConf string, bfd bool) error {
	logs, err := l.routerDirs(t)
	if err != nil {
		return err
	}
	files := map[string]string{
		"zebra.conf": fmt.Sprintf("hostname %s\nlog timestamp precision 3\nip forwarding\n", t.NS),
		"bgpd.conf":  bgpdConf,
	}
	if bfd {
		// BFD for the node sessions (neighbor NODES bfd profile canopy): 300 ms × 3, as the agents' defaults.
		files["bfdd.conf"] = fmt.Sprintf("hostname %s\nlog timestamp precision 3\nbfd\n profile canopy\n  receive-interval 300\n  transmit-interval 300\n  detect-multiplier 3\n exit\nexit\n", t.NS)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(t.Dir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	if err := chownFRR(t.Dir); err != nil {
		return err
	}
	if err := l.startZebra(ctx, t, logs); err != nil {
		return err
	}
	t.argv = map[string][]string{"zebra": l.frrDaemon(t, "zebra"), "bgpd": l.frrDaemon(t, "bgpd")}
	if bfd {
		t.argv["bfdd"] = append(l.frrDaemon(t, "bfdd"), "--bfdctl", filepath.Join(t.Dir, "bfdd.sock"))
		if _, err := l.startProc(t.procPrefix+"bfdd", t.NS, filepath.Join(logs, "bfdd.log"), t.argv["bfdd"]); err != nil {
			return err
		}
	}
	if _, err := l.startProc(t.procPrefix+"bgpd", t.NS, filepath.Join(logs, "bgpd.log"), t.argv["bgpd"]); err != nil {
		return err
	}
	return l.waitFor(ctx, "bgpd to answer vtysh", t.procPrefix+"bgpd", func() error {
		out, err := t.Vtysh(ctx, "show bgp summary")
		if err == nil && !strings.Contains(out, "No BGP neighbors") && !strings.Contains(out, "BGP router identifier") {
			err = fmt.Errorf("unexpected answer: %s", out)
		}
		return err
	})
}

// ToRDaemon returns the ToR's running FRR daemon name ("zebra", "bfdd", "bgpd"), nil if none runs.
func (l *Lab) ToRDaemon(name string) *Proc { return l.ToR.Daemon(name) }

// Daemon returns the router's running daemon name ("zebra", "bfdd", "bgpd"; "bird"; "gobgpd"), nil if none runs.
func (t *ToR) Daemon(name string) *Proc {
	procs := t.lab.Procs()
	for i := len(procs) - 1; i >= 0; i-- {
		if p := procs[i]; p.Name == t.procPrefix+name && p.NS == t.NS {
			if exited, _ := p.Exited(); !exited {
				return p
			}
		}
	}
	return nil
}

// RestartBFDD starts the ToR's bfdd again (after a test killed it) and waits until it answers vtysh.
func (l *Lab) RestartBFDD(ctx context.Context) error { return l.RestartDaemon(ctx, "bfdd") }

// RestartDaemon starts the ToR's bfdd or bgpd again (after a test killed it) and waits until it answers vtysh.
func (l *Lab) RestartDaemon(ctx context.Context, name string) error {
	return l.ToR.RestartDaemon(ctx, name)
}

// RestartDaemon starts one of the router's daemons again after a test killed it — FRR's bfdd or bgpd, BIRD's
// bird, gobgpd — with its own command line, and waits until it answers.
func (t *ToR) RestartDaemon(ctx context.Context, name string) error {
	l := t.lab
	argv, ok := t.argv[name]
	if !ok {
		return fmt.Errorf("lab: no %s daemon %q to restart", t.Name, name)
	}
	if _, err := l.startProc(t.procPrefix+name, t.NS, filepath.Join(l.WorkDir, t.logDir, name+".log"), argv); err != nil {
		return err
	}
	return l.waitFor(ctx, name+" to answer", t.procPrefix+name, func() error {
		var err error
		switch name {
		case "bfdd":
			_, err = t.Vtysh(ctx, "show bfd peers")
		case "bgpd":
			_, err = t.Vtysh(ctx, "show bgp summary")
		case "bird":
			_, err = t.Birdc(ctx, "show status")
		case "gobgpd":
			_, err = t.Exec(ctx, "gobgp", "global")
		}
		return err
	})
}

// daemonOrder is the order the router's daemons start in (PowerOn).
func (t *ToR) daemonOrder() []string {
	switch t.Kind {
	case ToRBIRD:
		return []string{"bird"}
	case ToRGoBGP:
		return []string{"gobgpd", "bird"}
	}
	out := []string{"zebra"}
	if _, ok := t.argv["bfdd"]; ok {
		out = append(out, "bfdd")
	}
	return append(out, "bgpd")
}

// links are the router's network interfaces other than lo (its bridge and ports, or its segment end, and its
// uplink to the spine).
func (t *ToR) links(ctx context.Context) ([]string, error) {
	out, err := t.Exec(ctx, "ip", "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var ls []struct {
		Name string `json:"ifname"`
	}
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		return nil, fmt.Errorf("ip -j link: %w", err)
	}
	var names []string
	for _, l := range ls {
		if l.Name != "lo" {
			names = append(names, l.Name)
		}
	}
	return names, nil
}

// PowerOff makes the router fail as a box losing power: every link of its namespace but lo goes down first
// (the kernel drops the routes through them; the spine sees carrier loss on its port, the nodes see nothing and
// must detect the loss by BFD or the hold time — a dual-homed rack's nodes sit on a switch of their own, a
// single-ToR rack's nodes lose carrier), then every daemon is SIGKILLed, so no NOTIFICATION, FIN or RST ever
// leaves it. It returns when the links are down (Down is that moment) and the daemons are gone. PowerOn brings
// it back. Runtime configuration (Announce, Config) is lost, as in a reboot.
func (t *ToR) PowerOff(ctx context.Context) (down time.Time, err error) {
	links, err := t.links(ctx)
	if err != nil {
		return time.Time{}, err
	}
	var cmds []string
	for _, l := range links {
		cmds = append(cmds, "link set "+l+" down")
	}
	if err := ipBatch(ctx, t.NS, cmds...); err != nil {
		return time.Time{}, err
	}
	down = time.Now()
	var errs []error
	for _, name := range t.daemonOrder() {
		if p := t.Daemon(name); p != nil {
			errs = append(errs, p.Kill())
		}
	}
	return down, errors.Join(errs...)
}

// PowerOn brings a router PowerOff stopped back: its links up, then its daemons started again from their
// configuration files, as at lab start (FRR: zebra, bfdd, bgpd; BIRD; gobgpd and its FIB helper, which
// re-announces the rack's subnet), each waited for until it answers.
func (t *ToR) PowerOn(ctx context.Context) error {
	l := t.lab
	links, err := t.links(ctx)
	if err != nil {
		return err
	}
	var cmds []string
	for _, name := range links {
		cmds = append(cmds, "link set "+name+" up")
	}
	if err := ipBatch(ctx, t.NS, cmds...); err != nil {
		return err
	}
	for _, name := range t.daemonOrder() {
		if t.Daemon(name) != nil {
			continue // never stopped
		}
		argv, ok := t.argv[name]
		if !ok {
			return fmt.Errorf("lab: %s has no %s command line", t.Name, name)
		}
		if name == "zebra" {
			_ = os.Remove(filepath.Join(t.Dir, "zserv.api"))
		}
		if _, err := l.startProc(t.procPrefix+name, t.NS, filepath.Join(l.WorkDir, t.logDir, name+".log"), argv); err != nil {
			return err
		}
		if err := l.waitFor(ctx, t.Name+" "+name+" to answer", t.procPrefix+name, func() error {
			switch name {
			case "zebra":
				_, err := os.Stat(filepath.Join(t.Dir, "zserv.api"))
				return err
			case "bfdd":
				_, err := t.Vtysh(ctx, "show bfd peers")
				return err
			case "bgpd":
				_, err := t.Vtysh(ctx, "show bgp summary")
				return err
			case "bird":
				_, err := run(ctx, "birdc", "-s", t.birdSocket(), "show status")
				return err
			case "gobgpd":
				_, err := t.Exec(ctx, "gobgp", "global")
				return err
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if t.Kind == ToRGoBGP && l.cfg.multiRack() {
		return t.Announce(ctx, t.rack.Subnet.String())
	}
	return nil
}

// Vtysh runs vtysh commands in one session (`vtysh -c cmd1 -c cmd2 …`) and returns the output. vtysh talks
// to the daemons over their unix sockets in Dir. Don't `write memory`: vtysh would write /etc/frr. Only an FRR
// router has vtysh.
func (t *ToR) Vtysh(ctx context.Context, cmds ...string) (string, error) {
	if t.Kind != "" && t.Kind != ToRFRR {
		return "", fmt.Errorf("%s is a %s router: no vtysh", t.Name, t.Kind)
	}
	args := []string{"--vty_socket", t.Dir}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := run(ctx, "vtysh", args...)
	return out, err
}

// Config runs configuration lines after `configure terminal`, e.g.
//
//	tor.Config(ctx, "router bgp 64500", "address-family ipv4 unicast", "network 198.51.100.0/24")
//
// Any line FRR answers with "%" (unknown command, bad value) fails it.
func (t *ToR) Config(ctx context.Context, lines ...string) error {
	out, err := t.Vtysh(ctx, append([]string{"configure terminal"}, lines...)...)
	if err != nil {
		return err
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "%") {
			return fmt.Errorf("tor config %q: %s", lines, strings.TrimSpace(out))
		}
	}
	return nil
}

// Announce makes the ToR originate prefixes to every node (e.g. "0.0.0.0/0", "198.51.100.0/24"). The base
// config has `no bgp network import-check`, so the ToR need not have a route for them. A gobgpd ToR adds them to
// its global RIB; a BIRD ToR to a static protocol of blackhole routes (config reload, no session reset), never
// installed into its kernel.
func (t *ToR) Announce(ctx context.Context, prefixes ...string) error {
	return t.networks(ctx, "", prefixes)
}

// Withdraw stops originating prefixes given to Announce.
func (t *ToR) Withdraw(ctx context.Context, prefixes ...string) error {
	return t.networks(ctx, "no ", prefixes)
}

func (t *ToR) networks(ctx context.Context, no string, prefixes []string) error {
	if t.Kind == ToRGoBGP {
		for _, p := range prefixes {
			if _, err := netip.ParsePrefix(p); err != nil {
				return err
			}
			verb := "add"
			if no != "" {
				verb = "del"
			}
			if out, err := t.Exec(ctx, "gobgp", "global", "rib", verb, "-a", "ipv4", p); err != nil {
				return fmt.Errorf("gobgp global rib %s %s: %v: %s", verb, p, err, out)
			}
		}
		return nil
	}
	if t.Kind == ToRBIRD {
		return t.birdNetworks(ctx, no == "", prefixes)
	}
	lines := []string{fmt.Sprintf("router bgp %d", t.ASN), "address-family ipv4 unicast"}
	for _, p := range prefixes {
		if _, err := netip.ParsePrefix(p); err != nil {
			return err
		}
		lines = append(lines, no+"network "+p)
	}
	return t.Config(ctx, lines...)
}

// VtyshJSON runs one show command with " json" appended and decodes the answer into v.
func (t *ToR) VtyshJSON(ctx context.Context, cmd string, v any) error {
	out, err := t.Vtysh(ctx, cmd+" json")
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("%s json: %w: %.200s", cmd, err, out)
	}
	return nil
}

// Peers returns the ToR's BGP neighbours (IPv4 and IPv6 unicast ones) and their state ("Established", "Active", …; BIRD's and gobgpd's
// states are given FRR's names).
func (t *ToR) Peers(ctx context.Context) (map[netip.Addr]string, error) {
	switch t.Kind {
	case ToRBIRD:
		return t.birdPeers(ctx)
	case ToRGoBGP:
		return t.gobgpPeers(ctx)
	}
	type afPeers struct {
		Peers map[string]struct {
			State string `json:"state"`
		} `json:"peers"`
	}
	var sum struct {
		IPv4Unicast afPeers `json:"ipv4Unicast"`
		IPv6Unicast afPeers `json:"ipv6Unicast"`
	}
	if err := t.VtyshJSON(ctx, "show bgp summary", &sum); err != nil {
		return nil, err
	}
	out := map[netip.Addr]string{}
	for _, af := range []afPeers{sum.IPv6Unicast, sum.IPv4Unicast} { // a peer of both: its IPv4 unicast state
		for a, p := range af.Peers {
			if ip, err := netip.ParseAddr(a); err == nil {
				out[ip] = p.State
			}
		}
	}
	return out, nil
}

// WaitEstablished waits until the ToR has an Established session with every given address.
func (t *ToR) WaitEstablished(ctx context.Context, peers ...netip.Addr) error {
	for {
		got, err := t.Peers(ctx)
		var missing []string
		for _, p := range peers {
			if got[p] != "Established" {
				missing = append(missing, fmt.Sprintf("%s(%s)", p, orDash(got[p])))
			}
		}
		if err == nil && len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("not established: " + strings.Join(missing, " "))
			}
			return fmt.Errorf("ToR BGP sessions: %w (%v)", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Routes returns the ToR's BGP best paths: prefix → next hops of the selected (multi)paths. For a BIRD or
// gobgpd router: what it installed into its kernel (KernelRoutes: BIRD's merged paths, gobgpd's best path).
func (t *ToR) Routes(ctx context.Context) (map[netip.Prefix][]netip.Addr, error) {
	if t.Kind == ToRBIRD || t.Kind == ToRGoBGP {
		return t.KernelRoutes(ctx)
	}
	return t.frrRoutes(ctx, "show ip bgp")
}

// Routes6 is Routes for IPv6 unicast (FRR only: the dual-stack lab's ToR), without link-local next hops.
func (t *ToR) Routes6(ctx context.Context) (map[netip.Prefix][]netip.Addr, error) {
	if t.Kind == ToRBIRD || t.Kind == ToRGoBGP {
		return nil, fmt.Errorf("Routes6: the %s ToR has no IPv6 in the lab", t.Kind)
	}
	return t.frrRoutes(ctx, "show bgp ipv6 unicast")
}

// frrRoutes reads FRR's table (cmd: "show ip bgp", "show bgp ipv6 unicast"): prefix → the global next hops of the
// valid best and multipaths, sorted.
func (t *ToR) frrRoutes(ctx context.Context, cmd string) (map[netip.Prefix][]netip.Addr, error) {
	var rib struct {
		Routes map[string][]struct {
			Valid     bool `json:"valid"`
			Bestpath  bool `json:"bestpath"`
			Multipath bool `json:"multipath"`
			Nexthops  []struct {
				IP    string `json:"ip"`
				Scope string `json:"scope"`
			} `json:"nexthops"`
		} `json:"routes"`
	}
	if err := t.VtyshJSON(ctx, cmd, &rib); err != nil {
		return nil, err
	}
	out := map[netip.Prefix][]netip.Addr{}
	for ps, paths := range rib.Routes {
		p, err := netip.ParsePrefix(ps)
		if err != nil {
			continue
		}
		for _, path := range paths {
			if !path.Valid || !(path.Bestpath || path.Multipath) {
				continue
			}
			for _, nh := range path.Nexthops {
				if a, err := netip.ParseAddr(nh.IP); err == nil && nh.Scope != "link-local" && !a.IsLinkLocalUnicast() {
					out[p] = append(out[p], a)
				}
			}
		}
		sort.Slice(out[p], func(i, j int) bool { return out[p][i].Less(out[p][j]) })
	}
	return out, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
