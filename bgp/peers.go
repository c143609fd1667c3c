package bgp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// Node annotations read by the speaker.
const (
	// AnnotationPeers is a YAML or JSON list of {ip, asn, password?, multihopTTL?, ttlSecurity?, maxPrefixes?, bfd?}:
	// extra BGP peers for this node.
	AnnotationPeers = "canopy.io/peers"
	// AnnotationNodeASN overrides --cluster-asn for this node (eBGP-per-rack designs).
	AnnotationNodeASN = "canopy.io/node-asn"
	// LabelRouteReflector makes a Node a BGP route reflector (RFC 4456) for the other nodes of its AS; the value
	// is the reflector's cluster ID in IPv4 address form (e.g. "244.0.0.1"; reflectors that back each other up
	// usually share one). See ParseRouteReflectorLabel and DesiredPeers.
	LabelRouteReflector = "canopy.io/route-reflector"
)

// PeerKind says where a desired peer comes from.
type PeerKind string

const (
	PeerKindNode     PeerKind = "node"     // another node of the cluster (full mesh)
	PeerKindExternal PeerKind = "external" // a router from flags or from the node's annotation
)

// PeerSpec is one desired BGP session.
type PeerSpec struct {
	Address     netip.Addr
	ASN         uint32
	Password    string
	MultihopTTL uint8
	Port        uint16 // 0 = 179
	// Passive: wait for the peer to connect. Between two nodes exactly one side dials (the lower address), so
	// a restarted agent is not caught in a loop of both sides refusing each other's connections while idle.
	Passive     bool
	TTLSecurity bool       // GTSM (RFC 5082): TTL 255 sent, and only TTL 255 accepted
	MaxPrefixes uint32     // past it the session is torn down (0: no limit)
	BFD         bool       // a BFD session watches this peer: when it goes down, the BGP session is reset
	BFDTimers   BFDTimers  // zero fields: Config.BFDTimers
	Timers      PeerTimers // zero fields: GlobalConfig's
	GR          GRSetting  // unless Set: GlobalConfig's
	NoPodCIDRs  bool       // this node's pod CIDRs are not announced to the peer
	NoVIPs      bool       // Service VIPs are not announced to the peer
	AllowOwnAS  uint8      // allowas-in: routes from the peer may carry our own AS this many times
	// RRClient: the peer is this reflector's route-reflector client (a node of its AS that is no reflector), so
	// the routes of the other nodes are reflected to it, with RRClusterID in their CLUSTER_LIST.
	RRClient    bool
	RRClusterID netip.Addr
	Kind        PeerKind
	Name        string // node name for mesh peers; "flag", "annotation" or "BGPPeer/<name>" for external ones
}

// sessionKey is what a running session cannot change without being re-created: everything but the prefix
// limit (changed in place), BFD (the BFD speaker's business) and the descriptive fields.
func (p PeerSpec) sessionKey() PeerSpec {
	p.MaxPrefixes, p.BFD, p.BFDTimers, p.Kind, p.Name = 0, false, BFDTimers{}, "", ""
	return p
}

// NodeInfo is what the speaker needs from a Kubernetes Node.
type NodeInfo struct {
	Name string
	IP   netip.Addr // InternalIP (IPv4 preferred)
	// IP6 is the node's IPv6 address when IP is an IPv4 one and the node has one too (dual stack): the next hop
	// of its IPv6 pod CIDR. Invalid otherwise.
	IP6      netip.Addr
	ASN      uint32 // 0 = the cluster ASN
	PodCIDRs []netip.Prefix
	// RRClusterID is valid when the node is a route reflector (a valid canopy.io/route-reflector label): its
	// cluster ID.
	RRClusterID netip.Addr
}

// ParseRouteReflectorLabel parses canopy.io/route-reflector: the reflector's cluster ID, an IPv4 address in
// dotted form other than 0.0.0.0 (Calico's routeReflectorClusterID has the same form). Anything else is an
// error, and the node is then no reflector at all: every agent must see the same reflectors, so none keeps a
// value that the others (started later) could not know.
func ParseRouteReflectorLabel(value string) (netip.Addr, error) {
	a, err := netip.ParseAddr(value)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("label %s=%q: the cluster ID must be an IPv4 address such as 244.0.0.1", LabelRouteReflector, value)
	}
	if a.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("label %s=%q: 0.0.0.0 is not a cluster ID", LabelRouteReflector, value)
	}
	return a, nil
}

// annotationPeer is the wire form of one entry of canopy.io/peers.
type annotationPeer struct {
	IP          string          `json:"ip"`
	ASN         json.RawMessage `json:"asn"`
	Password    string          `json:"password,omitempty"`
	MultihopTTL int             `json:"multihopTTL,omitempty"`
	TTLSecurity bool            `json:"ttlSecurity,omitempty"`
	MaxPrefixes int64           `json:"maxPrefixes,omitempty"`
	BFD         *bool           `json:"bfd,omitempty"`
}

// ParsePeersAnnotation parses canopy.io/peers. Unknown fields, bad addresses, bad AS numbers and duplicates are
// errors naming the entry; the whole annotation is rejected so a half-applied peer list never happens.
func ParsePeersAnnotation(value string) ([]PeerConfig, error) {
	if strings.TrimSpace(value) == "" {
		return nil, nil
	}
	var raw []annotationPeer
	if err := yaml.UnmarshalStrict([]byte(value), &raw); err != nil {
		return nil, fmt.Errorf("%s: not a list of {ip, asn, password, multihopTTL}: %v", AnnotationPeers, err)
	}
	var errs []error
	var out []PeerConfig
	seen := map[netip.Addr]bool{}
	for i, r := range raw {
		a, err := netip.ParseAddr(strings.TrimSpace(r.IP))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s[%d].ip: %q is not an IP address", AnnotationPeers, i, r.IP))
			continue
		}
		if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
			errs = append(errs, fmt.Errorf("%s[%d].ip: %s cannot be a BGP peer", AnnotationPeers, i, a))
			continue
		}
		if seen[a] {
			errs = append(errs, fmt.Errorf("%s[%d].ip: %s listed twice", AnnotationPeers, i, a))
			continue
		}
		seen[a] = true
		asn, err := parseASNValue(r.ASN)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s[%d].asn: %v", AnnotationPeers, i, err))
			continue
		}
		if r.MultihopTTL < 0 || r.MultihopTTL > 255 {
			errs = append(errs, fmt.Errorf("%s[%d].multihopTTL: %d is outside 0..255", AnnotationPeers, i, r.MultihopTTL))
			continue
		}
		if r.MaxPrefixes < 0 || r.MaxPrefixes > 1<<24 {
			errs = append(errs, fmt.Errorf("%s[%d].maxPrefixes: %d is outside 0..%d", AnnotationPeers, i, r.MaxPrefixes, 1<<24))
			continue
		}
		if r.TTLSecurity && r.MultihopTTL > 1 {
			errs = append(errs, fmt.Errorf("%s[%d]: ttlSecurity is for directly connected peers, not with multihopTTL %d", AnnotationPeers, i, r.MultihopTTL))
			continue
		}
		out = append(out, PeerConfig{Address: a, ASN: asn, Password: r.Password, MultihopTTL: uint8(r.MultihopTTL),
			TTLSecurity: r.TTLSecurity, MaxPrefixes: uint32(r.MaxPrefixes), BFD: r.BFD})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// parseASNValue reads the asn of a canopy.io/peers entry: an integer, or a string in plain or asdot notation
// ("65001", "1.10"). A number with a fraction or an exponent is refused, never rounded: YAML reads asn: 1.10
// as the number 1.1, which must not become some other AS.
func parseASNValue(raw json.RawMessage) (uint32, error) {
	v := strings.TrimSpace(string(raw))
	switch {
	case v == "" || v == "null":
		return 0, errors.New("missing")
	case strings.HasPrefix(v, `"`):
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
		return ParseASN(s)
	case strings.Trim(v, "0123456789") != "":
		return 0, fmt.Errorf("%s is not an integer AS number (write asdot notation as a string, e.g. \"1.10\")", v)
	}
	return ParseASN(v)
}

// ParseNodeASN parses canopy.io/node-asn; an empty value means "use the cluster ASN" (0).
func ParseNodeASN(value string) (uint32, error) {
	if strings.TrimSpace(value) == "" {
		return 0, nil
	}
	asn, err := ParseASN(value)
	if err != nil {
		return 0, fmt.Errorf("%s: %v", AnnotationNodeASN, err)
	}
	return asn, nil
}

// PeerSources is everything that names this node's peers, from the lowest precedence to the highest: the node
// mesh, the routers of the flags, those of the node's canopy.io/peers annotation, and the BGPPeer objects that
// select the node. An address is peered once, as the source with the highest precedence says.
type PeerSources struct {
	ClusterASN  uint32
	Mesh        MeshOptions
	MaxPrefixes uint32 // default limit (0: none)
	BFD         bool   // default BFD for external peers
	Flag        []PeerConfig
	Annotation  []PeerConfig
	Objects     []PeerConfig // from BGPPeers (Source "BGPPeer/<name>")
}

// PeerConflict is an address that more than one source names: Winner's settings are used, Losers' are not.
type PeerConflict struct {
	Address netip.Addr
	Winner  string
	Losers  []string
}

func (c PeerConflict) String() string {
	return fmt.Sprintf("BGP peer %s is configured by %s and by %s: %s wins", c.Address, c.Winner, strings.Join(c.Losers, ", "), c.Winner)
}

// DesiredPeers computes the sessions this node should have: the other nodes (the node mesh, each with its own
// ASN, so nodes in other racks become eBGP peers), then the external routers of each source in src. An address
// is peered once, by the source of highest precedence; every address named by more than one external source (or
// by one and the mesh) is reported as a conflict. The result is sorted by address.
//
// Route reflectors (nodes with RRClusterID) replace the mesh inside their AS: two nodes of an AS that has a
// reflector peer only if one of them is a reflector — a reflector's session with a non-reflector is RRClient
// (the other node is its client), with another reflector a plain iBGP session (nothing learned is reflected
// between reflectors: see ExportPolicyName). Reflection never crosses an AS: nodes of different ASes peer over
// eBGP as in the full mesh, a reflector included (a plain session, no client), and an AS without a reflector
// keeps its full mesh.
func DesiredPeers(self NodeInfo, nodes []NodeInfo, src PeerSources) ([]PeerSpec, []PeerConflict) {
	byAddr := map[netip.Addr]PeerSpec{}
	from := map[netip.Addr][]string{} // the sources that named each address, in precedence order
	add := func(p PeerSpec, source string) {
		if !p.Address.IsValid() || p.Address == self.IP {
			return
		}
		byAddr[p.Address] = p
		from[p.Address] = append(from[p.Address], source)
	}
	if src.Mesh.FullMesh {
		asnOf := func(n NodeInfo) uint32 {
			if n.ASN == 0 {
				return src.ClusterASN
			}
			return n.ASN
		}
		reflected := map[uint32]bool{} // the ASes that have a reflector (one that can peer: it has an address)
		for _, n := range nodes {
			if n.RRClusterID.IsValid() && n.IP.IsValid() {
				reflected[asnOf(n)] = true
			}
		}
		selfASN, selfRR := asnOf(self), self.RRClusterID.IsValid()
		if selfRR {
			reflected[selfASN] = true
		}
		for _, n := range nodes {
			if n.Name == self.Name {
				continue
			}
			asn, peerRR := asnOf(n), n.RRClusterID.IsValid()
			p := PeerSpec{Address: n.IP, ASN: asn, Kind: PeerKindNode, Name: n.Name, Passive: self.IP.Compare(n.IP) > 0,
				Password: src.Mesh.Password, TTLSecurity: src.Mesh.TTLSecurity, MaxPrefixes: src.MaxPrefixes, BFD: src.Mesh.BFD}
			if asn == selfASN && reflected[asn] {
				switch {
				case selfRR && !peerRR:
					p.RRClient, p.RRClusterID = true, self.RRClusterID
				case !selfRR && !peerRR:
					continue // two clients: the reflectors carry their routes
				}
			}
			add(p, "node mesh ("+n.Name+")")
		}
	}
	external := func(p PeerConfig, name string) {
		if p.Source != "" {
			name = p.Source
		}
		limit := p.MaxPrefixes
		if limit == 0 {
			limit = src.MaxPrefixes
		}
		bfd := src.BFD
		if p.BFD != nil {
			bfd = *p.BFD
		}
		add(PeerSpec{Address: p.Address, ASN: p.ASN, Password: p.Password, MultihopTTL: p.MultihopTTL, TTLSecurity: p.TTLSecurity,
			Port: p.Port, MaxPrefixes: limit, BFD: bfd && p.MultihopTTL <= 1, BFDTimers: p.BFDTimers, Timers: p.Timers, GR: p.GR,
			NoPodCIDRs: p.NoPodCIDRs, NoVIPs: p.NoVIPs, AllowOwnAS: p.AllowOwnAS, Kind: PeerKindExternal, Name: name}, name)
	}
	for _, p := range src.Flag {
		external(p, "flag")
	}
	for _, p := range src.Annotation {
		external(p, "annotation")
	}
	for _, p := range src.Objects {
		external(p, "BGPPeer")
	}
	out := make([]PeerSpec, 0, len(byAddr))
	for _, p := range byAddr {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	var conflicts []PeerConflict
	for _, p := range out {
		if names := from[p.Address]; len(names) > 1 {
			losers := slices.Clone(names[:len(names)-1])
			slices.Reverse(losers)
			conflicts = append(conflicts, PeerConflict{Address: p.Address, Winner: names[len(names)-1], Losers: losers})
		}
	}
	return out, conflicts
}
