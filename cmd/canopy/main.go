// Command canopy is the Canopy node agent: flags → validated config → controllers. See README.md for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"canopy.io/canopy/bgp"
	"canopy.io/canopy/bgp/services"
	"canopy.io/canopy/internal/config"
	"canopy.io/canopy/internal/egress"
	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/lballoc"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/nodesetup"
	"canopy.io/canopy/policy"
	"canopy.io/canopy/proxy"
	iptproxy "canopy.io/canopy/proxy/iptables"
	ipvsproxy "canopy.io/canopy/proxy/ipvs"
	"canopy.io/canopy/routes"
)

// stringList is a repeatable, comma-separated flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

func bindFlags(fs *flag.FlagSet, r *config.Raw) {
	fs.StringVar(&r.Kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty = in-cluster config")
	fs.StringVar(&r.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default: $NODE_NAME, then the hostname)")
	fs.UintVar(&r.ClusterASN, "cluster-asn", 64512, "AS number of the nodes (a node's canopy.io/node-asn annotation overrides it)")
	fs.StringVar(&r.RouterID, "router-id", "", "BGP router ID (default: the node's IPv4 InternalIP)")
	fs.IntVar(&r.BGPPort, "bgp-port", 179, "TCP port the BGP speaker listens on, on the node IP")
	fs.StringVar(&r.GRPCAddr, "grpc-addr", "127.0.0.1:50051", "address of the GoBGP gRPC admin API for the gobgp CLI; empty disables it")
	fs.StringVar(&r.MetricsAddr, "metrics-addr", ":9469", "address of the Prometheus /metrics and /healthz endpoint; empty disables it")
	fs.BoolVar(&r.NodesFullMesh, "nodes-full-mesh", true, "peer with every other node (iBGP full mesh; eBGP where node ASNs differ)")
	fs.Var((*stringList)(&r.ClusterCIDRs), "cluster-cidr", "pod network CIDR(s); learned routes must fall inside one (repeatable, comma-separated)")
	fs.Var((*stringList)(&r.ImportAllow), "import-allow", "extra prefixes learned routes may fall inside (repeatable, comma-separated)")
	fs.Var((*stringList)(&r.PeerIPs), "peer-router-ips", "external BGP peers (ToR, route reflectors) for every node (comma-separated)")
	fs.Var((*stringList)(&r.PeerASNs), "peer-router-asns", "AS numbers of --peer-router-ips: one for all, or one each")
	fs.UintVar(&r.PeerTTL, "peer-router-multihop-ttl", 0, "eBGP multihop TTL for the external peers (0 or 1 = directly connected)")
	fs.StringVar(&r.PeerPasswords, "peer-router-passwords-file", "", "file with TCP MD5 passwords for the external peers: one line for all, or one line each")
	fs.DurationVar(&r.HoldTime, "hold-time", 90*time.Second, "BGP hold time")
	fs.DurationVar(&r.Keepalive, "keepalive-interval", 30*time.Second, "BGP keepalive interval (at most a third of the hold time)")
	fs.DurationVar(&r.ConnectRetry, "connect-retry", 5*time.Second, "wait between connection attempts to a peer")
	fs.BoolVar(&r.GracefulRestart, "graceful-restart", true, "BGP graceful restart: peers keep this node's routes while the agent restarts")
	fs.DurationVar(&r.GRRestartTime, "graceful-restart-time", 120*time.Second, "how long peers keep this node's routes after its session drops")
	fs.IntVar(&r.RouteProtocol, "route-protocol", routes.DefaultProtocol, "kernel route protocol number that marks Canopy's routes")
	fs.IntVar(&r.RouteTable, "route-table", 254, "kernel routing table for learned routes (254 = main)")
	fs.DurationVar(&r.StaleTimeout, "stale-route-timeout", 60*time.Second, "at start, how long to wait for End-of-RIB from all peers before removing our old kernel routes that no peer confirmed")
	fs.DurationVar(&r.ResyncInterval, "resync-interval", 5*time.Minute, "how often kernel routes are compared with the desired ones to repair drift (0 = never)")
	fs.StringVar(&r.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&r.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "where to write the CNI conflist (10-canopy.conflist) once the node has a pod CIDR; empty = none")
	fs.StringVar(&r.CNIBinDir, "cni-bin-dir", "", "install the canopy-cni plugin binary here at start (e.g. /opt/cni/bin); empty = don't")
	fs.StringVar(&r.CNIPlugin, "cni-plugin", defaultPlugin(), "the canopy-cni binary to install into --cni-bin-dir")
	fs.StringVar(&r.CNIDataDir, "cni-data-dir", "", "the plugin's IPAM directory, written into the conflist (empty = /var/lib/cni/canopy)")
	fs.IntVar(&r.CNIMTU, "cni-mtu", 0, "pod interface MTU written into the conflist (0 = the plugin detects the uplink's)")
	fs.BoolVar(&r.PodEgress, "enable-pod-egress", true, "masquerade pod traffic leaving the cluster's pod and service networks to the node IP")
	fs.BoolVar(&r.RunServiceProxy, "run-service-proxy", true, "proxy Services (replaces kube-proxy): ClusterIP, NodePort, ExternalIPs, LoadBalancer IPs")
	fs.StringVar(&r.ProxyMode, "proxy-mode", "ipvs", "service proxy back end: ipvs, or iptables (used anyway when the kernel has no IPVS)")
	fs.BoolVar(&r.MasqueradeAll, "masquerade-all", false, "masquerade all traffic to service IPs, also from pods")
	fs.BoolVar(&r.RunFirewall, "run-firewall", true, "enforce NetworkPolicy on this node's pods (iptables + ipset, CANOPY-POL-* chains); false removes those chains")
	fs.BoolVar(&r.PolicyReject, "policy-reject", false, "reject packets a NetworkPolicy denies (TCP reset, else ICMP port unreachable) instead of dropping them")
	fs.StringVar(&r.PolicyLog, "policy-log", "off", "log packets a NetworkPolicy denies, rate-limited to 10/s: off, log (kernel log) or nflog (group --policy-log-group)")
	fs.IntVar(&r.PolicyLogGroup, "policy-log-group", 100, "NFLOG group for --policy-log=nflog")
	fs.StringVar(&r.CNIAgentSocket, "cni-agent-socket", "/run/canopy/cni.sock", "unix socket where the CNI plugin reports a new pod's address, so its firewall is programmed before the kubelet reports it (with --run-firewall); empty = off")
	fs.Var((*stringList)(&r.NodePortAddresses), "nodeport-addresses", "CIDRs of the node addresses NodePorts listen on (default: the node IP)")
	fs.BoolVar(&r.AdvertiseClusterIP, "advertise-cluster-ip", false, "announce Service ClusterIPs (/32) to external peers")
	fs.BoolVar(&r.AdvertiseExternalIP, "advertise-external-ip", true, "announce Service ExternalIPs inside --service-external-ip-range")
	fs.BoolVar(&r.AdvertiseLoadBalancerIP, "advertise-loadbalancer-ip", true, "announce LoadBalancer ingress IPs inside --loadbalancer-ip-range")
	fs.BoolVar(&r.AdvertiseServiceCIDR, "advertise-service-cidr", false, "announce the service CIDR aggregate instead of /32 ClusterIPs")
	fs.BoolVar(&r.AdvertiseVIPsToNodes, "advertise-vips-to-nodes", false, "also announce Service VIPs to the other nodes (by default only external peers get them)")
	fs.Var((*stringList)(&r.ExternalIPRanges), "service-external-ip-range", "CIDRs Service ExternalIPs may be announced from; others get an Event and are not announced")
	fs.Var((*stringList)(&r.LoadBalancerIPRanges), "loadbalancer-ip-range", "CIDRs or first-last ranges of LoadBalancer IPs: announced only inside, and allocated from with --run-loadbalancer")
	fs.BoolVar(&r.RunLoadBalancer, "run-loadbalancer", false, "allocate LoadBalancer IPs for Services of the default class or canopy.io/loadbalancer (one node at a time, by Lease)")
	fs.StringVar(&r.LeaseNamespace, "lease-namespace", "kube-system", "namespace of the allocator's leader-election Lease")
	fs.Var((*stringList)(&r.ServiceCIDRs), "service-cluster-ip-range", "the cluster's service CIDR(s): pod traffic to them is never masqueraded (repeatable)")
}

// defaultPlugin is canopy-cni next to this executable (where the image puts it).
func defaultPlugin() string {
	exe, err := os.Executable()
	if err != nil {
		return "canopy-cni"
	}
	return filepath.Join(filepath.Dir(exe), "canopy-cni")
}

func main() {
	var raw config.Raw
	fs := flag.NewFlagSet("canopy", flag.ContinueOnError)
	bindFlags(fs, &raw)
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "canopy: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	cfg, err := raw.Validate()
	if err != nil {
		fmt.Fprintf(os.Stderr, "canopy: invalid configuration:\n%v\n", err)
		os.Exit(2)
	}
	log := newLogger(cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("canopy stopped", "err", err)
		os.Exit(1)
	}
	log.Info("canopy stopped; kernel routes and peers' graceful-restart state are kept for the next start")
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", path)
}

func run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	log.Info("canopy starting", "node", cfg.NodeName, "cluster_asn", cfg.ClusterASN, "cluster_cidrs", cfg.ClusterCIDRs, "peers", len(cfg.Peers))
	rc, err := kubeConfig(cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "canopy/" + cfg.NodeName
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	self, err := waitForNode(ctx, kube, cfg.NodeName, log)
	if err != nil {
		return err
	}

	for _, p := range cfg.Peers {
		if p.Password != "" {
			if ok, err := bgp.KernelSupportsMD5(); !ok {
				log.Error("peers have TCP MD5 passwords but this kernel cannot sign TCP segments (CONFIG_TCP_MD5SIG): those sessions will not come up", "err", err)
			}
			break
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(bgp.Collectors()...)
	reg.MustRegister(routes.Collectors()...)
	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		srv := &http.Server{Addr: cfg.MetricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server", "addr", cfg.MetricsAddr, "err", err)
			}
		}()
		defer srv.Close()
	}

	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	mgr := routes.NewManager(routes.NewNetlinkTable(h, cfg.RouteProtocol, cfg.RouteTable), log.With("component", "routes"))
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("read kernel routes: %w", err)
	}

	learner := bgp.NewLearner(mgr, bgp.NewImportPolicy(cfg.ClusterCIDRs, nil, nil), nil, log.With("component", "learner"))
	speaker := bgp.NewSpeaker(bgp.GlobalConfig{
		ListenPort: cfg.BGPPort, GRPCAddr: cfg.GRPCAddr, HoldTime: cfg.HoldTime, Keepalive: cfg.Keepalive,
		ConnectRetry: cfg.ConnectRetry, GracefulRestart: cfg.GracefulRestart, GRRestartTime: cfg.GRRestartTime,
		VIPsToNodes: cfg.AdvertiseVIPsToNodes,
	}, learner, log.With("component", "bgp"))

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "canopy", Host: cfg.NodeName})

	factory := informers.NewSharedInformerFactory(kube, 0)
	nodes := bgp.NewNodeController(cfg, factory, speaker, learner, recorder, log.With("component", "nodes"))
	var iptables egress.IPTables
	if it, err := ipt.New(ipt.Detect()); err != nil {
		log.Warn("iptables unavailable", "err", err)
	} else {
		iptables = it
	}
	// The firewall starts before the CNI config is written: a pod made from then on is dropped until its rules exist.
	hintSocket, err := startFirewall(ctx, cfg, self, kube, factory, reg, log.With("component", "policy"))
	if err != nil {
		return err
	}
	setup := nodesetup.New(nodesetup.Config{
		NodeName: cfg.NodeName, CNIConfDir: cfg.CNIConfDir, CNIBinDir: cfg.CNIBinDir, CNIPlugin: cfg.CNIPlugin,
		CNIDataDir: cfg.CNIDataDir, CNIMTU: cfg.CNIMTU, PodEgress: cfg.PodEgress,
		NoMasqTo: append(slices.Clone(cfg.ClusterCIDRs), cfg.ServiceCIDRs...), PodCIDRFunc: model.PodCIDRs,
		ClusterCIDRs: cfg.ClusterCIDRs, CNIAgentSocket: hintSocket,
	}, iptables, log.With("component", "nodesetup"))
	if err := setup.Start(ctx, factory); err != nil {
		return err
	}
	if cfg.RunServiceProxy {
		reg.MustRegister(proxy.Collectors()...)
		if err := startProxy(ctx, cfg, self, factory, recorder, log); err != nil {
			return err
		}
	}
	vips := bgp.NewVIPController(cfg.NodeName, services.Options{
		AdvertiseClusterIP: cfg.AdvertiseClusterIP, AdvertiseExternalIP: cfg.AdvertiseExternalIP,
		AdvertiseLoadBalancerIP: cfg.AdvertiseLoadBalancerIP, AdvertiseServiceCIDR: cfg.AdvertiseServiceCIDR,
		ExternalIPRanges: cfg.ExternalIPRanges, LoadBalancerIPRanges: cfg.LoadBalancerIPPrefixes, ServiceCIDRs: cfg.ServiceCIDRs,
	}, factory, speaker, recorder, log.With("component", "vips"))
	var alloc *lballoc.Allocator
	if cfg.RunLoadBalancer {
		ranges, err := lballoc.ParseRanges(cfg.LoadBalancerIPRanges)
		if err != nil {
			return fmt.Errorf("--loadbalancer-ip-range: %w", err)
		}
		alloc, err = lballoc.New(lballoc.Config{Ranges: ranges, LeaseNamespace: cfg.LeaseNamespace, Identity: cfg.NodeName},
			kube, factory, recorder, log.With("component", "lballoc"))
		if err != nil {
			return fmt.Errorf("LoadBalancer IP allocator: %w", err)
		}
		reg.MustRegister(lballoc.Collectors()...)
	}
	factory.Start(ctx.Done())
	go nodes.Run(ctx)
	go vips.Run(ctx)
	allocDone := make(chan struct{})
	if alloc != nil {
		go func() { alloc.Run(ctx); close(allocDone) }()
	} else {
		close(allocDone)
	}

	go func() {
		all := nodes.WaitForEOR(ctx, cfg.StaleTimeout)
		if ctx.Err() != nil {
			return
		}
		n, err := mgr.Sweep()
		log.Info("initial route sync done; stale kernel routes removed", "all_peers_sent_eor", all, "removed", n, "err", err)
		if cfg.ResyncInterval <= 0 {
			return
		}
		t := time.NewTicker(cfg.ResyncInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := mgr.Resync(); err != nil {
					log.Error("route resync", "err", err)
				}
			}
		}
	}()

	<-ctx.Done()
	log.Info("shutting down (BGP sessions are left to graceful restart)")
	select { // let the allocator release its Lease, so another node takes over at once
	case <-allocDone:
	case <-time.After(5 * time.Second):
	}
	speaker.Shutdown(false)
	factory.Shutdown()
	return nil
}

// waitForNode waits until the Node exists, logging clearly while it does not.
func waitForNode(ctx context.Context, kube kubernetes.Interface, name string, log *slog.Logger) (*corev1.Node, error) {
	last := time.Time{}
	for {
		n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			log.Info("found this node", "node", name, "ip", model.NodeIP(n), "pod_cidrs", model.PodCIDRs(n))
			return n, nil
		}
		if time.Since(last) > 10*time.Second {
			log.Info("waiting for this node's Node object", "node", name, "err", err)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// startFirewall starts the NetworkPolicy controller and the socket the CNI plugin reports new pods on (its path
// is returned, "" if none), or with --run-firewall=false removes what an earlier run programmed.
func startFirewall(ctx context.Context, cfg *config.Config, self *corev1.Node, kube kubernetes.Interface, factory informers.SharedInformerFactory, reg *prometheus.Registry, log *slog.Logger) (string, error) {
	fw, err := policy.NewHost(ipt.Detect(), log)
	if err != nil {
		if !cfg.RunFirewall {
			return "", nil
		}
		return "", fmt.Errorf("network policy firewall: %w", err)
	}
	if !cfg.RunFirewall {
		if err := fw.Cleanup(); err != nil {
			log.Debug("removing network policy chains (firewall off)", "err", err)
		}
		return "", nil
	}
	// Same-node pod traffic crosses the bridge: br_netfilter hands it to iptables.
	if err := os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("1"), 0o644); err != nil {
		_ = exec.Command("modprobe", "br_netfilter").Run()
		if err := os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("1"), 0o644); err != nil {
			log.Error("cannot enable br_netfilter: traffic between pods of this node is not policed", "err", err)
		}
	}
	ctrl := policy.NewController(factory, kube, fw, cfg.NodeName, policy.Options{Reject: cfg.PolicyReject, Log: cfg.PolicyLog,
		NFLOGGroup: cfg.PolicyLogGroup}, 30*time.Minute, log)
	if err := ctrl.Start(self); err != nil {
		return "", fmt.Errorf("network policy firewall: %w", err)
	}
	reg.MustRegister(policy.Collectors(fw.Counters)...)
	socket := cfg.CNIAgentSocket
	if socket != "" {
		if err := ctrl.ServeHints(ctx, socket, 2500*time.Millisecond, log); err != nil {
			log.Error("CNI hint socket: new pods wait for the kubelet to report their address", "path", socket, "err", err)
			socket = ""
		}
	}
	go ctrl.Run(ctx)
	return socket, nil
}

// startProxy picks the back end (IPVS only where the kernel has it) and starts the service proxy.
func startProxy(ctx context.Context, cfg *config.Config, self *corev1.Node, factory informers.SharedInformerFactory, recorder record.EventRecorder, log *slog.Logger) error {
	var nodeIPs []netip.Addr
	if ip := model.NodeIP(self); ip.IsValid() {
		nodeIPs = append(nodeIPs, ip)
	}
	mode := cfg.ProxyMode
	if mode == "ipvs" {
		if ok, err := ipvsproxy.Available(); !ok {
			log.Warn("this kernel has no IPVS: using the iptables service proxy instead", "requested", "ipvs", "err", err)
			mode = "iptables"
		}
	}
	var be proxy.Backend
	var prune func() error
	schedulers := []string{"random"}
	switch mode {
	case "ipvs":
		it, err := ipt.New(ipt.Detect())
		if err != nil {
			return fmt.Errorf("IPVS service proxy needs iptables for masquerading: %w", err)
		}
		b, err := ipvsproxy.New(ipvsproxy.Config{NodeIPs: nodeIPs, PodCIDRs: cfg.ClusterCIDRs, IPT: it, Log: log.With("component", "proxy-ipvs")})
		if err != nil {
			return fmt.Errorf("IPVS service proxy: %w", err)
		}
		be, prune, schedulers = b, b.Prune, []string{"rr", "wrr", "lc", "sh", "mh"}
	default:
		b, err := iptproxy.NewHost(iptproxy.Config{ClusterCIDRs: cfg.ClusterCIDRs, MasqueradeAll: cfg.MasqueradeAll,
			NodeIPs: nodeIPs, NodePortAddresses: cfg.NodePortAddresses}, log.With("component", "proxy-iptables"))
		if err == nil {
			err = b.Start()
		}
		if err != nil {
			return fmt.Errorf("iptables service proxy: %w", err)
		}
		be = b
	}
	log.Info("service proxy", "backend", be.Name())
	ctrl := proxy.NewController(factory, be, model.Options{NodeName: cfg.NodeName, Schedulers: schedulers},
		recorder, cfg.ResyncInterval, log.With("component", "proxy"))
	if prune != nil {
		ctrl.OnInitialSync(func() {
			if err := prune(); err != nil {
				log.Warn("removing services a previous run left", "err", err)
			}
		})
	}
	hcHost := ""
	if len(nodeIPs) > 0 {
		hcHost = nodeIPs[0].String()
	}
	hc := proxy.NewHealthChecks(hcHost, log.With("component", "proxy-healthcheck"))
	ctrl.SetHealthChecks(hc)
	go func() {
		<-ctx.Done()
		hc.Close(context.Background())
	}()
	go ctrl.Run(ctx)
	return nil
}
