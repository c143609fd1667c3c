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

// Router is the part of a BGP implementation the reconcilers use; GoBGP implements it, tests fake it.
type Router interface {
	AddPeer(ctx context.Context, p PeerSpec) error
	UpdatePeer(ctx context.Context, p PeerSpec) error
	DeletePeer(ctx context.Context, addr netip.Addr) error
	AddPath(ctx context.Context, p Path) error
	DeletePath(ctx context.Context, p Path) error
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
	HoldTime        time.Duration
	Keepalive       time.Duration
	ConnectRetry    time.Duration
	GracefulRestart bool
	GRRestartTime   time.Duration
	VIPsToNodes     bool // also announce Service VIPs to the other nodes
}

// ExportPolicyName is the GoBGP policy that keeps a node from being transit: it exports only the paths it
// originates itself (pod CIDRs, service VIPs), never what it learned from one peer to another; and it keeps
// service VIPs from the other nodes (they are for the ToR) unless GlobalConfig.VIPsToNodes.
const ExportPolicyName = "canopy-export-local-only"

// The defined sets the export policy uses, kept current as VIPs and node peers come and go.
const (
	vipPrefixSet    = "canopy-vips"
	nodeNeighborSet = "canopy-node-peers"
)

var familyIPv4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
var familyIPv6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}

// GoBGP is a Router backed by an embedded GoBGP server.
type GoBGP struct {
	S   *server.BgpServer
	cfg GlobalConfig
}

// StartGoBGP starts an embedded GoBGP server with the global config, multipath on, and the local-only export policy.
func StartGoBGP(ctx context.Context, cfg GlobalConfig, log *slog.Logger) (*GoBGP, error) {
	opts := []server.ServerOption{server.LoggerOption(&slogAdapter{l: log.With("lib", "gobgp")})}
	if cfg.GRPCAddr != "" {
		opts = append(opts, server.GrpcListenAddress(cfg.GRPCAddr))
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
	for _, ds := range []*api.DefinedSet{
		{DefinedType: api.DefinedType_PREFIX, Name: vipPrefixSet},
		{DefinedType: api.DefinedType_NEIGHBOR, Name: nodeNeighborSet},
	} {
		if err = s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds}); err != nil {
			s.Stop()
			return nil, fmt.Errorf("defined set %s: %w", ds.Name, err)
		}
	}
	var stmts []*api.Statement
	if !cfg.VIPsToNodes {
		stmts = append(stmts, &api.Statement{
			Name: ExportPolicyName + "-no-vips-to-nodes",
			Conditions: &api.Conditions{
				PrefixSet:   &api.MatchSet{Name: vipPrefixSet, Type: api.MatchSet_ANY},
				NeighborSet: &api.MatchSet{Name: nodeNeighborSet, Type: api.MatchSet_ANY},
			},
			Actions: &api.Actions{RouteAction: api.RouteAction_REJECT},
		})
	}
	stmts = append(stmts, &api.Statement{
		Name:       ExportPolicyName + "-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
	})
	err = s.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{Name: ExportPolicyName, Statements: stmts}})
	if err == nil {
		err = s.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name:          "global",
			Direction:     api.PolicyDirection_EXPORT,
			Policies:      []*api.Policy{{Name: ExportPolicyName}},
			DefaultAction: api.RouteAction_REJECT,
		}})
	}
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("install export policy: %w", err)
	}
	return &GoBGP{S: s, cfg: cfg}, nil
}

func (g *GoBGP) peer(p PeerSpec) *api.Peer {
	fam := familyIPv4
	if p.Address.Is6() {
		fam = familyIPv6
	}
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
			Description:     string(p.Kind) + ":" + p.Name,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:      uint64(g.cfg.ConnectRetry.Seconds()),
			HoldTime:          uint64(g.cfg.HoldTime.Seconds()),
			KeepaliveInterval: uint64(g.cfg.Keepalive.Seconds()),
			// GoBGP waits 30 s by default before it talks to a peer again after a reset, refusing its
			// connections meanwhile: a restarted agent would wait that long to be re-peered.
			IdleHoldTimeAfterReset: uint64(max(1, g.cfg.ConnectRetry.Seconds())),
		}},
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}}},
	}
	if g.cfg.GracefulRestart {
		ap.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(g.cfg.GRRestartTime.Seconds())}
		ap.AfiSafis[0].MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	ap.Transport = &api.Transport{RemotePort: uint32(p.Port), PassiveMode: p.Passive}
	if len(g.cfg.ListenAddresses) > 0 && g.cfg.ListenAddresses[0].Is4() == p.Address.Is4() {
		// Dial from the node address, which is what the peer has configured for us.
		ap.Transport.LocalAddress = g.cfg.ListenAddresses[0].String()
	}
	if p.MultihopTTL > 1 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.MultihopTTL)}
	}
	return ap
}

func (g *GoBGP) AddPeer(ctx context.Context, p PeerSpec) error {
	if p.Kind == PeerKindNode {
		// Into the node set first, so the export policy already applies when the session comes up.
		if err := g.S.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_NEIGHBOR, Name: nodeNeighborSet, List: []string{hostPrefix(p.Address)},
		}}); err != nil {
			return fmt.Errorf("node peer set: %w", err)
		}
	}
	return g.S.AddPeer(ctx, &api.AddPeerRequest{Peer: g.peer(p)})
}

func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

func (g *GoBGP) UpdatePeer(ctx context.Context, p PeerSpec) error {
	_, err := g.S.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: g.peer(p)})
	return err
}

func (g *GoBGP) DeletePeer(ctx context.Context, addr netip.Addr) error {
	if err := g.S.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
		return err
	}
	// Not a node peer, or not in the set: nothing to remove, and no harm.
	_ = g.S.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: &api.DefinedSet{
		DefinedType: api.DefinedType_NEIGHBOR, Name: nodeNeighborSet, List: []string{hostPrefix(addr)},
	}})
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

func vipSet(p Path) *api.DefinedSet {
	return &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: vipPrefixSet, Prefixes: []*api.Prefix{{
		IpPrefix: p.Prefix.String(), MaskLengthMin: uint32(p.Prefix.Bits()), MaskLengthMax: uint32(p.Prefix.Bits()),
	}}}
}

func (g *GoBGP) AddPath(ctx context.Context, p Path) error {
	ap, err := apiPath(p, g.cfg.ASN)
	if err != nil {
		return err
	}
	if p.VIP {
		// Into the VIP set before the path exists, so no node peer ever receives it.
		if err := g.S.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: vipSet(p)}); err != nil {
			return fmt.Errorf("VIP prefix set: %w", err)
		}
	}
	_, err = g.S.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: ap})
	return err
}

func (g *GoBGP) DeletePath(ctx context.Context, p Path) error {
	ap, err := apiPath(p, g.cfg.ASN)
	if err != nil {
		return err
	}
	if err := g.S.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: ap.Family, Path: ap}); err != nil {
		return err
	}
	if p.VIP {
		_ = g.S.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: vipSet(p)})
	}
	return nil
}

// Stop closes every session with a Cease notification (peers flush our routes at once) and stops the server.
// An agent that restarts and wants traffic to keep flowing does not call it (graceful restart keeps our routes).
func (g *GoBGP) Stop(ctx context.Context) {
	_ = g.S.StopBgp(ctx, &api.StopBgpRequest{})
	g.S.Stop()
}

// slogAdapter sends GoBGP's log lines to slog.
type slogAdapter struct{ l *slog.Logger }

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
