package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/proxy"
	iptproxy "canopy.io/canopy/proxy/iptables"
)

// benchServices are n service ports x 2 endpoints, the shape of proxy/iptables' BenchmarkSync (its helpers
// live in its _test files, so they are repeated here).
func benchServices(n int) (map[string]*model.ServicePort, []string) {
	desired := make(map[string]*model.ServicePort, n)
	keys := make([]string, 0, n)
	for i := range n {
		sp := benchService(i)
		desired[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	return desired, keys
}

func benchService(i int) *model.ServicePort {
	ep := func(net int) model.Endpoint {
		return model.Endpoint{IP: netip.AddrFrom4([4]byte{10, byte(244 + net), byte(i / 250), byte(i%250 + 1)}), Port: 8080, Ready: true, Serving: true}
	}
	eps := []model.Endpoint{ep(0), ep(1)}
	return &model.ServicePort{
		Key: fmt.Sprintf("ns%d/svc%d:http/TCP", i/100, i), Namespace: fmt.Sprintf("ns%d", i/100), Name: fmt.Sprintf("svc%d", i),
		PortName: "http", Protocol: model.TCP, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})},
		Port: 80, ClusterEndpoints: eps, ExternalEndpoints: eps,
	}
}

// countingNFT counts the operations of the transactions run.
type countingNFT struct {
	knftables.Interface
	ops int
}

func (c *countingNFT) Run(ctx context.Context, tx *knftables.Transaction) error {
	c.ops += tx.NumOperations()
	return c.Interface.Run(ctx, tx)
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// BenchmarkSync programs 10,000 service ports x 2 endpoints from empty into a test namespace with the real nft
// binary (and small transactions over netlink, as NewHost), then one more service port, one endpoint change and one removal on top of them (each 5 times, the
// median reported), then a full resync
// (the periodic repair: it reads the table, writes nothing when nothing drifted), then a restart (a new
// proxier adopting the table: Start, the first full sync rewriting every chain, PruneStale). The same
// sequence runs through the iptables back end (its detected flavour, nft in a fresh namespace) in another
// namespace; the ratios iptables/nftables are reported.
//
//	go test -run '^$' -bench BenchmarkSync -benchtime 1x ./proxy/nftables/
func BenchmarkSync(b *testing.B) {
	requireNft(b)
	testns.Require(b, "iptables-nft-restore")
	const n = 10000
	metrics := map[string]time.Duration{}
	var memPerService float64
	ops := map[string]int{}
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/14")}}
	for b.Loop() {
		b.StopTimer()
		timed := func(name string, ns *testns.NS, f func() error) {
			start := time.Now()
			if err := ns.Do(f); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			metrics[name] += time.Since(start)
		}
		// median runs step 5 times and adds the median of their "step" times to name.
		median := func(name string, step func(i int)) {
			var ts []time.Duration
			for i := range 5 {
				delete(metrics, "step")
				step(i)
				ts = append(ts, metrics["step"])
			}
			delete(metrics, "step")
			slices.Sort(ts)
			metrics[name] += ts[2]
		}
		run := func(prefix string, newBackend func() (proxy.Backend, error), count func(string)) {
			ns := testns.New(b, "nft-bench"+prefix)
			var be proxy.Backend
			if err := ns.Do(func() (err error) { be, err = newBackend(); return err }); err != nil {
				b.Fatal(err)
			}
			d, keys := benchServices(n)
			heapBefore := heapInUse()
			timed(prefix+"-10k-ms", ns, func() error { return be.Sync(d, keys) })
			if prefix == "nft" {
				memPerService = float64(heapInUse()-heapBefore) / n
			}
			count("10k")

			// The small steps 5 times each (the median counts: single syncs of a few hundred ms are noisy).
			var added []string
			median(prefix+"-add1-ms", func(i int) {
				add := benchService(n + i)
				d[add.Key] = add
				added = append(added, add.Key)
				timed("step", ns, func() error { return be.Sync(d, []string{add.Key}) })
			})
			count("add1")
			median(prefix+"-epchange-ms", func(i int) {
				chg := d[keys[5000+i]]
				chg.ClusterEndpoints = []model.Endpoint{chg.ClusterEndpoints[0], {IP: netip.AddrFrom4([4]byte{10, 250, 0, byte(i + 1)}), Port: 8080, Ready: true}}
				chg.ExternalEndpoints = chg.ClusterEndpoints
				timed("step", ns, func() error { return be.Sync(d, []string{chg.Key}) })
			})
			count("epchange")
			median(prefix+"-del1-ms", func(i int) {
				delete(d, keys[42+i])
				timed("step", ns, func() error { return be.Sync(d, []string{keys[42+i]}) })
			})
			count("del1")

			all := append(slices.Clone(keys), added...)
			timed(prefix+"-fullresync-ms", ns, func() error { return be.Sync(d, all) })
			count("fullresync")

			// Restart: a new back end on the table, its first full sync, PruneStale.
			if err := ns.Do(func() (err error) { be, err = newBackend(); return err }); err != nil {
				b.Fatal(err)
			}
			timed(prefix+"-restart-ms", ns, func() error {
				if err := be.Start(); err != nil {
					return err
				}
				if err := be.Sync(d, all); err != nil {
					return err
				}
				return be.PruneStale()
			})
			count("restart")
			timed(prefix+"-cleanup-ms", ns, be.Cleanup)
		}

		cn := &countingNFT{}
		var nl *nlTransport
		run("nft", func() (proxy.Backend, error) {
			nft, err := knftables.New(ipv4.nft, TableName)
			cn.Interface = nft
			p := New(cfg, cn, netlinkConntrack{}, nil)
			p.nl = newNLTransport(ipv4, TableName) // as NewHost: small transactions over netlink
			nl = p.nl
			return p, err
		}, func(step string) {
			ops[step], cn.ops = cn.ops+nl.ops, 0
			nl.ops = 0
		})
		run("ipt", func() (proxy.Backend, error) {
			return iptproxy.NewHost(iptproxy.Config{ClusterCIDRs: cfg.ClusterCIDRs}, nil)
		}, func(string) {})
		b.StartTimer()
	}
	nb := time.Duration(b.N)
	for name, d := range metrics {
		b.ReportMetric(float64(d/nb)/1e6, name)
	}
	b.ReportMetric(memPerService, "proxier-heap-B/service")
	for _, step := range []string{"add1", "epchange", "fullresync"} {
		b.ReportMetric(float64(ops[step]), "nft-"+step+"-ops") // add1, epchange: the 5 syncs together
	}
	ratio := func(step string) float64 { return float64(metrics["ipt-"+step]) / float64(metrics["nft-"+step]) }
	for _, step := range []string{"10k-ms", "add1-ms", "epchange-ms", "fullresync-ms"} {
		b.ReportMetric(ratio(step), "ipt/nft-"+step[:len(step)-3])
	}
	b.Logf("10,000 service ports x 2 endpoints, nftables: from empty %v, +1 %v, endpoint change %v, removal %v, full resync %v, restart %v, cleanup %v",
		metrics["nft-10k-ms"]/nb, metrics["nft-add1-ms"]/nb, metrics["nft-epchange-ms"]/nb, metrics["nft-del1-ms"]/nb,
		metrics["nft-fullresync-ms"]/nb, metrics["nft-restart-ms"]/nb, metrics["nft-cleanup-ms"]/nb)
	b.Logf("iptables (same run): from empty %v, +1 %v, endpoint change %v, removal %v, full resync %v, restart %v, cleanup %v",
		metrics["ipt-10k-ms"]/nb, metrics["ipt-add1-ms"]/nb, metrics["ipt-epchange-ms"]/nb, metrics["ipt-del1-ms"]/nb,
		metrics["ipt-fullresync-ms"]/nb, metrics["ipt-restart-ms"]/nb, metrics["ipt-cleanup-ms"]/nb)
}

// timedNFT times the nft runs (the process: fork, exec, its cache fetch, the kernel).
type timedNFT struct {
	knftables.Interface
	took time.Duration
	runs int
}

func (c *timedNFT) Run(ctx context.Context, tx *knftables.Transaction) error {
	t0 := time.Now()
	err := c.Interface.Run(ctx, tx)
	c.took += time.Since(t0)
	c.runs++
	return err
}

// cpuTime is the CPU time (user + system) of this process and its waited-for children (nft,
// iptables-nft-restore).
func cpuTime() time.Duration {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
}

// BenchmarkSyncSmall is issue 16's "+1 Service at 10k" below the e2e level: 10,000 service ports x 2
// endpoints (CANOPY_BENCH_PORTS) are loaded from empty into three test namespaces — the nftables back end as
// the agent runs it (small transactions over netlink, netlink.go), the same back end with every transaction
// through the nft binary (as before), and the iptables back end — then +1 service port and one endpoint change
// are synced 7 times each, the three back ends taking turns (so they share the machine's load), and the
// medians are reported with the split of the nftables syncs: in the kernel (netlink) or in nft (process,
// cache fetch, kernel) against the rest of Sync (planning and building the transaction in Go), and the CPU
// time (this process and its children: robust to the machine's load) of each step and each bulk load, and the
// ratios iptables / nftables.
//
//	go test -run '^$' -bench BenchmarkSyncSmall -benchtime 1x ./proxy/nftables/
func BenchmarkSyncSmall(b *testing.B) {
	requireNft(b)
	testns.Require(b, "iptables-nft-restore")
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("CANOPY_BENCH_PORTS")); err == nil && v > 0 {
		n = v
	}
	const reps = 7
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/14")}}
	type side struct {
		name    string
		ns      *testns.NS
		be      proxy.Backend
		d       map[string]*model.ServicePort
		keys    []string
		nl      *nlTransport
		cli     *timedNFT
		loadCPU time.Duration
		loadT   time.Duration
		step    map[string][]time.Duration // step -> total per rep
		inside  map[string][]time.Duration // step -> transport time per rep
		cpu     map[string][]time.Duration // step -> CPU time (process and children) per rep
	}
	var sides []*side
	for b.Loop() {
		b.StopTimer()
		sides = nil
		for _, name := range []string{"nl", "cli", "ipt"} {
			s := &side{name: name, ns: testns.New(b, "nft-small-"+name), step: map[string][]time.Duration{}, inside: map[string][]time.Duration{}, cpu: map[string][]time.Duration{}}
			if err := s.ns.Do(func() error {
				if name == "ipt" {
					be, err := iptproxy.NewHost(iptproxy.Config{ClusterCIDRs: cfg.ClusterCIDRs}, nil)
					s.be = be
					return err
				}
				nft, err := knftables.New(ipv4.nft, TableName)
				s.cli = &timedNFT{Interface: nft}
				p := New(cfg, s.cli, netlinkConntrack{}, nil)
				if name == "nl" {
					p.nl = newNLTransport(ipv4, TableName)
					s.nl = p.nl
				}
				s.be = p
				return err
			}); err != nil {
				b.Fatal(err)
			}
			s.d, s.keys = benchServices(n)
			c0, t0 := cpuTime(), time.Now()
			if err := s.ns.Do(func() error { return s.be.Sync(s.d, s.keys) }); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			s.loadT, s.loadCPU = time.Since(t0), cpuTime()-c0
			sides = append(sides, s)
		}
		inside := func(s *side) time.Duration {
			var d time.Duration
			if s.nl != nil {
				d += s.nl.took
			}
			if s.cli != nil {
				d += s.cli.took
			}
			return d
		}
		do := func(s *side, step string, keys ...string) {
			in0, c0, t0 := inside(s), cpuTime(), time.Now()
			if err := s.ns.Do(func() error { return s.be.Sync(s.d, keys) }); err != nil {
				b.Fatalf("%s %s: %v", s.name, step, err)
			}
			s.step[step] = append(s.step[step], time.Since(t0))
			s.cpu[step] = append(s.cpu[step], cpuTime()-c0)
			s.inside[step] = append(s.inside[step], inside(s)-in0)
		}
		for i := range reps {
			for _, s := range sides {
				add := benchService(n + i)
				s.d[add.Key] = add
				do(s, "add1", add.Key)
			}
			for _, s := range sides {
				chg := s.d[s.keys[n/2+i]]
				chg.ClusterEndpoints = []model.Endpoint{chg.ClusterEndpoints[0], {IP: netip.AddrFrom4([4]byte{10, 250, 0, byte(i + 1)}), Port: 8080, Ready: true, Serving: true}}
				chg.ExternalEndpoints = chg.ClusterEndpoints
				do(s, "epchange", chg.Key)
			}
		}
		for _, s := range sides {
			if err := s.ns.Do(s.be.Cleanup); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
	median := func(ds []time.Duration) time.Duration {
		ds = slices.Clone(ds)
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	by := map[string]*side{}
	for _, s := range sides {
		by[s.name] = s
		b.ReportMetric(ms(s.loadCPU), s.name+"-load-cpu-ms")
		for _, step := range []string{"add1", "epchange"} {
			b.ReportMetric(ms(median(s.step[step])), s.name+"-"+step+"-ms")
			b.ReportMetric(ms(median(s.cpu[step])), s.name+"-"+step+"-cpu-ms")
			if s.name != "ipt" {
				b.ReportMetric(ms(median(s.inside[step])), s.name+"-"+step+"-transport-ms")
			}
		}
		r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
		b.Logf("%-3s: %d ports from empty %v (CPU %v); +1 %v (transport %v, CPU %v); endpoint change %v (transport %v, CPU %v); medians of %d",
			s.name, n, s.loadT.Round(time.Millisecond), s.loadCPU.Round(time.Millisecond),
			r(median(s.step["add1"])), r(median(s.inside["add1"])), r(median(s.cpu["add1"])),
			r(median(s.step["epchange"])), r(median(s.inside["epchange"])), r(median(s.cpu["epchange"])), reps)
	}
	for _, step := range []string{"add1", "epchange"} {
		b.ReportMetric(float64(median(by["ipt"].step[step]))/float64(median(by["nl"].step[step])), "ipt/nft-"+step)
		b.ReportMetric(float64(median(by["cli"].step[step]))/float64(median(by["nl"].step[step])), "nftcli/nft-"+step)
	}
	for _, step := range []string{"add1", "epchange"} {
		b.ReportMetric(float64(median(by["ipt"].cpu[step]))/float64(median(by["nl"].cpu[step])), "ipt/nft-"+step+"-cpu")
	}
	b.ReportMetric(float64(by["ipt"].loadCPU)/float64(by["nl"].loadCPU), "ipt/nft-load-cpu")
}
