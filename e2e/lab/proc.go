package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a long-running process the lab started inside one of its namespaces (etcd, kube-apiserver, FRR, an
// agent, a server in a pod). Its stdout and stderr go to LogPath (appended, so a restarted agent keeps one log).
type Proc struct {
	Name    string // e.g. "etcd", "agent-node1"
	NS      string // network namespace it runs in
	LogPath string

	pid   int
	start uint64    // /proc/<pid>/stat starttime: tells our process from a later one with a reused pid
	cmd   *exec.Cmd // nil for a process found in the state file of another process (Attach)
	done  chan struct{}
	err   error // exit status, valid once done is closed

	mu       sync.Mutex
	stopping bool // an exit we asked for: not reported as unexpected
}

// PID is the process id (the real program's: `ip netns exec` execs it).
func (p *Proc) PID() int { return p.pid }

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its exit error (nil for status 0).
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Signal sends sig to the process if it is still ours and running.
func (p *Proc) Signal(sig syscall.Signal) error {
	if exited, _ := p.Exited(); exited {
		return nil
	}
	if sig == syscall.SIGTERM || sig == syscall.SIGKILL {
		p.mu.Lock()
		p.stopping = true
		p.mu.Unlock()
	}
	if p.cmd != nil {
		// Our child: its pid cannot be reused before we reap it.
		err := p.cmd.Process.Signal(sig)
		if errors.Is(err, os.ErrProcessDone) {
			return nil
		}
		return err
	}
	return signalIfSame(p.pid, p.start, sig)
}

// Stop sends SIGTERM, waits up to grace for the exit, then SIGKILLs. It returns an error when the process had to
// be killed; the exit status itself is in Exited.
func (p *Proc) Stop(grace time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("%s: SIGTERM: %w", p.Name, err)
	}
	if p.wait(grace) {
		return nil
	}
	_ = p.Kill()
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for %s and was killed", p.Name, p.pid, grace)
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("%s: SIGKILL: %w", p.Name, err)
	}
	if !p.wait(10 * time.Second) {
		return fmt.Errorf("%s (pid %d) still there 10s after SIGKILL", p.Name, p.pid)
	}
	return nil
}

func (p *Proc) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// record is the process as the state file stores it.
func (p *Proc) record() procRecord {
	return procRecord{Name: p.Name, NS: p.NS, PID: p.pid, Start: p.start, LogPath: p.LogPath}
}

// attachProc rebuilds a Proc from a state record written by another process: it can be signalled and waited
// for (by polling), not reaped.
func attachProc(r procRecord) *Proc {
	p := &Proc{Name: r.Name, NS: r.NS, LogPath: r.LogPath, pid: r.PID, start: r.Start, done: make(chan struct{})}
	if !alive(p.pid, p.start) {
		p.err = errors.New("exit status unknown (not our child)")
		close(p.done)
		return p
	}
	go func() {
		for alive(p.pid, p.start) {
			time.Sleep(50 * time.Millisecond)
		}
		p.err = errors.New("exit status unknown (not our child)")
		close(p.done)
	}()
	return p
}

// spawnOpts says how a process is detached from the one that starts it.
type spawnOpts struct {
	// detach: the process must outlive us (make lab). Otherwise it gets SIGKILL when we die (a test binary
	// killed by -timeout runs no cleanup) and its own process group (so ^C in a terminal reaches only go test,
	// whose cleanup then stops it in order).
	detach bool
}

// startProc starts argv inside namespace ns with `ip netns exec`, output appended to logPath.
// onExit runs (in the reaping goroutine, before Done closes) when the process exits without being asked to.
func startProc(name, ns, logPath string, argv []string, o spawnOpts, onExit func(p *Proc)) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== canopy-lab %s: ip netns exec %s %s\n", time.Now().Format(time.RFC3339Nano), ns, strings.Join(argv, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if o.detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := spawn(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, NS: ns, LogPath: logPath, pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	p.start, _ = startTime(p.pid)
	go func() {
		p.err = cmd.Wait()
		p.mu.Lock()
		expected := p.stopping
		p.mu.Unlock()
		if !expected && onExit != nil {
			onExit(p)
		}
		close(p.done)
	}()
	return p, nil
}

// Pdeathsig fires when the *thread* that forked the child exits, not the process. Go may end a thread (one left
// locked by a goroutine that returned, e.g. after a failed setns), so every child is forked from one thread that
// is locked for the life of the program.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd *exec.Cmd
	res chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the program
			for r := range spawnReqs {
				r.res <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd: cmd, res: make(chan error, 1)}
	spawnReqs <- r
	return <-r.res
}

// startTime reads field 22 (starttime, clock ticks since boot) of /proc/<pid>/stat.
func startTime(pid int) (uint64, error) {
	st, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return st.start, nil
}

type pstat struct {
	state byte
	start uint64
}

func procStat(pid int) (pstat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return pstat{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // comm may hold spaces and parentheses
	if i < 0 {
		return pstat{}, fmt.Errorf("pid %d: odd stat line", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return pstat{}, fmt.Errorf("pid %d: short stat line", pid)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return pstat{}, err
	}
	return pstat{state: f[0][0], start: start}, nil
}

// alive: pid exists, is not a zombie, and (if start != 0) is the same process that was recorded.
func alive(pid int, start uint64) bool {
	st, err := procStat(pid)
	return err == nil && (start == 0 || st.start == start) && st.state != 'Z' && st.state != 'X'
}

func signalIfSame(pid int, start uint64, sig syscall.Signal) error {
	if pid <= 1 || !alive(pid, start) {
		return nil
	}
	err := syscall.Kill(pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// killAndWait SIGKILLs the given processes (pid → recorded start time, 0 = unchecked) and waits until none is
// alive. Zombies count as gone: they hold no namespace, and their parent or init reaps them.
func killAndWait(pids map[int]uint64, timeout time.Duration) error {
	for pid, start := range pids {
		_ = signalIfSame(pid, start, syscall.SIGKILL)
	}
	if left := waitPIDs(pids, timeout, alive); len(left) > 0 {
		return fmt.Errorf("processes still alive %s after SIGKILL: %v", timeout, left)
	}
	return nil
}

// waitPIDs polls until present(pid, start) is false for every pid or d has passed, and returns those left.
func waitPIDs(pids map[int]uint64, d time.Duration, present func(int, uint64) bool) []int {
	deadline := time.Now().Add(d)
	for {
		var left []int
		for pid, start := range pids {
			if present(pid, start) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exists: the process is there, zombies included.
func exists(pid int, start uint64) bool {
	st, err := procStat(pid)
	return err == nil && (start == 0 || st.start == start)
}

// watchdogScript outlives a killed owner: once the owner is gone (or a zombie) it kills every process inside
// the lab's namespaces and deletes them. FRR needs it: its daemons drop privileges to user frr, which clears
// Pdeathsig, so they would survive a test binary killed by -timeout. The state directory and the work
// directory (the logs of the run that died) stay for CleanStale or labctl down.
const watchdogScript = `owner=$1 prefix=$2
running() { [ -r /proc/$owner/stat ] && [ "$(sed 's/.*) //' /proc/$owner/stat | cut -c1)" != Z ]; }
while running; do sleep 1; done
for i in 1 2 3; do
  for ns in $(ls /run/netns 2>/dev/null); do
    case "$ns" in "$prefix"*) ip netns pids "$ns" | xargs -r kill -9 ;; esac
  done
  sleep 0.2
done
for ns in $(ls /run/netns 2>/dev/null); do
  case "$ns" in "$prefix"*) ip netns del "$ns" ;; esac
done
`

// startWatchdog starts watchdogScript for the current process in its own session (so it survives us).
func startWatchdog(prefix, logPath string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("sh", "-c", watchdogScript, "canopy-lab-watchdog", strconv.Itoa(os.Getpid()), prefix)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := spawn(cmd); err != nil {
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	p := &Proc{Name: "watchdog", LogPath: logPath, pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	p.start, _ = startTime(p.pid)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}
