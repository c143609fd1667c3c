//go:build linux

package bfd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"canopy.io/canopy/internal/testsupport"
	"canopy.io/canopy/internal/testsupport/testns"
)

const bfddPath = "/usr/lib/frr/bfdd"

// bfdd is FRR's BFD daemon running in a namespace as user frr, with its own state directory (config, pid file,
// vty and control sockets, log).
type bfdd struct {
	ns   *testns.NS
	dir  string
	conf string
	cmd  *exec.Cmd
	done chan struct{}
}

// bfddPeer is a session as `show bfd peers json` reports it.
type bfddPeer struct {
	Peer       string `json:"peer"`
	Local      string `json:"local"`
	Status     string `json:"status"`
	ID         uint32 `json:"id"`
	RemoteID   uint32 `json:"remote-id"`
	Diagnostic string `json:"diagnostic"`
	RemoteDiag string `json:"remote-diagnostic"`
	RxInterval int    `json:"receive-interval"`
	TxInterval int    `json:"transmit-interval"`
	RemoteRx   int    `json:"remote-receive-interval"`
	RemoteTx   int    `json:"remote-transmit-interval"`
	RemoteMult int    `json:"remote-detect-multiplier"`
	Uptime     int    `json:"uptime"`
}

// startBfdd writes the config for one single-hop peer and starts bfdd (not daemonized: `ip netns exec` execs it,
// so the process the test signals is bfdd itself). Everything is removed at test end.
func startBfdd(tb testing.TB, ns *testns.NS, ours, its netip.Addr, intervalMs int) *bfdd {
	tb.Helper()
	dir, err := os.MkdirTemp("", "bfdfrr") // short: unix socket paths must fit 108 bytes
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	tb.Cleanup(func() {
		if tb.Failed() {
			out, _ := os.ReadFile(filepath.Join(dir, "bfdd.log"))
			tb.Logf("bfdd.log:\n%s", out)
		}
	})
	conf := fmt.Sprintf("log timestamp precision 3\nbfd\n peer %s local-address %s\n  receive-interval %d\n  transmit-interval %d\n  detect-multiplier 3\n !\n!\n",
		ours, its, intervalMs, intervalMs)
	d := &bfdd{ns: ns, dir: dir, conf: filepath.Join(dir, "bfdd.conf")}
	if err := os.WriteFile(d.conf, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	u, err := user.Lookup("frr")
	if err != nil {
		testsupport.Unavailable(tb, "no user frr: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, p := range []string{dir, d.conf} {
		if err := os.Chown(p, uid, gid); err != nil {
			tb.Fatal(err)
		}
	}
	d.start(tb)
	return d
}

func (d *bfdd) start(tb testing.TB) {
	tb.Helper()
	log, err := os.OpenFile(filepath.Join(d.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer log.Close()
	d.cmd = exec.Command("ip", "netns", "exec", d.ns.Name, bfddPath,
		"-f", d.conf, "-i", filepath.Join(d.dir, "bfdd.pid"), "--vty_socket", d.dir,
		"--bfdctl", filepath.Join(d.dir, "bfdd.sock"), "-z", filepath.Join(d.dir, "zserv.api"),
		"-P", "0", "--limit-fds", "1024", "--log", "file:"+filepath.Join(d.dir, "bfdd.log"))
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	d.done = done
	cmd := d.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	tb.Cleanup(func() { d.kill() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := d.peers(); err == nil {
			return
		} else if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(d.dir, "bfdd.log"))
			tb.Fatalf("bfdd does not answer vtysh: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill SIGKILLs bfdd (continuing it first if stopped) and waits for it.
func (d *bfdd) kill() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	_ = d.cmd.Process.Signal(syscall.SIGCONT)
	<-d.done
}

func (d *bfdd) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		tb.Fatal(err)
	}
}

func (d *bfdd) peers() ([]bfddPeer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "vtysh", "--vty_socket", d.dir, "-c", "show bfd peers json").Output()
	if err != nil {
		return nil, fmt.Errorf("vtysh: %w: %s", err, out)
	}
	var ps []bfddPeer
	if err := json.Unmarshal(out, &ps); err != nil {
		return nil, fmt.Errorf("show bfd peers json: %w: %.300s", err, out)
	}
	return ps, nil
}

// waitPeer waits until bfdd reports its session with peer in a state that satisfies cond.
func (d *bfdd) waitPeer(tb testing.TB, peer netip.Addr, timeout time.Duration, what string, cond func(bfddPeer) bool) bfddPeer {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var last bfddPeer
	for {
		ps, err := d.peers()
		for _, p := range ps {
			if p.Peer == peer.String() {
				last = p
				if cond(p) {
					return p
				}
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("bfdd: session with %s not %s after %v: %+v (%v)", peer, what, timeout, last, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFRRInterop runs our Server against FRR's bfdd (single hop, IPv4) at 300 ms and 100 ms × 3: both sides
// come Up with the negotiated timers; killing bfdd (SIGKILL, and SIGSTOP at 100 ms) takes ours Down within
// the Detection Time (measured and logged); restarting (or continuing) it brings ours Up again. A timer change
// on our side while Up goes through a Poll Sequence bfdd accepts, without a flap on either side.
func TestFRRInterop(t *testing.T) {
	testns.Require(t, "vtysh")
	if _, err := os.Stat(bfddPath); err != nil {
		testsupport.Unavailable(t, "FRR's bfdd is not installed: %v", err)
	}
	for _, intervalMs := range []int{300, 100} {
		t.Run(fmt.Sprintf("%dms", intervalMs), func(t *testing.T) {
			iv := time.Duration(intervalMs) * ms
			nsA, nsF := testns.New(t, "bfda"), testns.New(t, "bfdf")
			testns.Link(t, nsA, "va", addrA.String()+"/24", nsF, "vfrr", addrB.String()+"/24")
			a := startNodePort(t, nsA, DefaultPort, addrA) // bfdd only speaks 3784
			f := startBfdd(t, nsF, addrA, addrB, intervalMs)
			a.setPeers(t, peer(addrB, addrA, iv, iv, 3))

			a.waitState(t, addrB, StateUp, 10*time.Second)
			st := a.waitFor(t, addrB, 5*time.Second, "negotiated", func(st Status) bool {
				return !st.Polling && st.TxInterval == iv && st.RemoteDetectMult == 3 && st.DetectionTime == 3*iv
			})
			fp := f.waitPeer(t, addrA, 5*time.Second, "up with our timers", func(p bfddPeer) bool {
				return p.Status == "up" && p.RemoteRx == intervalMs && p.RemoteTx == intervalMs && p.RemoteMult == 3
			})
			t.Logf("Up: ours %+v; bfdd %+v", st.SessionStatus, fp)
			if fp.RemoteID != st.LocalDiscr || fp.ID != st.RemoteDiscr {
				t.Fatalf("discriminators: bfdd %d/%d, ours %d/%d", fp.ID, fp.RemoteID, st.LocalDiscr, st.RemoteDiscr)
			}
			a.drainEvents()

			// A timer change while Up: Poll/Final with bfdd, no flap.
			slower := 2 * iv
			a.setPeers(t, peer(addrB, addrA, slower, slower, 3))
			a.waitFor(t, addrB, 5*time.Second, "renegotiated", func(st Status) bool {
				return !st.Polling && st.TxInterval == slower && st.DetectionTime == 3*slower
			})
			f.waitPeer(t, addrA, 5*time.Second, "aware of our new timers", func(p bfddPeer) bool {
				return p.RemoteRx == 2*intervalMs && p.RemoteTx == 2*intervalMs
			})
			a.setPeers(t, peer(addrB, addrA, iv, iv, 3))
			a.waitFor(t, addrB, 5*time.Second, "back to the first timers", func(st Status) bool {
				return !st.Polling && st.TxInterval == iv && st.DetectionTime == 3*iv
			})
			time.Sleep(3 * iv)
			if evs := a.drainEvents(); len(evs) != 0 {
				t.Fatalf("timer changes flapped the session: %+v", evs)
			}
			f.waitPeer(t, addrA, time.Second, "still up", func(p bfddPeer) bool { return p.Status == "up" })

			// bfdd dies: we detect it within the Detection Time.
			detect := func(how string, sig syscall.Signal) {
				t.Helper()
				time.Sleep(iv) // a few packets at the final rate
				a.drainEvents()
				slack := slackProbe(t)
				start := time.Now()
				f.signal(t, sig)
				ev := a.nextEvent(t, 3*3*iv+time.Second)
				took := ev.At.Sub(start)
				t.Logf("%s: ours Down after %v (Detection Time %v), diag %s", how, took.Round(time.Millisecond), 3*iv, ev.Diag)
				if ev.Old != StateUp || ev.New != StateDown || ev.Diag != DiagControlDetectionExpired {
					t.Fatalf("event %+v", ev)
				}
				if took > 3*iv+slack() {
					t.Fatalf("detection took %v, Detection Time is %v", took, 3*iv)
				}
			}
			detect("bfdd SIGKILLed", syscall.SIGKILL)
			<-f.done
			f.start(t)
			a.waitState(t, addrB, StateUp, 10*time.Second)
			f.waitPeer(t, addrA, 5*time.Second, "up after the restart", func(p bfddPeer) bool { return p.Status == "up" })
			t.Logf("Up again after bfdd's restart")

			if intervalMs == 100 {
				a.waitFor(t, addrB, 5*time.Second, "negotiated", func(st Status) bool { return !st.Polling && st.TxInterval == iv })
				detect("bfdd SIGSTOPped", syscall.SIGSTOP)
				f.signal(t, syscall.SIGCONT)
				a.waitState(t, addrB, StateUp, 10*time.Second)
				t.Logf("Up again after bfdd continued")
			}
		})
	}
}
