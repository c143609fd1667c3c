package cni

import (
	"bufio"
	"bytes"
	"canopy.io/canopy/internal/testsupport"
	"canopy.io/canopy/internal/testsupport/testns"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Integration tests run the plugin against the real kernel, inside network namespaces they create: a "node"
// namespace (where the plugin runs, as under a container runtime) and "pod" namespaces. Nothing is ever added to
// the machine's own namespace; newNode checks that no bridge or veth of ours appeared there.

// Test helper processes: the test binary re-run inside a pod namespace (ip netns exec) as a TCP echo server or
// client, for the container-to-container and pod-to-pod cases.
const helperEnv = "CANOPY_CNI_TEST_HELPER"

var tmpRoot string // removed when the test binary ends

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[len(os.Args)-1]))
	}
	var err error
	if tmpRoot, err = os.MkdirTemp("", "canopy-cni-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	_ = os.RemoveAll(tmpRoot)
	os.Exit(code)
}

// runHelper is the body of a helper process: "echo-server <addr>" listens, prints its address, echoes one
// connection per accept until killed; "echo-client <addr>" sends a line and expects it back.
func runHelper(mode, addr string) int {
	switch mode {
	case "echo-server":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(l.Addr().String())
		for {
			c, err := l.Accept()
			if err != nil {
				return 1
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					_, _ = io.WriteString(c, "echo:"+line)
				}
			}()
		}
	case "echo-client":
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "hello\n"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "echo:hello\n" {
			fmt.Fprintf(os.Stderr, "got %q, %v\n", line, err)
			return 1
		}
		fmt.Println("ok from", c.LocalAddr())
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// skipOrFail skips the test saying why, or fails it under CI=true.
func skipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	testsupport.Unavailable(tb, format, args...)
}

// needIntegration skips unless the test can touch the kernel: root, and not -short.
func needIntegration(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("skipping: integration test (network namespaces) in -short mode")
	}
	if os.Geteuid() != 0 {
		skipOrFail(tb, "skipping: needs root to create network namespaces (running as uid %d)", os.Geteuid())
	}
}

func needTool(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skipOrFail(tb, "skipping: %s not found in PATH: %v", name, err)
	}
	return p
}

func randHex(tb testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// testNS is a named network namespace a test made: /var/run/netns/<Name>.
type testNS struct {
	Name string
	Path string
	H    *netlink.Handle
}

// newTestNS creates the namespace cnp-cni<suffix>-<random> (internal/testsupport/testns: lo up, deleted when the test ends,
// after the processes started later are gone: cleanups run last-in first-out), with a netlink handle into it.
func newTestNS(tb testing.TB, suffix string) *testNS {
	tb.Helper()
	tns := testns.New(tb, "cni"+suffix)
	return &testNS{Name: tns.Name, Path: tns.Path(), H: tns.Handle(tb)}
}

// node is a test node: a namespace where the plugin runs, its data directory and its network config.
type node struct {
	*testNS
	DataDir string
	Conf    map[string]any
	P       *Plugin
}

// newNode makes a node namespace with the default config (pod CIDR 10.244.1.0/24, bridge canopy0, hairpin).
func newNode(tb testing.TB) *node {
	tb.Helper()
	needIntegration(tb)
	guardRootNS(tb)
	n := &node{testNS: newTestNS(tb, "node"), P: &Plugin{}}
	n.DataDir = filepath.Join(tb.TempDir(), "data")
	n.Conf = map[string]any{
		"cniVersion": "1.0.0", "name": "canopy", "type": "canopy-cni", "bridge": "canopy0", "mtu": 0,
		"podCIDRs": []string{"10.244.1.0/24"}, "dataDir": n.DataDir, "hairpin": true,
	}
	return n
}

// guardRootNS fails the test if a link with one of our names appears in the machine's namespace while it runs.
// It also checks that the root namespace's net.ipv4.ip_forward and net.ipv6.conf.all.forwarding did not change
// (the plugin sets them in the node's).
func guardRootNS(tb testing.TB) {
	tb.Helper()
	before := rootOurLinks(tb)
	fwdFiles := []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"}
	fwdBefore := make([][]byte, len(fwdFiles))
	for i, f := range fwdFiles {
		fwdBefore[i], _ = os.ReadFile(f)
	}
	tb.Cleanup(func() {
		for name := range rootOurLinks(tb) {
			if !before[name] {
				tb.Errorf("link %s appeared in the root network namespace during the test", name)
			}
		}
		for i, f := range fwdFiles {
			if fwd, _ := os.ReadFile(f); !bytes.Equal(fwd, fwdBefore[i]) {
				tb.Errorf("the root namespace's %s changed from %q to %q during the test", f, fwdBefore[i], fwd)
			}
		}
	})
}

// rootOurLinks lists links named like ours in the namespace of the calling thread: the root one (test threads
// never move). It only reads.
func rootOurLinks(tb testing.TB) map[string]bool {
	links, err := netlink.LinkList()
	if err != nil {
		tb.Fatalf("list root namespace links: %v", err)
	}
	out := map[string]bool{}
	for _, l := range links {
		if name := l.Attrs().Name; name == DefaultBridge || isHostVethName(name) {
			out[name] = true
		}
	}
	return out
}

func (n *node) conf(tb testing.TB, mods map[string]any) []byte {
	tb.Helper()
	c := map[string]any{}
	for k, v := range n.Conf {
		c[k] = v
	}
	for k, v := range mods {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// in runs fn on a thread inside the node namespace, as the runtime runs the plugin.
func (n *node) in(fn func() error) error {
	return ns.WithNetNSPath(n.Path, func(ns.NetNS) error { return fn() })
}

func cmdArgs(cid, netnsPath, ifname string, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: cid, Netns: netnsPath, IfName: ifname, Path: "/opt/cni/bin", StdinData: conf}
}

func (n *node) add(cid string, pod *testNS, conf []byte) (*current.Result, error) {
	var res *current.Result
	err := n.in(func() error {
		var err error
		res, _, err = n.P.Add(cmdArgs(cid, pod.Path, "eth0", conf))
		return err
	})
	return res, err
}

func (n *node) mustAdd(tb testing.TB, cid string, pod *testNS) *current.Result {
	tb.Helper()
	res, err := n.add(cid, pod, n.conf(tb, nil))
	if err != nil {
		tb.Fatalf("ADD %s: %v", cid, err)
	}
	return res
}

func (n *node) del(cid, netnsPath string, conf []byte) error {
	return n.in(func() error { return n.P.Del(cmdArgs(cid, netnsPath, "eth0", conf)) })
}

func (n *node) check(cid string, pod *testNS, conf []byte) error {
	return n.in(func() error { return n.P.Check(cmdArgs(cid, pod.Path, "eth0", conf)) })
}

// withPrev returns conf with prevResult set, as a runtime sends it to CHECK and DEL.
func withPrev(tb testing.TB, conf []byte, res types.Result) []byte {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	if err := res.PrintTo(&buf); err != nil {
		tb.Fatal(err)
	}
	var pr map[string]any
	if err := json.Unmarshal(buf.Bytes(), &pr); err != nil {
		tb.Fatal(err)
	}
	m["prevResult"] = pr
	b, _ := json.Marshal(m)
	return b
}

// records lists the allocation files in the node's data directory: address → "containerID/ifname".
func (n *node) records(tb testing.TB) map[string]string {
	tb.Helper()
	entries, err := os.ReadDir(n.DataDir)
	if err != nil {
		if os.IsNotExist(err) {
			return map[string]string{}
		}
		tb.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if net.ParseIP(e.Name()) == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(n.DataDir, e.Name()))
		if err != nil {
			tb.Fatal(err)
		}
		out[e.Name()] = strings.ReplaceAll(string(b), "\r\n", "/")
	}
	return out
}

// ourLinks lists the node's links named like host veths, and whether the bridge exists.
func (n *node) hostVeths(tb testing.TB) []string {
	tb.Helper()
	links, err := n.H.LinkList()
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if isHostVethName(l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func linkNames(tb testing.TB, h *netlink.Handle) []string {
	tb.Helper()
	links, err := h.LinkList()
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, l := range links {
		out = append(out, l.Attrs().Name)
	}
	return out
}

// sysctlIn reads a sysctl inside a namespace.
func sysctlIn(tb testing.TB, path, name string) string {
	tb.Helper()
	var v []byte
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		var err error
		v, err = os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")))
		return err
	})
	if err != nil {
		tb.Fatalf("read %s in %s: %v", name, path, err)
	}
	return strings.TrimSpace(string(v))
}

// pluginBinary builds cmd/canopy-cni once per test run (or takes $CANOPY_CNI_BIN) and returns its path.
var pluginBin struct {
	once sync.Once
	path string
	err  error
}

func pluginBinary(tb testing.TB) string {
	tb.Helper()
	pluginBin.once.Do(func() {
		if p := os.Getenv("CANOPY_CNI_BIN"); p != "" {
			pluginBin.path = p
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			pluginBin.err = fmt.Errorf("go not found to build the plugin (set CANOPY_CNI_BIN): %w", err)
			return
		}
		dir := filepath.Join(tmpRoot, "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			pluginBin.err = err
			return
		}
		out := filepath.Join(dir, "canopy-cni")
		cmd := exec.Command(goTool, "build", "-o", out, "canopy.io/canopy/cmd/canopy-cni")
		if b, err := cmd.CombinedOutput(); err != nil {
			pluginBin.err = fmt.Errorf("go build ./cmd/canopy-cni: %v\n%s", err, b)
			return
		}
		pluginBin.path = out
	})
	if pluginBin.err != nil {
		if errors.Is(pluginBin.err, exec.ErrNotFound) {
			skipOrFail(tb, "skipping: %v", pluginBin.err)
		}
		tb.Fatal(pluginBin.err)
	}
	return pluginBin.path
}

// execResult is what one run of the plugin binary gave.
type execResult struct {
	Stdout, Stderr []byte
	Err            error
}

// cniError decodes the CNI error object a failed run printed.
func (r execResult) cniError(tb testing.TB) *types.Error {
	tb.Helper()
	if r.Err == nil {
		tb.Fatalf("the plugin succeeded; stdout %s", r.Stdout)
	}
	var e types.Error
	if err := json.Unmarshal(r.Stdout, &e); err != nil || e.Msg == "" {
		tb.Fatalf("failed run (%v) printed no CNI error object: stdout %q stderr %q", r.Err, r.Stdout, r.Stderr)
	}
	return &e
}

// execPlugin runs the plugin binary in the node namespace (ip netns exec), as a runtime would: CNI_* environment,
// config on stdin.
func (n *node) execPlugin(tb testing.TB, command, cid, netnsPath string, conf []byte) execResult {
	tb.Helper()
	bin := pluginBinary(tb)
	ipTool := needTool(tb, "ip")
	cmd := exec.Command(ipTool, "netns", "exec", n.Name, bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "CNI_COMMAND=" + command, "CNI_CONTAINERID=" + cid,
		"CNI_NETNS=" + netnsPath, "CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(bin)}
	cmd.Stdin = bytes.NewReader(conf)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return execResult{Stdout: out.Bytes(), Stderr: errOut.Bytes(), Err: err}
}

// startHelper runs this test binary as a helper process inside a namespace and kills it when the test ends. It
// returns the process and the first line it printed.
func startHelper(tb testing.TB, nsName, mode, addr string) (*exec.Cmd, string) {
	tb.Helper()
	ipTool := needTool(tb, "ip")
	cmd := exec.Command(ipTool, "netns", "exec", nsName, os.Args[0], "-test.run=^$", addr)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start helper %s in %s: %v", mode, nsName, err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-lines:
		if line == "" {
			tb.Fatalf("helper %s in %s printed nothing; stderr: %s", mode, nsName, stderr.String())
		}
		return cmd, line
	case <-time.After(10 * time.Second):
		tb.Fatalf("helper %s in %s did not start; stderr: %s", mode, nsName, stderr.String())
	}
	return nil, ""
}

// runHelperClient runs the echo client in a namespace against addr and fails the test unless it gets its echo.
func runHelperClient(tb testing.TB, nsName, addr string) {
	tb.Helper()
	ipTool := needTool(tb, "ip")
	cmd := exec.Command(ipTool, "netns", "exec", nsName, os.Args[0], "-test.run=^$", addr)
	cmd.Env = append(os.Environ(), helperEnv+"=echo-client")
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("echo client in %s to %s: %v\n%s", nsName, addr, err, out)
	}
}

func ping(tb testing.TB, fromNS, to string) error {
	tb.Helper()
	ipTool := needTool(tb, "ip")
	pingTool := needTool(tb, "ping")
	out, err := exec.Command(ipTool, "netns", "exec", fromNS, pingTool, "-c", "2", "-i", "0.2", "-W", "2", to).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", to, fromNS, err, out)
	}
	return nil
}
