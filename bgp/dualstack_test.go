package bgp

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

func TestFamilies(t *testing.T) {
	if got := FamiliesOf([]netip.Prefix{pfx("fd00:10:244::/56"), pfx("10.244.0.0/16"), pfx("10.245.0.0/16")}); !slices.Equal(got, []AddressFamily{IPv4Unicast, IPv6Unicast}) {
		t.Fatalf("FamiliesOf dual = %v", got)
	}
	if got := FamiliesOf([]netip.Prefix{pfx("10.244.0.0/16")}); !slices.Equal(got, []AddressFamily{IPv4Unicast}) {
		t.Fatalf("FamiliesOf v4 = %v", got)
	}
	for _, c := range []struct {
		peer  string
		extra []AddressFamily
		want  []AddressFamily
	}{
		{"10.99.0.1", nil, []AddressFamily{IPv4Unicast}},
		{"10.99.0.1", []AddressFamily{IPv4Unicast}, []AddressFamily{IPv4Unicast}}, // an IPv4 cluster: as before
		{"10.99.0.1", []AddressFamily{IPv4Unicast, IPv6Unicast}, []AddressFamily{IPv4Unicast, IPv6Unicast}},
		{"fd00:99::1", []AddressFamily{IPv4Unicast, IPv6Unicast}, []AddressFamily{IPv6Unicast}}, // IPv6 sessions: IPv6 only
		{"fd00:99::1", []AddressFamily{IPv6Unicast}, []AddressFamily{IPv6Unicast}},
	} {
		if got := sessionFamilies(addr(c.peer), c.extra); !slices.Equal(got, c.want) {
			t.Errorf("sessionFamilies(%s, %v) = %v, want %v", c.peer, c.extra, got, c.want)
		}
	}
	g := &GoBGP{cfg: GlobalConfig{Families: []AddressFamily{IPv4Unicast, IPv6Unicast}, GracefulRestart: true}}
	ap := g.peer(PeerSpec{Address: addr("10.99.0.1"), ASN: 64500, MaxPrefixes: 100})
	// MaxPrefixes is the prefix guard's, never GoBGP's own PrefixLimits (quadratic: see prefixGuard).
	if len(ap.AfiSafis) != 2 || ap.AfiSafis[1].Config.Family.Afi != api.Family_AFI_IP6 || ap.AfiSafis[1].MpGracefulRestart == nil ||
		ap.AfiSafis[0].PrefixLimits != nil || ap.AfiSafis[1].PrefixLimits != nil {
		t.Fatalf("dual-stack peer AfiSafis %v", ap.AfiSafis)
	}
	g.cfg.Families = []AddressFamily{IPv4Unicast}
	if ap := g.peer(PeerSpec{Address: addr("10.99.0.1"), ASN: 64500}); len(ap.AfiSafis) != 1 || ap.AfiSafis[0].Config.Family.Afi != api.Family_AFI_IP {
		t.Fatalf("IPv4 peer AfiSafis %v", ap.AfiSafis)
	}
}

func dualNode(name, ip, ip6, cidr, cidr6 string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if ip6 != "" {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip6})
	}
	n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	if cidr6 != "" {
		n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, cidr6)
	}
	return n
}

// TestNodeControllerDualStack: a dual-stack node announces each pod CIDR with its own address of that family as
// the next hop, and its importer accepts another node's IPv6 pod CIDR only through that node's IPv6 address.
func TestNodeControllerDualStack(t *testing.T) {
	kube := fake.NewSimpleClientset()
	for _, n := range []*corev1.Node{
		dualNode("n1", "10.99.0.11", "fd00:99::11", "10.244.1.0/24", "fd00:10:244:1::/64"),
		dualNode("n2", "10.99.0.12", "fd00:99::12", "10.244.2.0/24", "fd00:10:244:2::/64"),
		dualNode("n3", "10.99.0.13", "", "10.244.3.0/24", "fd00:10:244:3::/64"), // no IPv6 address
	} {
		if _, err := kube.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mgr, starts := startManager(t, nil)
	sink := &syncSink{routes: map[netip.Prefix][]netip.Addr{}}
	cfg := Config{NodeName: "n1", ClusterASN: 64512, Mesh: MeshOptions{FullMesh: true},
		ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")}}
	importer := NewImporter(sink, NewImportPolicy(PolicyInput{}), nil, quiet)
	factory := informers.NewSharedInformerFactory(kube, 0)
	c := NewNodeController(cfg, factory, mgr, importer, nil, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	go c.Run(ctx)
	want := []string{"addpath 10.244.1.0/24 10.99.0.11", "addpath fd00:10:244:1::/64 fd00:99::11"}
	var calls []string
	eventually(t, "both pod CIDRs announced, each with the node's address of its family", func() bool {
		calls = append(calls, starts.r.take()...)
		n := 0
		for _, w := range want {
			if slices.Contains(calls, w) {
				n++
			}
		}
		return n == len(want)
	})
	// The sessions stay the IPv4 ones (one per other node).
	eventually(t, "peered with n2 and n3 over IPv4", func() bool {
		var got []string
		for _, p := range mgr.AppliedPeers() {
			got = append(got, p.Address.String())
		}
		slices.Sort(got)
		return slices.Equal(got, []string{"10.99.0.12", "10.99.0.13"})
	})
	importer.BestPaths([]LearnedPath{
		{Prefix: pfx("fd00:10:244:2::/64"), NextHop: addr("fd00:99::12"), Peer: addr("10.99.0.12")},
		{Prefix: pfx("10.244.2.0/24"), NextHop: addr("10.99.0.12"), Peer: addr("10.99.0.12")},
		{Prefix: pfx("fd00:10:244:3::/64"), NextHop: addr("fd00:99::13"), Peer: addr("10.99.0.13")}, // n3 has no IPv6 address
		{Prefix: pfx("fd00:10:244:9::/64"), NextHop: addr("fd00:99::12"), Peer: addr("10.99.0.12")}, // nobody's pod CIDR
		{Prefix: pfx("fd00:10:244:1::/64"), NextHop: addr("fd00:99::12"), Peer: addr("10.99.0.12")}, // our own
	})
	eventually(t, "IPv6 and IPv4 pod CIDRs of n2 installed", func() bool {
		return slices.Equal(sink.get("fd00:10:244:2::/64"), []netip.Addr{addr("fd00:99::12")}) &&
			slices.Equal(sink.get("10.244.2.0/24"), []netip.Addr{addr("10.99.0.12")})
	})
	time.Sleep(100 * time.Millisecond)
	if n := sink.len(); n != 2 {
		t.Fatalf("installed %v, want n2's two pod CIDRs only", sink.routes)
	}
	// The wrong family's next hop for an IPv6 pod CIDR is refused (its IPv4 address, say).
	importer.BestPaths([]LearnedPath{{Prefix: pfx("fd00:10:244:2::/64"), NextHop: addr("10.99.0.12"), Peer: addr("10.99.0.12")}})
	eventually(t, "IPv6 pod CIDR through an IPv4 next hop removed", func() bool { return sink.get("fd00:10:244:2::/64") == nil })
}

// startMPPeer is startTestPeer with both unicast families on its (IPv4) session.
func startMPPeer(t *testing.T, ip string, asn uint32, speakerIP string, speakerPort int, speakerASN uint32) *testPeer {
	t.Helper()
	port := freePort(t, ip)
	s := server.NewBgpServer(server.LoggerOption(&slogAdapter{l: quiet}))
	go s.Serve()
	ctx := context.Background()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: asn, RouterId: ip, ListenPort: int32(port), ListenAddresses: []string{ip}, UseMultiplePaths: true}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: speakerIP, PeerAsn: speakerASN},
		Transport: &api.Transport{RemotePort: uint32(speakerPort), LocalAddress: ip},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, HoldTime: 9, KeepaliveInterval: 3}},
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: familyIPv4, Enabled: true}},
			{Config: &api.AfiSafiConfig{Family: familyIPv6, Enabled: true}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &testPeer{s: s, ip: ip, port: port}
}

// received6 returns the IPv6 prefixes (with next hops) the peer has from the speaker.
func (p *testPeer) received6() map[string]string {
	out := map[string]string{}
	_ = p.s.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv6}, func(d *api.Destination) {
		for _, path := range d.Paths {
			lp, err := FromAPIPath(path)
			if err == nil && !lp.Local {
				out[d.Prefix] = lp.NextHop.String()
			}
		}
	})
	return out
}

// TestSpeakerIPv6OverIPv4Session runs a dual-stack speaker (GlobalConfig.Families both) against three in-process
// GoBGP routers over IPv4 sessions on loopback: the speaker's IPv6 pod CIDR reaches them in MP_REACH_NLRI with
// the node's IPv6 address as next hop (next to its IPv4 one); a router that gets no pod CIDRs gets neither
// family's, but the VIPs of both; the IPv6 routes the routers announce are installed only as the import policy
// allows: a node's IPv6 pod CIDR through its IPv6 address, an --import-allow IPv6 prefix as ECMP over two
// routers; withdrawals take them out again.
func TestSpeakerIPv6OverIPv4Session(t *testing.T) {
	const nodeIP, nodeIP6, torA, torB = "127.0.0.1", "fd00:99::11", "127.0.0.2", "127.0.0.3"
	port := freePort(t, nodeIP)
	sink := &syncSink{routes: map[netip.Prefix][]netip.Addr{}}
	policy := NewImportPolicy(PolicyInput{
		ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")},
		ImportAllow:  []netip.Prefix{pfx("fd00:cafe::/32")},
		Own:          []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")},
		NodeIPs:      []netip.Addr{addr(nodeIP), addr(nodeIP6), addr("fd00:99::12")},
		Owners:       map[netip.Prefix]netip.Addr{pfx("fd00:10:244:2::/64"): addr("fd00:99::12")},
		Routers:      []netip.Addr{addr(torA), addr(torB)}})
	importer := NewImporter(sink, policy, []netip.Addr{addr(nodeIP), addr(nodeIP6)}, quiet)
	sessions := NewSessions(quiet)
	start := func(ctx context.Context, cfg GlobalConfig) (Router, error) { return StartGoBGP(ctx, cfg, quiet) }
	m := NewManager(GlobalConfig{ListenPort: port, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second,
		Families: []AddressFamily{IPv4Unicast, IPv6Unicast}}, start, watchers{importer, sessions}, quiet, importer.Reset, sessions.Reset)
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	t.Cleanup(func() { cancel(); m.Shutdown(true) })
	m.SetIdentity(Identity{ASN: 64512, RouterID: addr(nodeIP), NodeIP: addr(nodeIP)})
	eventually(t, "the speaker runs", func() bool { _, ok := m.Running(); return ok })

	a := startMPPeer(t, torA, 64500, nodeIP, port, 64512)
	b := startMPPeer(t, torB, 64501, nodeIP, port, 64512)
	c := startMPPeer(t, "127.0.0.4", 64502, nodeIP, port, 64512) // advertise.podCIDRs: false
	m.SetPeers([]PeerSpec{
		{Address: addr(torA), ASN: 64500, Port: uint16(a.port), Kind: PeerKindExternal, Name: "a"},
		{Address: addr(torB), ASN: 64501, Port: uint16(b.port), Kind: PeerKindExternal, Name: "b"},
		{Address: addr("127.0.0.4"), ASN: 64502, Port: uint16(c.port), Kind: PeerKindExternal, Name: "c", NoPodCIDRs: true},
	})
	// Service VIPs of both families go to every external peer, pod CIDRs of neither family to c (the export
	// policy's per-family statements).
	m.SetPaths(GroupVIPs, map[netip.Prefix]Path{
		pfx("203.0.113.5/32"):     {Prefix: pfx("203.0.113.5/32"), NextHop: addr(nodeIP), VIP: true},
		pfx("fd00:cafe:5::1/128"): {Prefix: pfx("fd00:cafe:5::1/128"), NextHop: addr(nodeIP6), VIP: true},
	})
	t0 := time.Now()
	m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{
		pfx("10.244.1.0/24"):      {Prefix: pfx("10.244.1.0/24"), NextHop: addr(nodeIP)},
		pfx("fd00:10:244:1::/64"): {Prefix: pfx("fd00:10:244:1::/64"), NextHop: addr(nodeIP6)},
	})
	eventually(t, "both peers receive both pod CIDRs, the IPv6 one with next hop = the node's IPv6 address", func() bool {
		return a.received()["10.244.1.0/24"] == nodeIP && b.received()["10.244.1.0/24"] == nodeIP &&
			a.received6()["fd00:10:244:1::/64"] == nodeIP6 && b.received6()["fd00:10:244:1::/64"] == nodeIP6
	})
	t.Logf("IPv6 pod CIDR at both peers %s after SetPaths (sessions coming up included)", time.Since(t0).Round(time.Millisecond))
	eventually(t, "c receives both VIPs", func() bool {
		return c.received()["203.0.113.5/32"] == nodeIP && c.received6()["fd00:cafe:5::1/128"] == nodeIP6
	})
	if got4, got6 := c.received(), c.received6(); len(got4) != 1 || len(got6) != 1 {
		t.Fatalf("peer c (no pod CIDRs) received %v and %v, want the VIPs only", got4, got6)
	}

	t1 := time.Now()
	a.announce(t, "fd00:10:244:2::/64", "fd00:99::12") // n2's pod CIDR through n2: installed
	a.announce(t, "fd00:10:244:3::/64", "fd00:99::13") // nobody's pod CIDR: refused
	a.announce(t, "fd00:10:244:1::/64", "fd00:99::12") // ours: refused
	a.announce(t, "::/0", "fd00:99::1")                // default: refused
	a.announce(t, "fd00:cafe:1::/64", "fd00:99::2")
	b.announce(t, "fd00:cafe:1::/64", "fd00:99::3")
	eventually(t, "n2's IPv6 pod CIDR installed via fd00:99::12, the allowed prefix ECMP over both routers", func() bool {
		return slices.Equal(sink.get("fd00:10:244:2::/64"), []netip.Addr{addr("fd00:99::12")}) && len(sink.get("fd00:cafe:1::/64")) == 2
	})
	t.Logf("IPv6 routes learned over IPv4 sessions and installed in %s", time.Since(t1).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	if n := sink.len(); n != 2 {
		t.Fatalf("installed %v, want fd00:10:244:2::/64 and fd00:cafe:1::/64 only", sink.routes)
	}
	if got := slices.SortedFunc(slices.Values(sink.get("fd00:cafe:1::/64")), netip.Addr.Compare); !slices.Equal(got, []netip.Addr{addr("fd00:99::2"), addr("fd00:99::3")}) {
		t.Fatalf("ECMP next hops %v", got)
	}
	// Not transit for IPv6 either: b hears only our own pod CIDR and VIP.
	if got := b.received6(); len(got) != 2 || got["fd00:10:244:1::/64"] != nodeIP6 {
		t.Fatalf("peer b received %v over IPv6 unicast, want only our pod CIDR and VIP", got)
	}
	withdraw6 := func(p *testPeer, prefix, nh string) {
		path, _ := apiPath(Path{Prefix: pfx(prefix), NextHop: addr(nh)}, 0)
		if err := p.s.DeletePath(context.Background(), &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv6, Path: path}); err != nil {
			t.Fatal(err)
		}
	}
	withdraw6(a, "fd00:cafe:1::/64", "fd00:99::2")
	eventually(t, "ECMP shrinks to b", func() bool {
		return slices.Equal(sink.get("fd00:cafe:1::/64"), []netip.Addr{addr("fd00:99::3")})
	})
	withdraw6(a, "fd00:10:244:2::/64", "fd00:99::12")
	eventually(t, "n2's pod CIDR withdrawn", func() bool { return sink.get("fd00:10:244:2::/64") == nil })
	m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{pfx("10.244.1.0/24"): {Prefix: pfx("10.244.1.0/24"), NextHop: addr(nodeIP)}})
	eventually(t, "our IPv6 pod CIDR withdrawn at the peers, the IPv4 one kept", func() bool {
		_, has6 := a.received6()["fd00:10:244:1::/64"]
		return !has6 && a.received()["10.244.1.0/24"] == nodeIP
	})
}
