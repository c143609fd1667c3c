package config

import (
	"slices"

	"canopy.io/canopy/bgp"
	"canopy.io/canopy/bgp/services"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/nodesetup"
	"canopy.io/canopy/loadbalancer"
	"canopy.io/canopy/policy"
	"canopy.io/canopy/proxy/backends"
)

// Each subsystem gets its own options from the one validated Config: nothing below cmd/ reads a flag.

// BGP returns the speaker's configuration.
func (c *Config) BGP() bgp.Config {
	return bgp.Config{
		NodeName: c.NodeName, ClusterASN: c.ClusterASN, RouterID: c.RouterID,
		Mesh: bgp.MeshOptions{FullMesh: c.NodesFullMesh, Password: c.MeshPassword, TTLSecurity: c.MeshTTLSecurity, BFD: c.BFDNodeMesh},
		BFD:  c.BFD, BFDTimers: c.BFDTimers,
		Peers: slices.Clone(c.Peers), MaxPrefixes: c.MaxPrefixes,
		ClusterCIDRs: slices.Clone(c.ClusterCIDRs), ServiceCIDRs: slices.Clone(c.ServiceCIDRs), ImportAllow: slices.Clone(c.ImportAllow),
		StaleTimeout: c.StaleTimeout,
		Global: bgp.GlobalConfig{
			ListenPort: c.BGPPort, GRPCAddr: c.GRPCAddr, GRPCAllowWrites: c.GRPCAllowWrites, HoldTime: c.HoldTime, Keepalive: c.Keepalive,
			ConnectRetry: c.ConnectRetry, GracefulRestart: c.GracefulRestart, GRRestartTime: c.GRRestartTime,
			VIPsToNodes: c.AdvertiseVIPsToNodes, ReflectPrefixes: slices.Clone(c.ClusterCIDRs), Families: bgp.FamiliesOf(c.ClusterCIDRs),
		},
	}
}

// VIPs returns what the VIP announcer may announce.
func (c *Config) VIPs() services.Options {
	return services.Options{
		AdvertiseClusterIP: c.AdvertiseClusterIP, AdvertiseExternalIP: c.AdvertiseExternalIP,
		AdvertiseLoadBalancerIP: c.AdvertiseLoadBalancerIP, AdvertiseServiceCIDR: c.AdvertiseServiceCIDR,
		LoadBalancerIPRanges: slices.Clone(c.LoadBalancerIPPrefixes),
		ServiceCIDRs:         slices.Clone(c.ServiceCIDRs), AllowedCommunities: c.AllowedCommunities,
	}
}

// Admission returns which ExternalIPs and LoadBalancer IPs Services may use: ExternalIPs inside
// --service-external-ip-range only, never inside the pod or service networks.
func (c *Config) Admission() model.Admission {
	return model.Admission{ExternalIPRanges: slices.Clone(c.ExternalIPRanges),
		Reserved: append(slices.Clone(c.ClusterCIDRs), c.ServiceCIDRs...)}
}

// Proxy returns the service proxy back end's configuration.
func (c *Config) Proxy() backends.Config {
	return backends.Config{Mode: c.ProxyMode, ClusterCIDRs: slices.Clone(c.ClusterCIDRs), MasqueradeAll: c.MasqueradeAll,
		NodePortAddresses: slices.Clone(c.NodePortAddresses)}
}

// NodeSetup returns what the node's data path setup writes; hintSocket is the CNI hint socket ("" = none).
func (c *Config) NodeSetup(hintSocket string) nodesetup.Config {
	return nodesetup.Config{
		NodeName: c.NodeName, CNIConfDir: c.CNIConfDir, CNIBinDir: c.CNIBinDir, CNIPlugin: c.CNIPlugin,
		CNIDataDir: c.CNIDataDir, CNIMTU: c.CNIMTU, PodEgress: c.PodEgress, NoPodEgress6: !c.PodEgress6, CNIAgentSocket: hintSocket, CNIOverlayOverhead: c.overlayOverhead(),
		NoMasqTo: append(slices.Clone(c.ClusterCIDRs), c.ServiceCIDRs...), ClusterCIDRs: slices.Clone(c.ClusterCIDRs),
		// An IPv6 cluster CIDR is the operator's choice of IPv6 pods (the BGP side announces them too).
		CNIIPv6: slices.Contains(bgp.FamiliesOf(c.ClusterCIDRs), bgp.IPv6Unicast),
	}
}

// Policy returns the NetworkPolicy firewall's options.
func (c *Config) Policy() policy.Options {
	return policy.Options{Reject: c.PolicyReject, Log: c.PolicyLog, NFLOGGroup: c.PolicyLogGroup}
}

// LoadBalancer returns the LoadBalancer IP allocator's configuration.
func (c *Config) LoadBalancer() loadbalancer.Config {
	return loadbalancer.Config{Ranges: slices.Clone(c.LoadBalancerIPRanges), LeaseNamespace: c.LeaseNamespace, Identity: c.NodeName}
}
