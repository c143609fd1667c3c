package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/bgp"
	"canopy.io/canopy/e2e/lab"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// rrClusterID is the route reflectors' cluster ID in the reflector labs.
const rrClusterID = "244.0.0.1"

// rrLab brings up a lab of n nodes whose first `reflectors` nodes carry canopy.io/route-reflector before any agent
// starts. The ToR sends the nodes nothing (an outbound route-map that denies all), so every pod route a node has
// came over the node mesh or from a reflector. staticARP gives the fabric permanent neighbour entries (see
// rrStaticNeighbors).
func rrLab(t testing.TB, n, reflectors int, staticARP bool, args ...string) *lab.Lab {
	t.Helper()
	return lab.New(t, lab.Config{Nodes: n, AgentBin: agentBin(), CNIPlugin: cniBin(), AgentArgs: args,
		BeforeAgents: func(ctx context.Context, l *lab.Lab) error {
			if staticARP {
				if err := rrStaticNeighbors(ctx, l); err != nil {
					return err
				}
			}
			if err := l.ToR.Config(ctx, "route-map CANOPY-RR-NONE deny 10", "exit",
				fmt.Sprintf("router bgp %d", l.ToR.ASN), "address-family ipv4 unicast", "neighbor NODES route-map CANOPY-RR-NONE out"); err != nil {
				return err
			}
			for _, node := range l.Nodes[:reflectors] {
				if err := rrLabel(ctx, l, node, rrClusterID); err != nil {
					return err
				}
			}
			return nil
		}})
}

// rrLabel sets canopy.io/route-reflector on the node ("" removes it).
func rrLabel(ctx context.Context, l *lab.Lab, n *lab.Node, v string) error {
	val := "null"
	if v != "" {
		val = strconv.Quote(v)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, bgp.LabelRouteReflector, val)
	_, err := l.Kube.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// rrWantPeers is who node n peers with when reflectors (a set of node names) reflect: the ToR, and every other
// node if n is a reflector (or there is none), else the reflectors.
func rrWantPeers(l *lab.Lab, n *lab.Node, reflectors map[string]bool) []netip.Addr {
	want := []netip.Addr{l.ToR.IP}
	for _, o := range l.Nodes {
		if o != n && (len(reflectors) == 0 || reflectors[n.Name] || reflectors[o.Name]) {
			want = append(want, o.IP)
		}
	}
	slices.SortFunc(want, netip.Addr.Compare)
	return want
}

// rrConverged checks that every node has exactly the sessions it should, all Established, and a route to every
// other node's pod CIDR through that node.
func rrConverged(ctx context.Context, l *lab.Lab, reflectors map[string]bool) error {
	for _, n := range l.Nodes {
		st, err := neighbors(ctx, n)
		if err != nil {
			return err
		}
		got := slices.SortedFunc(maps.Keys(st), netip.Addr.Compare)
		if want := rrWantPeers(l, n, reflectors); !slices.Equal(got, want) {
			return fmt.Errorf("%s peers with %v, want %v", n.Name, got, want)
		}
		for a, s := range st {
			if s != "ESTABLISHED" {
				return fmt.Errorf("%s: session with %s is %s", n.Name, a, s)
			}
		}
		rt, err := kernelRoutes(ctx, n)
		if err != nil {
			return err
		}
		for _, o := range l.Nodes {
			if o != n && !slices.Equal(rt[o.PodCIDR], []netip.Addr{o.IP}) {
				return fmt.Errorf("%s: route to %s is %v, want via %s", n.Name, o.PodCIDR, rt[o.PodCIDR], o.IP)
			}
		}
	}
	return nil
}

// rrRIBPath is one path of `gobgp global rib -j`.
type rrRIBPath struct {
	From, NextHop, Originator string
	Clusters                  []string
}

// rrRIB reads the node's RIB for prefix with the stock CLI.
func rrRIB(ctx context.Context, n *lab.Node, prefix netip.Prefix) ([]rrRIBPath, error) {
	out, err := n.Exec(ctx, "gobgp", "global", "rib", prefix.String(), "-j")
	if err != nil {
		return nil, fmt.Errorf("%s: gobgp global rib: %v: %s", n.Name, err, out)
	}
	var rib map[string][]struct {
		NeighborIP string            `json:"neighbor-ip"`
		Attrs      []json.RawMessage `json:"attrs"`
	}
	if err := json.Unmarshal([]byte(out), &rib); err != nil {
		return nil, fmt.Errorf("%s: gobgp global rib -j: %v: %s", n.Name, err, out)
	}
	var paths []rrRIBPath
	for _, p := range rib[prefix.String()] {
		rp := rrRIBPath{From: p.NeighborIP}
		for _, raw := range p.Attrs {
			var a struct {
				Type    int             `json:"type"`
				NextHop string          `json:"nexthop"`
				Value   json.RawMessage `json:"value"`
			}
			if json.Unmarshal(raw, &a) != nil {
				continue
			}
			switch a.Type {
			case 3: // NEXT_HOP
				rp.NextHop = a.NextHop
			case 9: // ORIGINATOR_ID
				_ = json.Unmarshal(a.Value, &rp.Originator)
			case 10: // CLUSTER_LIST
				_ = json.Unmarshal(a.Value, &rp.Clusters)
			}
		}
		paths = append(paths, rp)
	}
	return paths, nil
}

var pingSummaryRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)

// rrPingLoop pings dst from p every interval, count times, and returns how many were sent and answered, and
// when each unanswered one was sent (ping -D -O: a timestamp per ping, and a line for each not answered before the
// next was sent; one answered later after all is not lost).
func rrPingLoop(ctx context.Context, p *lab.Pod, dst netip.Addr, count int, interval time.Duration) (sent, got int, lost []time.Time, err error) {
	out, _ := p.Exec(ctx, "ping", "-n", "-D", "-O", "-W", "1", "-i", fmt.Sprintf("%.3f", interval.Seconds()), "-c", strconv.Itoa(count), dst.String())
	m := pingSummaryRE.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, nil, fmt.Errorf("ping %s: %s", dst, out)
	}
	sent, _ = strconv.Atoi(m[1])
	got, _ = strconv.Atoi(m[2])
	if got < sent {
		lost = pingLost(out)
	}
	return sent, got, lost, nil
}

var (
	pingNoAnswerRE = regexp.MustCompile(`^\[(\d+)\.(\d+)\] no answer yet for icmp_seq=(\d+)`)
	pingAnswerRE   = regexp.MustCompile(`icmp_seq=(\d+) .*time=`)
)

// pingLost returns when each ping that ping -D -O reported without an answer, and that was not answered later,
// was sent.
func pingLost(out string) []time.Time {
	late := map[string]time.Time{}
	var order []string
	for _, l := range strings.Split(out, "\n") {
		if m := pingNoAnswerRE.FindStringSubmatch(l); m != nil {
			sec, _ := strconv.ParseInt(m[1], 10, 64)
			usec, _ := strconv.ParseInt((m[2] + "000000")[:6], 10, 64)
			late[m[3]] = time.Unix(sec, usec*1000)
			order = append(order, m[3])
		} else if m := pingAnswerRE.FindStringSubmatch(l); m != nil {
			delete(late, m[1])
		}
	}
	var lost []time.Time
	for _, seq := range order {
		if t, ok := late[seq]; ok {
			lost = append(lost, t)
		}
	}
	return lost
}

// rrPingDuring runs a ping loop from a to b (50 ms apart, for d) while action runs, and returns what was lost.
func rrPingDuring(t *testing.T, a *lab.Pod, b *lab.Pod, d time.Duration, action func()) (sent, lost int) {
	t.Helper()
	type res struct{ sent, got int }
	done := make(chan res, 1)
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
		defer cancel()
		s, g, _, err := rrPingLoop(ctx, a, b.IP, int(d/(50*time.Millisecond)), 50*time.Millisecond)
		if err != nil {
			errc <- err
			return
		}
		done <- res{s, g}
	}()
	time.Sleep(time.Second) // the loop runs before the action
	action()
	select {
	case r := <-done:
		return r.sent, r.sent - r.got
	case err := <-errc:
		t.Fatal(err)
	}
	return 0, 0
}

// sessionsSince returns, per node, when each of its Established sessions came up.
func sessionsSince(t *testing.T, l *lab.Lab) map[string]map[netip.Addr]time.Time {
	t.Helper()
	out := map[string]map[netip.Addr]time.Time{}
	for _, n := range l.Nodes {
		up, err := uptimes(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		out[n.Name] = up
	}
	return out
}

// rrSessionChanges compares two sessionsSince snapshots: which sessions were re-created, removed or added.
func rrSessionChanges(before, after map[string]map[netip.Addr]time.Time) (recreated, removed, added []string) {
	for node, b := range before {
		a := after[node]
		for peer, t0 := range b {
			t1, ok := a[peer]
			switch {
			case !ok:
				removed = append(removed, node+"-"+peer.String())
			case !t1.Equal(t0):
				recreated = append(recreated, node+"-"+peer.String())
			}
		}
		for peer := range a {
			if _, ok := b[peer]; !ok {
				added = append(added, node+"-"+peer.String())
			}
		}
	}
	slices.Sort(recreated)
	slices.Sort(removed)
	slices.Sort(added)
	return recreated, removed, added
}

// Route reflectors on nodes: 5 nodes, node1 and node2 labelled. Every other node has exactly the two reflector
// sessions and the ToR's, pods on them reach each other with routes the reflectors carry (next hop the owner
// node), killing one reflector's agent loses no packet between the others, and unlabelling and relabelling node2
// touch only the sessions whose role changed.
func TestRouteReflectors(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no lab")
	}
	// Peers keep a dead agent's routes 5 s (graceful restart), so the test sees them expire.
	l := rrLab(t, 5, 2, false, "--graceful-restart-time=5s")
	ctx := context.Background()
	r1, r2 := l.Nodes[0], l.Nodes[1]
	clients := l.Nodes[2:]
	both := map[string]bool{r1.Name: true, r2.Name: true}
	t0 := time.Now()
	eventually(t, 60*time.Second, "clients peer with the two reflectors and the ToR only, routes everywhere", func(ctx context.Context) error {
		return rrConverged(ctx, l, both)
	})
	t.Logf("converged %s after the lab was up", time.Since(t0).Round(time.Millisecond))

	// A client's route to another client came from both reflectors, with the owner as next hop. (The originator
	// is the owner, or the other reflector when a reflector preferred its copy: GoBGP strips ORIGINATOR_ID
	// towards a non-client.)
	a, b := clients[0], clients[1]
	paths, err := rrRIB(ctx, a, b.PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	var from []string
	for _, p := range paths {
		if p.NextHop != b.IP.String() || !slices.Contains([]string{b.IP.String(), r1.IP.String(), r2.IP.String()}, p.Originator) ||
			!slices.Equal(p.Clusters, []string{rrClusterID}) {
			t.Errorf("%s's path to %s: %+v, want next hop %s, originator it or a reflector, cluster list [%s]", a.Name, b.PodCIDR, p, b.IP, rrClusterID)
		}
		from = append(from, p.From)
	}
	slices.Sort(from)
	if want := []string{r1.IP.String(), r2.IP.String()}; !slices.Equal(from, want) {
		t.Errorf("%s learned %s from %v, want from both reflectors %v", a.Name, b.PodCIDR, from, want)
	}

	// Pods on the three clients reach each other.
	var pods []*lab.Pod
	for _, n := range clients {
		p, err := l.AddPod(ctx, n, "rr")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.DeletePod(p) })
		pods = append(pods, p)
	}
	for _, x := range pods {
		for _, y := range pods {
			if x != y {
				eventually(t, 10*time.Second, fmt.Sprintf("ping %s -> %s", x.Node.Name, y.Node.Name),
					func(ctx context.Context) error { return x.Ping(ctx, y.IP) })
			}
		}
	}

	// Kill node1's agent: its node stays, its sessions drop, its routes at the peers expire after 5 s; traffic
	// between the clients keeps flowing on what node2 reflects.
	sent, lost := rrPingDuring(t, pods[0], pods[1], 12*time.Second, func() {
		if err := r1.KillAgent(); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("reflector %s SIGKILLed: %d of %d pings (50 ms apart, 11 s after the kill) lost", r1.Name, lost, sent)
	if lost > 0 {
		t.Errorf("%d of %d pings lost between %s and %s while reflector %s died", lost, sent, pods[0].Node.Name, pods[1].Node.Name, r1.Name)
	}
	for _, n := range clients {
		rt, err := kernelRoutes(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range clients {
			if o != n && !slices.Equal(rt[o.PodCIDR], []netip.Addr{o.IP}) {
				t.Errorf("with %s dead: %s's route to %s is %v", r1.Name, n.Name, o.PodCIDR, rt[o.PodCIDR])
			}
		}
		if p, err := rrRIB(ctx, n, clients[0].PodCIDR); err == nil && n != clients[0] {
			for _, x := range p {
				if x.From == r1.IP.String() {
					t.Errorf("%s still has %s from the dead reflector 5 s past its restart time: %+v", n.Name, clients[0].PodCIDR, x)
				}
			}
		}
	}
	if err := r1.StartAgent(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "node1's agent is back", func(ctx context.Context) error { return rrConverged(ctx, l, both) })

	// A bad label value on a client: an Event, and nothing changes.
	before := sessionsSince(t, l)
	if err := rrLabel(ctx, l, clients[2], "yes"); err != nil {
		t.Fatal(err)
	}
	waitWarningEvent(t, l, clients[2].Name, bgp.ReasonInvalidRouteReflector, `canopy.io/route-reflector="yes"`)
	time.Sleep(3 * time.Second)
	if err := rrConverged(ctx, l, both); err != nil {
		t.Error(err)
	}
	if rc, rm, ad := rrSessionChanges(before, sessionsSince(t, l)); len(rc)+len(rm)+len(ad) > 0 {
		t.Errorf("a bad label changed sessions: re-created %v, removed %v, added %v", rc, rm, ad)
	}
	if err := rrLabel(ctx, l, clients[2], ""); err != nil {
		t.Fatal(err)
	}

	// Unlabel node2: node1 re-creates its session with node2 (now a client), the clients and node2 drop theirs;
	// nothing else moves and no packet is lost.
	only1 := map[string]bool{r1.Name: true}
	before = sessionsSince(t, l)
	time.Sleep(1100 * time.Millisecond) // a re-created session gets a later uptime (1 s resolution)
	sent, lost = rrPingDuring(t, pods[0], pods[2], 8*time.Second, func() {
		if err := rrLabel(ctx, l, r2, ""); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "node2 is a client", func(ctx context.Context) error { return rrConverged(ctx, l, only1) })
	})
	t.Logf("node2 unlabelled: %d of %d pings lost", lost, sent)
	if lost > 0 {
		t.Errorf("unlabelling node2 lost %d of %d pings", lost, sent)
	}
	rc, rm, ad := rrSessionChanges(before, sessionsSince(t, l))
	wantRC := []string{r1.Name + "-" + r2.IP.String(), r2.Name + "-" + r1.IP.String()}
	var wantRM []string
	for _, c := range clients {
		wantRM = append(wantRM, c.Name+"-"+r2.IP.String(), r2.Name+"-"+c.IP.String())
	}
	slices.Sort(wantRC)
	slices.Sort(wantRM)
	if !slices.Equal(rc, wantRC) || !slices.Equal(rm, wantRM) || len(ad) != 0 {
		t.Errorf("unlabelling node2: re-created %v (want %v), removed %v (want %v), added %v (want none)", rc, wantRC, rm, wantRM, ad)
	}

	// Label it again: the reverse.
	before = sessionsSince(t, l)
	time.Sleep(1100 * time.Millisecond)
	if err := rrLabel(ctx, l, r2, rrClusterID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "node2 reflects again", func(ctx context.Context) error { return rrConverged(ctx, l, both) })
	rc, rm, ad = rrSessionChanges(before, sessionsSince(t, l))
	if !slices.Equal(rc, wantRC) || len(rm) != 0 || !slices.Equal(ad, wantRM) {
		t.Errorf("relabelling node2: re-created %v (want %v), removed %v (want none), added %v (want %v)", rc, wantRC, rm, ad, wantRM)
	}
	for _, x := range pods {
		for _, y := range pods {
			if x != y {
				if err := x.Ping(ctx, y.IP); err != nil {
					t.Errorf("ping %s -> %s after relabelling: %v", x.Node.Name, y.Node.Name, err)
				}
			}
		}
	}
}
