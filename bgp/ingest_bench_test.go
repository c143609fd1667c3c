package bgp

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"canopy.io/canopy/routes"

	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// BenchmarkSpeakerIngest measures the agent's own share of taking a flood of learned routes in, in one process
// and without a kernel: a raw BGP peer on loopback (127.0.0.2, eBGP, AS 65099) sends N /32s in pre-encoded
// UPDATEs of 800 prefixes each (what a router sends; the sender costs next to nothing), through the real
// GoBGP speaker, the watch, the importer and its policy, into a routes.Manager over a Table that only counts.
// Two more raw peers are established and idle (the node mesh and the ToR: GoBGP runs its export policy for
// each). Then the peer withdraws them all, in UPDATEs of 800 withdrawn prefixes. One iteration = both.
//
//	routes/s-install    N ÷ (first UPDATE written until the Manager has applied N routes)
//	routes/s-withdraw   N ÷ (first withdrawal written until none is left)
//	batches/1k-routes   kernel batches (Table.Batch calls) per 1,000 route changes
//	msgs-to-idle-peer/route  BGP messages an idle peer received per route (last iteration)
//
// Profile it (-cpuprofile) to split the time between GoBGP (pkg/server, pkg/table, pkg/packet) and us (the
// watch callback, Importer, routes.Manager).
func BenchmarkSpeakerIngest(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			benchIngest(b, n)
		})
	}
}

func benchIngest(b *testing.B, n int) {
	const nodeIP, injIP = "127.0.0.1", "127.0.0.2"
	tbl := &countTable{}
	rm := routes.NewManager(tbl, nil)
	if err := rm.Start(); err != nil {
		b.Fatal(err)
	}
	policy := NewImportPolicy(PolicyInput{ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")},
		ImportAllow: []netip.Prefix{pfx("100.64.0.0/10")}, NodeIPs: []netip.Addr{addr(nodeIP)},
		Routers: []netip.Addr{addr(injIP), addr("127.0.0.3"), addr("127.0.0.4")}})
	policy.loopbackHops = true
	importer := NewImporter(rm, policy, []netip.Addr{addr(nodeIP)}, quiet)
	sessions := NewSessions(quiet)
	port := benchPort(b, nodeIP)
	start := func(ctx context.Context, cfg GlobalConfig) (Router, error) { return StartGoBGP(ctx, cfg, quiet) }
	m := NewManager(GlobalConfig{ListenPort: port, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: time.Second},
		start, watchers{importer, sessions}, quiet, importer.Reset, sessions.Reset)
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	b.Cleanup(func() { cancel(); m.Shutdown(true) })
	m.SetIdentity(Identity{ASN: 64512, RouterID: addr(nodeIP), NodeIP: addr(nodeIP)})

	var peers []*rawPeer
	var specs []PeerSpec
	for i, ip := range []string{injIP, "127.0.0.3", "127.0.0.4"} {
		p := newRawPeer(b, ip, 65099+uint32(i))
		peers = append(peers, p)
		specs = append(specs, PeerSpec{Address: addr(ip), ASN: p.asn, Port: uint16(p.port), Kind: PeerKindExternal, Name: ip})
	}
	m.SetPeers(specs)
	for _, p := range peers {
		p.waitEstablished(b)
	}
	waitFor(b, "sessions established at the speaker", func() bool {
		for _, p := range peers {
			if sessions.State(addr(p.ip)) != StateEstablished {
				return false
			}
		}
		return true
	})
	inj := peers[0]
	announce := updates(inj, n, false)
	withdraw := updates(inj, n, true)

	var add, del time.Duration
	var ops0, batches0, idle0 int64
	b.ResetTimer()
	for range b.N {
		ops0, batches0, idle0 = tbl.ops.Load(), tbl.batches.Load(), peers[1].got.Load()
		t0 := time.Now()
		inj.write(b, announce)
		waitFor(b, fmt.Sprintf("%d routes installed", n), func() bool { return tbl.routes.Load() == int64(n) })
		add += time.Since(t0)
		t1 := time.Now()
		inj.write(b, withdraw)
		waitFor(b, "every route withdrawn", func() bool { return tbl.routes.Load() == 0 })
		del += time.Since(t1)
	}
	b.StopTimer()
	iters := float64(b.N)
	b.ReportMetric(float64(n)*iters/add.Seconds(), "routes/s-install")
	b.ReportMetric(float64(n)*iters/del.Seconds(), "routes/s-withdraw")
	b.ReportMetric(float64(tbl.batches.Load()-batches0)*1000/float64(tbl.ops.Load()-ops0), "batches/1k-routes")
	// GoBGP (v3.37) sends every withdrawn best path to every peer, one UPDATE each, whether it advertised it or
	// not (its export policy lets withdrawals through): the idle peers receive N UPDATEs they have no use for.
	b.ReportMetric(float64(peers[1].got.Load()-idle0)/float64(n), "msgs-to-idle-peer/route")
}

// countTable is a routes.Table (and Batcher) that keeps nothing but counts.
type countTable struct {
	routes, ops, batches atomic.Int64
}

func (t *countTable) Replace(routes.Route) error    { t.routes.Add(1); t.ops.Add(1); return nil }
func (t *countTable) Delete(netip.Prefix) error     { t.routes.Add(-1); t.ops.Add(1); return nil }
func (t *countTable) List() ([]routes.Route, error) { return nil, nil }
func (t *countTable) Batch(ops []routes.Op) []error {
	t.batches.Add(1)
	t.ops.Add(int64(len(ops)))
	var d int64
	for _, op := range ops {
		if op.Kind == routes.OpDelete {
			d--
		} else if op.Kind == routes.OpAdd {
			d++
		}
	}
	t.routes.Add(d)
	return nil
}

func waitFor(b testing.TB, what string, f func() bool) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for !f() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func benchPort(b testing.TB, ip string) int {
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		b.Skipf("cannot listen on %s (needed for in-process BGP peers): %v", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// rawPeer is a minimal BGP speaker on loopback: it accepts the speaker's connection, opens the session (IPv4
// unicast, 4-octet AS), keeps it alive, discards whatever it receives, and writes pre-encoded messages.
type rawPeer struct {
	ip   string
	asn  uint32
	port int
	ln   net.Listener

	mu   sync.Mutex // writes
	conn net.Conn
	up   chan struct{}
	got  atomic.Int64 // messages received
}

func newRawPeer(b testing.TB, ip string, asn uint32) *rawPeer {
	b.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		b.Skipf("cannot listen on %s (needed for in-process BGP peers): %v", ip, err)
	}
	p := &rawPeer{ip: ip, asn: asn, port: ln.Addr().(*net.TCPAddr).Port, ln: ln, up: make(chan struct{})}
	done := make(chan struct{})
	b.Cleanup(func() {
		close(done)
		ln.Close()
		p.mu.Lock()
		if p.conn != nil {
			p.conn.Close()
		}
		p.mu.Unlock()
	})
	go p.serve(done)
	return p
}

func (p *rawPeer) serve(done chan struct{}) {
	c, err := p.ln.Accept()
	if err != nil {
		return
	}
	open := bgp.NewBGPOpenMessage(uint16(p.asn), 9, p.ip, []bgp.OptionParameterInterface{bgp.NewOptionParameterCapability(
		[]bgp.ParameterCapabilityInterface{bgp.NewCapMultiProtocol(bgp.RF_IPv4_UC), bgp.NewCapFourOctetASNumber(p.asn)})})
	ob, _ := open.Serialize()
	ka, _ := bgp.NewBGPKeepAliveMessage().Serialize()
	if _, err := readMsg(c); err != nil { // their OPEN
		c.Close()
		return
	}
	if _, err := c.Write(append(ob, ka...)); err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conn = c
	p.mu.Unlock()
	close(p.up)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.mu.Lock()
				_, err := c.Write(ka)
				p.mu.Unlock()
				if err != nil {
					return
				}
			}
		}
	}()
	for {
		_, err := readMsg(c)
		if err != nil {
			return
		}
		p.got.Add(1)
	}
}

func (p *rawPeer) waitEstablished(b testing.TB) {
	b.Helper()
	select {
	case <-p.up:
	case <-time.After(30 * time.Second):
		b.Fatalf("the speaker never connected to %s", p.ip)
	}
}

func (p *rawPeer) write(b testing.TB, msgs []byte) {
	b.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.conn.Write(msgs); err != nil {
		b.Fatal(err)
	}
}

func readMsg(r io.Reader) ([]byte, error) {
	var h [bgp.BGP_HEADER_LENGTH]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	body := make([]byte, int(binary.BigEndian.Uint16(h[16:18]))-bgp.BGP_HEADER_LENGTH)
	_, err := io.ReadFull(r, body)
	return body, err
}

// updates encodes n /32s from 100.64.0.0 on as UPDATEs of 800 prefixes each: announced with next hop p (AS path
// p's AS), or withdrawn.
func updates(p *rawPeer, n int, withdraw bool) []byte {
	attrs := []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(0),
		bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{p.asn})}),
		bgp.NewPathAttributeNextHop(p.ip),
	}
	var out []byte
	a := netip.MustParseAddr("100.64.0.0")
	for i := 0; i < n; {
		var nlri []*bgp.IPAddrPrefix
		for ; i < n && len(nlri) < 800; i++ {
			nlri = append(nlri, bgp.NewIPAddrPrefix(32, a.String()))
			a = a.Next()
		}
		var msg *bgp.BGPMessage
		if withdraw {
			msg = bgp.NewBGPUpdateMessage(nlri, nil, nil)
		} else {
			msg = bgp.NewBGPUpdateMessage(nil, attrs, nlri)
		}
		buf, err := msg.Serialize()
		if err != nil {
			panic(err)
		}
		out = append(out, buf...)
	}
	return out
}
