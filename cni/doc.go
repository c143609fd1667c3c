// Package cni is Canopy's CNI plugin (the binary is cmd/canopy-cni): every pod on a node hangs off one Linux bridge
// through a veth pair and gets an address from the node's pod CIDR; the bridge holds the CIDR's first address as
// the pods' gateway, and the node routes everything else (Canopy's BGP routes reach the other nodes' CIDRs).
//
// # Network config
//
// The agent writes it (as one plugin of a conflist) from the Node's spec.podCIDRs:
//
//	{"cniVersion": "1.0.0", "name": "canopy", "type": "canopy-cni",
//	 "bridge": "canopy0",                 // default canopy0
//	 "mtu": 0,                            // 0 (default): the uplink's MTU minus overlayOverhead; else this MTU
//	 "overlayOverhead": 0,                // bytes of encapsulation to leave room for (none today)
//	 "podCIDRs": ["10.244.1.0/24"],       // required; IPv4 only for now (IPv6 is refused: "not supported yet")
//	 "dataDir": "/var/lib/cni/canopy",    // default; the address records, owned by this one network
//	 "hairpin": true}                     // default true: a pod reaches itself through a Service
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
// In the node's namespace (where the runtime runs the plugin): net.ipv4.ip_forward=1; the bridge created if
// missing (MTU, up, MAC pinned, accept_ra off) and given gateway address <first address>/<prefix length> of every
// pod CIDR (other addresses, e.g. an earlier CIDR's gateway, are left alone). An address is allocated (package
// ipam). A veth pair is made: CNI_IFNAME (eth0) in the pod, HostVethName(containerID, ifname) = "cnp" + 12 hex
// digits of sha256(containerID + "/" + ifname) on the node, both with the MTU; the host end joins the bridge with
// hairpin as configured. In the pod: lo up (containers of a pod talk over localhost), arp_notify on, the address,
// the interface up, a default route via the gateway. Any failure after the address or the veth was made deletes the
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
//	 "ips": [{"interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}],
//	 "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]}
//
// # DEL, CHECK, GC, STATUS
//
// DEL deletes the pod's interface (the pair goes with it; a leftover host end on the bridge is deleted too) and
// releases the address; it succeeds when there is nothing left to delete. CHECK compares the attachment with the
// recorded address, the MTU (prevResult's, else the one ADD would use now), the default route, the host end's
// bridge, peer and hairpin, the bridge's gateway address and ip_forward, and lists every difference. GC releases
// the addresses of attachments not in cni.dev/valid-attachments and deletes host veths on the bridge that belong to
// none of them. STATUS is ready when the config is valid and dataDir writable (else code 50).
//
// Addresses are configured with netlink directly rather than the plugins module's ipam.ConfigureIface: that
// package imports libcni's invoke package and with it OpenTelemetry, which go.mod does not carry.
package cni
