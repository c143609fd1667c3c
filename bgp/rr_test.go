package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	corev1 "k8s.io/api/core/v1"
)

func TestParseRouteReflectorLabel(t *testing.T) {
	for _, ok := range []string{"244.0.0.1", "10.99.0.11", "255.255.255.255"} {
		if id, err := ParseRouteReflectorLabel(ok); err != nil || id != addr(ok) {
			t.Errorf("%q: %v %v", ok, id, err)
		}
	}
	for _, bad := range []string{"", "true", "yes", "0.0.0.0", "1.2.3", "01.2.3.4", "::1", "::ffff:1.2.3.4", "1.2.3.4/32", "4294967295", "244.0.0.1 "} {
		if id, err := ParseRouteReflectorLabel(bad); err == nil || id.IsValid() || !strings.Contains(err.Error(), LabelRouteReflector) {
			t.Errorf("%q: accepted as %v (err %v)", bad, id, err)
		}
	}
}

// rrNodes: two reflectors (cluster ID 244.0.0.1), two clients, a node of another AS, and a labelled node
// without an address (it cannot peer, so it counts for nothing).
func rrNodes() []NodeInfo {
	id := addr("244.0.0.1")
	return []NodeInfo{
		{Name: "r1", IP: addr("10.99.0.11"), RRClusterID: id},
		{Name: "r2", IP: addr("10.99.0.12"), RRClusterID: id},
		{Name: "c3", IP: addr("10.99.0.13")},
		{Name: "c4", IP: addr("10.99.0.14")},
		{Name: "x5", IP: addr("10.99.0.15"), ASN: 65005},
		{Name: "r6", RRClusterID: addr("244.0.0.6")},
	}
}

func byName(nodes []NodeInfo, name string) NodeInfo {
	for _, n := range nodes {
		if n.Name == name {
			return n
		}
	}
	panic(name)
}

// peersOf returns name -> PeerSpec of the node mesh sessions DesiredPeers gives node self.
func peersOf(t *testing.T, nodes []NodeInfo, self string, mesh bool) map[string]PeerSpec {
	t.Helper()
	ps, conflicts := DesiredPeers(byName(nodes, self), nodes, PeerSources{ClusterASN: 64512, Mesh: MeshOptions{FullMesh: mesh}})
	if len(conflicts) != 0 {
		t.Fatalf("conflicts %v", conflicts)
	}
	out := map[string]PeerSpec{}
	for _, p := range ps {
		out[p.Name] = p
	}
	return out
}

func names(m map[string]PeerSpec) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func TestDesiredPeersRouteReflectors(t *testing.T) {
	nodes := rrNodes()
	id := addr("244.0.0.1")
	// A client peers with the reflectors of its AS only (plain iBGP on its side), and with the node of the other
	// AS as in the full mesh.
	c3 := peersOf(t, nodes, "c3", true)
	if got := names(c3); !slices.Equal(got, []string{"r1", "r2", "x5"}) {
		t.Fatalf("c3 peers with %v, want r1 r2 x5", got)
	}
	for _, n := range []string{"r1", "r2", "x5"} {
		if p := c3[n]; p.RRClient || p.RRClusterID.IsValid() {
			t.Errorf("c3's session with %s has a reflector role: %+v", n, p)
		}
	}
	// A reflector: its clients, the other reflector plainly (iBGP, nothing reflected between reflectors), the
	// node of the other AS plainly (eBGP is never reflected).
	r1 := peersOf(t, nodes, "r1", true)
	if got := names(r1); !slices.Equal(got, []string{"c3", "c4", "r2", "x5"}) {
		t.Fatalf("r1 peers with %v", got)
	}
	for _, n := range []string{"c3", "c4"} {
		if p := r1[n]; !p.RRClient || p.RRClusterID != id || p.ASN != 64512 {
			t.Errorf("r1 -> %s: %+v, want an RR client with cluster ID %s", n, p, id)
		}
	}
	if p := r1["r2"]; p.RRClient || p.RRClusterID.IsValid() || p.ASN != 64512 {
		t.Errorf("r1 -> r2: %+v, want a plain iBGP session", p)
	}
	if p := r1["x5"]; p.RRClient || p.ASN != 65005 {
		t.Errorf("r1 -> x5 (AS 65005): %+v, want a plain eBGP session", p)
	}
	// The node of an AS without a reflector keeps the full mesh, with no role.
	x5 := peersOf(t, nodes, "x5", true)
	if got := names(x5); !slices.Equal(got, []string{"c3", "c4", "r1", "r2"}) {
		t.Fatalf("x5 peers with %v", got)
	}
	// The mesh off: no node sessions, labels or not.
	if got := peersOf(t, nodes, "c3", false); len(got) != 0 {
		t.Fatalf("mesh off: %v", got)
	}
	// No reflector (or only one that has no address): the full mesh, no roles.
	var plain []NodeInfo
	for _, n := range nodes {
		if n.Name != "r1" && n.Name != "r2" {
			plain = append(plain, n)
		}
	}
	plain = append(plain, NodeInfo{Name: "r1", IP: addr("10.99.0.11")}, NodeInfo{Name: "r2", IP: addr("10.99.0.12")})
	for _, self := range []string{"c3", "r1"} {
		got := peersOf(t, plain, self, true)
		if len(got) != 4 {
			t.Errorf("no reflector: %s peers with %v, want the 4 others", self, names(got))
		}
		for _, p := range got {
			if p.RRClient {
				t.Errorf("no reflector: %s -> %s has a role", self, p.Name)
			}
		}
	}
	// A reflector in AS 65005 only: it reflects for nobody (no other node of its AS), AS 64512 keeps its mesh.
	other := []NodeInfo{{Name: "a", IP: addr("10.99.0.21")}, {Name: "b", IP: addr("10.99.0.22")},
		{Name: "x", IP: addr("10.99.0.23"), ASN: 65005, RRClusterID: id}}
	if got := names(peersOf(t, other, "a", true)); !slices.Equal(got, []string{"b", "x"}) {
		t.Errorf("a reflector of another AS took a's mesh away: %v", got)
	}
	if p := peersOf(t, other, "x", true)["a"]; p.RRClient {
		t.Errorf("x reflects for a node of another AS: %+v", p)
	}
}

// A change of one node's role touches only the sessions whose role changed: when r2 loses its label, c3 keeps
// its session with r1 as it was (same session key) and drops r2's; r1 re-creates only its session with r2
// (plain -> client).
func TestRouteReflectorRoleChangeTouchesOnlyItsSessions(t *testing.T) {
	before := rrNodes()
	after := rrNodes()
	for i := range after {
		if after[i].Name == "r2" {
			after[i].RRClusterID = netip.Addr{}
		}
	}
	c3a, c3b := peersOf(t, before, "c3", true), peersOf(t, after, "c3", true)
	if c3a["r1"].sessionKey() != c3b["r1"].sessionKey() {
		t.Errorf("c3's session with r1 changed: %+v -> %+v", c3a["r1"], c3b["r1"])
	}
	if _, ok := c3b["r2"]; ok {
		t.Errorf("c3 still peers with r2, now a client too")
	}
	r1a, r1b := peersOf(t, before, "r1", true), peersOf(t, after, "r1", true)
	for _, n := range []string{"c3", "c4", "x5"} {
		if r1a[n] != r1b[n] {
			t.Errorf("r1's session with %s changed: %+v -> %+v", n, r1a[n], r1b[n])
		}
	}
	if r1a["r2"].sessionKey() == r1b["r2"].sessionKey() || !r1b["r2"].RRClient {
		t.Errorf("r1's session with r2 must be re-created as a client session: %+v -> %+v", r1a["r2"], r1b["r2"])
	}
	// r2 itself: a client now, its sessions with c3 and c4 go; the one with r1 is plain on its side either way.
	r2 := peersOf(t, after, "r2", true)
	if got := names(r2); !slices.Equal(got, []string{"r1", "x5"}) {
		t.Errorf("r2 as a client peers with %v", got)
	}
	// Through the manager's reconciler: exactly those calls.
	f := &fakeRouter{}
	h := newRecHarness(f)
	ctx := context.Background()
	list := func(m map[string]PeerSpec) []PeerSpec {
		var out []PeerSpec
		for _, p := range m {
			out = append(out, p)
		}
		return out
	}
	if err := h.SetPeers(ctx, list(r1a)); err != nil {
		t.Fatal(err)
	}
	f.take()
	if err := h.SetPeers(ctx, list(r1b)); err != nil {
		t.Fatal(err)
	}
	if got := f.take(); !slices.Equal(got, []string{"delete 10.99.0.12", "add 10.99.0.12 64512"}) {
		t.Errorf("r1's calls when r2 loses its label: %v", got)
	}
}

// The node controller reads the label: a valid one makes the node a reflector on every agent; a bad one on
// this node's own Node gets a Warning Event (once) and makes it no reflector.
func TestNodeControllerRouteReflectorLabel(t *testing.T) {
	rr := func(n *corev1.Node, v string) *corev1.Node {
		n.Labels = map[string]string{LabelRouteReflector: v}
		return n
	}
	h := startNodeController(t,
		rr(node("n1", "10.99.0.11", "10.244.1.0/24", nil), "244.0.0.1"),
		node("n2", "10.99.0.12", "10.244.2.0/24", nil),
		node("n3", "10.99.0.13", "10.244.3.0/24", nil),
	)
	eventually(t, "n1 reflects for n2 and n3", func() bool {
		p := h.peers()
		return p[addr("10.99.0.12")].RRClient && p[addr("10.99.0.13")].RRClient && p[addr("10.99.0.13")].RRClusterID == addr("244.0.0.1")
	})
	// A bad value: no reflector any more, so the full mesh comes back; reported on n1 once.
	h.update(t, rr(node("n1", "10.99.0.11", "10.244.1.0/24", nil), "yes"))
	select {
	case ev := <-h.recorder.Events:
		if !strings.Contains(ev, ReasonInvalidRouteReflector) || !strings.Contains(ev, `canopy.io/route-reflector="yes"`) || !strings.Contains(ev, "no route reflector") {
			t.Fatalf("event %q", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the bad label")
	}
	eventually(t, "plain mesh sessions", func() bool {
		p := h.peers()
		return len(p) == 3 && !p[addr("10.99.0.12")].RRClient && !p[addr("10.99.0.13")].RRClient
	})
	// n2 labelled validly: n1 is now its client and peers only with it (and the ToR).
	n2 := rr(node("n2", "10.99.0.12", "10.244.2.0/24", nil), "244.0.0.2")
	h.update(t, n2)
	eventually(t, "n1 is n2's client", func() bool {
		p := h.peers()
		_, n3 := p[addr("10.99.0.13")]
		return len(p) == 2 && !n3 && !p[addr("10.99.0.12")].RRClient
	})
	select {
	case ev := <-h.recorder.Events:
		t.Fatalf("the same bad value reported again: %q", ev)
	case <-time.After(300 * time.Millisecond):
	}
}

// The import side: a route reflected to a client keeps the originating node's next hop, which is the owner the
// strict import policy wants; had a reflector put itself as next hop, the client would refuse the route.
func TestImportPolicyAcceptsReflectedRoutes(t *testing.T) {
	p := NewImportPolicy(PolicyInput{ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, Own: []netip.Prefix{pfx("10.244.3.0/24")},
		NodeIPs: []netip.Addr{addr("10.99.0.11"), addr("10.99.0.13"), addr("10.99.0.14")},
		Owners:  map[netip.Prefix]netip.Addr{pfx("10.244.1.0/24"): addr("10.99.0.11"), pfx("10.244.4.0/24"): addr("10.99.0.14")}})
	if ok, why := p.Check(pfx("10.244.4.0/24")); !ok {
		t.Fatal(why)
	}
	if kept, why := p.NextHops(pfx("10.244.4.0/24"), []netip.Addr{addr("10.99.0.14")}); !slices.Equal(kept, []netip.Addr{addr("10.99.0.14")}) {
		t.Fatalf("reflected route with the owner's next hop refused: %s", why)
	}
	if _, why := p.NextHops(pfx("10.244.4.0/24"), []netip.Addr{addr("10.99.0.11")}); why != RejectNotOwner {
		t.Fatalf("a next hop rewritten to the reflector: %q, want %s", why, RejectNotOwner)
	}
}

// recordingSink remembers every route change, to prove a route was never removed.
type recordingSink struct {
	mu      sync.Mutex
	routes  map[netip.Prefix][]netip.Addr
	removed map[netip.Prefix]int
}

func newRecordingSink() *recordingSink {
	return &recordingSink{routes: map[netip.Prefix][]netip.Addr{}, removed: map[netip.Prefix]int{}}
}
func (s *recordingSink) Set(d netip.Prefix, nh []netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes[d] = slices.Clone(nh)
	return nil
}
func (s *recordingSink) Remove(d netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.routes, d)
	s.removed[d]++
	return nil
}
func (s *recordingSink) get(d string) []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.routes[pfx(d)]
}
func (s *recordingSink) removals(d string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removed[pfx(d)]
}

// rrSpeaker is one node of the in-process reflector tests: a manager with a real GoBGP speaker (AS 64512) on
// loopback address ip, announcing its pod CIDR, with an importer that knows every node's pod CIDR.
type rrSpeaker struct {
	info NodeInfo
	port int
	m    *Manager
	sess *Sessions
	sink *recordingSink
	stop func()
}

var rrCluster = []netip.Prefix{pfx("10.244.0.0/16")}

func startRRSpeaker(t *testing.T, info NodeInfo, all []NodeInfo) *rrSpeaker {
	t.Helper()
	ip := info.IP.String()
	sp := &rrSpeaker{info: info, port: freePort(t, ip), sink: newRecordingSink(), sess: NewSessions(quiet)}
	in := PolicyInput{ClusterCIDRs: rrCluster, Own: info.PodCIDRs, Owners: map[netip.Prefix]netip.Addr{}}
	for _, n := range all {
		in.NodeIPs = append(in.NodeIPs, n.IP)
		if n.Name != info.Name {
			for _, p := range n.PodCIDRs {
				in.Owners[p] = n.IP
			}
		}
	}
	policy := NewImportPolicy(in)
	policy.loopbackHops = true
	importer := NewImporter(sp.sink, policy, []netip.Addr{info.IP}, quiet)
	start := func(ctx context.Context, cfg GlobalConfig) (Router, error) { return StartGoBGP(ctx, cfg, quiet) }
	sp.m = NewManager(GlobalConfig{ListenPort: sp.port, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second,
		ReflectPrefixes: rrCluster}, start, Watchers(importer, sp.sess), quiet, importer.Reset, sp.sess.Reset)
	ctx, cancel := context.WithCancel(context.Background())
	go sp.m.Run(ctx)
	var once sync.Once
	sp.stop = func() { once.Do(func() { cancel(); sp.m.Shutdown(true) }) }
	t.Cleanup(sp.stop)
	sp.m.SetIdentity(Identity{ASN: 64512, RouterID: info.IP, NodeIP: info.IP})
	paths := map[netip.Prefix]Path{}
	for _, p := range info.PodCIDRs {
		paths[p] = Path{Prefix: p, NextHop: info.IP}
	}
	sp.m.SetPaths(GroupPodCIDRs, paths)
	eventually(t, "the speaker on "+ip+" runs", func() bool { _, ok := sp.m.Running(); return ok })
	return sp
}

// setPeers gives the speaker the node sessions DesiredPeers computes (with each node's port), plus extra.
func (sp *rrSpeaker) setPeers(t *testing.T, all []NodeInfo, ports map[netip.Addr]int, extra ...PeerSpec) []PeerSpec {
	t.Helper()
	ps, _ := DesiredPeers(sp.info, all, PeerSources{ClusterASN: 64512, Mesh: MeshOptions{FullMesh: true}})
	for i := range ps {
		ps[i].Port = uint16(ports[ps[i].Address])
	}
	ps = append(ps, extra...)
	sp.m.SetPeers(ps)
	return ps
}

// server is the running GoBGP server (to read its RIB as `gobgp` would).
func (sp *rrSpeaker) server(t *testing.T) *GoBGP {
	t.Helper()
	sp.m.instMu.Lock()
	defer sp.m.instMu.Unlock()
	if sp.m.inst == nil {
		t.Fatal("no running speaker")
	}
	return sp.m.inst.r.(*GoBGP)
}

// ribPath is one path of a destination as a speaker holds it.
type ribPath struct {
	from, nextHop, originator string
	clusters                  []string
	large                     []string
}

func readPaths(ctx context.Context, list func(context.Context, *api.ListPathRequest, func(*api.Destination)) error, req *api.ListPathRequest) map[string][]ribPath {
	out := map[string][]ribPath{}
	req.Family = familyIPv4
	_ = list(ctx, req, func(d *api.Destination) {
		for _, p := range d.Paths {
			rp := ribPath{from: p.NeighborIp}
			for _, a := range p.Pattrs {
				var nh api.NextHopAttribute
				var oid api.OriginatorIdAttribute
				var cl api.ClusterListAttribute
				var lc api.LargeCommunitiesAttribute
				switch {
				case a.UnmarshalTo(&nh) == nil:
					rp.nextHop = nh.NextHop
				case a.UnmarshalTo(&oid) == nil:
					rp.originator = oid.Id
				case a.UnmarshalTo(&cl) == nil:
					rp.clusters = cl.Ids
				case a.UnmarshalTo(&lc) == nil:
					for _, c := range lc.Communities {
						rp.large = append(rp.large, fmt.Sprintf("%d:%d:%d", c.GlobalAdmin, c.LocalData1, c.LocalData2))
					}
				}
			}
			out[d.Prefix] = append(out[d.Prefix], rp)
		}
	})
	return out
}

// rib is the speaker's global RIB; adjIn what it received from peer, before any policy.
func (sp *rrSpeaker) rib(t *testing.T) map[string][]ribPath {
	return readPaths(context.Background(), sp.server(t).s.ListPath, &api.ListPathRequest{TableType: api.TableType_GLOBAL})
}
func (sp *rrSpeaker) adjIn(t *testing.T, peer netip.Addr) map[string][]ribPath {
	return readPaths(context.Background(), sp.server(t).s.ListPath, &api.ListPathRequest{TableType: api.TableType_ADJ_IN, Name: peer.String()})
}

// A reflector with two clients, on real GoBGP speakers: each client installs the other's pod CIDR through the
// other client's address (the next hop is kept: traffic goes node to node), the routes carry ORIGINATOR_ID and
// CLUSTER_LIST and never the mark; an eBGP and an iBGP external peer of the reflector get only its own pod CIDR
// (a reflector is never transit), and what they announce inside the pod network is never reflected. With a
// second reflector, losing the first removes no client route.
func TestSpeakerRouteReflector(t *testing.T) {
	id := addr("244.0.0.1")
	nodes := []NodeInfo{
		{Name: "r1", IP: addr("127.0.0.31"), RRClusterID: id, PodCIDRs: []netip.Prefix{pfx("10.244.31.0/24")}},
		{Name: "c1", IP: addr("127.0.0.33"), PodCIDRs: []netip.Prefix{pfx("10.244.33.0/24")}},
		{Name: "c2", IP: addr("127.0.0.34"), PodCIDRs: []netip.Prefix{pfx("10.244.34.0/24")}},
	}
	// r2 joins later; every import policy knows its pod CIDR from the start, as the Node informer would.
	r2Info := NodeInfo{Name: "r2", IP: addr("127.0.0.32"), RRClusterID: id, PodCIDRs: []netip.Prefix{pfx("10.244.32.0/24")}}
	all := append(slices.Clone(nodes), r2Info)
	const ebgpIP, ibgpIP = "127.0.0.35", "127.0.0.36"
	sp := map[string]*rrSpeaker{}
	ports := map[netip.Addr]int{}
	for _, n := range nodes {
		s := startRRSpeaker(t, n, all)
		sp[n.Name], ports[n.IP] = s, s.port
	}
	r1, c1, c2 := sp["r1"], sp["c1"], sp["c2"]
	ebgp := startTestPeer(t, ebgpIP, 64500, "127.0.0.31", r1.port, 64512, "")
	ibgp := startTestPeer(t, ibgpIP, 64512, "127.0.0.31", r1.port, 64512, "")
	externals := []PeerSpec{
		{Address: addr(ebgpIP), ASN: 64500, Port: uint16(ebgp.port), Kind: PeerKindExternal, Name: "tor"},
		{Address: addr(ibgpIP), ASN: 64512, Port: uint16(ibgp.port), Kind: PeerKindExternal, Name: "ibgp-router"},
	}
	r1Peers := r1.setPeers(t, nodes, ports, externals...)
	for _, p := range r1Peers {
		if p.Kind == PeerKindNode && (!p.RRClient || p.RRClusterID != id) {
			t.Fatalf("r1's session with %s is not a client session: %+v", p.Name, p)
		}
	}
	c1.setPeers(t, nodes, ports)
	c2.setPeers(t, nodes, ports)
	// The external peers announce inside the pod network: never to be reflected.
	ebgp.announce(t, "10.244.99.0/24", ebgpIP)
	ibgp.announce(t, "10.244.98.0/24", ibgpIP)

	eventually(t, "each client installs the other's pod CIDR via the other client, and r1's via r1", func() bool {
		return slices.Equal(c1.sink.get("10.244.34.0/24"), []netip.Addr{c2.info.IP}) &&
			slices.Equal(c2.sink.get("10.244.33.0/24"), []netip.Addr{c1.info.IP}) &&
			slices.Equal(c1.sink.get("10.244.31.0/24"), []netip.Addr{r1.info.IP})
	})
	if c1.sess.State(c2.info.IP) != StateUnknown {
		t.Fatal("two clients have a session")
	}
	// What c1 got from r1, before its own policy: c2's route with c2's next hop, ORIGINATOR_ID c2, CLUSTER_LIST
	// [244.0.0.1], and not the mark.
	in := c1.adjIn(t, r1.info.IP)
	got := in["10.244.34.0/24"]
	if len(got) != 1 || got[0].nextHop != "127.0.0.34" || got[0].originator != "127.0.0.34" || !slices.Equal(got[0].clusters, []string{"244.0.0.1"}) {
		t.Fatalf("c1 received c2's route from r1 as %+v, want next hop and originator 127.0.0.34, cluster list [244.0.0.1]", got)
	}
	for pf, ps := range in {
		for _, p := range ps {
			if len(p.large) > 0 {
				t.Errorf("r1 sent %s to c1 with large communities %v (the mark must stay inside a speaker)", pf, p.large)
			}
		}
	}
	eventually(t, "the external peers have r1's pod CIDR", func() bool {
		return ebgp.received()["10.244.31.0/24"] != "" && ibgp.received()["10.244.31.0/24"] != ""
	})
	time.Sleep(500 * time.Millisecond) // let anything that should not arrive arrive
	for _, s := range []*rrSpeaker{c1, c2} {
		rib := s.rib(t)
		for _, pf := range []string{"10.244.99.0/24", "10.244.98.0/24"} {
			if _, ok := rib[pf]; ok {
				t.Errorf("%s has %s, which an external peer of r1 announced: reflected as transit", s.info.Name, pf)
			}
		}
	}
	// The external peers: only r1's own pod CIDR, never a client's.
	for _, e := range []*testPeer{ebgp, ibgp} {
		if got := e.received(); len(got) != 1 || got["10.244.31.0/24"] != "127.0.0.31" {
			t.Errorf("external peer %s received %v from r1, want only 10.244.31.0/24", e.ip, got)
		}
	}
	// Never back to the client it came from: r1 does not send c1 its own route.
	if _, ok := in["10.244.33.0/24"]; ok {
		t.Error("r1 reflected c1's route back to c1")
	}

	// A second reflector with the same cluster ID: every client now has each route from both.
	nodes = all
	r2 := startRRSpeaker(t, r2Info, all)
	ports[r2Info.IP] = r2.port
	// r2 meets the clients first and r1 last, so each reflector has a client's route directly before it hears
	// the other's copy: the order in which two reflectors could end up holding each other's copy.
	r2.setPeers(t, nodes, ports)
	c1.setPeers(t, nodes, ports)
	c2.setPeers(t, nodes, ports)
	eventually(t, "r2 has the clients' routes", func() bool {
		rib := r2.rib(t)
		return len(rib["10.244.33.0/24"]) > 0 && len(rib["10.244.34.0/24"]) > 0
	})
	r1Peers = r1.setPeers(t, nodes, ports, externals...)
	for _, p := range r1Peers {
		if p.Name == "r2" && p.RRClient {
			t.Fatalf("r1 -> r2: %+v, want a plain session", p)
		}
	}
	// Every client has the other's route from both reflectors (each with the other client as next hop), and r2
	// has each client's route from the client itself only (reflectors reflect nothing to each other).
	fromBoth := func(s *rrSpeaker, prefix, nextHop string, want ...string) bool {
		var from []string
		for _, p := range s.rib(t)[prefix] {
			if p.nextHop == nextHop {
				from = append(from, p.from)
			}
		}
		slices.Sort(from)
		return slices.Equal(from, want)
	}
	eventually(t, "both clients have each route from both reflectors", func() bool {
		return fromBoth(c1, "10.244.34.0/24", "127.0.0.34", "127.0.0.31", "127.0.0.32") &&
			fromBoth(c2, "10.244.33.0/24", "127.0.0.33", "127.0.0.31", "127.0.0.32") &&
			fromBoth(r2, "10.244.33.0/24", "127.0.0.33", "127.0.0.33") &&
			fromBoth(r2, "10.244.34.0/24", "127.0.0.34", "127.0.0.34") &&
			slices.Equal(c1.sink.get("10.244.32.0/24"), []netip.Addr{r2Info.IP}) && slices.Equal(c2.sink.get("10.244.32.0/24"), []netip.Addr{r2Info.IP})
	})
	// c2 withdraws its pod CIDR: it goes from every RIB and from c1's kernel, and stays gone (two reflectors
	// never hold each other's copy of a client route: GoBGP would not withdraw such a copy, and the route would
	// outlive its node).
	c2.m.SetPaths(GroupPodCIDRs, nil)
	gone := func() bool {
		for _, s := range []*rrSpeaker{r1, r2, c1} {
			if _, ok := s.rib(t)["10.244.34.0/24"]; ok {
				return false
			}
		}
		return c1.sink.get("10.244.34.0/24") == nil
	}
	eventually(t, "c2's withdrawn pod CIDR is gone everywhere", gone)
	time.Sleep(time.Second)
	if !gone() {
		t.Fatalf("c2's withdrawn pod CIDR came back: r1 %v, r2 %v, c1 %v", r1.rib(t)["10.244.34.0/24"], r2.rib(t)["10.244.34.0/24"], c1.rib(t)["10.244.34.0/24"])
	}
	c2.m.SetPaths(GroupPodCIDRs, map[netip.Prefix]Path{pfx("10.244.34.0/24"): {Prefix: pfx("10.244.34.0/24"), NextHop: c2.info.IP}})
	eventually(t, "c2's pod CIDR is back at c1 from both reflectors", func() bool {
		return fromBoth(c1, "10.244.34.0/24", "127.0.0.34", "127.0.0.31", "127.0.0.32")
	})

	// Losing r1 (its speaker stops: Cease, its sessions drop at once) removes no client route.
	removedBefore := c1.sink.removals("10.244.34.0/24") + c2.sink.removals("10.244.33.0/24")
	r1.stop()
	eventually(t, "c1's session with r1 is down", func() bool { return c1.sess.State(r1.info.IP) != StateEstablished })
	time.Sleep(time.Second)
	if n := c1.sink.removals("10.244.34.0/24") + c2.sink.removals("10.244.33.0/24") - removedBefore; n != 0 {
		t.Errorf("losing one reflector of two removed client routes %d times", n)
	}
	if !slices.Equal(c1.sink.get("10.244.34.0/24"), []netip.Addr{c2.info.IP}) || !slices.Equal(c2.sink.get("10.244.33.0/24"), []netip.Addr{c1.info.IP}) {
		t.Errorf("after r1 is gone: c1 -> %v, c2 -> %v", c1.sink.get("10.244.34.0/24"), c2.sink.get("10.244.33.0/24"))
	}
}
