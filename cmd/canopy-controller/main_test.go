package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"canopy.io/canopy/loadbalancer"
)

func parse(t *testing.T, args ...string) (*config, error) {
	t.Helper()
	var r raw
	fs := pflag.NewFlagSet("canopy-controller", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bindFlags(fs, &r)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return r.validate()
}

func TestFlagsDefaults(t *testing.T) {
	t.Setenv("POD_NAME", "canopy-controller-7d9f-abcde")
	c, err := parse(t, "--loadbalancer-ip-range=10.200.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	a := c.Allocator
	if a.Class != loadbalancer.DefaultClass || a.LeaseNamespace != "kube-system" || a.Identity != "canopy-controller-7d9f-abcde" ||
		c.MetricsAddr != ":9470" || c.LogLevel != "info" || c.Kubeconfig != "" {
		t.Fatalf("defaults: %+v", c)
	}
	if len(a.Ranges) != 1 || a.Ranges[0].String() != "10.200.0.1-10.200.0.254" {
		t.Fatalf("ranges: %v", a.Ranges)
	}
}

func TestFlagsIdentityFallsBackToHostname(t *testing.T) {
	t.Setenv("POD_NAME", "")
	h, err := os.Hostname()
	if err != nil || h == "" {
		t.Skip("no hostname")
	}
	c, err := parse(t, "--loadbalancer-ip-range=10.200.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if c.Allocator.Identity != h {
		t.Fatalf("identity %q, want the hostname %q", c.Allocator.Identity, h)
	}
}

func TestFlagsRepeatableRanges(t *testing.T) {
	c, err := parse(t, "--loadbalancer-ip-range=10.200.0.0/30,10.200.1.10-10.200.1.20", "--loadbalancer-ip-range=192.0.2.7/32",
		"--loadbalancer-class=example.com/lb", "--identity=a", "--lease-namespace=canopy", "--metrics-addr=", "--log-level=DEBUG")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Allocator.Ranges) != 3 || c.Allocator.Class != "example.com/lb" || c.Allocator.LeaseNamespace != "canopy" ||
		c.MetricsAddr != "" || c.LogLevel != "debug" {
		t.Fatalf("%+v", c)
	}
}

func TestFlagsAllProblemsAtOnce(t *testing.T) {
	_, err := parse(t, "--kubeconfig=/nonexistent/kubeconfig", "--loadbalancer-class=not a class!", "--lease-namespace=Kube_System",
		"--identity= ", "--metrics-addr=9470", "--log-level=chatty")
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"--kubeconfig", "--loadbalancer-ip-range: empty", "--loadbalancer-class", "--lease-namespace",
		"--identity", "--metrics-addr", "--log-level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	// A bad range is named too (every IPv6 address, mixed families); overlapping ranges are refused.
	for _, bad := range []string{"10.200.0.0/33", "::/0", "2001:db8::1-10.0.0.1", "10.200.0.0/24,10.200.0.128/25", "10.200.0.9-10.200.0.1"} {
		if _, err := parse(t, "--loadbalancer-ip-range="+bad); err == nil || !strings.Contains(err.Error(), "--loadbalancer-ip-range") {
			t.Errorf("range %q: %v", bad, err)
		}
	}
}

// TestMain lets the smoke test run this test binary as the controller (CANOPY_SMOKE_MAIN=1).
func TestMain(m *testing.M) {
	if os.Getenv("CANOPY_SMOKE_MAIN") == "1" {
		os.Args = append([]string{"canopy-controller"}, strings.Fields(os.Getenv("CANOPY_SMOKE_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The controller refuses bad flags with exit code 2 naming each; answers /healthz (alive) and /readyz (not
// ready, saying why) while the API server is unreachable; and stops cleanly on SIGTERM.
func TestSmoke(t *testing.T) {
	bad := exec.Command(os.Args[0])
	bad.Env = append(os.Environ(), "CANOPY_SMOKE_MAIN=1", "CANOPY_SMOKE_ARGS=--lease-namespace= --log-level=chatty")
	out, err := bad.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("bad flags: want exit 2, got %v: %s", err, out)
	}
	for _, want := range []string{"--loadbalancer-ip-range", "--lease-namespace", "--log-level"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bad flags: output does not name %s: %s", want, out)
		}
	}
	unknown := exec.Command(os.Args[0])
	unknown.Env = append(os.Environ(), "CANOPY_SMOKE_MAIN=1", "CANOPY_SMOKE_ARGS=--run-loadbalancer")
	if out, err := unknown.CombinedOutput(); err == nil || !strings.Contains(string(out), "run-loadbalancer") {
		t.Errorf("unknown flag: %v: %s", err, out)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	_ = os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CANOPY_SMOKE_MAIN=1", "CANOPY_SMOKE_ARGS=--loadbalancer-ip-range=10.200.0.0/24 --identity=smoke --kubeconfig="+kubeconfig+" --metrics-addr="+addr)
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := get("/healthz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz never answered 200; log:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// /readyz says "starting" until the allocator has registered its checks (a moment later on a busy machine),
	// then names the Service cache it waits for; never ready while the API is unreachable.
	for {
		code, body := get("/readyz")
		if code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz while the API is unreachable: %d %q", code, body)
		}
		if strings.Contains(body, "Service cache") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never named the Service cache: %q", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "canopy_lballoc_pool_size 254") {
		t.Errorf("/metrics: %d %s", code, body)
	}
	t0 := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v; log:\n%s", err, logs.String())
		}
		t.Logf("stopped %s after SIGTERM", time.Since(t0).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatalf("the controller did not stop on SIGTERM; log:\n%s", logs.String())
	}
}
