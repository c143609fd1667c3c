//go:build linux

package bfd

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"canopy.io/canopy/internal/testsupport"
	"canopy.io/canopy/internal/testsupport/testns"
	"golang.org/x/sys/unix"
)

// helperEnv, when set, makes the test binary a peer Server (see runHelper) instead of running tests.
const helperEnv = "CANOPY_BFD_HELPER"

type helperConfig struct {
	Locals []netip.Addr
	Peers  []PeerConfig
	Port   int
}

func TestMain(m *testing.M) {
	if cfg := os.Getenv(helperEnv); cfg != "" {
		os.Exit(runHelper(cfg))
	}
	os.Exit(m.Run())
}

// runHelper runs a Server in the process's network namespace with the peers of cfg, prints "ready", and stops
// when its stdin closes. The CPU benchmark runs the peers' side this way, so that only the measured Server
// counts in the benchmark process's CPU time.
func runHelper(cfgJSON string) int {
	var cfg helperConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	srv, err := New(Config{LocalAddrs: cfg.Locals, Port: cfg.Port, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := srv.SetPeers(cfg.Peers); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		cancel()
	}()
	fmt.Println("ready")
	if err := srv.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// BenchmarkDetection measures how long after a failure (the peer's veth set down through netlink, at a random
// point of the transmit interval) our session goes Down, over 20 failures, at 300 ms × 3 and 100 ms × 3
// between two Servers in namespaces. The Detection Time is 3 intervals; the expected spread is 2.25–3
// intervals (the last packet arrived up to one jittered interval, 75–100 %, before the failure).
func BenchmarkDetection(b *testing.B) {
	for _, iv := range []time.Duration{300 * ms, 100 * ms} {
		b.Run(fmt.Sprintf("%v×3", iv), func(b *testing.B) {
			a, p := pair(b)
			a.setPeers(b, peer(addrB, addrA, iv, iv, 3))
			p.setPeers(b, peer(addrA, addrB, iv, iv, 3))
			h := p.ns.Handle(b)
			link, err := h.LinkByName("vb")
			if err != nil {
				b.Fatal(err)
			}
			negotiated := func(st Status) bool { return st.State == StateUp && !st.Polling && st.TxInterval == iv }
			var took []time.Duration
			b.ResetTimer()
			for range 20 * b.N {
				a.waitFor(b, addrB, 10*time.Second, "Up", negotiated)
				p.waitFor(b, addrA, 10*time.Second, "Up", negotiated)
				time.Sleep(3*iv + time.Duration(rand.Int64N(int64(iv))))
				a.drainEvents()
				start := time.Now()
				if err := h.LinkSetDown(link); err != nil {
					b.Fatal(err)
				}
				e := a.nextEvent(b, 3*iv+time.Second)
				if e.New != StateDown || e.Diag != DiagControlDetectionExpired {
					b.Fatalf("%+v", e)
				}
				took = append(took, e.At.Sub(start))
				if err := h.LinkSetUp(link); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			slices.Sort(took)
			q := func(f float64) time.Duration { return took[min(len(took)-1, int(f*float64(len(took))))] }
			msf := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(msf(took[0]), "min-ms")
			b.ReportMetric(msf(q(0.5)), "median-ms")
			b.ReportMetric(msf(q(0.9)), "p90-ms")
			b.ReportMetric(msf(took[len(took)-1]), "max-ms")
			b.ReportMetric(0, "ns/op")
			b.Logf("detection at %v × 3 (Detection Time %v) over %d failures: min %v median %v p90 %v max %v",
				iv, 3*iv, len(took), took[0].Round(time.Millisecond), q(0.5).Round(time.Millisecond),
				q(0.9).Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
			if took[len(took)-1] > 3*iv+schedSlack {
				b.Errorf("a detection took longer than the Detection Time: %v", took)
			}
		})
	}
}

// BenchmarkCPU100Sessions measures the CPU time (user + system, getrusage) one Server uses per second of wall
// time with 100 sessions Up at 300 ms × 3. The measured Server has one local address and 100 peers; the peers'
// side is another Server with the 100 peer addresses as local addresses (extra addresses on one veth), running
// in a child process (this test binary, see runHelper) so that it does not count. Note that on a veth the
// sender's system time includes the receiving namespace's network stack, so each side's figure contains part
// of the other's receive cost.
func BenchmarkCPU100Sessions(b *testing.B) {
	nsA, local, peers, peerPid := cpuBenchSetup(b, testPort)
	a := startNode(b, nsA, local)
	a.setPeers(b, peers...)
	waitAllUp(b, len(peers), func() (up int) {
		for _, st := range a.srv.Sessions() {
			if st.State == StateUp && !st.Polling && st.TxInterval == 300*ms {
				up++
			}
		}
		return up
	})
	a.drainEvents()
	packets := func() (n uint64) {
		for _, st := range a.srv.Sessions() {
			n += st.PacketsIn + st.PacketsOut
		}
		return n
	}
	b.ResetTimer()
	var user, sys, peerCPU, wall time.Duration
	var pkts uint64
	for range b.N {
		u0, s0, pc0, p0, w0 := selfUser(b), selfSys(b), procCPU(b, peerPid), packets(), time.Now()
		time.Sleep(cpuWindow)
		u1, s1, pc1, p1, w1 := selfUser(b), selfSys(b), procCPU(b, peerPid), packets(), time.Now()
		user, sys, peerCPU, pkts, wall = user+u1-u0, sys+s1-s0, peerCPU+pc1-pc0, pkts+p1-p0, wall+w1.Sub(w0)
	}
	b.StopTimer()
	if evs := a.drainEvents(); len(evs) != 0 {
		b.Fatalf("sessions changed during the measurement: %d events, first %+v", len(evs), evs[0])
	}
	cpu := user + sys
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / wall.Seconds() }
	pps := float64(pkts) / wall.Seconds()
	b.ReportMetric(pct(cpu), "cpu-%")
	b.ReportMetric(pct(user), "user-%")
	b.ReportMetric(pct(sys), "sys-%")
	b.ReportMetric(float64(cpu.Microseconds())/float64(pkts), "cpu-µs/packet")
	b.ReportMetric(pps, "packets/s")
	b.ReportMetric(pct(peerCPU), "peer-cpu-%")
	b.ReportMetric(0, "ns/op")
	b.Logf("100 sessions Up at 300 ms × 3: %.2f%% of one CPU (user %.2f%%, system %.2f%%; %v CPU in %v), %.0f packets/s in+out, %.0f µs CPU per packet; the peers' Server (100 local addresses, child process) %.2f%%",
		pct(cpu), pct(user), pct(sys), cpu.Round(time.Millisecond), wall.Round(time.Millisecond), pps, float64(cpu.Microseconds())/float64(pkts), pct(peerCPU))
}

// BenchmarkCPU100SessionsFRR is the same load on FRR's bfdd, for comparison: bfdd with 100 single-hop peers at
// 300 ms × 3 against the same child-process Server; bfdd's CPU time from /proc.
func BenchmarkCPU100SessionsFRR(b *testing.B) {
	testns.Require(b, "vtysh")
	if _, err := os.Stat(bfddPath); err != nil {
		testsupport.Unavailable(b, "FRR's bfdd is not installed: %v", err)
	}
	nsA, local, peers, peerPid := cpuBenchSetup(b, DefaultPort) // bfdd only speaks 3784
	f := startBfdd(b, nsA, local, peers[0].Peer, 300)
	conf := "bfd\n"
	for _, p := range peers {
		conf += fmt.Sprintf(" peer %s local-address %s\n  receive-interval 300\n  transmit-interval 300\n !\n", p.Peer, local)
	}
	if err := os.WriteFile(f.conf, []byte(conf+"!\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	f.kill()
	f.start(b)
	waitAllUp(b, len(peers), func() (up int) {
		ps, _ := f.peers()
		for _, p := range ps {
			if p.Status == "up" && p.RemoteTx == 300 && p.TxInterval == 300 {
				up++
			}
		}
		return up
	})
	b.ResetTimer()
	var cpu, peerCPU, wall time.Duration
	for range b.N {
		c0, pc0, w0 := procCPU(b, f.cmd.Process.Pid), procCPU(b, peerPid), time.Now()
		time.Sleep(cpuWindow)
		c1, pc1, w1 := procCPU(b, f.cmd.Process.Pid), procCPU(b, peerPid), time.Now()
		cpu, peerCPU, wall = cpu+c1-c0, peerCPU+pc1-pc0, wall+w1.Sub(w0)
	}
	b.StopTimer()
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / wall.Seconds() }
	b.ReportMetric(pct(cpu), "cpu-%")
	b.ReportMetric(pct(peerCPU), "peer-cpu-%")
	b.ReportMetric(0, "ns/op")
	b.Logf("FRR bfdd, 100 sessions Up at 300 ms × 3: %.2f%% of one CPU; the peers' Server (ours, child process) %.2f%%", pct(cpu), pct(peerCPU))
}

const cpuWindow = 10 * time.Second

// cpuBenchSetup makes namespaces A (local address 10.98.0.1/16 on va) and B (10.98.1.1–100/16 on vb), starts
// the peers' side in B as a child process (a Server with those 100 local addresses, each peering with A's
// address at 300 ms × 3 on port), and returns A, its address, the 100 peers as A would configure them, and the
// child's pid.
func cpuBenchSetup(b *testing.B, port int) (nsA *testns.NS, local netip.Addr, peers []PeerConfig, pid int) {
	const sessions = 100
	testns.Require(b)
	nsA, nsB := testns.New(b, "bfda"), testns.New(b, "bfdb")
	local = netip.MustParseAddr("10.98.0.1")
	testns.Link(b, nsA, "va", local.String()+"/16", nsB, "vb", "")
	var batch strings.Builder
	var theirs []PeerConfig
	var theirLocals []netip.Addr
	for i := range sessions {
		pa := netip.AddrFrom4([4]byte{10, 98, 1, byte(i + 1)})
		fmt.Fprintf(&batch, "addr add %s/16 dev vb\n", pa)
		peers = append(peers, peer(pa, local, 300*ms, 300*ms, 3))
		theirs = append(theirs, peer(local, pa, 300*ms, 300*ms, 3))
		theirLocals = append(theirLocals, pa)
	}
	batchFile := filepath.Join(b.TempDir(), "addrs")
	if err := os.WriteFile(batchFile, []byte(batch.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	nsB.MustRun(b, "ip", "-batch", batchFile)

	cfg, _ := json.Marshal(helperConfig{Locals: theirLocals, Peers: theirs, Port: port})
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	child := exec.Command("ip", "netns", "exec", nsB.Name, self) // ip execs the binary: same pid
	child.Env = append(os.Environ(), helperEnv+"="+string(cfg))
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = child.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = child.Process.Kill()
			<-done
		}
	})
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		b.Fatalf("peer process: %q %v", line, err)
	}
	return nsA, local, peers, child.Process.Pid
}

// waitAllUp waits until up() reports n sessions Up, then a second more.
func waitAllUp(b *testing.B, n int, up func() int) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		u := up()
		if u == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d sessions Up", u, n)
		}
		time.Sleep(100 * ms)
	}
	time.Sleep(time.Second)
}

// selfUser and selfSys are this process's user and system CPU time.
func selfUser(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano())
}

func selfSys(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Stime.Nano())
}

// procCPU is process pid's user + system CPU time from /proc/<pid>/stat (clock ticks; 100 per second on Linux).
func procCPU(tb testing.TB, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64) // fields 14 and 15 of stat
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
