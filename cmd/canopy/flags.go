package main

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"canopy.io/canopy/internal/config"
	"canopy.io/canopy/routes"
)

// stringList is a repeatable, comma-separated flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Type() string   { return "strings" }
func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// bindFlags binds every flag of the agent to r (Kubernetes style: --flag=value, lists repeatable or
// comma-separated).
func bindFlags(fs *pflag.FlagSet, r *config.Raw) {
	fs.StringVar(&r.Kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty = in-cluster config")
	fs.StringVar(&r.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default: $NODE_NAME, then the hostname)")
	fs.UintVar(&r.ClusterASN, "cluster-asn", 64512, "AS number of the nodes (a node's canopy.io/node-asn annotation overrides it)")
	fs.StringVar(&r.RouterID, "router-id", "", "BGP router ID (default: the node's IPv4 InternalIP; a node without one derives it from its node name)")
	fs.IntVar(&r.BGPPort, "bgp-port", 179, "TCP port the BGP speaker listens on, on the node IP")
	fs.StringVar(&r.GRPCAddr, "grpc-addr", "127.0.0.1:50051", "address of the GoBGP gRPC admin API for the gobgp CLI (read-only unless --grpc-allow-writes); empty disables it")
	fs.BoolVar(&r.GRPCAllowWrites, "grpc-allow-writes", false, "let the gRPC admin API change BGP state (add paths, peers, stop the speaker): any process in the node's network namespace could then")
	fs.StringVar(&r.MetricsAddr, "metrics-addr", ":9469", "address of the Prometheus /metrics and /healthz endpoint; empty disables it")
	fs.BoolVar(&r.Pprof, "pprof", false, "also serve Go's profiler (/debug/pprof/) on --metrics-addr: for profiling only, anyone who reaches that address can read it")
	fs.BoolVar(&r.NodesFullMesh, "nodes-full-mesh", true, "peer with every other node (iBGP full mesh; eBGP where node ASNs differ)")
	fs.Var((*stringList)(&r.ClusterCIDRs), "cluster-cidr", "pod network CIDR(s); learned routes must fall inside one (repeatable, comma-separated)")
	fs.Var((*stringList)(&r.ImportAllow), "import-allow", "extra prefixes learned routes may fall inside (repeatable, comma-separated)")
	fs.Var((*stringList)(&r.PeerIPs), "peer-router-ips", "external BGP peers (ToR, route reflectors) for every node (comma-separated)")
	fs.Var((*stringList)(&r.PeerASNs), "peer-router-asns", "AS numbers of --peer-router-ips: one for all, or one each")
	fs.UintVar(&r.PeerTTL, "peer-router-multihop-ttl", 0, "eBGP multihop TTL for the external peers (0 or 1 = directly connected)")
	fs.StringVar(&r.PeerPasswords, "peer-router-passwords-file", "", "file with TCP MD5 passwords for the external peers: one line for all, or one line each")
	fs.BoolVar(&r.PeerTTLSecurity, "peer-router-ttl-security", false, "GTSM (RFC 5082) on the sessions with --peer-router-ips: send and accept only TTL 255 (the routers must be configured for it, e.g. FRR 'neighbor X ttl-security hops 1')")
	fs.StringVar(&r.MeshPassword, "node-mesh-password-file", "", "file with the TCP MD5 password of every node-to-node session (one line; every node must use the same)")
	fs.BoolVar(&r.MeshTTLSecurity, "node-mesh-ttl-security", true, "GTSM (RFC 5082) on node-to-node sessions: TTL 255 sent, only TTL 255 accepted, so a pod (masqueraded to its node) cannot speak on them")
	fs.BoolVar(&r.BFD, "bfd", false, "BFD (RFC 5880/5881, UDP 3784, TTL 255) with the external peers: when a BFD session goes down, that BGP session is reset at once (per peer: bfd in canopy.io/peers)")
	fs.BoolVar(&r.BFDNodeMesh, "bfd-node-mesh", false, "BFD on the node-to-node sessions too (every node must have it on)")
	fs.DurationVar(&r.BFDMinRx, "bfd-min-rx", 300*time.Millisecond, "the BFD receive interval offered (10ms..1h)")
	fs.DurationVar(&r.BFDMinTx, "bfd-min-tx", 300*time.Millisecond, "the BFD transmit interval offered (10ms..1h)")
	fs.IntVar(&r.BFDMultiplier, "bfd-multiplier", 3, "BFD detection multiplier: a peer is down after this many intervals without a packet")
	fs.BoolVar(&r.BGPObjects, "bgp-objects", true, "read the canopy.io BGPPeer and BGPConfiguration objects (they win over flags and annotations; skipped when the CRDs are not installed) and write this node's BGPNodeStatus")
	fs.StringVar(&r.SecretNamespace, "bgp-secret-namespace", defaultNamespace(), "the only namespace a BGPPeer's passwordSecretRef may name (the agent reads those Secrets by name; default: $POD_NAMESPACE, then kube-system)")
	fs.IntVar(&r.MaxPrefixes, "max-prefixes", 16384, "most prefixes a BGP peer may send (per family); past it its session is shut down until its limit changes or the agent restarts, with an Event and a metric (0 = no limit; per peer: maxPrefixes in canopy.io/peers)")
	fs.DurationVar(&r.HoldTime, "hold-time", 90*time.Second, "BGP hold time")
	fs.DurationVar(&r.Keepalive, "keepalive-interval", 30*time.Second, "BGP keepalive interval (at most a third of the hold time)")
	fs.DurationVar(&r.ConnectRetry, "connect-retry", 5*time.Second, "wait between connection attempts to a peer")
	fs.BoolVar(&r.GracefulRestart, "graceful-restart", true, "BGP graceful restart: peers keep this node's routes while the agent restarts")
	fs.DurationVar(&r.GRRestartTime, "graceful-restart-time", 120*time.Second, "how long peers keep this node's routes after its session drops")
	fs.IntVar(&r.RouteProtocol, "route-protocol", routes.DefaultProtocol, "kernel route protocol number that marks Canopy's routes")
	fs.IntVar(&r.RouteTable, "route-table", 254, "kernel routing table for learned routes (254 = main)")
	fs.DurationVar(&r.StaleTimeout, "stale-route-timeout", 60*time.Second, "at start, how long to wait for End-of-RIB from all peers before removing our old kernel routes that no peer confirmed")
	fs.DurationVar(&r.ResyncInterval, "resync-interval", 5*time.Minute, "how often kernel routes are compared with the desired ones to repair drift (0 = never)")
	fs.DurationVar(&r.ProxyRepair, "proxy-repair-interval", time.Hour, "how often the service proxy rewrites all its rules to repair drift made by others (0 = never; changes are applied as they come regardless)")
	fs.DurationVar(&r.PolicyRepair, "policy-repair-interval", 30*time.Minute, "how often the NetworkPolicy firewall rewrites all its chains and sets to repair drift (0 = never)")
	fs.StringVar(&r.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&r.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "where to write the CNI conflist (10-canopy.conflist) once the node has a pod CIDR; empty = none")
	fs.StringVar(&r.CNIBinDir, "cni-bin-dir", "", "install the canopy-cni plugin binary here at start (e.g. /opt/cni/bin); empty = don't")
	fs.StringVar(&r.CNIPlugin, "cni-plugin", defaultPlugin(), "the canopy-cni binary to install into --cni-bin-dir")
	fs.StringVar(&r.CNIDataDir, "cni-data-dir", "", "the plugin's IPAM directory, written into the conflist (empty = /var/lib/cni/canopy)")
	fs.IntVar(&r.CNIMTU, "cni-mtu", 0, "pod interface MTU written into the conflist (0 = the plugin detects the uplink's)")
	fs.StringVar(&r.Overlay, "overlay", "none", "VXLAN overlay (canopy.vxlan) for pod traffic to nodes BGP does not reach: none, vxlan (a tunnel route to every node) or crosssubnet (only to nodes outside this node's subnet); a BGP-learned route always wins; pods get the MTU minus 50")
	fs.BoolVar(&r.PodEgress, "enable-pod-egress", true, "masquerade pod traffic leaving the cluster's pod and service networks to the node IP")
	fs.BoolVar(&r.PodEgress6, "enable-pod-egress-ipv6", true, "with --enable-pod-egress, masquerade IPv6 pod traffic too (to the node's IPv6 address); false: IPv6 pods keep their own addresses outside the cluster (a fabric that routes them)")
	fs.BoolVar(&r.RunServiceProxy, "run-service-proxy", true, "proxy Services (replaces kube-proxy): ClusterIP, NodePort, ExternalIPs, LoadBalancer IPs")
	fs.StringVar(&r.ProxyMode, "proxy-mode", "ipvs", "service proxy back end: ipvs, iptables or nftables (when ipvs is asked for and the kernel has no IPVS: nftables, or iptables where nft cannot run)")
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
	fs.Var((*stringList)(&r.ExternalIPRanges), "service-external-ip-range", "CIDRs Service ExternalIPs may use (programmed and announced); others get an Event and are neither. Empty: no ExternalIP at all; 0.0.0.0/0 allows every address")
	fs.StringVar(&r.AllowedCommunities, "service-communities-allowed", "", "BGP communities a Service's canopy.io/communities may ask for (e.g. 64512:100,no-export,large:64512:1:2); others are refused with an Event")
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

// defaultNamespace is the agent's own namespace (the DaemonSet passes it as POD_NAMESPACE), else kube-system.
func defaultNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "kube-system"
}
