package bgp

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

func TestDeriveRouterID(t *testing.T) {
	// Pinned: a node's derived router ID must not change between versions (peers know it, GR keys on it).
	for name, want := range map[string]string{
		"node1":  "202.18.243.27",
		"node2":  "21.177.138.114",
		"node16": "200.251.245.244", // SHA-256 starts with 232: lowered by 32, no class D/E router ID
	} {
		if got := DeriveRouterID(name); got != addr(want) {
			t.Errorf("DeriveRouterID(%q) = %s, want %s", name, got, want)
		}
	}
	for _, c := range []struct {
		configured, ip, want string
		derived              bool
	}{
		{"192.0.2.7", "fd00:99::11", "192.0.2.7", false}, // --router-id wins
		{"", "10.99.0.11", "10.99.0.11", false},          // the IPv4 InternalIP
		{"", "fd00:99::11", "202.18.243.27", true},       // IPv6-only: derived from the name
	} {
		var conf netip.Addr
		if c.configured != "" {
			conf = addr(c.configured)
		}
		got, derived := routerIDFor(conf, "node1", addr(c.ip))
		if got != addr(c.want) || derived != c.derived {
			t.Errorf("routerIDFor(%q, node1, %s) = %s %v, want %s %v", c.configured, c.ip, got, derived, c.want, c.derived)
		}
	}
}

// TestIPv6PeerConfig: a dual-stack speaker dials an IPv6 peer from its IPv6 address with IPv6 unicast only, GTSM
// and the MD5 password as for an IPv4 peer; an IPv4 peer from its IPv4 address with both families.
func TestIPv6PeerConfig(t *testing.T) {
	g := &GoBGP{cfg: GlobalConfig{Families: []AddressFamily{IPv4Unicast, IPv6Unicast},
		ListenAddresses: []netip.Addr{addr("10.99.0.11"), addr("fd00:99::11")}}}
	ap := g.peer(PeerSpec{Address: addr("fd00:99::1"), ASN: 64500, TTLSecurity: true, Password: "s3cret"})
	if ap.Transport.LocalAddress != "fd00:99::11" || len(ap.AfiSafis) != 1 || ap.AfiSafis[0].Config.Family.Afi != api.Family_AFI_IP6 ||
		ap.TtlSecurity == nil || !ap.TtlSecurity.Enabled || ap.TtlSecurity.TtlMin != 255 || ap.Conf.AuthPassword != "s3cret" {
		t.Fatalf("IPv6 peer: local %q, families %v, GTSM %v, password %q", ap.Transport.LocalAddress, ap.AfiSafis, ap.TtlSecurity, ap.Conf.AuthPassword)
	}
	ap = g.peer(PeerSpec{Address: addr("10.99.0.1"), ASN: 64500})
	if ap.Transport.LocalAddress != "10.99.0.11" || len(ap.AfiSafis) != 2 {
		t.Fatalf("IPv4 peer: local %q, families %v", ap.Transport.LocalAddress, ap.AfiSafis)
	}
	// An IPv6-only speaker: no IPv4 address to dial an IPv4 peer from (the kernel picks one, if any).
	g.cfg.ListenAddresses = []netip.Addr{addr("fd00:99::11")}
	if ap := g.peer(PeerSpec{Address: addr("10.99.0.1"), ASN: 64500}); ap.Transport.LocalAddress != "" {
		t.Fatalf("IPv4 peer of an IPv6-only speaker dialled from %q", ap.Transport.LocalAddress)
	}
	if got := (Identity{NodeIP: addr("10.99.0.11"), NodeIP6: addr("fd00:99::11")}).listen(); !slices.Equal(got, []netip.Addr{addr("10.99.0.11"), addr("fd00:99::11")}) {
		t.Fatalf("dual-stack listen addresses %v", got)
	}
	if got := (Identity{NodeIP: addr("fd00:99::11")}).listen(); !slices.Equal(got, []netip.Addr{addr("fd00:99::11")}) {
		t.Fatalf("IPv6-only listen addresses %v", got)
	}
}

// TestNodeControllerIPv6Only: nodes with IPv6 InternalIPs only. The speaker's router ID is derived from the node
// name, it listens on the node's IPv6 address, the node mesh runs between the nodes' IPv6 addresses (GTSM and the
// password as over IPv4; the lower address dials), the IPv6 ToR is an external peer, the pod CIDR is announced
// through the node's IPv6 address, and another node's pod CIDR is installed only through that node's address or
// a configured router's.
func TestNodeControllerIPv6Only(t *testing.T) {
	kube := fake.NewSimpleClientset()
	for _, n := range []*corev1.Node{
		node("n1", "fd00:99::11", "fd00:10:244:1::/64", nil),
		node("n2", "fd00:99::12", "fd00:10:244:2::/64", nil),
		node("n3", "fd00:99::13", "fd00:10:244:3::/64", nil),
	} {
		if _, err := kube.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mgr, starts := startManager(t, nil)
	sink := &syncSink{routes: map[netip.Prefix][]netip.Addr{}}
	cfg := Config{NodeName: "n1", ClusterASN: 64512, Mesh: MeshOptions{FullMesh: true, TTLSecurity: true, Password: "s3cret"},
		ClusterCIDRs: []netip.Prefix{pfx("fd00:10:244::/56")}, ServiceCIDRs: []netip.Prefix{pfx("fd00:10:96::/112")},
		Peers: []PeerConfig{{Address: addr("fd00:99::1"), ASN: 64500, TTLSecurity: true}}}
	importer := NewImporter(sink, NewImportPolicy(PolicyInput{}), nil, quiet)
	factory := informers.NewSharedInformerFactory(kube, 0)
	c := NewNodeController(cfg, factory, mgr, importer, nil, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	go c.Run(ctx)

	var calls []string
	eventually(t, "the pod CIDR announced through the node's IPv6 address", func() bool {
		calls = append(calls, starts.r.take()...)
		return slices.Contains(calls, "addpath fd00:10:244:1::/64 fd00:99::11")
	})
	if ids := starts.identities(); len(ids) != 1 || ids[0] != (Identity{ASN: 64512, RouterID: DeriveRouterID("n1"), NodeIP: addr("fd00:99::11")}) {
		t.Fatalf("speaker identities %+v, want one: AS 64512, router ID %s (derived), listening on fd00:99::11 only", ids, DeriveRouterID("n1"))
	}
	eventually(t, "peered with the ToR and the other nodes over IPv6", func() bool { return len(mgr.AppliedPeers()) == 3 })
	for _, p := range mgr.AppliedPeers() {
		switch p.Address {
		case addr("fd00:99::1"):
			if p.Kind != PeerKindExternal || p.ASN != 64500 || !p.TTLSecurity {
				t.Errorf("ToR peer %+v", p)
			}
		case addr("fd00:99::12"), addr("fd00:99::13"):
			if p.Kind != PeerKindNode || p.ASN != 64512 || !p.TTLSecurity || p.Password != "s3cret" || p.Passive {
				t.Errorf("mesh peer %+v: want iBGP, GTSM, the password, and this node (the lowest address) dialling", p)
			}
		default:
			t.Errorf("unexpected peer %+v", p)
		}
	}
	importer.BestPaths([]LearnedPath{
		{Prefix: pfx("fd00:10:244:2::/64"), NextHop: addr("fd00:99::12"), Peer: addr("fd00:99::12")}, // n2's, through n2
		{Prefix: pfx("fd00:10:244:3::/64"), NextHop: addr("fd00:99::12"), Peer: addr("fd00:99::12")}, // n3's, through n2
		{Prefix: pfx("fd00:10:244:9::/64"), NextHop: addr("fd00:99::12"), Peer: addr("fd00:99::12")}, // nobody's
		{Prefix: pfx("fd00:10:244:1::/64"), NextHop: addr("fd00:99::12"), Peer: addr("fd00:99::12")}, // ours
		{Prefix: pfx("fd00:99::/64"), NextHop: addr("fd00:99::1"), Peer: addr("fd00:99::1")},         // outside
	})
	eventually(t, "n2's pod CIDR installed through n2", func() bool {
		return slices.Equal(sink.get("fd00:10:244:2::/64"), []netip.Addr{addr("fd00:99::12")})
	})
	time.Sleep(100 * time.Millisecond)
	if n := sink.len(); n != 1 {
		t.Fatalf("installed %v, want n2's pod CIDR only", sink.routes)
	}
	// n3's pod CIDR through the ToR (a configured router, which may set next hop self): installed.
	importer.BestPaths([]LearnedPath{{Prefix: pfx("fd00:10:244:3::/64"), NextHop: addr("fd00:99::1"), Peer: addr("fd00:99::1")}})
	eventually(t, "n3's pod CIDR installed through the ToR", func() bool {
		return slices.Equal(sink.get("fd00:10:244:3::/64"), []netip.Addr{addr("fd00:99::1")})
	})
}

// freePort6 is freePort for an IPv6 address.
func freePort6(t *testing.T, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp6", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s (needed for in-process BGP peers over IPv6): %v", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startPeer6 starts an in-process GoBGP router on ip that waits for the speaker (at speakerIP, speakerPort) to
// connect, offering families; ttlSecurity makes it send TTL 255 (GTSM).
func startPeer6(t *testing.T, ip, routerID string, asn uint32, speakerIP string, speakerPort int, speakerASN uint32, ttlSecurity bool, families ...*api.Family) *testPeer {
	t.Helper()
	port := freePort6(t, ip)
	s := server.NewBgpServer(server.LoggerOption(&slogAdapter{l: quiet}))
	go s.Serve()
	ctx := context.Background()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: asn, RouterId: routerID, ListenPort: int32(port), ListenAddresses: []string{ip}, UseMultiplePaths: true}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	peer := &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: speakerIP, PeerAsn: speakerASN},
		Transport: &api.Transport{RemotePort: uint32(speakerPort), LocalAddress: ip, PassiveMode: true},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, HoldTime: 9, KeepaliveInterval: 3}},
	}
	if ttlSecurity {
		peer.TtlSecurity = &api.TtlSecurity{Enabled: true, TtlMin: 255}
	}
	for _, f := range families {
		peer.AfiSafis = append(peer.AfiSafis, &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f, Enabled: true}})
	}
	if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: peer}); err != nil {
		t.Fatal(err)
	}
	return &testPeer{s: s, ip: ip, port: port}
}

// state returns the peer's session state with addr.
func (p *testPeer) state(addr string) api.PeerState_SessionState {
	var st api.PeerState_SessionState
	_ = p.s.ListPeer(context.Background(), &api.ListPeerRequest{Address: addr}, func(q *api.Peer) { st = q.GetState().GetSessionState() })
	return st
}

// TestSpeakerIPv6Session runs the speaker against in-process GoBGP routers over IPv6 sessions on ::1.
//
// IPv6-only: the speaker (derived router ID, listening on ::1 only, GTSM on) and a router that sends TTL 255
// establish an IPv6 session; the pod CIDR arrives with the node's IPv6 address as next hop; a node's pod CIDR the
// router sends is installed only through its owner. A router that does not send TTL 255 never gets a session
// (IPV6_MINHOPCOUNT drops its packets). Dual stack: an IPv6 session beside an IPv4 one carries IPv6 unicast only,
// even though the router offers both families, while the IPv4 session carries both.
func TestSpeakerIPv6Session(t *testing.T) {
	const node6 = "::1"
	t.Run("IPv6Only", func(t *testing.T) {
		port := freePort6(t, node6)
		sink := &syncSink{routes: map[netip.Prefix][]netip.Addr{}}
		policy := NewImportPolicy(PolicyInput{ClusterCIDRs: []netip.Prefix{pfx("fd00:10:244::/56")}, Own: []netip.Prefix{pfx("fd00:10:244:1::/64")},
			NodeIPs: []netip.Addr{addr(node6), addr("fd00:99::12"), addr("fd00:99::13")},
			Owners:  map[netip.Prefix]netip.Addr{pfx("fd00:10:244:2::/64"): addr("fd00:99::12"), pfx("fd00:10:244:3::/64"): addr("fd00:99::13")}})
		importer := NewImporter(sink, policy, []netip.Addr{addr(node6)}, quiet)
		sessions := NewSessions(quiet)
		start := func(ctx context.Context, cfg GlobalConfig) (Router, error) { return StartGoBGP(ctx, cfg, quiet) }
		m := NewManager(GlobalConfig{ListenPort: port, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second,
			Families: []AddressFamily{IPv6Unicast}}, start, watchers{importer, sessions}, quiet, importer.Reset, sessions.Reset)
		ctx, cancel := context.WithCancel(context.Background())
		go m.Run(ctx)
		t.Cleanup(func() { cancel(); m.Shutdown(true) })
		m.SetIdentity(Identity{ASN: 64512, RouterID: DeriveRouterID("n1"), NodeIP: addr(node6)})
		eventually(t, "the speaker runs", func() bool { _, ok := m.Running(); return ok })

		// First a router without GTSM: its packets arrive with hop limit 64 and are dropped.
		bad := startPeer6(t, node6, "10.255.255.2", 64500, node6, port, 64512, false, familyIPv6)
		m.SetPeers([]PeerSpec{{Address: addr(node6), ASN: 64500, Port: uint16(bad.port), TTLSecurity: true, Kind: PeerKindExternal, Name: "tor"}})
		time.Sleep(4 * time.Second) // the speaker dials within 1-2 s (GoBGP's first-connect jitter), then every second
		if st := sessions.State(addr(node6)); st == StateEstablished || bad.state(node6) == api.PeerState_ESTABLISHED {
			t.Fatalf("a router sending hop limit 64 got an Established session with a GTSM peer (speaker %s)", st)
		}
		bad.s.Stop()

		tor := startPeer6(t, node6, "10.255.255.1", 64500, node6, port, 64512, true, familyIPv4, familyIPv6)
		t0 := time.Now()
		m.SetPeers([]PeerSpec{{Address: addr(node6), ASN: 64500, Port: uint16(tor.port), TTLSecurity: true, Kind: PeerKindExternal, Name: "tor"}})
		m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{pfx("fd00:10:244:1::/64"): {Prefix: pfx("fd00:10:244:1::/64"), NextHop: addr(node6)}})
		eventually(t, "the router receives the pod CIDR over the IPv6 session", func() bool {
			return sessions.State(addr(node6)) == StateEstablished && tor.received6()["fd00:10:244:1::/64"] == node6
		})
		t.Logf("IPv6 session with GTSM up and the pod CIDR at the router %s after SetPeers", time.Since(t0).Round(time.Millisecond))
		tor.announce(t, "fd00:10:244:2::/64", "fd00:99::12") // n2's through n2: installed
		tor.announce(t, "fd00:10:244:3::/64", "fd00:99::12") // n3's through n2: refused
		eventually(t, "n2's pod CIDR installed", func() bool {
			return slices.Equal(sink.get("fd00:10:244:2::/64"), []netip.Addr{addr("fd00:99::12")})
		})
		time.Sleep(300 * time.Millisecond)
		if n := sink.len(); n != 1 {
			t.Fatalf("installed %v, want n2's pod CIDR only", sink.routes)
		}
	})
	t.Run("DualStack", func(t *testing.T) {
		const node4, tor4 = "127.0.0.1", "127.0.0.2"
		port := freePort(t, node4)
		if l, err := net.Listen("tcp6", net.JoinHostPort(node6, strconv.Itoa(port))); err != nil {
			t.Skipf("port %d free on %s but not on %s: %v", port, node4, node6, err)
		} else {
			l.Close()
		}
		sessions := NewSessions(quiet)
		start := func(ctx context.Context, cfg GlobalConfig) (Router, error) { return StartGoBGP(ctx, cfg, quiet) }
		m := NewManager(GlobalConfig{ListenPort: port, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second,
			Families: []AddressFamily{IPv4Unicast, IPv6Unicast}}, start, sessions, quiet, sessions.Reset)
		ctx, cancel := context.WithCancel(context.Background())
		go m.Run(ctx)
		t.Cleanup(func() { cancel(); m.Shutdown(true) })
		m.SetIdentity(Identity{ASN: 64512, RouterID: addr(node4), NodeIP: addr(node4), NodeIP6: addr(node6)})
		eventually(t, "the speaker runs", func() bool { _, ok := m.Running(); return ok })
		v4 := startMPPeer(t, tor4, 64500, node4, port, 64512)
		v6 := startPeer6(t, node6, "10.255.255.1", 64501, node6, port, 64512, false, familyIPv4, familyIPv6)
		m.SetPeers([]PeerSpec{
			{Address: addr(tor4), ASN: 64500, Port: uint16(v4.port), Kind: PeerKindExternal, Name: "tor4"},
			{Address: addr(node6), ASN: 64501, Port: uint16(v6.port), Kind: PeerKindExternal, Name: "tor6"},
		})
		m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{
			pfx("10.244.1.0/24"):      {Prefix: pfx("10.244.1.0/24"), NextHop: addr(node4)},
			pfx("fd00:10:244:1::/64"): {Prefix: pfx("fd00:10:244:1::/64"), NextHop: addr(node6)},
		})
		eventually(t, "the IPv4 session carries both pod CIDRs, the IPv6 session the IPv6 one", func() bool {
			return v4.received()["10.244.1.0/24"] == node4 && v4.received6()["fd00:10:244:1::/64"] == node6 &&
				v6.received6()["fd00:10:244:1::/64"] == node6
		})
		time.Sleep(300 * time.Millisecond)
		if got := v6.received(); len(got) != 0 {
			t.Fatalf("IPv4 unicast over the IPv6 session: %v", got)
		}
		var fams []string // the multiprotocol capabilities the speaker sent in its OPEN
		_ = v6.s.ListPeer(context.Background(), &api.ListPeerRequest{Address: node6}, func(q *api.Peer) {
			for _, c := range q.GetState().GetRemoteCap() {
				var mp api.MultiProtocolCapability
				if c.UnmarshalTo(&mp) == nil {
					fams = append(fams, mp.GetFamily().GetAfi().String())
				}
			}
		})
		if !slices.Equal(fams, []string{"AFI_IP6"}) {
			t.Fatalf("the speaker offered %v on the IPv6 session, want AFI_IP6 only", fams)
		}
	})
}
