// Package backends chooses the service proxy's back end for a node and keeps the modes apart: starting one mode
// removes what the other modes left (a switch of --proxy-mode must not leave old rules steering traffic), and
// turning the proxy off removes them all.
package backends

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"sync"
	"time"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/netnsx"
	"canopy.io/canopy/proxy"
	iptproxy "canopy.io/canopy/proxy/iptables"
	ipvsproxy "canopy.io/canopy/proxy/ipvs"
	nftproxy "canopy.io/canopy/proxy/nftables"
)

// Modes.
const (
	IPVS     = "ipvs"
	IPTables = "iptables"
	NFTables = "nftables"
)

// Config is what the back ends need to know about the node and the cluster.
type Config struct {
	Mode              string // IPVS, IPTables or NFTables
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
	be, start, err := prepare(cfg, false)
	if err == nil {
		err = start()
	}
	if err != nil {
		return nil, err
	}
	return be, nil
}

// Prepare picks the back end like New but leaves the slow part to start: removing what the other modes left,
// and the back end's Start, which reads every rule an earlier run left (seconds with 10,000 Services). The
// agent runs start in the proxy's loop while the informers list, instead of before they begin.
//
// The nftables back end it returns removes what the other modes left only after its first full sync, from
// PruneStale (the proxy calls it then), in the background: until the node's Services are in its tables, an
// earlier mode's rules keep serving them (a switch of mode does not stop traffic), and the removal stays off
// the restart's way to the first sync. Next to the 30,000 chains of 10,000 Services, every iptables-nft call
// reads them all: at 5,000 nodes the removal took 5.7 s of a 15.7 s restart, competing for the CPU with the
// informers and the tables' reading it ran beside.
func Prepare(cfg Config) (be proxy.Backend, start func() error, err error) {
	return prepare(cfg, true)
}

// deferredCleanup is a back end whose first PruneStale also starts removing what the other modes left.
type deferredCleanup struct {
	proxy.Backend
	once   sync.Once
	others func()
	log    *slog.Logger
	done   chan struct{} // closed when the removal ends
}

// PruneStale implements proxy.Backend: the back end's own, then (the first time) the other modes' removal in
// a goroutine, in the calling thread's network namespace.
func (d *deferredCleanup) PruneStale() error {
	err := d.Backend.PruneStale()
	d.once.Do(func() {
		here := netnsx.Here()
		go func() {
			defer close(d.done)
			if err := here(func() error { d.others(); return nil }); err != nil {
				d.log.Warn("removing what another proxy mode left", "err", err)
			}
		}()
	})
	return err
}

func prepare(cfg Config, deferNFT bool) (be proxy.Backend, start func() error, err error) {
	mode := cfg.Mode
	if mode == IPVS {
		if ok, err := ipvsproxy.Available(); !ok {
			// nftables where it works: faster than iptables on every change and as cheap to load
			// (proxy/nftables BenchmarkSyncSmall), with no fork per change.
			mode = NFTables
			if nerr := nftablesUsable(); nerr != nil {
				mode = IPTables
				err = errors.Join(err, nerr)
			}
			cfg.Log.Warn("this kernel has no IPVS: using the "+mode+" service proxy instead", "requested", IPVS, "err", err)
		}
	}
	switch mode {
	case IPVS:
		be, err = NewIPVS(cfg)
	case IPTables:
		be, err = NewIPTables(cfg)
	case NFTables:
		be, err = NewNFTables(cfg)
	default:
		return nil, nil, fmt.Errorf("unknown proxy mode %q", mode)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s service proxy: %w", mode, err)
	}
	others := func() {
		t0 := time.Now()
		cleanupOthers(cfg, mode)
		cfg.Log.Info("other proxy modes' rules removed", "mode", mode, "took", time.Since(t0).Round(time.Millisecond))
	}
	if mode == NFTables && deferNFT {
		// Its start reads and writes only its own tables; the other modes' rules are iptables' and IPVS's
		// (and its IPv6 tables when the node is not dual-stack).
		be = &deferredCleanup{Backend: be, others: others, log: cfg.Log, done: make(chan struct{})}
		return be, func() error {
			if err := be.Start(); err != nil {
				return fmt.Errorf("%s service proxy: %w", mode, err)
			}
			return nil
		}, nil
	}
	start = func() error {
		others()
		if err := be.Start(); err != nil {
			return fmt.Errorf("%s service proxy: %w", mode, err)
		}
		return nil
	}
	return be, start, nil
}

// nftablesUsable tells whether the nftables back end can run here: the nft program (bulk loads) and a kernel
// with nf_tables.
func nftablesUsable() error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("no nftables service proxy: %w", err)
	}
	// Not `nft list tables`: nft 1.0.6 reads far more than the tables for it (3 s of CPU, 19 s at load 35, next
	// to the 30,000 chains of 10,000 services an earlier run left). A netlink dump of the tables tells whether
	// the kernel has nf_tables; nft --version that the binary runs.
	if out, err := exec.Command("nft", "--version").CombinedOutput(); err != nil {
		return fmt.Errorf("no nftables service proxy: nft --version: %w: %s", err, out)
	}
	if _, err := nftproxy.HasTable(false); err != nil {
		return fmt.Errorf("no nftables service proxy: nf_tables netlink: %w", err)
	}
	return nil
}

// CleanupAll removes what every mode left in both families (the proxy is turned off).
func CleanupAll(cfg Config) error {
	return errors.Join(cleanup(cfg, IPTables), cleanup(cfg, IPVS), cleanup(cfg, NFTables), CleanupAll6(cfg))
}

// cleanupOthers removes what the modes other than mode left (both families), and mode's own IPv6 side when the
// cluster is no longer dual-stack, logging what fails.
func cleanupOthers(cfg Config, mode string) {
	for _, m := range []string{IPVS, IPTables, NFTables} {
		if m == mode {
			if !DualStack(cfg) {
				if err := Cleanup6(cfg, m); err != nil {
					cfg.Log.Warn("removing the IPv6 side an earlier dual-stack run left", "mode", m, "err", err)
				}
			}
			continue
		}
		if err := errors.Join(cleanup(cfg, m), Cleanup6(cfg, m)); err != nil {
			cfg.Log.Warn("removing what another proxy mode left", "mode", m, "now", mode, "err", err)
		}
	}
}

func cleanup(cfg Config, mode string) error {
	switch mode {
	case IPTables:
		return iptproxy.NewOn(iptables(cfg), cfg.IPT, cfg.Log).Cleanup()
	case IPVS:
		return ipvsproxy.Cleanup("", cfg.NodeIPs, cfg.IPT)
	case NFTables:
		if _, err := exec.LookPath("nft"); err != nil {
			return nil // no nft on this host: no table of ours either
		}
		if ok, err := nftproxy.HasTable(false); err == nil && !ok {
			return nil
		}
		p, err := nftproxy.NewHostShards(nftables(cfg), false, nftproxy.DefaultShards, cfg.Log)
		if err != nil {
			return err
		}
		return p.Cleanup()
	}
	return nil
}

func nftables(cfg Config) nftproxy.Config {
	return nftproxy.Config{ClusterCIDRs: cfg.ClusterCIDRs, MasqueradeAll: cfg.MasqueradeAll, NodeIPs: cfg.NodeIPs,
		NodePortAddresses: cfg.NodePortAddresses}
}

func iptables(cfg Config) iptproxy.Config {
	return iptproxy.Config{ClusterCIDRs: cfg.ClusterCIDRs, MasqueradeAll: cfg.MasqueradeAll, NodeIPs: cfg.NodeIPs,
		NodePortAddresses: cfg.NodePortAddresses}
}
