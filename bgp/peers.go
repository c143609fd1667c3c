package bgp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
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
	TTLSecurity bool   // GTSM (RFC 5082): TTL 255 sent, and only TTL 255 accepted
	MaxPrefixes uint32 // past it the session is torn down (0: no limit)
	BFD         bool   // a BFD session watches this peer: when it goes down, the BGP session is reset
	Kind        PeerKind
	Name        string // node name for mesh peers, "flag" or "annotation" for external ones
}

// NodeInfo is what the speaker needs from a Kubernetes Node.
type NodeInfo struct {
	Name     string
	IP       netip.Addr // InternalIP (IPv4 preferred)
	ASN      uint32     // 0 = the cluster ASN
	PodCIDRs []netip.Prefix
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

// DesiredPeers computes the sessions this node should have: the other nodes (full mesh, each with its own ASN,
// so nodes in other racks become eBGP peers), the routers from flags and those from the node's annotation.
// An address is peered once: annotation peers win over flag peers, which win over mesh peers. The result is
// sorted by address.
func DesiredPeers(self NodeInfo, clusterASN uint32, nodes []NodeInfo, mesh MeshOptions, maxPrefixes uint32, bfdDefault bool, flagPeers, annotationPeers []PeerConfig) []PeerSpec {
	byAddr := map[netip.Addr]PeerSpec{}
	add := func(p PeerSpec) {
		if !p.Address.IsValid() || p.Address == self.IP {
			return
		}
		byAddr[p.Address] = p
	}
	if mesh.FullMesh {
		for _, n := range nodes {
			if n.Name == self.Name {
				continue
			}
			asn := n.ASN
			if asn == 0 {
				asn = clusterASN
			}
			add(PeerSpec{Address: n.IP, ASN: asn, Kind: PeerKindNode, Name: n.Name, Passive: self.IP.Compare(n.IP) > 0,
				Password: mesh.Password, TTLSecurity: mesh.TTLSecurity, MaxPrefixes: maxPrefixes, BFD: mesh.BFD})
		}
	}
	external := func(p PeerConfig, name string) {
		limit := p.MaxPrefixes
		if limit == 0 {
			limit = maxPrefixes
		}
		bfd := bfdDefault
		if p.BFD != nil {
			bfd = *p.BFD
		}
		add(PeerSpec{Address: p.Address, ASN: p.ASN, Password: p.Password, MultihopTTL: p.MultihopTTL, TTLSecurity: p.TTLSecurity,
			MaxPrefixes: limit, BFD: bfd && p.MultihopTTL <= 1, Kind: PeerKindExternal, Name: name})
	}
	for _, p := range flagPeers {
		external(p, "flag")
	}
	for _, p := range annotationPeers {
		external(p, "annotation")
	}
	out := make([]PeerSpec, 0, len(byAddr))
	for _, p := range byAddr {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out
}
