// Command vmexec runs a program, normally a test binary, in Canopy's test VM (a stock Debian kernel under qemu,
// see internal/testsupport/vmtest and hack/vm) and exits with its exit code. It is made for go test's -exec:
//
//	go build -o /tmp/vmexec ./internal/testsupport/vmtest/cmd/vmexec
//	go test -exec /tmp/vmexec ./proxy/ipvs
//	go test -c -o /tmp/ipvs.test ./proxy/ipvs && /tmp/vmexec /tmp/ipvs.test -test.v
//
// It prepares the VM first (hack/vm/prepare.sh, found upwards from the working directory or through
// $CANOPY_VM_PREPARE; cached). If the VM cannot be had it says why and runs the program on the host with
// CANOPY_VM_UNAVAILABLE set, so tests that need the VM skip with that reason; under CI=true it fails instead.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"canopy.io/canopy/internal/testsupport/vmtest"
)

func main() { os.Exit(run()) }

func run() int {
	// qemu is started with Pdeathsig, which fires when the starting thread dies: keep this goroutine on it.
	runtime.LockOSThread()
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vmexec PROGRAM [ARGS...]   (as: go test -exec /path/to/vmexec ./pkg)")
		return 2
	}
	path, err := resolve(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmexec:", err)
		return 2
	}
	args := os.Args[2:]
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmexec:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(),
		syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer stop()

	cache, why := prepare(ctx, wd)
	if why != "" {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "vmexec: the test VM is unavailable: %s (CI must run these tests)\n", oneLine(why))
			return 1
		}
		fmt.Fprintf(os.Stderr, "vmexec: the test VM is unavailable (%s); running on the host, tests that need the VM skip\n", oneLine(why))
		cmd := exec.CommandContext(ctx, path, args...)
		cmd.Env = append(os.Environ(), vmtest.EnvUnavailable+"="+oneLine(why))
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() >= 0 {
			return ee.ExitCode()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "vmexec:", err)
			return 1
		}
		return 0
	}

	// The test binary's own -test.timeout panics inside the guest with a trace; the VM gets a little longer
	// (boot), still less than the minute go test waits before killing us.
	timeout := 30 * time.Minute
	if d := vmtest.TestTimeout(args); d > 0 {
		timeout = d + 30*time.Second
	} else if d, err := time.ParseDuration(os.Getenv(vmtest.EnvTimeout)); err == nil && d > 0 {
		timeout = d
	}
	o := vmtest.Options{
		CacheDir: cache, Path: path, Args: args, Env: vmtest.PassEnv(os.Environ()), Dir: wd,
		Stdout: os.Stdout, Stderr: os.Stderr, Timeout: timeout,
	}
	if os.Getenv(vmtest.EnvConsole) == "1" {
		o.Console = os.Stderr
	}
	if m, err := strconv.Atoi(os.Getenv("CANOPY_VM_MEMORY")); err == nil && m >= 256 {
		o.Memory = m // MiB; a whole lab in the guest wants more than the default
	}
	code, err := vmtest.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmexec:", err)
		return 1
	}
	return code
}

// prepare returns the VM cache dir, or why there is none.
func prepare(ctx context.Context, wd string) (string, string) {
	script, err := vmtest.FindPrepare(wd)
	if err != nil {
		// Outside the repository: use a cache someone prepared.
		dir := filepath.Join(cacheRoot(), "vm")
		if _, serr := os.Stat(filepath.Join(dir, "ready")); serr == nil {
			return dir, ""
		}
		return "", fmt.Sprintf("hack/vm/prepare.sh not found (%v; set %s) and no prepared cache in %s", err, vmtest.EnvPrepare, dir)
	}
	dir, err := vmtest.Prepare(ctx, script)
	if err != nil {
		return "", err.Error()
	}
	return dir, ""
}

func cacheRoot() string {
	if c := os.Getenv("CANOPY_CACHE"); c != "" {
		return c
	}
	return "/var/cache/canopy"
}

func resolve(p string) (string, error) {
	if !strings.Contains(p, "/") {
		return exec.LookPath(p)
	}
	return filepath.Abs(p)
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 500 {
		s = s[:500] + "..."
	}
	return s
}
