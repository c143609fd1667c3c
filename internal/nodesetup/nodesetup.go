// Package nodesetup prepares the node's data path from its Node object: the CNI conflist for the node's pod
// CIDR (and the plugin binary), the pod egress masquerade chain, and the forwarding sysctl. It re-applies
// whenever the node's pod CIDRs change; everything it writes is idempotent.
package nodesetup

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"canopy.io/canopy/cni/conflist"
	"canopy.io/canopy/internal/controller"
	"canopy.io/canopy/internal/egress"
	"canopy.io/canopy/internal/model"
)

// Config says what to set up.
type Config struct {
	NodeName   string
	CNIConfDir string // "" = write no conflist
	CNIBinDir  string // "" = install no plugin binary
	CNIPlugin  string // the plugin binary to install
	CNIDataDir string // the plugin's IPAM dir ("" = its default)
	CNIMTU     int
	// CNIOverlayOverhead goes into the conflist (overlayOverhead): the overlay's bytes per packet, 0 = none.
	CNIOverlayOverhead int
	// CNIAgentSocket goes into the conflist: the plugin reports new pods' addresses there ("" = none).
	CNIAgentSocket string
	// CNIIPv6 puts the node's IPv6 pod CIDR into the conflist too, so pods get an address of each family (the
	// plugin supports dual-stack and IPv6-only). Off: IPv4 only, as long as NetworkPolicy does not police IPv6.
	CNIIPv6   bool
	PodEgress bool
	// NoPodEgress6 keeps IPv6 pod traffic unmasqueraded while PodEgress masquerades IPv4 (a fabric that routes
	// the pods' IPv6 addresses directly); the IPv6 chain is then removed.
	NoPodEgress6 bool
	NoMasqTo     []netip.Prefix // the cluster's pod and service networks
	// ClusterCIDRs are the pod networks: forwarded traffic from or to them is accepted at the end of FORWARD
	// (hosts whose FORWARD policy is DROP). None: no such chain.
	ClusterCIDRs []netip.Prefix
	SysctlRoot   string // "" = /proc/sys
}

// Setup applies Config for the node.
type Setup struct {
	cfg Config
	ipt egress.IPTables // nil when PodEgress is off and nothing is to be removed
	// ipt6 is the IPv6 handle (ip6tables): the IPv6 chains of a node with an IPv6 pod CIDR; nil: none
	// (such a node then reports an error when PodEgress is on).
	ipt6 egress.IPTables
	log  *slog.Logger

	ctrl *controller.Controller

	mu      sync.Mutex
	applied []netip.Prefix
}

// New returns a Setup; ipt may be nil if iptables is unavailable (egress then reports an error).
func New(cfg Config, ipt egress.IPTables, log *slog.Logger) *Setup {
	if cfg.SysctlRoot == "" {
		cfg.SysctlRoot = "/proc/sys"
	}
	return &Setup{cfg: cfg, ipt: ipt, log: log}
}

// WithIPv6 adds the IPv6 handle (ip6tables, same flavour as ipt): the IPv6 egress masquerade for a node with an
// IPv6 pod CIDR, and the IPv6 FORWARD accept and BGP guard for IPv6 cluster CIDRs. Call it before Start.
func (s *Setup) WithIPv6(it6 egress.IPTables) *Setup {
	s.ipt6 = it6
	return s
}

// Start does what needs no pod CIDR (forwarding, the plugin binary, the FORWARD accept chain) and registers a
// handler for this node on factory; Run applies the rest whenever the node's pod CIDRs change (retrying
// failures).
func (s *Setup) Start(factory informers.SharedInformerFactory) error {
	if err := s.forwarding(); err != nil {
		return err
	}
	if s.cfg.CNIBinDir != "" {
		changed, err := conflist.InstallPlugin(s.cfg.CNIPlugin, s.cfg.CNIBinDir)
		if err != nil {
			return fmt.Errorf("install CNI plugin %s into %s: %w", s.cfg.CNIPlugin, s.cfg.CNIBinDir, err)
		}
		s.log.Info("CNI plugin installed", "dir", s.cfg.CNIBinDir, "changed", changed)
	}
	if len(s.cfg.ClusterCIDRs) > 0 && s.ipt != nil {
		if err := egress.ApplyForward(s.ipt, s.cfg.ClusterCIDRs); err != nil {
			return fmt.Errorf("FORWARD accept for pod traffic: %w", err)
		}
		if err := egress.ApplyBGPGuard(s.ipt, s.cfg.ClusterCIDRs); err != nil {
			return fmt.Errorf("dropping pod traffic to BGP's port: %w", err)
		}
	}
	if hasIPv6(s.cfg.ClusterCIDRs) && s.ipt6 != nil {
		if err := egress.ApplyForward6(s.ipt6, s.cfg.ClusterCIDRs); err != nil {
			return fmt.Errorf("FORWARD accept for IPv6 pod traffic: %w", err)
		}
		if err := egress.ApplyBGPGuard6(s.ipt6, s.cfg.ClusterCIDRs); err != nil {
			return fmt.Errorf("dropping IPv6 pod traffic to BGP's port: %w", err)
		}
	}
	for i, it := range []egress.IPTables{s.ipt, s.ipt6} {
		v6 := i == 1
		if it == nil || (s.cfg.PodEgress && !(v6 && s.cfg.NoPodEgress6)) {
			continue
		}
		if err := egress.Remove(it); err != nil {
			s.log.Warn("removing the pod egress chain", "ipv6", v6, "err", err)
		}
	}
	inf := factory.Core().V1().Nodes()
	nodes := inf.Lister()
	s.ctrl = controller.New(controller.Config{Name: "nodesetup", Synced: []cache.InformerSynced{inf.Informer().HasSynced}, Log: s.log,
		Full: func(context.Context) error {
			n, err := nodes.Get(s.cfg.NodeName)
			if err != nil {
				return nil // no Node (yet, or any more): what is set up stays
			}
			return s.Apply(model.PodCIDRs(n))
		}})
	_, err := inf.Informer().AddEventHandler(model.NodeHandler(model.NamedNode(s.cfg.NodeName), func(*corev1.Node, bool) { s.ctrl.EnqueueFull() }))
	return err
}

// Run applies the node's data path setup until ctx ends.
func (s *Setup) Run(ctx context.Context) { s.ctrl.Run(ctx) }

// Controller is the setup's loop (for health and readiness).
func (s *Setup) Controller() *controller.Controller { return s.ctrl }

// forwarding turns on IPv4 forwarding: pods' traffic crosses the node.
func (s *Setup) forwarding() error {
	p := filepath.Join(s.cfg.SysctlRoot, "net/ipv4/ip_forward")
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		s.log.Info("sysctl already set", "net.ipv4.ip_forward", 1)
		return nil
	}
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable forwarding (%s): %w", p, err)
	}
	s.log.Info("sysctl set", "net.ipv4.ip_forward", 1, "was", strings.TrimSpace(string(b)))
	return nil
}

// Apply writes the conflist and the egress chain for podCIDRs (no-op when they did not change).
func (s *Setup) Apply(podCIDRs []netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(podCIDRs) == 0 || slices.Equal(podCIDRs, s.applied) {
		return nil
	}
	var v4 []netip.Prefix
	for _, p := range podCIDRs {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		}
	}
	cniCIDRs := v4
	if s.cfg.CNIIPv6 {
		cniCIDRs = podCIDRs
	}
	if s.cfg.CNIConfDir != "" && len(cniCIDRs) > 0 {
		portmap := false
		if s.cfg.CNIBinDir != "" {
			if _, err := os.Stat(filepath.Join(s.cfg.CNIBinDir, "portmap")); err == nil {
				portmap = true
			}
		}
		data, err := conflist.Render(conflist.Options{PodCIDRs: cniCIDRs, MTU: s.cfg.CNIMTU, DataDir: s.cfg.CNIDataDir, Portmap: portmap,
			AgentSocket: s.cfg.CNIAgentSocket, OverlayOverhead: s.cfg.CNIOverlayOverhead})
		if err != nil {
			return err
		}
		changed, err := conflist.Write(s.cfg.CNIConfDir, conflist.FileName, data, 0o644)
		if err != nil {
			return fmt.Errorf("write CNI conflist: %w", err)
		}
		s.log.Info("CNI conflist", "path", filepath.Join(s.cfg.CNIConfDir, conflist.FileName), "pod_cidrs", cniCIDRs, "portmap", portmap, "changed", changed)
	}
	if s.cfg.PodEgress {
		if s.ipt == nil {
			return fmt.Errorf("pod egress masquerade is on but iptables is unavailable")
		}
		if err := egress.Apply(s.ipt, v4, s.cfg.NoMasqTo, s.log); err != nil {
			return fmt.Errorf("pod egress masquerade: %w", err)
		}
		if hasIPv6(podCIDRs) && !s.cfg.NoPodEgress6 {
			if s.ipt6 == nil {
				return fmt.Errorf("pod egress masquerade is on and the node has an IPv6 pod CIDR but ip6tables is unavailable")
			}
			if err := egress.Apply6(s.ipt6, podCIDRs, s.cfg.NoMasqTo, s.log); err != nil {
				return fmt.Errorf("IPv6 pod egress masquerade: %w", err)
			}
		}
	}
	s.applied = slices.Clone(podCIDRs)
	return nil
}

// hasIPv6 reports whether ps holds an IPv6 prefix.
func hasIPv6(ps []netip.Prefix) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return !p.Addr().Is4() })
}
