// Package config holds the agent's validated configuration: what the flags say, checked once, as plain Go values.
// cmd/canopy binds flags to a Raw value and calls Validate; nothing below cmd reads flags or the environment.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"canopy.io/canopy/bgp/services"

	"canopy.io/canopy/loadbalancer"

	"canopy.io/canopy/bgp"
	"canopy.io/canopy/routes/overlay"
)

// Raw is the configuration as the flags give it: strings and lists, not yet checked.
type Raw struct {
	Kubeconfig string
	NodeName   string

	ClusterASN      uint
	RouterID        string
	BGPPort         int
	GRPCAddr        string
	GRPCAllowWrites bool
	MetricsAddr     string
	Pprof           bool
	NodesFullMesh   bool
	ClusterCIDRs    []string
	ImportAllow     []string
	PeerIPs         []string
	PeerASNs        []string
	PeerTTL         uint
	PeerPasswords   string // path of a file: one password per line, in the order of PeerIPs (or one for all)
	PeerTTLSecurity bool
	MeshPassword    string // path of a file holding the node-to-node sessions' password
	MeshTTLSecurity bool
	MaxPrefixes     int
	BFD             bool
	BFDNodeMesh     bool
	BFDMinRx        time.Duration
	BFDMinTx        time.Duration
	BFDMultiplier   int
	BGPObjects      bool
	SecretNamespace string
	HoldTime        time.Duration
	Keepalive       time.Duration
	ConnectRetry    time.Duration
	GracefulRestart bool
	GRRestartTime   time.Duration
	RouteProtocol   int
	RouteTable      int
	StaleTimeout    time.Duration
	ResyncInterval  time.Duration
	LogLevel        string

	CNIConfDir   string
	CNIBinDir    string
	CNIPlugin    string
	CNIDataDir   string
	CNIMTU       int
	PodEgress    bool
	PodEgress6   bool
	ServiceCIDRs []string
	Overlay      string

	RunServiceProxy   bool
	ProxyMode         string
	MasqueradeAll     bool
	NodePortAddresses []string
	ProxyRepair       time.Duration

	RunFirewall    bool
	PolicyReject   bool
	PolicyLog      string
	PolicyLogGroup int
	CNIAgentSocket string
	PolicyRepair   time.Duration

	AdvertiseClusterIP      bool
	AdvertiseExternalIP     bool
	AdvertiseLoadBalancerIP bool
	AdvertiseServiceCIDR    bool
	AdvertiseVIPsToNodes    bool
	ExternalIPRanges        []string
	LoadBalancerIPRanges    []string
	AllowedCommunities      string
	RunLoadBalancer         bool
	LeaseNamespace          string
}

// Config is the validated configuration.
type Config struct {
	Kubeconfig string
	NodeName   string

	ClusterASN      uint32
	RouterID        netip.Addr // invalid = take the node's IPv4 InternalIP
	BGPPort         int
	GRPCAddr        string
	GRPCAllowWrites bool
	MetricsAddr     string
	Pprof           bool // /debug/pprof/ on MetricsAddr
	NodesFullMesh   bool
	ClusterCIDRs    []netip.Prefix
	ImportAllow     []netip.Prefix
	Peers           []bgp.PeerConfig
	MeshPassword    string
	MeshTTLSecurity bool
	MaxPrefixes     uint32
	BFD             bool // BFD with the external peers (their own setting may say otherwise)
	BFDNodeMesh     bool // BFD on node-to-node sessions
	BFDTimers       bgp.BFDTimers
	// BGPObjects: read the canopy.io BGPPeer and BGPConfiguration objects and write this node's BGPNodeStatus.
	BGPObjects bool
	// SecretNamespace is the only namespace a BGPPeer's or BGPConfiguration's passwordSecretRef may name.
	SecretNamespace string
	HoldTime        time.Duration
	Keepalive       time.Duration
	ConnectRetry    time.Duration
	GracefulRestart bool
	GRRestartTime   time.Duration
	RouteProtocol   int
	RouteTable      int
	StaleTimeout    time.Duration
	ResyncInterval  time.Duration
	LogLevel        string

	CNIConfDir   string
	CNIBinDir    string
	CNIPlugin    string
	CNIDataDir   string
	CNIMTU       int
	PodEgress    bool
	PodEgress6   bool // masquerade IPv6 pod egress too (with PodEgress)
	ServiceCIDRs []netip.Prefix
	Overlay      overlay.Mode // none, vxlan or crosssubnet

	RunServiceProxy   bool
	ProxyMode         string // "ipvs" or "iptables"
	MasqueradeAll     bool
	NodePortAddresses []netip.Prefix
	ProxyRepair       time.Duration // full rewrite of the proxy's rules that often (0 = never)

	RunFirewall    bool
	PolicyReject   bool
	PolicyLog      string // "", "log" or "nflog"
	PolicyLogGroup int
	CNIAgentSocket string        // "" = none
	PolicyRepair   time.Duration // full rewrite of the policy chains and sets that often (0 = never)

	AdvertiseClusterIP      bool
	AdvertiseExternalIP     bool
	AdvertiseLoadBalancerIP bool
	AdvertiseServiceCIDR    bool
	AdvertiseVIPsToNodes    bool
	ExternalIPRanges        []netip.Prefix
	LoadBalancerIPRanges    []loadbalancer.Range // allocated from (with RunLoadBalancer)
	LoadBalancerIPPrefixes  []netip.Prefix       // the same addresses as CIDRs: announced only inside
	AllowedCommunities      services.Communities // what a Service's canopy.io/communities may ask for
	RunLoadBalancer         bool
	LeaseNamespace          string
}

// Validate checks every field and returns all problems at once, each naming its flag.
func (r Raw) Validate() (*Config, error) {
	var errs []error
	bad := func(flag string, format string, a ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...)))
	}
	c := &Config{
		Kubeconfig:      r.Kubeconfig,
		NodeName:        r.NodeName,
		BGPPort:         r.BGPPort,
		GRPCAddr:        r.GRPCAddr,
		GRPCAllowWrites: r.GRPCAllowWrites,
		MetricsAddr:     r.MetricsAddr,
		Pprof:           r.Pprof,
		NodesFullMesh:   r.NodesFullMesh,
		MeshTTLSecurity: r.MeshTTLSecurity,
		BFD:             r.BFD,
		BFDNodeMesh:     r.BFDNodeMesh,
		BGPObjects:      r.BGPObjects,
		SecretNamespace: r.SecretNamespace,
		HoldTime:        r.HoldTime,
		Keepalive:       r.Keepalive,
		ConnectRetry:    r.ConnectRetry,
		GracefulRestart: r.GracefulRestart,
		GRRestartTime:   r.GRRestartTime,
		RouteProtocol:   r.RouteProtocol,
		RouteTable:      r.RouteTable,
		StaleTimeout:    r.StaleTimeout,
		ResyncInterval:  r.ResyncInterval,
		LogLevel:        strings.ToLower(r.LogLevel),
		CNIConfDir:      r.CNIConfDir,
		CNIBinDir:       r.CNIBinDir,
		CNIPlugin:       r.CNIPlugin,
		CNIDataDir:      r.CNIDataDir,
		CNIMTU:          r.CNIMTU,
		PodEgress:       r.PodEgress,
		PodEgress6:      r.PodEgress6,
		RunServiceProxy: r.RunServiceProxy,
		ProxyMode:       strings.ToLower(r.ProxyMode),
		MasqueradeAll:   r.MasqueradeAll,
		RunFirewall:     r.RunFirewall,
		PolicyReject:    r.PolicyReject,
		PolicyLog:       strings.ToLower(r.PolicyLog),
		PolicyLogGroup:  r.PolicyLogGroup,
		CNIAgentSocket:  r.CNIAgentSocket,
		ProxyRepair:     r.ProxyRepair,
		PolicyRepair:    r.PolicyRepair,

		AdvertiseClusterIP:      r.AdvertiseClusterIP,
		AdvertiseExternalIP:     r.AdvertiseExternalIP,
		AdvertiseLoadBalancerIP: r.AdvertiseLoadBalancerIP,
		AdvertiseServiceCIDR:    r.AdvertiseServiceCIDR,
		AdvertiseVIPsToNodes:    r.AdvertiseVIPsToNodes,
		RunLoadBalancer:         r.RunLoadBalancer,
		LeaseNamespace:          r.LeaseNamespace,
	}
	if c.NodeName == "" {
		if h, err := os.Hostname(); err == nil {
			c.NodeName = h
		}
	}
	if c.NodeName == "" {
		bad("node-name", "empty, and neither NODE_NAME nor the hostname gives one")
	}
	if asn, err := bgp.ParseASN(strconv.FormatUint(uint64(r.ClusterASN), 10)); err != nil {
		bad("cluster-asn", "%v", err)
	} else {
		c.ClusterASN = asn
	}
	if r.RouterID != "" {
		a, err := netip.ParseAddr(r.RouterID)
		if err != nil || !a.Is4() {
			bad("router-id", "%q is not an IPv4 address", r.RouterID)
		} else {
			c.RouterID = a
		}
	}
	for _, a := range []struct{ flag, v string }{{"grpc-addr", r.GRPCAddr}, {"metrics-addr", r.MetricsAddr}} {
		if a.v != "" {
			if err := checkListenAddr(a.v); err != nil {
				bad(a.flag, "%v", err)
			}
		}
	}
	if r.BGPPort < 1 || r.BGPPort > 65535 {
		bad("bgp-port", "%d is not a TCP port", r.BGPPort)
	}
	var err error
	if c.ClusterCIDRs, err = parsePrefixes(r.ClusterCIDRs); err != nil {
		bad("cluster-cidr", "%v", err)
	} else if len(c.ClusterCIDRs) == 0 {
		bad("cluster-cidr", "at least one pod network CIDR is required (it bounds which routes are accepted from peers)")
	}
	if c.ImportAllow, err = parsePrefixes(r.ImportAllow); err != nil {
		bad("import-allow", "%v", err)
	}
	for _, p := range append(append([]netip.Prefix{}, c.ClusterCIDRs...), c.ImportAllow...) {
		if p.Bits() == 0 {
			bad("cluster-cidr/import-allow", "%s would accept a default route; not allowed", p)
		}
	}
	if c.ServiceCIDRs, err = parsePrefixes(r.ServiceCIDRs); err != nil {
		bad("service-cluster-ip-range", "%v", err)
	}
	if c.NodePortAddresses, err = parsePrefixes(r.NodePortAddresses); err != nil {
		bad("nodeport-addresses", "%v", err)
	}
	if c.ExternalIPRanges, err = parsePrefixes(r.ExternalIPRanges); err != nil {
		bad("service-external-ip-range", "%v", err)
	}
	if c.LoadBalancerIPRanges, err = loadbalancer.ParseRanges(r.LoadBalancerIPRanges); err != nil {
		bad("loadbalancer-ip-range", "%v", err)
	}
	c.LoadBalancerIPPrefixes = loadbalancer.Prefixes(c.LoadBalancerIPRanges)
	if c.AllowedCommunities, err = services.ParseCommunities(r.AllowedCommunities); err != nil {
		bad("service-communities-allowed", "%v", err)
	}
	if r.RunLoadBalancer && len(c.LoadBalancerIPPrefixes) == 0 {
		bad("loadbalancer-ip-range", "empty: --run-loadbalancer needs addresses to hand out")
	}
	if r.RunLoadBalancer && r.LeaseNamespace == "" {
		bad("lease-namespace", "empty: --run-loadbalancer elects its leader with a Lease")
	}
	switch c.PolicyLog {
	case "", "log", "nflog":
	case "off", "none":
		c.PolicyLog = ""
	default:
		bad("policy-log", "%q is not off, log or nflog", r.PolicyLog)
	}
	if r.CNIAgentSocket != "" && (!filepath.IsAbs(r.CNIAgentSocket) || len(r.CNIAgentSocket) > 100) {
		bad("cni-agent-socket", "%q: want an absolute path of at most 100 bytes (a unix socket)", r.CNIAgentSocket)
	}
	if r.PolicyLogGroup < 0 || r.PolicyLogGroup > 65535 {
		bad("policy-log-group", "%d is outside 0..65535", r.PolicyLogGroup)
	}
	switch c.ProxyMode {
	case "ipvs", "iptables", "nftables":
	default:
		bad("proxy-mode", "%q is not ipvs, iptables or nftables", r.ProxyMode)
	}
	if r.CNIMTU != 0 && (r.CNIMTU < 576 || r.CNIMTU > 65535) {
		bad("cni-mtu", "%d is outside 576..65535 (0 = detect)", r.CNIMTU)
	}
	if c.Overlay, err = overlay.ParseMode(r.Overlay); err != nil {
		bad("overlay", "%v", err)
	} else if c.Overlay.On() && r.RouteProtocol == overlay.Protocol {
		bad("route-protocol", "%d is the overlay's own route protocol: pick another with --overlay=%s", r.RouteProtocol, c.Overlay)
	}
	if r.CNIDataDir != "" && !filepath.IsAbs(r.CNIDataDir) {
		bad("cni-data-dir", "%q is not an absolute path", r.CNIDataDir)
	}
	if r.CNIBinDir != "" && r.CNIPlugin == "" {
		bad("cni-plugin", "empty: --cni-bin-dir needs the plugin binary to install")
	}
	peers, perr := r.peers()
	if perr != nil {
		errs = append(errs, perr)
	}
	c.Peers = peers
	if r.MeshPassword != "" {
		b, err := os.ReadFile(r.MeshPassword)
		switch pw := strings.TrimRight(string(b), "\r\n"); {
		case err != nil:
			bad("node-mesh-password-file", "%v", err)
		case pw == "" || strings.ContainsAny(pw, "\n"):
			bad("node-mesh-password-file", "%s: want one non-empty line", r.MeshPassword)
		case len(pw) > 80:
			bad("node-mesh-password-file", "%s: the password is longer than TCP MD5's 80 bytes", r.MeshPassword)
		default:
			c.MeshPassword = pw
		}
	}
	if r.MaxPrefixes < 0 || r.MaxPrefixes > 1<<24 {
		bad("max-prefixes", "%d is outside 0..%d (0 = no limit)", r.MaxPrefixes, 1<<24)
	} else {
		c.MaxPrefixes = uint32(r.MaxPrefixes)
	}
	// BFD timers: 0 means the default (300 ms × 3).
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"bfd-min-rx", r.BFDMinRx}, {"bfd-min-tx", r.BFDMinTx}} {
		if d.v != 0 && (d.v < 10*time.Millisecond || d.v > time.Hour) {
			bad(d.flag, "%s is outside 10ms..1h", d.v)
		}
	}
	if r.BFDMultiplier < 0 || r.BFDMultiplier > 255 {
		bad("bfd-multiplier", "%d is outside 1..255", r.BFDMultiplier)
	}
	c.BFDTimers = bgp.BFDTimers{MinRx: r.BFDMinRx, MinTx: r.BFDMinTx, Multiplier: uint8(max(0, min(255, r.BFDMultiplier)))}
	if r.BGPObjects && (r.SecretNamespace == "" || len(validation.IsDNS1123Label(r.SecretNamespace)) > 0) {
		bad("bgp-secret-namespace", "%q is not a namespace name", r.SecretNamespace)
	}
	if r.HoldTime != 0 && r.HoldTime < 3*time.Second {
		bad("hold-time", "%s is below the BGP minimum of 3s (0 = use the default)", r.HoldTime)
	}
	if r.Keepalive <= 0 {
		bad("keepalive-interval", "must be positive")
	} else if r.HoldTime != 0 && r.Keepalive*3 > r.HoldTime {
		bad("keepalive-interval", "%s is more than a third of --hold-time %s", r.Keepalive, r.HoldTime)
	}
	if r.ConnectRetry < time.Second {
		bad("connect-retry", "%s is below 1s", r.ConnectRetry)
	}
	if r.GRRestartTime < time.Second || r.GRRestartTime > 4095*time.Second {
		bad("graceful-restart-time", "%s is outside 1s..4095s", r.GRRestartTime)
	}
	if r.RouteProtocol < 1 || r.RouteProtocol > 255 || r.RouteProtocol <= 4 {
		bad("route-protocol", "%d must be in 5..255 (0-4 are the kernel's own)", r.RouteProtocol)
	}
	if r.RouteTable < 0 || r.RouteTable == 255 || r.RouteTable == 253 {
		bad("route-table", "%d is not a table Canopy may write (not local or default)", r.RouteTable)
	}
	if r.StaleTimeout <= 0 {
		bad("stale-route-timeout", "must be positive")
	}
	if r.ResyncInterval < 0 {
		bad("resync-interval", "must not be negative")
	}
	if r.ProxyRepair < 0 {
		bad("proxy-repair-interval", "must not be negative")
	}
	if r.PolicyRepair < 0 {
		bad("policy-repair-interval", "must not be negative")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q is not one of debug, info, warn, error", r.LogLevel)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

func (r Raw) peers() ([]bgp.PeerConfig, error) {
	var errs []error
	if len(r.PeerIPs) == 0 {
		if len(r.PeerASNs) > 0 {
			errs = append(errs, errors.New("--peer-router-asns given without --peer-router-ips"))
		}
		return nil, errors.Join(errs...)
	}
	if len(r.PeerASNs) != 1 && len(r.PeerASNs) != len(r.PeerIPs) {
		return nil, fmt.Errorf("--peer-router-asns: %d values for %d --peer-router-ips (give one for all, or one each)", len(r.PeerASNs), len(r.PeerIPs))
	}
	if r.PeerTTL > 255 {
		errs = append(errs, fmt.Errorf("--peer-router-multihop-ttl: %d is above 255", r.PeerTTL))
	}
	if r.PeerTTLSecurity && r.PeerTTL > 1 {
		errs = append(errs, fmt.Errorf("--peer-router-ttl-security: TTL security is for directly connected peers, not with --peer-router-multihop-ttl %d", r.PeerTTL))
	}
	var passwords []string
	if r.PeerPasswords != "" {
		b, err := os.ReadFile(r.PeerPasswords)
		if err != nil {
			errs = append(errs, fmt.Errorf("--peer-router-passwords-file: %v", err))
		} else {
			for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
				passwords = append(passwords, strings.TrimRight(l, "\r"))
			}
			if len(passwords) != 1 && len(passwords) != len(r.PeerIPs) {
				errs = append(errs, fmt.Errorf("--peer-router-passwords-file: %d lines for %d peers (give one for all, or one each)", len(passwords), len(r.PeerIPs)))
			}
		}
	}
	var out []bgp.PeerConfig
	seen := map[netip.Addr]bool{}
	for i, s := range r.PeerIPs {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("--peer-router-ips: %q is not an IP address", s))
			continue
		}
		if seen[a] {
			errs = append(errs, fmt.Errorf("--peer-router-ips: %s given twice", a))
			continue
		}
		seen[a] = true
		asnStr := r.PeerASNs[0]
		if len(r.PeerASNs) > 1 {
			asnStr = r.PeerASNs[i]
		}
		asn, err := bgp.ParseASN(asnStr)
		if err != nil {
			errs = append(errs, fmt.Errorf("--peer-router-asns: peer %s: %v", a, err))
			continue
		}
		p := bgp.PeerConfig{Address: a, ASN: asn, MultihopTTL: uint8(r.PeerTTL), TTLSecurity: r.PeerTTLSecurity}
		if len(passwords) == 1 {
			p.Password = passwords[0]
		} else if len(passwords) == len(r.PeerIPs) {
			p.Password = passwords[i]
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// checkListenAddr checks a host:port to listen on: the host empty (every address) or an IP address, the port a
// number in 1..65535.
func checkListenAddr(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", v, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not in 1..65535", v, port)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q: %q is not an IP address (names are not resolved)", v, host)
		}
	}
	return nil
}

func parsePrefixes(in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for _, s := range in {
		for _, part := range strings.Split(s, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			p, err := netip.ParsePrefix(part)
			if err != nil {
				errs = append(errs, fmt.Errorf("%q is not a CIDR", part))
				continue
			}
			if p != p.Masked() {
				errs = append(errs, fmt.Errorf("%q has host bits set (did you mean %s?)", part, p.Masked()))
				continue
			}
			out = append(out, p)
		}
	}
	return out, errors.Join(errs...)
}
