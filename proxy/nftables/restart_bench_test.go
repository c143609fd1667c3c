package nftables

import (
	"context"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/testsupport/testns"
)

// phaseNFT times each kind of nft call (the process: fork, exec, its cache fetch, the kernel).
type phaseNFT struct {
	knftables.Interface
	mu   sync.Mutex
	took map[string]time.Duration
}

func (c *phaseNFT) add(what string, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.took == nil {
		c.took = map[string]time.Duration{}
	}
	c.took[what] += d
}

func (c *phaseNFT) Run(ctx context.Context, tx *knftables.Transaction) error {
	t0 := time.Now()
	err := c.Interface.Run(ctx, tx)
	c.add("run", time.Since(t0))
	return err
}

func (c *phaseNFT) List(ctx context.Context, what string) ([]string, error) {
	t0 := time.Now()
	out, err := c.Interface.List(ctx, what)
	c.add("list-"+what, time.Since(t0))
	return out, err
}

func (c *phaseNFT) ListElements(ctx context.Context, typ, name string) ([]*knftables.Element, error) {
	t0 := time.Now()
	out, err := c.Interface.ListElements(ctx, typ, name)
	c.add("list-elements", time.Since(t0))
	return out, err
}

// restartBenchSetup is the restart benchmarks' size (CANOPY_BENCH_PORTS, default 10,000) and configuration.
func restartBenchSetup() (int, Config) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("CANOPY_BENCH_PORTS")); err == nil && v > 0 {
		n = v
	}
	return n, Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/14")}}
}

// ms is d in milliseconds, for ReportMetric.
func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// BenchmarkRestart is issue 16's "restart to the first proxy sync" below the e2e level: 10,000 service ports
// x 2 endpoints (CANOPY_BENCH_PORTS) are loaded into a test namespace, then a new proxier (the agent after a
// restart, same desired state) runs Start (reading the table an earlier run left and writing the shared
// objects), its first full Sync and PruneStale. Reported: the wall and CPU time (this process and its
// children) of each phase, the time in each kind of nft call, and the operations the first sync writes.
//
//	go test -run '^$' -bench BenchmarkRestart -benchtime 1x ./proxy/nftables/
func BenchmarkRestart(b *testing.B) {
	requireNft(b)
	n, cfg := restartBenchSetup()
	for b.Loop() {
		b.StopTimer()
		ns := testns.New(b, "nft-restart")
		newProxier := func() (*Proxier, *phaseNFT, *nlTransport) {
			var p *Proxier
			pn := &phaseNFT{}
			if err := ns.Do(func() error {
				nft, err := knftables.New(ipv4.nft, TableName)
				pn.Interface = nft
				p = New(cfg, pn, netlinkConntrack{}, nil)
				p.nl = newNLTransport(ipv4, TableName)
				return err
			}); err != nil {
				b.Fatal(err)
			}
			return p, pn, p.nl
		}
		d, keys := benchServices(n)
		p, _, _ := newProxier()
		c0, t0 := cpuTime(), time.Now()
		if err := ns.Do(func() error { return p.Sync(d, keys) }); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ms(time.Since(t0)), "load-ms")
		b.ReportMetric(ms(cpuTime()-c0), "load-cpu-ms")

		p, pn, nl := newProxier()
		phase := func(name string, f func() error) {
			c0, t0 := cpuTime(), time.Now()
			pn.took = nil
			nl0 := nl.took
			if err := ns.Do(f); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			wall, cpu := time.Since(t0), cpuTime()-c0
			b.ReportMetric(ms(wall), name+"-ms")
			b.ReportMetric(ms(cpu), name+"-cpu-ms")
			b.Logf("%s: %v (CPU %v); nft calls %v; netlink %v", name, wall.Round(time.Millisecond), cpu.Round(time.Millisecond),
				pn.took, (nl.took - nl0).Round(time.Millisecond))
		}
		phase("start", p.Start)
		ops0 := nl.ops
		phase("firstsync", func() error { return p.Sync(d, keys) })
		b.ReportMetric(float64(nl.ops-ops0), "firstsync-netlink-ops")
		phase("prune", p.PruneStale)
		if err := ns.Do(p.Cleanup); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkRestartShards is BenchmarkRestart for the host's back end, the service ports spread over
// DefaultShards tables (NewHostShards): the wall and CPU time (with children) of making the back end, Start, the
// first full Sync and PruneStale.
//
//	go test -run '^$' -bench BenchmarkRestartShards -benchtime 1x ./proxy/nftables/
func BenchmarkRestartShards(b *testing.B) {
	requireNft(b)
	n, cfg := restartBenchSetup()
	for b.Loop() {
		b.StopTimer()
		ns := testns.New(b, "nft-restart")
		newShards := func() *Shards {
			var s *Shards
			if err := ns.Do(func() (err error) { s, err = NewHostShards(cfg, false, DefaultShards, nil); return err }); err != nil {
				b.Fatal(err)
			}
			return s
		}
		d, keys := benchServices(n)
		s := newShards()
		c0, t0 := cpuTime(), time.Now()
		if err := ns.Do(func() error { return s.Sync(d, keys) }); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ms(time.Since(t0)), "load-ms")
		b.ReportMetric(ms(cpuTime()-c0), "load-cpu-ms")

		c1, t1 := cpuTime(), time.Now()
		s = newShards() // (makes the first table's knftables: nft runs twice, reading the ruleset)
		b.ReportMetric(ms(time.Since(t1)), "new-ms")
		b.ReportMetric(ms(cpuTime()-c1), "new-cpu-ms")
		b.Logf("new: %v (CPU %v)", time.Since(t1).Round(time.Millisecond), (cpuTime() - c1).Round(time.Millisecond))
		phase := func(name string, f func() error) {
			c0, t0 := cpuTime(), time.Now()
			if err := ns.Do(f); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			wall, cpu := time.Since(t0), cpuTime()-c0
			b.ReportMetric(ms(wall), name+"-ms")
			b.ReportMetric(ms(cpu), name+"-cpu-ms")
			b.Logf("%s: %v (CPU %v)", name, wall.Round(time.Millisecond), cpu.Round(time.Millisecond))
		}
		phase("start", s.Start)
		phase("firstsync", func() error { return s.Sync(d, keys) })
		phase("prune", s.PruneStale)
		if err := ns.Do(s.Cleanup); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
