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

	"canopy.io/canopy/internal/config"
)

func parse(t *testing.T, args ...string) (*config.Config, error) {
	t.Helper()
	var raw config.Raw
	fs := pflag.NewFlagSet("canopy", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bindFlags(fs, &raw)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return raw.Validate()
}

func TestFlagsDefaults(t *testing.T) {
	c, err := parse(t, "--node-name=n1", "--cluster-cidr=10.244.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterASN != 64512 || c.BGPPort != 179 || c.GRPCAddr != "127.0.0.1:50051" || !c.NodesFullMesh || c.RouteProtocol != 186 || !c.GracefulRestart {
		t.Fatalf("defaults %+v", c)
	}
}

func TestFlagsRepeatableAndLists(t *testing.T) {
	c, err := parse(t, "--node-name=n1", "--cluster-cidr=10.244.0.0/16", "--cluster-cidr=10.245.0.0/16,10.246.0.0/16",
		"--peer-router-ips=10.99.0.1,10.99.0.2", "--peer-router-asns=64500,64501", "--import-allow=192.0.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ClusterCIDRs) != 3 || len(c.Peers) != 2 || c.Peers[1].ASN != 64501 || len(c.ImportAllow) != 1 {
		t.Fatalf("%+v", c)
	}
}

func TestFlagsAllProblemsAtOnce(t *testing.T) {
	_, err := parse(t, "--node-name=n1", "--cluster-asn=0", "--bgp-port=0", "--log-level=chatty")
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"--cluster-cidr", "--cluster-asn", "--bgp-port", "--log-level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

// TestMain lets the smoke test run this test binary as the agent (CANOPY_SMOKE_MAIN=1).
func TestMain(m *testing.M) {
	if os.Getenv("CANOPY_SMOKE_MAIN") == "1" {
		os.Args = append([]string{"canopy"}, strings.Fields(os.Getenv("CANOPY_SMOKE_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The agent answers /healthz (alive) and /readyz (not ready, saying why) while the API server is unreachable,
// stops cleanly on SIGTERM, and refuses bad flags with exit code 2 naming each.
func TestSmoke(t *testing.T) {
	bad := exec.Command(os.Args[0])
	bad.Env = append(os.Environ(), "CANOPY_SMOKE_MAIN=1", "CANOPY_SMOKE_ARGS=--node-name=n1 --bgp-port=0")
	out, err := bad.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--bgp-port") || !strings.Contains(string(out), "--cluster-cidr") {
		t.Fatalf("bad flags: %v: %s", err, out)
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
	cmd.Env = append(os.Environ(), "CANOPY_SMOKE_MAIN=1", "CANOPY_SMOKE_ARGS=--node-name=n1 --cluster-cidr=10.244.0.0/16 --kubeconfig="+kubeconfig+" --metrics-addr="+addr)
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
			t.Fatalf("/healthz never answered 200; agent log:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "Node") {
		t.Errorf("/readyz while the API is unreachable: %d %q", code, body)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d", code)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v; log:\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not stop on SIGTERM")
	}
}
