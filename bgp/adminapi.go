package bgp

import (
	"context"
	"strings"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The GoBGP admin API (for the stock gobgp CLI) listens on the node, where every hostNetwork pod can reach it.
// By default it is read-only: only the calls that read state pass (what `gobgp neighbor`, `gobgp global`,
// `gobgp global rib`, `gobgp neighbor X adj-in/adj-out`, `gobgp policy` and `gobgp monitor` use); every write
// (AddPath, DeletePeer, StopBgp, EnableMrt which writes files as root, ...) is refused unless the operator
// allows writes. Passwords are stripped from every answer, writes allowed or not.

const apiService = "/apipb.GobgpApi/"

// readCalls are the admin API methods that only read.
var readCalls = map[string]bool{
	"GetBgp": true, "ListPeer": true, "ListPeerGroup": true, "ListDynamicNeighbor": true, "ListPath": true,
	"GetTable": true, "ListVrf": true, "ListPolicy": true, "ListDefinedSet": true, "ListStatement": true,
	"ListPolicyAssignment": true, "ListRpki": true, "ListRpkiTable": true, "ListBmp": true, "WatchEvent": true,
}

var adminRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "canopy_bgp_admin_api_refused_total", Help: "Calls to the gRPC admin API refused because it is read-only, by method.",
}, []string{"method"})

// adminAPIOptions returns the gRPC server options that guard the admin API.
func adminAPIOptions(allowWrites bool) []grpc.ServerOption {
	allowed := func(full string) error {
		m := strings.TrimPrefix(full, apiService)
		if allowWrites || (strings.HasPrefix(full, apiService) && readCalls[m]) {
			return nil
		}
		adminRefused.WithLabelValues(m).Inc()
		return status.Errorf(codes.PermissionDenied, "canopy: the BGP admin API is read-only (%s refused); start the agent with --grpc-allow-writes to change BGP state through it", m)
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := allowed(info.FullMethod); err != nil {
			return nil, err
		}
		resp, err := h(ctx, req)
		scrub(resp)
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := allowed(info.FullMethod); err != nil {
			return err
		}
		return h(srv, scrubbingStream{ss})
	}
	return []grpc.ServerOption{grpc.UnaryInterceptor(unary), grpc.StreamInterceptor(stream)}
}

// scrubbingStream strips secrets from every message the server sends.
type scrubbingStream struct{ grpc.ServerStream }

func (s scrubbingStream) SendMsg(m any) error {
	scrub(m)
	return s.ServerStream.SendMsg(m)
}

// scrub removes the passwords of peers and peer groups from an answer.
func scrub(m any) {
	switch r := m.(type) {
	case *api.ListPeerResponse:
		scrubPeer(r.GetPeer())
	case *api.ListPeerGroupResponse:
		if c := r.GetPeerGroup().GetConf(); c != nil {
			c.AuthPassword = ""
		}
	case *api.WatchEventResponse:
		if p := r.GetPeer(); p != nil {
			scrubPeer(p.GetPeer())
		}
	}
}

func scrubPeer(p *api.Peer) {
	if c := p.GetConf(); c != nil {
		c.AuthPassword = ""
	}
}
