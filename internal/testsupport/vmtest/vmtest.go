// Package vmtest runs test binaries in a throwaway VM with a stock Debian kernel (which has IPVS, dummy, ipip,
// wireguard as modules, unlike the lab machines' kernel), booted under qemu by hack/vm's recipe:
//
//	go build -o /tmp/vmexec ./internal/testsupport/vmtest/cmd/vmexec
//	go test -exec /tmp/vmexec ./proxy/ipvs
//
// The guest sees the host's / read-only (9p) under a tmpfs overlay, runs the binary there as root with the
// test's environment and directory, and powers off; the binary's stdout and stderr come back on their own serial
// ports, so go test's -v and -json output stays clean. Tests that need the VM call Require; on the host they
// skip with the reason.
package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// EnvInVM is set to "1" for every program the runner starts in the guest.
	EnvInVM = "CANOPY_IN_VM"
	// EnvUnavailable carries the reason when the runner could not boot the VM and ran the binary on the host.
	EnvUnavailable = "CANOPY_VM_UNAVAILABLE"
	// EnvPrepare overrides where the runner finds hack/vm/prepare.sh.
	EnvPrepare = "CANOPY_VM_PREPARE"
	// EnvAccel forces an accelerator ("tcg" or "kvm"); otherwise the one prepare.sh's probe chose.
	EnvAccel = "CANOPY_VM_ACCEL"
	// EnvConsole, when "1", copies the guest console (kernel and init messages) to stderr.
	EnvConsole = "CANOPY_VM_CONSOLE"
	// EnvTimeout bounds one VM run (a Go duration) when the test binary gets no -test.timeout.
	EnvTimeout = "CANOPY_VM_TIMEOUT"
)

// InVM reports whether this process runs inside the test VM.
func InVM() bool { return os.Getenv(EnvInVM) == "1" }

// Require skips the test unless it runs in the test VM, saying why; it fails instead under CI=true when the
// runner was asked to use the VM and could not boot it.
func Require(tb testing.TB) {
	tb.Helper()
	if InVM() {
		return
	}
	if why := os.Getenv(EnvUnavailable); why != "" {
		msg := "needs the test VM (a kernel with IPVS), which could not start: " + why
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg + " (CI must run this test)")
		}
		tb.Skip(msg)
	}
	tb.Skip("needs the test VM (a kernel with IPVS): run via vmexec, e.g. " +
		"go build -o /tmp/vmexec ./internal/testsupport/vmtest/cmd/vmexec && go test -exec /tmp/vmexec ./" + pkgHint())
}

func pkgHint() string {
	wd, err := os.Getwd()
	if err != nil {
		return "..."
	}
	if root, err := findUp(wd, "go.mod"); err == nil {
		if rel, err := filepath.Rel(root, wd); err == nil {
			return rel
		}
	}
	return "..."
}

// findUp returns the first directory from dir upwards that holds rel.
func findUp(dir, rel string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, rel)); err == nil {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no %s above %s", rel, dir)
		}
	}
}

// FindPrepare locates hack/vm/prepare.sh: $CANOPY_VM_PREPARE, else upwards from dir (a test runs in its package
// directory inside the repository).
func FindPrepare(dir string) (string, error) {
	if p := os.Getenv(EnvPrepare); p != "" {
		return p, nil
	}
	root, err := findUp(dir, "hack/vm/prepare.sh")
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "hack/vm/prepare.sh"), nil
}

// Prepare runs prepare.sh (idempotent; milliseconds once cached) and returns the VM cache directory. The
// script's log is returned inside the error when it fails.
func Prepare(ctx context.Context, script string) (string, error) {
	var out, log bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout, cmd.Stderr = &out, &log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %v: %s", script, err, tail(log.Bytes(), 2000))
	}
	dir := strings.TrimSpace(lastLine(out.String()))
	if dir == "" {
		return "", fmt.Errorf("%s printed no cache directory", script)
	}
	return dir, nil
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Options is one program to run in the VM.
type Options struct {
	CacheDir string   // prepare.sh's cache: vmlinux, initrd.cpio, kernel/, accel
	Path     string   // absolute host path of the program
	Args     []string // its arguments (without Path)
	Env      []string // its whole environment, KEY=VALUE (EnvInVM is added)
	Dir      string   // its working directory (a host path)

	Stdout, Stderr io.Writer // the program's output
	Console        io.Writer // guest console; nil keeps only a tail for errors

	Accel   string        // "tcg" or "kvm"; "" = $CANOPY_VM_ACCEL, else cache's accel file, else tcg
	Memory  int           // MiB, default 1024
	CPUs    int           // default 2
	Timeout time.Duration // whole VM run; 0 = none (the context still applies)

	OnStart func(qemuPID int) // called once qemu runs (tests use it to check the process is gone after)
}

// ErrNoExitCode means the guest ended (or was killed) before reporting the program's exit code.
var ErrNoExitCode = errors.New("the VM ended without reporting an exit code")

// Run boots the VM, runs the program in it, and returns its exit code. An error means the VM itself failed
// (the error carries the guest console's tail); the qemu process is always gone when Run returns, and it is
// also killed if the calling process dies (the caller should hold its OS thread: see cmd/vmexec).
func Run(ctx context.Context, o Options) (int, error) {
	if o.Memory == 0 {
		o.Memory = 1024
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	if _, err := ModulesDir(o.CacheDir); err != nil {
		return 0, err
	}

	// The job: a bash script on the host, which the guest reaches through the share under the same path.
	sweepJobDirs()
	tmp, err := os.MkdirTemp("", fmt.Sprintf("canopy-vmexec-%d-", os.Getpid()))
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	job := filepath.Join(tmp, "job.sh")
	if err := os.WriteFile(job, []byte(JobScript(o.Path, o.Args, guestEnv(o.Env), o.Dir)), 0o755); err != nil {
		return 0, err
	}

	// Serial ports: ttyS0 console, ttyS1 stdout, ttyS2 stderr, ttyS3 exit code; each a pipe qemu writes
	// (ExtraFiles: fds 3 to 6).
	m := Machine{CacheDir: o.CacheDir, Accel: o.Accel, Memory: o.Memory, CPUs: o.CPUs, Job: job}
	for i := range 4 {
		m.Serial = append(m.Serial, fmt.Sprintf("file:/dev/fd/%d", 3+i))
	}
	args, err := m.Args()
	if err != nil {
		return 0, err
	}
	type port struct {
		r, w *os.File
		dst  io.Writer
	}
	console := &tailBuffer{max: 64 << 10}
	var ctl bytes.Buffer
	dsts := []io.Writer{console, orDiscard(o.Stdout), orDiscard(o.Stderr), &ctl}
	if o.Console != nil {
		dsts[0] = io.MultiWriter(console, o.Console)
	}
	ports := make([]port, len(dsts))
	for i := range ports {
		r, w, err := os.Pipe()
		if err != nil {
			return 0, err
		}
		ports[i] = port{r, w, dsts[i]}
		defer r.Close()
	}
	qemuLog := &tailBuffer{max: 16 << 10}
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = qemuLog, qemuLog
	for _, p := range ports {
		cmd.ExtraFiles = append(cmd.ExtraFiles, p.w)
	}
	// qemu dies with the thread that started it (the runner holds it) and gets its own process group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		for _, p := range ports {
			p.w.Close()
		}
		return 0, fmt.Errorf("qemu: %w", err)
	}
	if o.OnStart != nil {
		o.OnStart(cmd.Process.Pid)
	}
	var wg sync.WaitGroup
	for _, p := range ports {
		p.w.Close() // qemu holds the write ends now: EOF when it exits
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(p.dst, p.r)
		}()
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var waitErr, ctxErr error
	select {
	case waitErr = <-done:
	case <-ctx.Done():
		ctxErr = ctx.Err()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		waitErr = <-done
	}
	wg.Wait()
	elapsed := time.Since(start).Round(time.Millisecond)

	if ctxErr != nil {
		return 0, fmt.Errorf("VM killed after %v (%v)%s", elapsed, ctxErr, diag(console, qemuLog))
	}
	if code, ok := parseExit(ctl.Bytes()); ok {
		return code, nil
	}
	return 0, fmt.Errorf("%w (qemu: %v, after %v)%s", ErrNoExitCode, waitErr, elapsed, diag(console, qemuLog))
}

// Machine is the qemu command line of a test VM: the kernel and initramfs of prepare.sh's cache, the host's /
// shared read-only, a job to run, serial ports, and for a lab node (e2e/lab/vmnode.go) a NIC and its address.
type Machine struct {
	CacheDir string // prepare.sh's cache: vmlinux, initrd.cpio, kernel/, accel
	Accel    string // "tcg" or "kvm"; "" = $CANOPY_VM_ACCEL, else the cache's accel file, else tcg
	Memory   int    // MiB, default 1024
	CPUs     int    // default 2
	Job      string // host path of the bash script the guest runs (canopy.job)
	// Serial are the -serial backends of ttyS0 (console), ttyS1 (job stdout), ttyS2 (job stderr) and ttyS3
	// (exit code), e.g. "file:/dev/fd/3" or "chardev:<id>" of a -chardev in Extra.
	Serial []string
	// Append are more kernel command line words, e.g. init.sh's node mode canopy.ip=10.99.0.13/24.
	Append []string
	// Extra are more qemu arguments (a -netdev and its -device, -chardev definitions).
	Extra []string
}

// ModulesDir is the kernel's module tree in prepare.sh's cache (lib/modules/<version>).
func ModulesDir(cacheDir string) (string, error) {
	kver, err := os.ReadFile(filepath.Join(cacheDir, "kver"))
	if err != nil {
		return "", fmt.Errorf("VM cache not prepared (run hack/vm/prepare.sh): %w", err)
	}
	kv := strings.TrimSpace(string(kver))
	return filepath.Join(cacheDir, "kernel", kv, "lib/modules", kv), nil
}

// Accelerator is the accelerator a VM of this cache uses: accel if set, else $CANOPY_VM_ACCEL, else what
// prepare.sh's probe chose, else tcg.
func Accelerator(cacheDir, accel string) string {
	if accel == "" {
		accel = os.Getenv(EnvAccel)
	}
	if accel == "" {
		if b, err := os.ReadFile(filepath.Join(cacheDir, "accel")); err == nil {
			accel = strings.TrimSpace(string(b))
		}
	}
	if accel == "" {
		accel = "tcg"
	}
	return accel
}

// Args returns qemu-system-x86_64's arguments.
func (m Machine) Args() ([]string, error) {
	if m.Memory == 0 {
		m.Memory = 1024
	}
	if m.CPUs == 0 {
		m.CPUs = 2
	}
	modules, err := ModulesDir(m.CacheDir)
	if err != nil {
		return nil, err
	}
	kernelArgs := []string{"console=ttyS0", "quiet", "panic=-1", "mitigations=off", "canopy.job=" + m.Job, "canopy.modules=" + modules}
	for _, w := range append(kernelArgs[4:], m.Append...) {
		if strings.ContainsAny(w, " \t\n\"'") {
			return nil, fmt.Errorf("%q cannot go on the kernel command line", w)
		}
	}
	// mitigations=off: the guest is a throwaway test machine, and page-table isolation makes every syscall
	// cost a TLB flush, which emulation makes dear (about 3x on exec-heavy tests).
	args := []string{
		"-accel", Accelerator(m.CacheDir, m.Accel), "-cpu", "max", "-m", strconv.Itoa(m.Memory), "-smp", strconv.Itoa(m.CPUs),
		"-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
		"-kernel", filepath.Join(m.CacheDir, "vmlinux"), "-initrd", filepath.Join(m.CacheDir, "initrd.cpio"),
		"-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
		"-append", strings.Join(append(kernelArgs, m.Append...), " "),
	}
	for _, s := range m.Serial {
		args = append(args, "-serial", s)
	}
	return append(args, m.Extra...), nil
}

// sweepJobDirs removes the job directories of runners that died without cleaning up (SIGKILL).
func sweepJobDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "canopy-vmexec-*-*"))
	for _, d := range dirs {
		f := strings.Split(filepath.Base(d), "-")
		if len(f) != 4 {
			continue
		}
		pid, err := strconv.Atoi(f[2])
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func diag(console, qemu *tailBuffer) string {
	s := ""
	if c := strings.TrimSpace(console.String()); c != "" {
		s += "\n--- guest console (tail) ---\n" + tail([]byte(c), 4000)
	}
	if q := strings.TrimSpace(qemu.String()); q != "" {
		s += "\n--- qemu ---\n" + q
	}
	return s
}

var exitRE = regexp.MustCompile(`CANOPY-EXIT=(\d+)`)

func parseExit(b []byte) (int, bool) {
	m := exitRE.FindSubmatch(b)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(string(m[1]))
	return n, err == nil
}

// JobScript is the bash script the guest runs: cd into dir and exec path with args under exactly env.
func JobScript(path string, args, env []string, dir string) string {
	var b strings.Builder
	b.WriteString("#!/bin/bash\n# written by canopy internal/testsupport/vmtest; runs inside the test VM\n")
	fmt.Fprintf(&b, "cd %s || exit 126\n", Quote(dir))
	b.WriteString("exec env -i")
	for _, e := range env {
		b.WriteString(" \\\n  " + Quote(e))
	}
	b.WriteString(" \\\n  " + Quote(path))
	for _, a := range args {
		b.WriteString(" " + Quote(a))
	}
	b.WriteString("\n")
	return b.String()
}

// Quote quotes s for bash.
func Quote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// GuestEnv is the environment a program in the guest gets from env: env plus EnvInVM=1, with the sbin
// directories on PATH.
func GuestEnv(env []string) []string { return guestEnv(env) }

// guestEnv is env plus EnvInVM=1, with the sbin directories on PATH (the guest runs as root: sysctl, ip,
// modprobe live there).
func guestEnv(env []string) []string {
	out := make([]string, 0, len(env)+2)
	path := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
			continue
		}
		out = append(out, e)
	}
	have := map[string]bool{}
	for _, d := range filepath.SplitList(path) {
		have[d] = true
	}
	for _, d := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		if !have[d] {
			if path != "" {
				path += ":"
			}
			path += d
		}
	}
	return append(out, "PATH="+path, EnvInVM+"=1")
}

// PassEnv filters an environment to what a test in the VM gets: GO*, TEST_*, CANOPY_*, CI and the basics.
func PassEnv(environ []string) []string {
	var out []string
	for _, e := range environ {
		k, _, ok := strings.Cut(e, "=")
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(k, "GO"), strings.HasPrefix(k, "TEST_"), strings.HasPrefix(k, "CANOPY_"),
			strings.HasPrefix(k, "LC_"):
		case k == "CI", k == "PATH", k == "HOME", k == "USER", k == "LANG", k == "TMPDIR", k == "TZ":
		default:
			continue
		}
		if k == EnvInVM || k == EnvUnavailable {
			continue
		}
		out = append(out, e)
	}
	return out
}

// TestTimeout returns the -test.timeout among a test binary's args (0 if none).
func TestTimeout(args []string) time.Duration {
	for i, a := range args {
		a = strings.TrimPrefix(a, "-")
		var v string
		switch {
		case strings.HasPrefix(a, "-test.timeout="), strings.HasPrefix(a, "test.timeout="):
			_, v, _ = strings.Cut(a, "=")
		case a == "-test.timeout" || a == "test.timeout":
			if i+1 < len(args) {
				v = args[i+1]
			}
		default:
			continue
		}
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return 0
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
