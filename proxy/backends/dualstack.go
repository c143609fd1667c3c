package backends

import (
	"errors"
	"os/exec"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/proxy"
	iptproxy "canopy.io/canopy/proxy/iptables"
	ipvsproxy "canopy.io/canopy/proxy/ipvs"
	nftproxy "canopy.io/canopy/proxy/nftables"
)

// DualStack reports whether the cluster has IPv6 (a --cluster-cidr of that family): then the iptables and
// nftables modes program both families (ip6tables, table ip6 canopy), and the IPVS mode IPv6 virtual services
// with its masquerade chain in ip6tables too. An IPv4-only cluster gets exactly the IPv4 back end, as before.
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

// NewNFTables is the nftables mode's back end: the ip canopy tables (nftproxy.DefaultShards of them), and with
// DualStack(cfg) the ip6 ones too, under proxy.DualStack.
func NewNFTables(cfg Config) (proxy.Backend, error) {
	log := cfg.Log.With("component", "proxy-nftables")
	if !DualStack(cfg) {
		return nftproxy.NewHostShards(nftables(cfg), false, nftproxy.DefaultShards, log)
	}
	return nftproxy.NewDualStackShards(nftables(cfg), nftproxy.DefaultShards, log)
}

// NewIPVS is the IPVS mode's back end: one back end for both families (IPVS keeps one table; it reads the IPv6
// side of each port itself), with DualStack(cfg) its masquerade chain in the same flavour's ip6tables too.
func NewIPVS(cfg Config) (proxy.Backend, error) {
	c := ipvsproxy.Config{NodeIPs: cfg.NodeIPs, PodCIDRs: cfg.ClusterCIDRs, IPT: cfg.IPT, Log: cfg.Log.With("component", "proxy-ipvs")}
	if DualStack(cfg) && cfg.IPT != nil {
		h6, err := ipt.OpenFlavour6(cfg.IPT.Flavour)
		if err != nil {
			return nil, err
		}
		c.IPT6 = h6
	}
	return ipvsproxy.New(c)
}

// Cleanup6 removes what mode's IPv6 side left (ip6tables chains, the ip6 canopy tables; for IPVS its ip6tables
// masquerade chain: Cleanup of the IPv4 side removes the IPv6 virtual services and addresses already, IPVS
// keeping one table for both families) and nothing where the tool is missing.
func Cleanup6(cfg Config, mode string) error {
	switch mode {
	case IPVS, IPTables:
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
		if mode == IPVS {
			return ipvsproxy.RemoveMasq(h6)
		}
		return iptproxy.NewOn6(iptables(cfg), h6, cfg.Log).Cleanup()
	case NFTables:
		if _, err := exec.LookPath("nft"); err != nil {
			return nil
		}
		if ok, err := nftproxy.HasTable(true); err == nil && !ok {
			return nil // no table: not even nft's start-up checks (seconds next to a big ip canopy table)
		}
		p, err := nftproxy.NewHostShards(nftables(cfg), true, nftproxy.DefaultShards, cfg.Log)
		if err != nil {
			return err
		}
		return p.Cleanup()
	}
	return nil
}

// CleanupAll6 is Cleanup6 for every mode.
func CleanupAll6(cfg Config) error {
	return errors.Join(Cleanup6(cfg, IPTables), Cleanup6(cfg, NFTables), Cleanup6(cfg, IPVS))
}
