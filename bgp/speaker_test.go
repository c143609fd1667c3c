// Plain TCP listeners, as the agent's binary has (cmd/canopy): an MPTCP listener refuses TCP_MD5SIG.
//
//go:debug multipathtcp=0
package bgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"canopy.io/canopy/internal/testsupport"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func freePort(t *testing.T, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Skipf("cannot listen on %s (needed for in-process BGP peers): %v", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testPeer is an in-process GoBGP router standing in for a ToR.
type testPeer struct {
	s    *server.BgpServer
	ip   string
	port int
}

// startTestPeer starts the router on ip, peered with the speaker (password "" = no TCP MD5).
func startTestPeer(t *testing.T, ip string, asn uint32, speakerIP string, speakerPort int, speakerASN uint32, password string) *testPeer {
	t.Helper()
	port := freePort(t, ip)
	s := server.NewBgpServer(server.LoggerOption(&slogAdapter{l: quiet}))
	go s.Serve()
	ctx := context.Background()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: asn, RouterId: ip, ListenPort: int32(port), ListenAddresses: []string{ip}, UseMultiplePaths: true /* a process-wide GoBGP setting: keep it equal to the speaker's */}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: speakerIP, PeerAsn: speakerASN, AuthPassword: password},
		Transport: &api.Transport{RemotePort: uint32(speakerPort), LocalAddress: ip},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, HoldTime: 9, KeepaliveInterval: 3}},
		AfiSafis:  []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: familyIPv4, Enabled: true}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &testPeer{s: s, ip: ip, port: port}
}

func (p *testPeer) announce(t *testing.T, prefix string, nh string) {
	t.Helper()
	path, err := apiPath(Path{Prefix: netip.MustParsePrefix(prefix), NextHop: netip.MustParseAddr(nh)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.s.AddPath(context.Background(), &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
		t.Fatal(err)
	}
}

func (p *testPeer) withdraw(t *testing.T, prefix string, nh string) {
	t.Helper()
	path, _ := apiPath(Path{Prefix: netip.MustParsePrefix(prefix), NextHop: netip.MustParseAddr(nh)}, 0)
	if err := p.s.DeletePath(context.Background(), &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4, Path: path}); err != nil {
		t.Fatal(err)
	}
}

// received returns the prefixes (with next hops) the peer has from the speaker.
func (p *testPeer) received() map[string]string {
	out := map[string]string{}
	_ = p.s.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4}, func(d *api.Destination) {
		for _, path := range d.Paths {
			lp, err := FromAPIPath(path)
			if err == nil && !lp.Local {
				out[d.Prefix] = lp.NextHop.String()
			}
		}
	})
	return out
}

type syncSink struct {
	mu     sync.Mutex
	routes map[netip.Prefix][]netip.Addr
}

func (s *syncSink) Set(d netip.Prefix, nh []netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes[d] = nh
	return nil
}
func (s *syncSink) Remove(d netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.routes, d)
	return nil
}
func (s *syncSink) get(d string) []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.routes[netip.MustParsePrefix(d)]
}
func (s *syncSink) len() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.routes) }

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for: %s", what)
}

// startSpeaker runs a manager with a real GoBGP speaker (AS 64512) on nodeIP, with an importer whose policy
// accepts 10.244.0.0/16 but own (our pod CIDRs); it is stopped at test end.
func startSpeaker(t *testing.T, nodeIP string, own ...netip.Prefix) (*Manager, *Sessions, *syncSink, int) {
	t.Helper()
	port := freePort(t, nodeIP)
	sink := &syncSink{routes: map[netip.Prefix][]netip.Addr{}}
	// The in-process peers are routers (127.0.0.2-6) that may announce 10.244.2.0/24, a node's pod CIDR.
	policy := NewImportPolicy(PolicyInput{ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, Own: own,
		NodeIPs: []netip.Addr{addr(nodeIP)}, Owners: map[netip.Prefix]netip.Addr{pfx("10.244.2.0/24"): addr("10.99.0.12")},
		Routers: []netip.Addr{addr("127.0.0.2"), addr("127.0.0.3"), addr("127.0.0.4"), addr("127.0.0.5"), addr("127.0.0.6")}})
	policy.loopbackHops = true
	importer := NewImporter(sink, policy, []netip.Addr{addr(nodeIP)}, quiet)
	sessions := NewSessions(quiet)
	start := func(ctx context.Context, cfg GlobalConfig) (Router, error) { return StartGoBGP(ctx, cfg, quiet) }
	m := NewManager(GlobalConfig{ListenPort: port, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second},
		start, watchers{importer, sessions}, quiet, importer.Reset, sessions.Reset)
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	t.Cleanup(func() { cancel(); m.Shutdown(true) })
	m.SetIdentity(Identity{ASN: 64512, RouterID: addr(nodeIP), NodeIP: addr(nodeIP)})
	eventually(t, "the speaker runs", func() bool { _, ok := m.Running(); return ok })
	return m, sessions, sink, port
}

// TestSpeakerWithInProcessPeers runs the speaker against two in-process GoBGP routers on loopback: it checks
// what the speaker advertises (its pod CIDR, next hop = node IP, and never a route learned from the other peer)
// and what it installs (only what the import policy allows, ECMP across both peers).
func TestSpeakerWithInProcessPeers(t *testing.T) {
	const nodeIP, torA, torB = "127.0.0.1", "127.0.0.2", "127.0.0.3"
	m, _, sink, port := startSpeaker(t, nodeIP, pfx("10.244.1.0/24"))
	a := startTestPeer(t, torA, 64500, nodeIP, port, 64512, "")
	b := startTestPeer(t, torB, 64501, nodeIP, port, 64512, "")
	m.SetPeers([]PeerSpec{
		{Address: addr(torA), ASN: 64500, Port: uint16(a.port), Kind: PeerKindExternal, Name: "a"},
		{Address: addr(torB), ASN: 64501, Port: uint16(b.port), Kind: PeerKindExternal, Name: "b"},
	})
	m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{pfx("10.244.1.0/24"): {Prefix: pfx("10.244.1.0/24"), NextHop: addr(nodeIP)}})
	eventually(t, "both peers receive the pod CIDR with next hop = node IP", func() bool {
		return a.received()["10.244.1.0/24"] == nodeIP && b.received()["10.244.1.0/24"] == nodeIP
	})
	a.announce(t, "10.244.2.0/24", torA)
	b.announce(t, "10.244.2.0/24", torB)
	a.announce(t, "0.0.0.0/0", torA)
	a.announce(t, "198.51.100.0/24", torA)
	a.announce(t, "10.244.1.0/24", torA) // our own pod CIDR: never installed
	eventually(t, "ECMP route over both peers", func() bool { return len(sink.get("10.244.2.0/24")) == 2 })
	time.Sleep(300 * time.Millisecond)
	if n := sink.len(); n != 1 {
		t.Fatalf("installed %d routes, want only 10.244.2.0/24: %v", n, sink.routes)
	}
	// Not transit: b must not hear a's routes through the speaker.
	if got := b.received(); len(got) != 1 {
		t.Fatalf("peer b received %v from the speaker, want only the pod CIDR", got)
	}
	a.withdraw(t, "10.244.2.0/24", torA)
	eventually(t, "ECMP shrinks to b", func() bool {
		nh := sink.get("10.244.2.0/24")
		return len(nh) == 1 && nh[0] == addr(torB)
	})
	b.withdraw(t, "10.244.2.0/24", torB)
	eventually(t, "route withdrawn", func() bool { return sink.len() == 0 })
	// Withdrawing our advertisement reaches the peers.
	m.SetPaths(GroupPodCIDRs, nil)
	eventually(t, "pod CIDR withdrawn at the peers", func() bool { return len(a.received()) == 0 })
}

// TestSpeakerMD5 checks that a peer's password reaches the session: with the same TCP MD5 password on both sides
// the session comes up; with a wrong one it does not.
func TestSpeakerMD5(t *testing.T) {
	if ok, err := KernelSupportsMD5(); !ok {
		why := "setsockopt TCP_MD5SIG: protocol not available"
		if err != nil {
			why = err.Error()
		}
		testsupport.Unavailable(t, "this kernel cannot sign TCP with MD5 (CONFIG_TCP_MD5SIG): %s", why)
	}
	const nodeIP, tor = "127.0.0.1", "127.0.0.4"
	m, sessions, _, port := startSpeaker(t, nodeIP)
	peer := startTestPeer(t, tor, 64500, nodeIP, port, 64512, "s3cret")
	spec := PeerSpec{Address: addr(tor), ASN: 64500, Port: uint16(peer.port), Password: "s3cret", Kind: PeerKindExternal, Name: "md5"}
	m.SetPeers([]PeerSpec{spec})
	eventually(t, "session up with the right password", func() bool { return sessions.State(addr(tor)) == StateEstablished })
	spec.Password = "wrong"
	m.SetPeers([]PeerSpec{spec})
	time.Sleep(5 * time.Second)
	if st := sessions.State(addr(tor)); st == StateEstablished {
		t.Fatal("session established with a wrong MD5 password")
	}
}

// TestSpeakerVIPsGoToExternalPeersOnly: a Service VIP (with communities and an AS-path prepend) reaches the
// external peer (the ToR) but not a node peer; the pod CIDR reaches both.
func TestSpeakerVIPsGoToExternalPeersOnly(t *testing.T) {
	const nodeIP, tor, other = "127.0.0.1", "127.0.0.5", "127.0.0.6"
	m, _, _, port := startSpeaker(t, nodeIP)
	ctx := context.Background()
	a := startTestPeer(t, tor, 64500, nodeIP, port, 64512, "")
	b := startTestPeer(t, other, 64512, nodeIP, port, 64512, "")
	m.SetPeers([]PeerSpec{
		{Address: addr(tor), ASN: 64500, Port: uint16(a.port), Kind: PeerKindExternal, Name: "tor"},
		{Address: addr(other), ASN: 64512, Port: uint16(b.port), Kind: PeerKindNode, Name: "node2"},
	})
	pod := Path{Prefix: pfx("10.244.1.0/24"), NextHop: addr(nodeIP)}
	vip := Path{Prefix: pfx("10.96.0.10/32"), NextHop: addr(nodeIP), VIP: true, Prepend: 2,
		Communities: []uint32{64512<<16 | 100}, Large: [][3]uint32{{64512, 1, 2}}}
	m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{pod.Prefix: pod})
	m.SetPaths(GroupVIPs, map[netip.Prefix]Path{vip.Prefix: vip})
	eventually(t, "the ToR has the pod CIDR and the VIP, the node only the pod CIDR", func() bool {
		ra, rb := a.received(), b.received()
		return ra["10.244.1.0/24"] != "" && ra["10.96.0.10/32"] != "" && rb["10.244.1.0/24"] != ""
	})
	time.Sleep(300 * time.Millisecond)
	if _, ok := b.received()["10.96.0.10/32"]; ok {
		t.Fatal("a node peer received a service VIP")
	}
	var attrs []string
	_ = a.s.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4, Prefixes: []*api.TableLookupPrefix{{Prefix: "10.96.0.10/32"}}}, func(d *api.Destination) {
		for _, p := range d.Paths {
			for _, at := range p.Pattrs {
				attrs = append(attrs, at.String())
			}
		}
	})
	all := strings.Join(attrs, " ")
	for _, want := range []string{"CommunitiesAttribute", "LargeCommunitiesAttribute", "AsPathAttribute"} {
		if !strings.Contains(all, want) {
			t.Errorf("the ToR's path lacks %s: %s", want, all)
		}
	}
	var asPath []uint32
	_ = a.s.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4, Prefixes: []*api.TableLookupPrefix{{Prefix: "10.96.0.10/32"}}}, func(d *api.Destination) {
		for _, p := range d.Paths {
			for _, at := range p.Pattrs {
				var ap api.AsPathAttribute
				if at.UnmarshalTo(&ap) == nil {
					for _, seg := range ap.Segments {
						asPath = append(asPath, seg.Numbers...)
					}
				}
			}
		}
	})
	if len(asPath) != 3 {
		t.Errorf("AS path at the ToR %v, want our AS three times (one + two prepended)", asPath)
	}
	m.SetPaths(GroupVIPs, nil)
	eventually(t, "the VIP withdrawn at the ToR", func() bool { _, ok := a.received()["10.96.0.10/32"]; return !ok })
}

// Per-peer announcements (a BGPPeer's advertise): one external peer gets only the VIPs, one only the pod CIDRs,
// one both — and with no node peer at all (mesh off) the VIP still goes out (an empty neighbor set in GoBGP
// matches every neighbor, which once kept VIPs from every peer).
func TestSpeakerPerPeerAdvertise(t *testing.T) {
	const nodeIP, both, vipsOnly, podsOnly = "127.0.0.1", "127.0.0.7", "127.0.0.8", "127.0.0.9"
	m, _, _, port := startSpeaker(t, nodeIP)
	a := startTestPeer(t, both, 64500, nodeIP, port, 64512, "")
	b := startTestPeer(t, vipsOnly, 64501, nodeIP, port, 64512, "")
	c := startTestPeer(t, podsOnly, 64502, nodeIP, port, 64512, "")
	m.SetPeers([]PeerSpec{
		{Address: addr(both), ASN: 64500, Port: uint16(a.port), Kind: PeerKindExternal, Name: "flag"},
		{Address: addr(vipsOnly), ASN: 64501, Port: uint16(b.port), Kind: PeerKindExternal, Name: "BGPPeer/vips", NoPodCIDRs: true},
		{Address: addr(podsOnly), ASN: 64502, Port: uint16(c.port), Kind: PeerKindExternal, Name: "BGPPeer/pods", NoVIPs: true},
	})
	pod := Path{Prefix: pfx("10.244.1.0/24"), NextHop: addr(nodeIP)}
	vip := Path{Prefix: pfx("10.96.0.10/32"), NextHop: addr(nodeIP), VIP: true}
	m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{pod.Prefix: pod})
	m.SetPaths(GroupVIPs, map[netip.Prefix]Path{vip.Prefix: vip})
	eventually(t, "each peer has what it asked for", func() bool {
		ra, rb, rc := a.received(), b.received(), c.received()
		return ra["10.244.1.0/24"] != "" && ra["10.96.0.10/32"] != "" && rb["10.96.0.10/32"] != "" && rc["10.244.1.0/24"] != ""
	})
	time.Sleep(300 * time.Millisecond)
	if _, ok := b.received()["10.244.1.0/24"]; ok {
		t.Error("a peer with advertise.podCIDRs false received the pod CIDR")
	}
	if _, ok := c.received()["10.96.0.10/32"]; ok {
		t.Error("a peer with advertise.serviceVIPs false received the VIP")
	}
}

// The admin API answers the gobgp CLI's reads with every password stripped, and refuses writes unless the agent
// allows them.
func TestAdminAPIReadOnly(t *testing.T) {
	for _, allow := range []bool{false, true} {
		port := freePort(t, "127.0.0.1")
		grpcPort := freePort(t, "127.0.0.1")
		cfg := GlobalConfig{ASN: 64512, RouterID: addr("127.0.0.1"), ListenAddresses: []netip.Addr{addr("127.0.0.1")}, ListenPort: port,
			GRPCAddr: fmt.Sprintf("127.0.0.1:%d", grpcPort), GRPCAllowWrites: allow, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second}
		g, err := StartGoBGP(context.Background(), cfg, quiet)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if err := g.AddPeer(ctx, PeerSpec{Address: addr("127.0.0.9"), ASN: 64500, Password: "s3cret", Kind: PeerKindExternal}); err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(cfg.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		client := api.NewGobgpApiClient(conn)
		var stream api.GobgpApi_ListPeerClient
		eventually(t, "the admin API answers", func() bool {
			stream, err = client.ListPeer(ctx, &api.ListPeerRequest{})
			return err == nil
		})
		n := 0
		for {
			r, err := stream.Recv()
			if err != nil {
				break
			}
			n++
			if pw := r.GetPeer().GetConf().GetAuthPassword(); pw != "" {
				t.Errorf("ListPeer returned the password %q", pw)
			}
		}
		if n != 1 {
			t.Errorf("ListPeer returned %d peers, want 1", n)
		}
		path, _ := apiPath(Path{Prefix: pfx("198.18.7.0/24"), NextHop: addr("127.0.0.1")}, 0)
		_, err = client.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path})
		if allow && err != nil {
			t.Errorf("writes allowed: AddPath: %v", err)
		}
		if !allow && status.Code(err) != codes.PermissionDenied {
			t.Errorf("read-only: AddPath answered %v, want PermissionDenied", err)
		}
		_, err = client.StopBgp(ctx, &api.StopBgpRequest{})
		if !allow && status.Code(err) != codes.PermissionDenied {
			t.Errorf("read-only: StopBgp answered %v, want PermissionDenied", err)
		}
		conn.Close()
		g.Stop(context.Background())
	}
}

// A peer that sends more prefixes than its limit has its session torn down, and the speaker says so; other
// sessions stay up.
func TestSpeakerPrefixLimit(t *testing.T) {
	const nodeIP, flood, calm = "127.0.0.1", "127.0.0.7", "127.0.0.8"
	port := freePort(t, nodeIP)
	sink := &syncSink{routes: map[netip.Prefix][]netip.Addr{}}
	policy := NewImportPolicy(PolicyInput{ImportAllow: []netip.Prefix{pfx("100.64.0.0/10")}})
	policy.loopbackHops = true
	importer := NewImporter(sink, policy, []netip.Addr{addr(nodeIP)}, quiet)
	sessions := NewSessions(quiet)
	hit := make(chan netip.Addr, 10)
	gc := GlobalConfig{ListenPort: port, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second,
		OnPrefixLimit: func(p netip.Addr) { hit <- p }}
	m := NewManager(gc, func(ctx context.Context, cfg GlobalConfig) (Router, error) { return StartGoBGP(ctx, cfg, quiet) },
		Watchers(importer, sessions), quiet, importer.Reset, sessions.Reset)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	defer m.Shutdown(true)
	m.SetIdentity(Identity{ASN: 64512, RouterID: addr(nodeIP), NodeIP: addr(nodeIP)})
	a := startTestPeer(t, flood, 64500, nodeIP, port, 64512, "")
	b := startTestPeer(t, calm, 64501, nodeIP, port, 64512, "")
	m.SetPeers([]PeerSpec{
		{Address: addr(flood), ASN: 64500, Port: uint16(a.port), MaxPrefixes: 10, Kind: PeerKindExternal, Name: "flood", Passive: true},
		{Address: addr(calm), ASN: 64501, Port: uint16(b.port), MaxPrefixes: 10, Kind: PeerKindExternal, Name: "calm"},
	})
	eventually(t, "both sessions up", func() bool {
		return sessions.State(addr(flood)) == StateEstablished && sessions.State(addr(calm)) == StateEstablished
	})
	b.announce(t, "100.64.1.0/24", calm)
	for i := range 20 {
		a.announce(t, fmt.Sprintf("100.65.%d.0/24", i), flood)
	}
	select {
	case p := <-hit:
		if p != addr(flood) {
			t.Fatalf("prefix limit reported for %s", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no prefix-limit report")
	}
	eventually(t, "the flooding session is down, the other up with its route", func() bool {
		return sessions.State(addr(flood)) != StateEstablished && sessions.State(addr(calm)) == StateEstablished &&
			len(sink.get("100.64.1.0/24")) == 1
	})
	// Counted once, and the session stays down (it is not retried into the same flood).
	time.Sleep(3 * time.Second)
	if got := testutil.ToFloat64(prefixLimitTeardowns.WithLabelValues(flood)); got != 1 {
		t.Errorf("teardowns counted for %s: %v, want 1", flood, got)
	}
	if st := sessions.State(addr(flood)); st == StateEstablished {
		t.Errorf("the flooding session came back past its limit")
	}
	// A higher limit lets the peer in again, with its routes. (The speaker is passive towards it here: two GoBGPs
	// that both dial after a reset can keep refusing each other in step, each in its 5 s idle hold when the other
	// dials.)
	m.SetPeers([]PeerSpec{
		{Address: addr(flood), ASN: 64500, Port: uint16(a.port), MaxPrefixes: 100, Kind: PeerKindExternal, Name: "flood", Passive: true},
		{Address: addr(calm), ASN: 64501, Port: uint16(b.port), MaxPrefixes: 10, Kind: PeerKindExternal, Name: "calm"},
	})
	eventually(t, "the flooding peer back under its raised limit, with its routes", func() bool {
		return sessions.State(addr(flood)) == StateEstablished && len(sink.get("100.65.19.0/24")) == 1
	})
	// The operator removes the flooding peer (the lab's canopy.io/peers annotation deleted): the manager stays
	// responsive and the peer is gone from the speaker.
	m.SetPeers([]PeerSpec{
		{Address: addr(calm), ASN: 64501, Port: uint16(b.port), MaxPrefixes: 10, Kind: PeerKindExternal, Name: "calm"},
	})
	done := make(chan []PeerSpec, 1)
	go func() {
		time.Sleep(time.Second)
		done <- m.AppliedPeers()
	}()
	select {
	case ps := <-done:
		if len(ps) != 1 || ps[0].Address != addr(calm) {
			t.Fatalf("peers after removing the flooding one: %v", ps)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the manager hangs after removing a peer torn down by its prefix limit")
	}
}
