// Package backends chooses the service proxy's back end for a node and keeps the modes apart: starting one mode
// removes what the other modes left (a switch of --proxy-mode must not leave old rules steering traffic), and
// turning the proxy off removes them all.
package backends

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/proxy"
	iptproxy "canopy.io/canopy/proxy/iptables"
	ipvsproxy "canopy.io/canopy/proxy/ipvs"
)

// Modes.
const (
	IPVS     = "ipvs"
	IPTables = "iptables"
)

// Config is what the back ends need to know about the node and the cluster.
type Config struct {
	Mode              string // IPVS or IPTables
	NodeIPs           []netip.Addr
	ClusterCIDRs      []netip.Prefix
	MasqueradeAll     bool
	NodePortAddresses []netip.Prefix
	IPT               *ipt.Host // this namespace's iptables
	Log               *slog.Logger
}

// New picks the back end for cfg.Mode (IPVS only where the kernel has it: iptables otherwise, with a log line),
// removes what the other modes left, and starts it.
func New(cfg Config) (proxy.Backend, error) {
	mode := cfg.Mode
	if mode == IPVS {
		if ok, err := ipvsproxy.Available(); !ok {
			cfg.Log.Warn("this kernel has no IPVS: using the iptables service proxy instead", "requested", IPVS, "err", err)
			mode = IPTables
		}
	}
	var be proxy.Backend
	var err error
	switch mode {
	case IPVS:
		if err := cleanupIPTables(cfg); err != nil {
			cfg.Log.Warn("removing the iptables proxy's rules (the proxy mode is ipvs now)", "err", err)
		}
		be, err = ipvsproxy.New(ipvsproxy.Config{NodeIPs: cfg.NodeIPs, PodCIDRs: cfg.ClusterCIDRs, IPT: cfg.IPT, Log: cfg.Log.With("component", "proxy-ipvs")})
	case IPTables:
		if err := ipvsproxy.Cleanup("", cfg.NodeIPs, cfg.IPT); err != nil {
			cfg.Log.Warn("removing the IPVS proxy's services and rules (the proxy mode is iptables now)", "err", err)
		}
		be = iptproxy.NewOn(iptables(cfg), cfg.IPT, cfg.Log.With("component", "proxy-iptables"))
	default:
		return nil, fmt.Errorf("unknown proxy mode %q", mode)
	}
	if err == nil {
		err = be.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("%s service proxy: %w", mode, err)
	}
	return be, nil
}

// CleanupAll removes what every mode left (the proxy is turned off).
func CleanupAll(cfg Config) error {
	return errors.Join(cleanupIPTables(cfg), ipvsproxy.Cleanup("", cfg.NodeIPs, cfg.IPT))
}

func cleanupIPTables(cfg Config) error {
	return iptproxy.NewOn(iptables(cfg), cfg.IPT, cfg.Log).Cleanup()
}

func iptables(cfg Config) iptproxy.Config {
	return iptproxy.Config{ClusterCIDRs: cfg.ClusterCIDRs, MasqueradeAll: cfg.MasqueradeAll, NodeIPs: cfg.NodeIPs,
		NodePortAddresses: cfg.NodePortAddresses}
}
