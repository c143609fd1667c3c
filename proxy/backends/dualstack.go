package backends

import (
	"errors"
	"os/exec"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/proxy"
	iptproxy "canopy.io/canopy/proxy/iptables"
	nftproxy "canopy.io/canopy/proxy/nftables"
)

// DualStack reports whether the cluster has IPv6 (a --cluster-cidr of that family): then the iptables and
// nftables modes program both families (ip6tables, table ip6 canopy). An IPv4-only cluster gets exactly the
// IPv4 back end, as before.
func DualStack(cfg Config) bool {
	for _, c := range cfg.ClusterCIDRs {
		if c.Addr().Is6() && !c.Addr().Is4In6() {
			return true
		}
	}
	return false
}

// NewIPTables is the iptables mode's back end: the IPv4 proxier on cfg.IPT, and with DualStack(cfg) the IPv6
// one on the same flavour's ip6tables too, under proxy.DualStack.
func NewIPTables(cfg Config) (proxy.Backend, error) {
	log := cfg.Log.With("component", "proxy-iptables")
	if !DualStack(cfg) {
		return iptproxy.NewOn(iptables(cfg), cfg.IPT, log), nil
	}
	h6, err := ipt.OpenFlavour6(cfg.IPT.Flavour)
	if err != nil {
		return nil, err
	}
	return iptproxy.NewDualStack(iptables(cfg), cfg.IPT, h6, log), nil
}

// NewNFTables is the nftables mode's back end: table ip canopy, and with DualStack(cfg) table ip6 canopy too,
// under proxy.DualStack.
func NewNFTables(cfg Config) (proxy.Backend, error) {
	log := cfg.Log.With("component", "proxy-nftables")
	if !DualStack(cfg) {
		return nftproxy.NewHost(nftables(cfg), log)
	}
	return nftproxy.NewDualStack(nftables(cfg), log)
}

// Cleanup6 removes what mode's IPv6 side left (ip6tables chains, table ip6 canopy); nothing for IPVS (its
// back end keeps one table for both families) and nothing where the tool is missing.
func Cleanup6(cfg Config, mode string) error {
	switch mode {
	case IPTables:
		if _, err := exec.LookPath("ip6tables"); err != nil {
			return nil
		}
		f := ipt.Detect()
		if cfg.IPT != nil {
			f = cfg.IPT.Flavour
		}
		h6, err := ipt.OpenFlavour6(f)
		if err != nil {
			return err
		}
		return iptproxy.NewOn6(iptables(cfg), h6, cfg.Log).Cleanup()
	case NFTables:
		if _, err := exec.LookPath("nft"); err != nil {
			return nil
		}
		p, err := nftproxy.NewHost6(nftables(cfg), cfg.Log)
		if err != nil {
			return err
		}
		return p.Cleanup()
	}
	return nil
}

// CleanupAll6 is Cleanup6 for every mode.
func CleanupAll6(cfg Config) error {
	return errors.Join(Cleanup6(cfg, IPTables), Cleanup6(cfg, NFTables))
}
