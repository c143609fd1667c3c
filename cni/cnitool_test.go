package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// Interop with the upstream runtime library: cnitool (libcni) drives our binary from a conflist, as containerd and
// CRI-O do.

const cnitoolVersion = "v1.3.1"

var cnitoolBin struct {
	once sync.Once
	path string
	err  error
}

// cnitool returns the upstream cnitool binary, built once with `go install` (from the Go module proxy) and cached at
// ${CANOPY_CACHE:-/var/cache/canopy}/cnitool-v1.3.1. When it cannot be built (no network, no go) the test skips
// saying why (fails under CI=true).
func cnitool(tb testing.TB) string {
	tb.Helper()
	cnitoolBin.once.Do(func() {
		cache := os.Getenv("CANOPY_CACHE")
		if cache == "" {
			cache = "/var/cache/canopy"
		}
		want := filepath.Join(cache, "cnitool-"+cnitoolVersion)
		if fi, err := os.Stat(want); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			cnitoolBin.path = want
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			cnitoolBin.err = fmt.Errorf("go not found to build cnitool: %w", err)
			return
		}
		gobin, err := os.MkdirTemp("", "canopy-cnitool-")
		if err != nil {
			cnitoolBin.err = err
			return
		}
		defer os.RemoveAll(gobin)
		cmd := exec.Command(goTool, "install", "github.com/containernetworking/cni/cnitool@"+cnitoolVersion)
		cmd.Dir = gobin // outside our module: go install pkg@version uses cnitool's own go.mod
		cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			cnitoolBin.err = fmt.Errorf("go install github.com/containernetworking/cni/cnitool@%s failed (no network to the Go module proxy?): %v\n%s",
				cnitoolVersion, err, out)
			return
		}
		if err := os.MkdirAll(cache, 0o755); err != nil {
			cnitoolBin.err = fmt.Errorf("create cache %s: %w", cache, err)
			return
		}
		data, err := os.ReadFile(filepath.Join(gobin, "cnitool"))
		if err != nil {
			cnitoolBin.err = err
			return
		}
		tmp := want + ".tmp" + randHex(tb, 4)
		if err := os.WriteFile(tmp, data, 0o755); err != nil {
			cnitoolBin.err = err
			return
		}
		if err := os.Rename(tmp, want); err != nil {
			_ = os.Remove(tmp)
			cnitoolBin.err = err
			return
		}
		cnitoolBin.path = want
	})
	if cnitoolBin.err != nil {
		skipOrFail(tb, "skipping: %v", cnitoolBin.err)
	}
	return cnitoolBin.path
}

// libcni keeps its result cache in /var/lib/cni/results (cnitool cannot move it): files named
// <network>-<containerID>-<ifname>. The test's network name is unique, and cleanup removes its files.
const libcniResults = "/var/lib/cni/results"

func TestCnitoolInterop(t *testing.T) {
	n := newNode(t)
	tool := cnitool(t)
	bin := pluginBinary(t)
	ipTool := needTool(t, "ip")

	netName := "canopy-" + randHex(t, 4)
	var madeDirs []string // the cache directories that did not exist before, innermost first
	for d := libcniResults; d != "/var/lib"; d = filepath.Dir(d) {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			madeDirs = append(madeDirs, d)
		}
	}
	t.Cleanup(func() {
		matches, _ := filepath.Glob(filepath.Join(libcniResults, netName+"-*"))
		for _, m := range matches {
			_ = os.Remove(m)
		}
		for _, d := range madeDirs {
			_ = os.Remove(d) // only if empty: another user's files keep it
		}
	})
	binDir, confDir := t.TempDir(), t.TempDir()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(binDir, "canopy-cni"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	// The conflist the agent writes, with this test's name and data dir.
	conflist := map[string]any{
		"cniVersion": "1.1.0", "name": netName,
		"plugins": []any{map[string]any{
			"type": "canopy-cni", "bridge": "canopy0", "mtu": 0, "podCIDRs": []string{"10.244.1.0/24"},
			"dataDir": n.DataDir, "hairpin": true,
		}},
	}
	b, _ := json.MarshalIndent(conflist, "", "  ")
	if err := os.WriteFile(filepath.Join(confDir, "10-canopy.conflist"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		cmd := exec.Command(ipTool, append([]string{"netns", "exec", n.Name, tool}, args...)...)
		cmd.Env = append(os.Environ(), "CNI_PATH="+binDir, "NETCONFPATH="+confDir)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if err != nil {
			err = fmt.Errorf("cnitool %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out.String(), errOut.String())
		}
		return out.String(), err
	}

	p1, p2 := newTestNS(t, "p1"), newTestNS(t, "p2")
	var ips []string
	for _, p := range []*testNS{p1, p2} {
		out, err := run("add", netName, p.Path)
		if err != nil {
			t.Fatal(err)
		}
		res, err := current.NewResult([]byte(out))
		if err != nil {
			t.Fatalf("cnitool add printed %q: %v", out, err)
		}
		r := res.(*current.Result)
		if len(r.IPs) != 1 || r.IPs[0].Gateway.String() != "10.244.1.1" {
			t.Fatalf("result %v", r)
		}
		ips = append(ips, r.IPs[0].Address.IP.String())
	}
	if err := ping(t, p1.Name, ips[1]); err != nil {
		t.Error(err)
	}
	for _, p := range []*testNS{p1, p2} {
		if _, err := run("check", netName, p.Path); err != nil {
			t.Error(err)
		}
	}
	if _, err := run("status", netName, p1.Path); err != nil {
		t.Error(err)
	}

	// del for p1; its address and veth go.
	if _, err := run("del", netName, p1.Path); err != nil {
		t.Fatal(err)
	}
	if _, err := p1.H.LinkByName("eth0"); err == nil {
		t.Error("p1 eth0 still there after cnitool del")
	}
	if recs := n.records(t); len(recs) != 1 {
		t.Errorf("records after del = %v, want p2's only", recs)
	}
	// del again is fine.
	if _, err := run("del", netName, p1.Path); err != nil {
		t.Error(err)
	}

	// gc: cnitool passes no valid attachments, so libcni DELs every cached attachment of the network and then
	// sends GC with an empty list; everything is released.
	if _, err := run("gc", netName, p2.Path); err != nil {
		t.Fatal(err)
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("records after gc = %v", recs)
	}
	if v := n.hostVeths(t); len(v) != 0 {
		t.Errorf("host veths after gc = %v", v)
	}
}
