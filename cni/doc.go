// Package cni is Canopy's CNI plugin (the binary is cmd/canopy-cni): every pod on a node hangs off one Linux bridge
// through a veth pair and gets an address from each of the node's pod CIDRs (IPv4, IPv6, or both); the bridge holds
// each CIDR's first address as the pods' gateway, and the node routes everything else (Canopy's BGP routes reach
// the other nodes' CIDRs).
//
// # Network config
//
// The agent writes it (as one plugin of a conflist) from the Node's spec.podCIDRs:
//
//	{"cniVersion": "1.0.0", "name": "canopy", "type": "canopy-cni",
//	 "bridge": "canopy0",                 // default canopy0
//	 "mtu": 0,                            // 0 (default): the uplink's MTU minus overlayOverhead; else this MTU
//	 "overlayOverhead": 0,                // bytes of encapsulation to leave room for (none today)
//	 "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"], // required: an IPv4 and/or an IPv6 CIDR
//	 "dataDir": "/var/lib/cni/canopy",    // default; the address records, owned by this one network
//	 "hairpin": true}                     // default true: a pod reaches itself through a Service
//
// podCIDRs is Node.spec.podCIDRs: dual-stack (one CIDR per family, in the node's order, which is the order of the
// result's addresses), IPv4-only or IPv6-only. A second IPv6 CIDR is refused ("at most one per family"; several
// IPv4 CIDRs are still accepted, as before, as one pool). An IPv6 CIDR must be /126 or shorter (the subnet-router
// anycast address, the gateway and a pod), and neither IPv4-mapped (write it as IPv4) nor link-local, multicast,
// or covering :: or ::1. With an IPv6 CIDR the MTU (set or detected) must be at least 1280, IPv6's minimum.
//
// Unknown fields are ignored (CNI's rule); a known field with the wrong JSON type, a bad CIDR, an out-of-range MTU,
// a relative dataDir or an "ipam" section are refused with a CNI error (code 7) naming every bad field; JSON that
// does not parse is code 6. The uplink is the interface of the default route (IPv4, then IPv6), else the
// interface of the first address outside loopback and the bridge, else an MTU of 1500 is assumed.
//
// Supported spec versions: 0.4.0, 1.0.0, 1.1.0 (GC and STATUS need a 1.1.0 config).
//
// # ADD
//
// In the node's namespace (where the runtime runs the plugin): net.ipv4.ip_forward=1 with an IPv4 CIDR,
// net.ipv6.conf.all.forwarding=1 with an IPv6 one; the bridge created if missing (MTU, up, MAC pinned, accept_ra
// off; IPv6 enabled on it when there is an IPv6 CIDR) and given gateway address <first address>/<prefix length>
// of every pod CIDR, the IPv6 one with IFA_F_NODAD so it is usable at once (other addresses, e.g. an earlier CIDR's
// gateway, are left alone). One address per family is allocated (package ipam: both or none). A veth pair is made: CNI_IFNAME (eth0) in the pod, HostVethName(containerID, ifname) = "cnp" + 12 hex
// digits of sha256(containerID + "/" + ifname) on the node, both with the MTU; the host end joins the bridge with
// hairpin as configured. In the pod: lo up (containers of a pod talk over localhost), arp_notify on, the
// addresses, the interface up, a default route per family via its gateway (0.0.0.0/0, ::/0). For an IPv6
// address, first: IPv6 enabled on eth0 and lo (a runtime may make namespaces with it off), accept_dad=0 and
// ndisc_notify=1 on eth0, and the address itself carries IFA_F_NODAD: the pod can use it the moment ADD returns
// (duplicate address detection would keep it tentative, unusable, for a second or more; the allocator already
// guarantees it is unique on the bridge). Any failure after the address or the veth was made deletes the
// veth and releases a newly allocated address; the bridge stays (it is the node's). A repeated ADD for an
// attachment that exists and checks out returns the same result; an interface of that name that is not a sound
// attachment is refused and left alone. A full CIDR is code 11 (try again later) "no free address in <cidr>".
//
// The result (types/100, converted to the config's version):
//
//	{"cniVersion": "1.0.0",
//	 "interfaces": [{"name": "canopy0", "mac": "…", "mtu": 1500},
//	                {"name": "cnp0123456789ab", "mac": "…", "mtu": 1500},
//	                {"name": "eth0", "mac": "…", "mtu": 1500, "sandbox": "/var/run/netns/…"}],
//	 "ips": [{"interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"},
//	         {"interface": 2, "address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1"}],
//	 "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
//	            {"dst": "::/0", "gw": "fd00:10:244:1::1"}]}
//
// (an IPv4-only or IPv6-only node has the one family's entries). With agentSocket set, ADD then tells the agent
// every address (package hint: "ip" is the IPv4 address, or the only one; "ips" all of them).
//
// # DEL, CHECK, GC, STATUS
//
// DEL deletes the pod's interface (the pair goes with it; a leftover host end on the bridge is deleted too) and
// releases its addresses (every family); it succeeds when there is nothing left to delete. CHECK compares the
// attachment with the recorded addresses (each present, and for IPv6 neither tentative nor failed DAD), the MTU
// (prevResult's, else the one ADD would use now), the default route of each family, the host end's bridge, peer
// and hairpin, the bridge's gateway addresses and forwarding of each configured family, and lists every
// difference. GC releases the addresses (every family) of attachments not in cni.dev/valid-attachments and
// deletes host veths on the bridge that belong to none of them. STATUS is ready when the config is valid and dataDir writable (else code 50).
//
// # A node gaining an IPv6 pod CIDR
//
// The address records keep the format of the IPv4-only plugin (one file per address, package ipam), so an upgrade
// loses nothing: running pods keep their IPv4 address and get no IPv6 one until they are recreated; CHECK checks
// the addresses an attachment has on record, a repeated ADD answers with them, and DEL and GC release them under
// the new config. New pods get both families, never an address a running pod holds.
//
// # IPv6 forwarding and the node's router advertisements
//
// Turning on net.ipv6.conf.all.forwarding (first IPv6 ADD) makes the node a router for the kernel: every interface
// whose accept_ra is 1 (the default) stops accepting router advertisements, and the default routes it learned
// from them are dropped at once. A node that gets its own IPv6 default route (or addresses) by SLAAC must set
// net.ipv6.conf.<uplink>.accept_ra=2 before: that is the node's configuration, not the plugin's. The plugin says so
// on stderr (the runtime's log) when it turns forwarding on while such a route exists.
//
// Addresses are configured with netlink directly rather than the plugins module's ipam.ConfigureIface: that
// package imports libcni's invoke package and with it OpenTelemetry, which go.mod does not carry.
package cni
