package bgp

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Config is what the agent's flags say about BGP: the node's identity defaults, the routers every node peers
// with, which learned routes are acceptable, and the settings every session shares.
type Config struct {
	NodeName   string
	ClusterASN uint32
	RouterID   netip.Addr // invalid: the node's IPv4 InternalIP
	Mesh       MeshOptions
	Peers      []PeerConfig // external routers of every node (ToR, route reflectors)
	// MaxPrefixes is the default limit of prefixes a peer may send (0: none); past it the session is torn down.
	MaxPrefixes  uint32
	ClusterCIDRs []netip.Prefix
	ServiceCIDRs []netip.Prefix
	ImportAllow  []netip.Prefix
	// StaleTimeout: after a speaker start, how long the sweep of routes an earlier run left waits for every
	// configured peer's End-of-RIB before it settles for those of the established ones.
	StaleTimeout time.Duration
	// BFD runs a BFD session (RFC 5880/5881) with each external peer (unless its own setting says otherwise):
	// when it goes down, that peer's BGP session is reset at once. The mesh's is MeshOptions.BFD.
	BFD       bool
	BFDTimers BFDTimers
	Global    GlobalConfig // ASN, RouterID and ListenAddresses are set per speaker start
}

// BFDTimers are the BFD intervals Canopy offers: failure detection in about Multiplier × max(MinRx, the peer's TX).
type BFDTimers struct {
	MinRx, MinTx time.Duration
	Multiplier   uint8
}

// MeshOptions are the settings of the node-to-node sessions.
type MeshOptions struct {
	FullMesh bool   // peer with every other node
	Password string // TCP MD5 password of every node-to-node session ("" = none)
	// TTLSecurity: node-to-node sessions send TTL 255 and accept only TTL 255 (GTSM, RFC 5082), so nothing more
	// than one hop away (a pod, masqueraded to its node's address) can speak on them.
	TTLSecurity bool
	BFD         bool // BFD on node-to-node sessions (every node must run it)
}

// PeerConfig is one external BGP peer (a ToR, a route reflector) from flags or a Node annotation.
type PeerConfig struct {
	Address     netip.Addr
	ASN         uint32
	Password    string
	MultihopTTL uint8
	TTLSecurity bool   // GTSM: the router must send TTL 255 too (FRR: neighbor X ttl-security hops 1)
	MaxPrefixes uint32 // 0: Config.MaxPrefixes
	BFD         *bool  // nil: Config.BFD
	// What a BGPPeer object may set besides (zero values: the agent's flags).
	Port       uint16 // 0: 179
	Timers     PeerTimers
	GR         GRSetting
	BFDTimers  BFDTimers
	NoPodCIDRs bool  // do not announce this node's pod CIDRs to the peer
	NoVIPs     bool  // do not announce Service VIPs to the peer
	AllowOwnAS uint8 // allowas-in: routes from the peer may carry this node's AS this many times (0..10)
	// Source names where the peer comes from in status and conflict reports: "flag", "annotation" or
	// "BGPPeer/<name>" (empty: filled in from where it was given).
	Source string
}

// PeerTimers are one session's BGP timers; a zero field means GlobalConfig's.
type PeerTimers struct {
	Hold, Keepalive, ConnectRetry time.Duration
}

// GRSetting is one session's graceful restart (RFC 4724): unless Set, GlobalConfig's.
type GRSetting struct {
	Set, Enabled bool
	RestartTime  time.Duration // 0: GlobalConfig.GRRestartTime
}

// ParseASN parses a 4-byte AS number in plain or asdot notation (e.g. "64512", "1.10"); 0, 23456 (AS_TRANS)
// and 65535/4294967295 (reserved) are refused.
func ParseASN(s string) (uint32, error) {
	s = strings.TrimSpace(s)
	var v uint64
	if hi, lo, ok := strings.Cut(s, "."); ok {
		h, err1 := strconv.ParseUint(hi, 10, 16)
		l, err2 := strconv.ParseUint(lo, 10, 16)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("%q is not an AS number", s)
		}
		v = h<<16 | l
	} else {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%q is not an AS number (1..4294967294)", s)
		}
		v = n
	}
	switch v {
	case 0, 23456, 65535, 4294967295:
		return 0, fmt.Errorf("AS number %d is reserved", v)
	}
	return uint32(v), nil
}
