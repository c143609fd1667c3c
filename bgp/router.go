package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/proto"
	apb "google.golang.org/protobuf/types/known/anypb"
)

// Router is one running BGP speaker as the manager uses it: the reconcilers add and remove peers and paths, the
// route importer and the session tracker watch what it learns. GoBGP implements it, tests fake it. Nobody else
// reaches into the speaker.
type Router interface {
	AddPeer(ctx context.Context, p PeerSpec) error
	UpdatePeer(ctx context.Context, p PeerSpec) error
	DeletePeer(ctx context.Context, addr netip.Addr) error
	AddPath(ctx context.Context, p Path) error
	DeletePath(ctx context.Context, p Path) error
	// Watch delivers to w, until ctx ends: the current best paths and then every change of them, each peer's
	// End-of-RIB, and each peer's session state change.
	Watch(ctx context.Context, w Watcher) error
	// Stop closes every session with a Cease notification (peers flush our routes at once) and stops.
	Stop(ctx context.Context)
}

// Watcher receives what a Router learns. Calls come from one goroutine, in order.
type Watcher interface {
	// BestPaths is one best-path event: for each destination it names, the paths given are its complete new
	// multipath set (a lone withdrawn path means the destination is gone).
	BestPaths(paths []LearnedPath)
	// EndOfRIB says peer has sent its whole table.
	EndOfRIB(peer netip.Addr)
	// PeerState is a session's new state.
	PeerState(peer netip.Addr, asn uint32, state SessionState)
}

// SessionState is a BGP session's state (RFC 4271 §8).
type SessionState int

const (
	StateUnknown SessionState = iota
	StateIdle
	StateConnect
	StateActive
	StateOpenSent
	StateOpenConfirm
	StateEstablished
)

func (s SessionState) String() string {
	switch s {
	case StateIdle:
		return "Idle"
	case StateConnect:
		return "Connect"
	case StateActive:
		return "Active"
	case StateOpenSent:
		return "OpenSent"
	case StateOpenConfirm:
		return "OpenConfirm"
	case StateEstablished:
		return "Established"
	}
	return "Unknown"
}

func sessionState(s api.PeerState_SessionState) SessionState {
	switch s {
	case api.PeerState_IDLE:
		return StateIdle
	case api.PeerState_CONNECT:
		return StateConnect
	case api.PeerState_ACTIVE:
		return StateActive
	case api.PeerState_OPENSENT:
		return StateOpenSent
	case api.PeerState_OPENCONFIRM:
		return StateOpenConfirm
	case api.PeerState_ESTABLISHED:
		return StateEstablished
	}
	return StateUnknown
}

// Path is a route this node originates.
type Path struct {
	Prefix      netip.Prefix
	NextHop     netip.Addr
	Communities []uint32    // standard communities
	Large       [][3]uint32 // large communities
	Prepend     uint8       // extra copies of our AS in the AS path
	// VIP marks a Service address: it goes to external peers (the ToR), not to other nodes, unless
	// GlobalConfig.VIPsToNodes.
	VIP bool
}

// Equal reports whether two paths are the same announcement.
func (p Path) Equal(q Path) bool {
	return p.Prefix == q.Prefix && p.NextHop == q.NextHop && p.Prepend == q.Prepend && p.VIP == q.VIP &&
		slices.Equal(p.Communities, q.Communities) && slices.Equal(p.Large, q.Large)
}

// GlobalConfig is the speaker's own identity and the settings every session shares.
type GlobalConfig struct {
	ASN             uint32
	RouterID        netip.Addr
	ListenAddresses []netip.Addr
	ListenPort      int
	GRPCAddr        string // "" = no admin API
	GRPCAllowWrites bool   // the admin API may change BGP state (default: read-only)
	HoldTime        time.Duration
	Keepalive       time.Duration
	ConnectRetry    time.Duration
	GracefulRestart bool
	GRRestartTime   time.Duration
	VIPsToNodes     bool // also announce Service VIPs to the other nodes
	// ReflectPrefixes is the pod network (the cluster CIDRs): a route reflector reflects routes inside it, and
	// nothing else. Empty: this speaker reflects nothing.
	ReflectPrefixes []netip.Prefix
	// OnPrefixLimit, if set, hears of each session torn down because its peer sent more than MaxPrefixes.
	OnPrefixLimit func(peer netip.Addr)
	// Families are the pod network's families (FamiliesOf the cluster CIDRs): every IPv4 session negotiates
	// unicast for each of them besides IPv4 (a dual-stack node's IPv6 pod CIDR goes over its IPv4 sessions); an
	// IPv6 session carries IPv6 only. Empty: each session carries its own address's family only.
	Families []AddressFamily
}

// ExportPolicyName is the GoBGP policy that keeps a node from being transit: it exports the paths it originates
// itself (pod CIDRs, service VIPs), and of what it learned only what a route reflector reflects (below), never
// anything else from one peer to another; and it keeps service VIPs from the other nodes (they are for the ToR)
// unless GlobalConfig.VIPsToNodes.
//
// Reflection is held to node routes between nodes by a mark: ImportPolicyName gives a path the large community
// ReflectMark when, and only when, it is inside the pod network (GlobalConfig.ReflectPrefixes) and came over an
// iBGP session from another node (removing the mark from every other path, so no peer can forge it); the export
// policy's last statement accepts a marked path towards the peers in the reflect neighbor set — the reflector's
// clients (PeerSpec.RRClient) — and takes the mark off. A ToR, an external peer, a node of another AS and the
// other reflectors never receive a learned path, and no path an external peer sent (even an iBGP one, which
// GoBGP itself would reflect to clients) is ever reflected. Which client gets what is GoBGP's RFC 4456 logic (a
// client's routes go to the other clients, another reflector's own routes to the clients, never back to the
// sender), and the next hop stays the originating node's.
//
// Reflectors do not reflect to each other, because GoBGP (v3.37) would leave a route behind its node: when
// reflector A's best path for a client's route changes from the client's to reflector B's copy (a lower router
// ID wins the tie), A does not withdraw what it sent B before, and B does the same, so each keeps the other's
// copy after the client withdraws it (reproduced in TestSpeakerRouteReflector). Every client peers with every
// reflector anyway, so each reflector has every client's route first hand.
const ExportPolicyName = "canopy-export-local-only"

// ImportPolicyName is the GoBGP import policy that marks reflectable paths (see ExportPolicyName); it accepts
// every path (what enters the kernel is the Importer's business).
const ImportPolicyName = "canopy-import-mark-reflectable"

// ReflectMark is the large community that marks a path a route reflector may reflect. It lives only in the
// speaker's own RIB: it is added on import, taken off on export, and removed from whatever a peer sends.
const ReflectMark = "4294967294:5141:1"

// The defined sets the policies use, kept current as VIPs and node peers come and go.
const (
	vipPrefixSet          = "canopy-vips"
	podCIDRPrefixSet      = "canopy-pod-cidrs"
	reflectPrefixSet      = "canopy-reflect-prefixes" // GlobalConfig.ReflectPrefixes, any longer prefix inside
	nodeNeighborSet       = "canopy-node-peers"
	reflectNeighborSet    = "canopy-reflect-to"   // this reflector's clients
	noPodCIDRsNeighborSet = "canopy-no-pod-cidrs" // peers that get no pod CIDRs (BGPPeer advertise.podCIDRs: false)
	noVIPsNeighborSet     = "canopy-no-vips"      // peers that get no VIPs (BGPPeer advertise.serviceVIPs: false)
	reflectMarkSet        = "canopy-reflect-mark" // ReflectMark
)

// noNeighbor keeps a neighbor set from being empty (an empty one matches every neighbor).
var noNeighbor = []string{"0.0.0.0/32", "::/128"}

var familyIPv4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
var familyIPv6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}

// GoBGP is a Router backed by an embedded GoBGP server.
type GoBGP struct {
	s     *server.BgpServer
	cfg   GlobalConfig
	guard *prefixGuard // each peer's MaxPrefixes
	stop  context.CancelFunc
	adv   advertised // the last count of what each peer is sent (Peers)
}

// StartGoBGP starts an embedded GoBGP server with the global config, multipath on, and the local-only export policy.
func StartGoBGP(ctx context.Context, cfg GlobalConfig, log *slog.Logger) (*GoBGP, error) {
	opts := []server.ServerOption{server.LoggerOption(&slogAdapter{l: log.With("lib", "gobgp")})}
	if cfg.GRPCAddr != "" {
		opts = append(opts, server.GrpcListenAddress(cfg.GRPCAddr), server.GrpcOption(adminAPIOptions(cfg.GRPCAllowWrites)))
	}
	s := server.NewBgpServer(opts...)
	go s.Serve()
	g := &api.Global{
		Asn:              cfg.ASN,
		RouterId:         cfg.RouterID.String(),
		ListenPort:       int32(cfg.ListenPort),
		UseMultiplePaths: true,
	}
	for _, a := range cfg.ListenAddresses {
		g.ListenAddresses = append(g.ListenAddresses, a.String())
	}
	if cfg.GracefulRestart {
		g.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(cfg.GRRestartTime.Seconds())}
	}
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("start BGP (AS %d, router-id %s, port %d): %w", cfg.ASN, cfg.RouterID, cfg.ListenPort, err)
	}
	var err error
	// GoBGP's prefix sets hold one family each: the IPv6 prefixes go into sets of their own (setName), and each
	// statement that matches a prefix set comes once per family.
	for _, ds := range []*api.DefinedSet{
		{DefinedType: api.DefinedType_PREFIX, Name: vipPrefixSet},
		{DefinedType: api.DefinedType_PREFIX, Name: podCIDRPrefixSet},
		{DefinedType: api.DefinedType_PREFIX, Name: vipPrefixSet + v6Suffix},
		{DefinedType: api.DefinedType_PREFIX, Name: podCIDRPrefixSet + v6Suffix},
		// GoBGP matches every neighbor with an empty neighbor set: each starts with an address no peer can
		// have, so an empty-looking set matches nobody.
		{DefinedType: api.DefinedType_NEIGHBOR, Name: nodeNeighborSet, List: noNeighbor},
		{DefinedType: api.DefinedType_NEIGHBOR, Name: noPodCIDRsNeighborSet, List: noNeighbor},
		{DefinedType: api.DefinedType_NEIGHBOR, Name: noVIPsNeighborSet, List: noNeighbor},
		{DefinedType: api.DefinedType_NEIGHBOR, Name: reflectNeighborSet, List: noNeighbor},
		{DefinedType: api.DefinedType_LARGE_COMMUNITY, Name: reflectMarkSet, List: []string{ReflectMark}},
	} {
		if err = s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds}); err != nil {
			s.Stop()
			return nil, fmt.Errorf("defined set %s: %w", ds.Name, err)
		}
	}
	var stmts []*api.Statement
	for _, sfx := range []string{"", v6Suffix} {
		if !cfg.VIPsToNodes {
			stmts = append(stmts, &api.Statement{
				Name: ExportPolicyName + "-no-vips-to-nodes" + sfx,
				Conditions: &api.Conditions{
					PrefixSet:   &api.MatchSet{Name: vipPrefixSet + sfx, Type: api.MatchSet_ANY},
					NeighborSet: &api.MatchSet{Name: nodeNeighborSet, Type: api.MatchSet_ANY},
				},
				Actions: &api.Actions{RouteAction: api.RouteAction_REJECT},
			})
		}
		stmts = append(stmts, &api.Statement{
			Name: ExportPolicyName + "-no-vips" + sfx,
			Conditions: &api.Conditions{
				PrefixSet:   &api.MatchSet{Name: vipPrefixSet + sfx, Type: api.MatchSet_ANY},
				NeighborSet: &api.MatchSet{Name: noVIPsNeighborSet, Type: api.MatchSet_ANY},
			},
			Actions: &api.Actions{RouteAction: api.RouteAction_REJECT},
		}, &api.Statement{
			Name: ExportPolicyName + "-no-pod-cidrs" + sfx,
			Conditions: &api.Conditions{
				PrefixSet:   &api.MatchSet{Name: podCIDRPrefixSet + sfx, Type: api.MatchSet_ANY},
				NeighborSet: &api.MatchSet{Name: noPodCIDRsNeighborSet, Type: api.MatchSet_ANY},
			},
			Actions: &api.Actions{RouteAction: api.RouteAction_REJECT},
		})
	}
	stmts = append(stmts, &api.Statement{
		Name:       ExportPolicyName + "-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
	})
	// Every path's mark comes off on import; then the paths a reflector may reflect get it (see ExportPolicyName).
	unmark := &api.CommunityAction{Type: api.CommunityAction_REMOVE, Communities: []string{ReflectMark}}
	imports := []*api.Statement{{
		Name:       ImportPolicyName + "-unmark",
		Conditions: &api.Conditions{LargeCommunitySet: &api.MatchSet{Name: reflectMarkSet, Type: api.MatchSet_ANY}},
		Actions:    &api.Actions{LargeCommunity: unmark}, // no route action: on to the next statement
	}}
	for _, sfx := range []string{"", v6Suffix} {
		ds := &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: reflectPrefixSet + sfx}
		for _, p := range cfg.ReflectPrefixes {
			if p = p.Masked(); setName("", p) == sfx {
				ds.Prefixes = append(ds.Prefixes, &api.Prefix{IpPrefix: p.String(), MaskLengthMin: uint32(p.Bits()), MaskLengthMax: uint32(p.Addr().BitLen())})
			}
		}
		if len(ds.Prefixes) == 0 {
			continue
		}
		if err = s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds}); err != nil {
			s.Stop()
			return nil, fmt.Errorf("defined set %s: %w", ds.Name, err)
		}
		imports = append(imports, &api.Statement{
			Name: ImportPolicyName + "-mark" + sfx,
			Conditions: &api.Conditions{
				PrefixSet:   &api.MatchSet{Name: ds.Name, Type: api.MatchSet_ANY},
				NeighborSet: &api.MatchSet{Name: nodeNeighborSet, Type: api.MatchSet_ANY}, // import: the sender
				RouteType:   api.Conditions_ROUTE_TYPE_INTERNAL,
			},
			Actions: &api.Actions{RouteAction: api.RouteAction_ACCEPT,
				LargeCommunity: &api.CommunityAction{Type: api.CommunityAction_ADD, Communities: []string{ReflectMark}}},
		})
		stmts = append(stmts, &api.Statement{
			Name: ExportPolicyName + "-reflect" + sfx,
			Conditions: &api.Conditions{
				LargeCommunitySet: &api.MatchSet{Name: reflectMarkSet, Type: api.MatchSet_ANY},
				PrefixSet:         &api.MatchSet{Name: ds.Name, Type: api.MatchSet_ANY},
				NeighborSet:       &api.MatchSet{Name: reflectNeighborSet, Type: api.MatchSet_ANY}, // export: the receiver
			},
			Actions: &api.Actions{RouteAction: api.RouteAction_ACCEPT, LargeCommunity: unmark},
		})
	}
	for _, pol := range []struct {
		p   *api.Policy
		dir api.PolicyDirection
		def api.RouteAction
	}{
		{&api.Policy{Name: ExportPolicyName, Statements: stmts}, api.PolicyDirection_EXPORT, api.RouteAction_REJECT},
		{&api.Policy{Name: ImportPolicyName, Statements: imports}, api.PolicyDirection_IMPORT, api.RouteAction_ACCEPT},
	} {
		err = s.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol.p})
		if err == nil {
			err = s.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
				Name: "global", Direction: pol.dir, Policies: []*api.Policy{{Name: pol.p.Name}}, DefaultAction: pol.def,
			}})
		}
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("install policy %s: %w", pol.p.Name, err)
		}
	}
	gctx, stop := context.WithCancel(context.Background())
	gb := &GoBGP{s: s, cfg: cfg, guard: newPrefixGuard(s, log, cfg.OnPrefixLimit), stop: stop}
	go gb.guard.run(gctx)
	return gb, nil
}

func (g *GoBGP) peer(p PeerSpec) *api.Peer {
	fams := sessionFamilies(p.Address, g.cfg.Families)
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
			Description:     string(p.Kind) + ":" + p.Name,
			AllowOwnAsn:     uint32(p.AllowOwnAS),
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:      uint64(or(p.Timers.ConnectRetry, g.cfg.ConnectRetry).Seconds()),
			HoldTime:          uint64(or(p.Timers.Hold, g.cfg.HoldTime).Seconds()),
			KeepaliveInterval: uint64(or(p.Timers.Keepalive, g.cfg.Keepalive).Seconds()),
			// GoBGP waits 30 s by default before it talks to a peer again after a reset, refusing its
			// connections meanwhile: a restarted agent would wait that long to be re-peered.
			IdleHoldTimeAfterReset: uint64(max(1, or(p.Timers.ConnectRetry, g.cfg.ConnectRetry).Seconds())),
		}},
	}
	for _, f := range fams {
		ap.AfiSafis = append(ap.AfiSafis, &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f.api(), Enabled: true}})
	}
	gr, restart := g.cfg.GracefulRestart, g.cfg.GRRestartTime
	if p.GR.Set {
		gr, restart = p.GR.Enabled, or(p.GR.RestartTime, restart)
	}
	if gr {
		ap.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(restart.Seconds())}
		for _, as := range ap.AfiSafis {
			as.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
		}
	}
	ap.Transport = &api.Transport{RemotePort: uint32(p.Port), PassiveMode: p.Passive}
	if local := localAddressFor(p.Address, g.cfg.ListenAddresses); local.IsValid() {
		// Dial from the node address of the peer's family, which is what the peer has configured for us.
		ap.Transport.LocalAddress = local.String()
	}
	if p.MultihopTTL > 1 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.MultihopTTL)}
	} else if p.TTLSecurity {
		ap.TtlSecurity = &api.TtlSecurity{Enabled: true, TtlMin: 255}
	}
	// p.MaxPrefixes is the guard's (prefixlimit.go), not GoBGP's PrefixLimits: those count the whole Adj-RIB-In
	// on every UPDATE.
	if p.RRClient && p.RRClusterID.Is4() {
		ap.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: p.RRClusterID.String()}
	}
	return ap
}

// or returns d unless it is zero, else def.
func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// neighborSets returns the export policy's neighbor sets p belongs in.
func neighborSets(p PeerSpec) []string {
	var sets []string
	if p.Kind == PeerKindNode {
		sets = append(sets, nodeNeighborSet)
	}
	if p.NoPodCIDRs {
		sets = append(sets, noPodCIDRsNeighborSet)
	}
	if p.NoVIPs {
		sets = append(sets, noVIPsNeighborSet)
	}
	if p.Kind == PeerKindNode && p.RRClient {
		sets = append(sets, reflectNeighborSet)
	}
	return sets
}

func (g *GoBGP) AddPeer(ctx context.Context, p PeerSpec) error {
	// Into the export policy's sets first, so the policy already applies when the session comes up.
	for _, set := range neighborSets(p) {
		if err := g.s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_NEIGHBOR, Name: set, List: []string{hostPrefix(p.Address)},
		}}); err != nil {
			return fmt.Errorf("neighbor set %s: %w", set, err)
		}
	}
	g.guard.remove(p.Address) // a new peer starts afresh
	if err := g.s.AddPeer(ctx, &api.AddPeerRequest{Peer: g.peer(p)}); err != nil {
		return err
	}
	g.guard.set(p.Address, p.MaxPrefixes)
	return nil
}

func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

func (g *GoBGP) UpdatePeer(ctx context.Context, p PeerSpec) error {
	if _, err := g.s.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: g.peer(p)}); err != nil {
		return err
	}
	switch stillTripped, cleared := g.guard.set(p.Address, p.MaxPrefixes); {
	case cleared: // a new limit: the peer may try again
		return g.s.EnablePeer(ctx, &api.EnablePeerRequest{Address: p.Address.String()})
	case stillTripped: // an update that re-created the session must not let it back in past its limit
		_ = g.s.DisablePeer(ctx, &api.DisablePeerRequest{Address: p.Address.String(), Communication: "maximum number of prefixes reached"})
	}
	return nil
}

func (g *GoBGP) DeletePeer(ctx context.Context, addr netip.Addr) error {
	if err := g.s.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
		return err
	}
	g.guard.remove(addr)
	// Out of every neighbor set (not in one: nothing to remove, and no harm).
	for _, set := range []string{nodeNeighborSet, noPodCIDRsNeighborSet, noVIPsNeighborSet, reflectNeighborSet} {
		_ = g.s.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_NEIGHBOR, Name: set, List: []string{hostPrefix(addr)},
		}})
	}
	return nil
}

func apiPath(p Path, asn uint32) (*api.Path, error) {
	nlri, err := apb.New(&api.IPAddressPrefix{Prefix: p.Prefix.Addr().String(), PrefixLen: uint32(p.Prefix.Bits())})
	if err != nil {
		return nil, err
	}
	attrs := []proto.Message{&api.OriginAttribute{Origin: 0}}
	fam := familyIPv4
	if p.Prefix.Addr().Is4() {
		attrs = append(attrs, &api.NextHopAttribute{NextHop: p.NextHop.String()})
	} else {
		fam = familyIPv6
		attrs = append(attrs, &api.MpReachNLRIAttribute{Family: fam, NextHops: []string{p.NextHop.String()}, Nlris: []*apb.Any{nlri}})
	}
	if p.Prepend > 0 && asn != 0 {
		seg := &api.AsSegment{Type: api.AsSegment_AS_SEQUENCE}
		for range p.Prepend {
			seg.Numbers = append(seg.Numbers, asn)
		}
		attrs = append(attrs, &api.AsPathAttribute{Segments: []*api.AsSegment{seg}})
	}
	if len(p.Communities) > 0 {
		attrs = append(attrs, &api.CommunitiesAttribute{Communities: p.Communities})
	}
	if len(p.Large) > 0 {
		lc := &api.LargeCommunitiesAttribute{}
		for _, c := range p.Large {
			lc.Communities = append(lc.Communities, &api.LargeCommunity{GlobalAdmin: c[0], LocalData1: c[1], LocalData2: c[2]})
		}
		attrs = append(attrs, lc)
	}
	out := &api.Path{Family: fam, Nlri: nlri}
	for _, a := range attrs {
		any, err := apb.New(a)
		if err != nil {
			return nil, err
		}
		out.Pattrs = append(out.Pattrs, any)
	}
	return out, nil
}

// v6Suffix ends the names of the IPv6 prefix sets and of the statements that match them.
const v6Suffix = "-v6"

// setName is the prefix set of base that holds p: base itself for IPv4, base-v6 for IPv6.
func setName(base string, p netip.Prefix) string {
	if familyOf(p.Addr()) == IPv6Unicast {
		return base + v6Suffix
	}
	return base
}

// prefixSet is the export policy's prefix set of p: the VIPs' or the pod CIDRs' of its family.
func prefixSet(p Path) *api.DefinedSet {
	name := podCIDRPrefixSet
	if p.VIP {
		name = vipPrefixSet
	}
	return &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: setName(name, p.Prefix), Prefixes: []*api.Prefix{{
		IpPrefix: p.Prefix.String(), MaskLengthMin: uint32(p.Prefix.Bits()), MaskLengthMax: uint32(p.Prefix.Bits()),
	}}}
}

func (g *GoBGP) AddPath(ctx context.Context, p Path) error {
	ap, err := apiPath(p, g.cfg.ASN)
	if err != nil {
		return err
	}
	// Into its prefix set before the path exists, so no peer the policy excludes ever receives it.
	if err := g.s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: prefixSet(p)}); err != nil {
		return fmt.Errorf("export prefix set: %w", err)
	}
	_, err = g.s.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: ap})
	return err
}

func (g *GoBGP) DeletePath(ctx context.Context, p Path) error {
	ap, err := apiPath(p, g.cfg.ASN)
	if err != nil {
		return err
	}
	if err := g.s.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: ap.Family, Path: ap}); err != nil {
		return err
	}
	_ = g.s.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: prefixSet(p)})
	return nil
}

// Stop closes every session with a Cease notification (peers flush our routes at once) and stops the server.
// An agent that restarts and wants traffic to keep flowing does not call it (graceful restart keeps our routes).
func (g *GoBGP) Stop(ctx context.Context) {
	if g.stop != nil {
		g.stop()
	}
	_ = g.s.StopBgp(ctx, &api.StopBgpRequest{})
	g.s.Stop()
}

// Watch implements Router over GoBGP's event stream (best paths with the current RIB first, End-of-RIB, peer
// states).
func (g *GoBGP) Watch(ctx context.Context, w Watcher) error {
	req := &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_BEST, Init: true},
			{Type: api.WatchEventRequest_Table_Filter_EOR},
		}},
	}
	q := newWatchQueue(w) // GoBGP raises an event per path: the queue merges those that come while w is busy
	w = q
	var batch []LearnedPath // reused: the queue copies
	err := g.s.WatchEvent(ctx, req, func(r *api.WatchEventResponse) {
		switch ev := r.Event.(type) {
		case *api.WatchEventResponse_Table:
			batch = batch[:0]
			for _, p := range ev.Table.Paths {
				if p.Nlri == nil { // End-of-RIB marker
					if a, err := netip.ParseAddr(p.NeighborIp); err == nil {
						w.EndOfRIB(a)
					}
					continue
				}
				lp, err := learnedPath(p)
				if err != nil {
					rejectedRoutes.WithLabelValues(RejectWrongFamily).Inc()
					continue
				}
				batch = append(batch, lp)
			}
			if len(batch) > 0 {
				w.BestPaths(batch)
				g.guard.nudge()
			}
		case *api.WatchEventResponse_Peer:
			st := ev.Peer.GetPeer().GetState()
			if a, err := netip.ParseAddr(st.GetNeighborAddress()); err == nil {
				w.PeerState(a, st.GetPeerAsn(), sessionState(st.GetSessionState()))
			}
		}
	})
	if err == nil {
		go q.run(ctx)
	}
	return err
}

// FromAPIPath decodes the parts of a GoBGP API path the importer needs.
func FromAPIPath(p *api.Path) (LearnedPath, error) {
	var nlri api.IPAddressPrefix
	if err := p.Nlri.UnmarshalTo(&nlri); err != nil {
		return LearnedPath{}, fmt.Errorf("NLRI %s: %w", p.Nlri.GetTypeUrl(), err)
	}
	a, err := netip.ParseAddr(nlri.Prefix)
	if err != nil || int(nlri.PrefixLen) > a.BitLen() {
		return LearnedPath{}, fmt.Errorf("bad prefix %s/%d", nlri.Prefix, nlri.PrefixLen)
	}
	lp := LearnedPath{Prefix: netip.PrefixFrom(a, int(nlri.PrefixLen)).Masked(), Withdraw: p.IsWithdraw}
	lp.Local = p.NeighborIp == "" || p.NeighborIp == "<nil>"
	if !lp.Local {
		lp.Peer, _ = netip.ParseAddr(p.NeighborIp)
	}
	for _, attr := range p.Pattrs {
		switch {
		case attr.MessageIs(&api.NextHopAttribute{}):
			var nh api.NextHopAttribute
			if attr.UnmarshalTo(&nh) == nil {
				lp.NextHop, _ = netip.ParseAddr(nh.NextHop)
			}
		case attr.MessageIs(&api.MpReachNLRIAttribute{}):
			var mp api.MpReachNLRIAttribute
			if attr.UnmarshalTo(&mp) == nil && len(mp.NextHops) > 0 {
				lp.NextHop, _ = netip.ParseAddr(mp.NextHops[0])
			}
		}
	}
	return lp, nil
}

// slogAdapter sends GoBGP's log lines to slog.
type slogAdapter struct {
	l *slog.Logger
}

func (a *slogAdapter) log(level slog.Level, msg string, fields gobgplog.Fields) {
	if !a.l.Enabled(context.Background(), level) {
		return
	}
	args := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		args = append(args, k, v)
	}
	a.l.Log(context.Background(), level, msg, args...)
}
func (a *slogAdapter) Panic(msg string, f gobgplog.Fields) {
	a.log(slog.LevelError, msg, f)
	panic(msg)
}
func (a *slogAdapter) Fatal(msg string, f gobgplog.Fields) { a.log(slog.LevelError, msg, f) }
func (a *slogAdapter) Error(msg string, f gobgplog.Fields) { a.log(slog.LevelError, msg, f) }
func (a *slogAdapter) Warn(msg string, f gobgplog.Fields)  { a.log(slog.LevelWarn, msg, f) }
func (a *slogAdapter) Info(msg string, f gobgplog.Fields)  { a.log(slog.LevelInfo, msg, f) }
func (a *slogAdapter) Debug(msg string, f gobgplog.Fields) { a.log(slog.LevelDebug, msg, f) }
func (a *slogAdapter) SetLevel(gobgplog.LogLevel)          {}
func (a *slogAdapter) GetLevel() gobgplog.LogLevel {
	switch {
	case a.l.Enabled(context.Background(), slog.LevelDebug):
		return gobgplog.DebugLevel
	case a.l.Enabled(context.Background(), slog.LevelInfo):
		return gobgplog.InfoLevel
	}
	return gobgplog.WarnLevel
}
