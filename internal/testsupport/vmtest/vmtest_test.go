package vmtest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestQuoteAndJobScript(t *testing.T) {
	for in, want := range map[string]string{
		"plain":     "plain",
		"a b":       "'a b'",
		"it's":      `'it'\''s'`,
		"":          "''",
		"-test.v=1": "-test.v=1",
		"$HOME":     "'$HOME'",
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
	// The script, run by bash on the host, gives the program exactly its environment, directory and arguments.
	dir := t.TempDir()
	script := JobScript("/bin/sh", []string{"-c", `echo "$A|$B|$(pwd)|$1|$#"; env | wc -l`, "argv0", "it's a $x"},
		[]string{"A=1 2", "B='q'"}, dir)
	out, err := exec.Command("bash", "-c", script).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "1 2|'q'|" + dir + "|it's a $x|1\n"
	if got := string(out); !strings.HasPrefix(got, want) {
		t.Errorf("job printed %q, want prefix %q", got, want)
	}
}

func TestPassEnvAndGuestEnv(t *testing.T) {
	got := PassEnv([]string{"GOFLAGS=-mod=mod", "TEST_X=1", "CI=true", "CANOPY_BIN=/b", "HOME=/root", "SECRET=x",
		"PATH=/usr/bin", EnvInVM + "=1", EnvUnavailable + "=why", "GOTRACEBACK=all", "SSH_AUTH_SOCK=/s"})
	want := []string{"GOFLAGS=-mod=mod", "TEST_X=1", "CI=true", "CANOPY_BIN=/b", "HOME=/root", "PATH=/usr/bin", "GOTRACEBACK=all"}
	if !slices.Equal(got, want) {
		t.Errorf("PassEnv = %v, want %v", got, want)
	}
	g := guestEnv([]string{"PATH=/opt/go/bin:/usr/bin", "X=1"})
	if !slices.Contains(g, EnvInVM+"=1") || !slices.Contains(g, "X=1") ||
		!slices.Contains(g, "PATH=/opt/go/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin") {
		t.Errorf("guestEnv = %v", g)
	}
}

func TestTestTimeoutAndExit(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{[]string{"-test.paniconexit0", "-test.timeout=10m0s"}, 10 * time.Minute},
		{[]string{"-test.timeout", "90s", "-test.v"}, 90 * time.Second},
		{[]string{"--test.timeout=1h"}, time.Hour},
		{[]string{"-test.v"}, 0},
	} {
		if got := TestTimeout(tc.args); got != tc.want {
			t.Errorf("TestTimeout(%v) = %v, want %v", tc.args, got, tc.want)
		}
	}
	if n, ok := parseExit([]byte("noise\r\nCANOPY-EXIT=42\n")); !ok || n != 42 {
		t.Errorf("parseExit = %d %v", n, ok)
	}
	if _, ok := parseExit([]byte("CANOPY-EXIT=")); ok {
		t.Error("parseExit accepted an empty code")
	}
}

// prepared returns the VM cache, preparing it if needed; the tests that boot the VM skip without it (fail
// under CI=true).
func prepared(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM (-short)")
	}
	if InVM() {
		t.Skip("already inside the test VM")
	}
	why := ""
	dir := ""
	if os.Geteuid() != 0 {
		why = "needs root (prepare.sh installs qemu)"
	} else if wd, err := os.Getwd(); err != nil {
		why = err.Error()
	} else if script, err := FindPrepare(wd); err != nil {
		why = err.Error()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		if dir, err = Prepare(ctx, script); err != nil {
			why = err.Error()
		}
	}
	if why == "" {
		return dir
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the test VM is unavailable: %s (CI must run this test)", why)
	}
	t.Skipf("the test VM is unavailable: %s", why)
	return ""
}

func TestRunInVM(t *testing.T) {
	cache := prepared(t)
	dir := t.TempDir()
	var stdout, stderr, console bytes.Buffer
	start := time.Now()
	code, err := Run(context.Background(), Options{
		CacheDir: cache, Path: "/bin/bash", Dir: dir, Env: []string{"FOO=bar baz", "PATH=/usr/bin:/bin"},
		Args: []string{"-c", `echo out; echo err >&2
echo "$CANOPY_IN_VM|$FOO|$(pwd)|$(uname -r)"
test -r /proc/net/ip_vs && echo ipvs
touch guest-wrote && echo writable
command -v sysctl >/dev/null && echo sbin-on-path
exit 3`},
		Stdout: &stdout, Stderr: &stderr, Console: &console, Timeout: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot, run and power-off in %v", time.Since(start).Round(time.Millisecond))
	if code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 5 || lines[0] != "out" || !strings.HasPrefix(lines[1], "1|bar baz|"+dir+"|") ||
		lines[2] != "ipvs" || lines[3] != "writable" || lines[4] != "sbin-on-path" {
		t.Errorf("stdout %q", stdout.String())
	}
	if strings.Contains(lines[1], runtimeKernel()) {
		t.Errorf("the guest runs the host's kernel: %s", lines[1])
	}
	if stderr.String() != "err\n" {
		t.Errorf("stderr %q, want \"err\\n\"", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "guest-wrote")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a write in the guest reached the host (%v)", err)
	}
}

func runtimeKernel() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "?"
	}
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

func TestRunTimeoutKillsVM(t *testing.T) {
	cache := prepared(t)
	pid := 0
	_, err := Run(context.Background(), Options{
		CacheDir: cache, Path: "/bin/sleep", Args: []string{"600"}, Dir: "/", Timeout: 2 * time.Second,
		OnStart: func(p int) { pid = p },
	})
	if err == nil || !strings.Contains(err.Error(), "VM killed after") {
		t.Fatalf("err = %v, want the VM killed", err)
	}
	if pid == 0 {
		t.Fatal("qemu never started")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("qemu %d still exists after Run returned (kill 0: %v)", pid, err)
	}
}

// The command as go test uses it: exit codes pass through, and a runner stopped by SIGTERM or SIGKILL takes its
// VM with it.
func TestVmexecCommand(t *testing.T) {
	prepared(t)
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "vmexec")
	t.Cleanup(sweepJobDirs) // the job directory of the vmexec killed below
	if out, err := exec.Command(gobin, "build", "-o", bin, "canopy.io/canopy/internal/testsupport/vmtest/cmd/vmexec").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "/bin/bash", "-c", "echo hi; exit 7").Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 || string(out) != "hi\n" {
		t.Errorf("vmexec bash -c 'echo hi; exit 7': %q, %v; want \"hi\\n\" and exit 7", out, err)
	}

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		cmd := exec.Command(bin, "/bin/sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		qemu := 0
		for deadline := time.Now().Add(30 * time.Second); qemu == 0 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			qemu = childOf(cmd.Process.Pid, "qemu-system")
		}
		if qemu == 0 {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatal("vmexec started no qemu")
		}
		_ = cmd.Process.Signal(sig)
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		select {
		case <-waited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-waited
			t.Errorf("vmexec still running 20 s after %v", sig)
		}
		gone := false
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if alive(qemu) {
				continue
			}
			gone = true
			break
		}
		if !gone {
			_ = syscall.Kill(qemu, syscall.SIGKILL)
			t.Errorf("qemu %d outlived vmexec stopped by %v", qemu, sig)
		}
	}
}

// childOf finds a child of ppid whose command starts with name.
func childOf(ppid int, name string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(ppid) {
			continue
		}
		if comm := s[strings.IndexByte(s, '(')+1 : i]; strings.HasPrefix(comm, name[:min(len(name), 15)]) {
			return pid
		}
	}
	return 0
}

// alive reports whether pid exists and is not a zombie (a zombie's parent just has not reaped it yet).
func alive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}
