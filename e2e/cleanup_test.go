package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	nftproxy "canopy.io/canopy/proxy/nftables"
)

// cleanupReport is the part of `canopy cleanup -o json` the test reads.
type cleanupReport struct {
	DryRun   bool `json:"dryRun"`
	Sections []struct {
		Kind    string   `json:"kind"`
		Scope   string   `json:"scope"`
		Removed []string `json:"removed"`
		Failed  []struct {
			Item, Error string
		} `json:"failed"`
		Skipped string   `json:"skipped"`
		Kept    []string `json:"kept"`
	} `json:"sections"`
	Warnings []string `json:"warnings"`
}

func (r cleanupReport) removed(kind string) int {
	n := 0
	for _, s := range r.Sections {
		if s.Kind == kind {
			n += len(s.Removed)
		}
	}
	return n
}

func (r cleanupReport) failed() []string {
	var out []string
	for _, s := range r.Sections {
		for _, f := range s.Failed {
			out = append(out, f.Item+": "+f.Error)
		}
	}
	return out
}

// runCleanupOn runs `canopy cleanup -o json` with the node agent's own CNI and route flags (plus extra) inside
// the node's namespace, and returns the report and the exit status.
func runCleanupOn(t *testing.T, n *lab.Node, extra ...string) (cleanupReport, int) {
	t.Helper()
	args := []string{"netns", "exec", n.NS, agentBin(), "cleanup", "-o", "json", "--node-ip=" + n.IP.String()}
	for _, a := range n.AgentArgs() {
		for _, f := range []string{"--cni-conf-dir=", "--cni-bin-dir=", "--cni-data-dir=", "--cni-agent-socket=", "--route-protocol=", "--route-table="} {
			if strings.HasPrefix(a, f) {
				args = append(args, a)
			}
		}
	}
	args = append(args, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("canopy cleanup: %v: %s", err, stderr.String())
	}
	var r cleanupReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("canopy cleanup printed no JSON report (exit %d): %v\n%s\n%s", code, err, stdout.String(), stderr.String())
	}
	t.Logf("canopy cleanup %s: exit %d in %v\n%s%s", strings.Join(extra, " "), code, time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	return r, code
}

// canopyState is what of Canopy's a node holds: its routes, every line of the four iptables back ends that
// declares or jumps to a CANOPY- chain, its nftables tables (the service proxy's), its ipsets.
func canopyState(ctx context.Context, n *lab.Node) (string, error) {
	var b strings.Builder
	out, err := n.Exec(ctx, "ip", "route", "show", "table", "all", "proto", "186")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			fmt.Fprintf(&b, "route %s\n", l)
		}
	}
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"} {
		out, err := n.Exec(ctx, save)
		if err != nil {
			return "", err
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, ":CANOPY-") || strings.Contains(l, "-j CANOPY-") || strings.Contains(l, "-g CANOPY-") {
				fmt.Fprintf(&b, "%s: %s\n", save, l)
			}
		}
	}
	out, err = n.Exec(ctx, "nft", "list", "tables")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "table" && nftproxy.IsShardTable(f[2]) {
			fmt.Fprintf(&b, "nft %s\n", l)
		}
	}
	out, err = n.Exec(ctx, "ipset", "list", "-n")
	if err != nil {
		return "", err
	}
	for _, s := range strings.Fields(out) {
		if strings.HasPrefix(s, "CANOPY-") {
			fmt.Fprintf(&b, "ipset %s\n", s)
		}
	}
	return b.String(), nil
}

// agentFlag returns the value of one of the node agent's flags ("" if it has none).
func agentFlag(n *lab.Node, name string) string {
	for _, a := range n.AgentArgs() {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// TestCleanup removes Canopy from a lab node with the real binary: the agent is stopped, `canopy cleanup` runs
// in the node's namespace with the agent's flags, and afterwards no route of protocol 186, no CANOPY- chain or
// jump (iptables and ip6tables, nft and legacy), no CANOPY- ipset and no conflist is left, while a foreign
// static route, iptables rules (both back ends) and an ipset survive. A dry run before changes nothing; a second
// run finds nothing. The agent is then started again and the lab converges, so later tests are unaffected.
func TestCleanup(t *testing.T) {
	l := needLab(t)
	n := l.Nodes[len(l.Nodes)-1]
	ctx := context.Background()
	confDir := agentFlag(n, "cni-conf-dir")
	if confDir == "" {
		t.Fatal("the lab's agents write no conflist (no --cni-conf-dir)")
	}
	conf := filepath.Join(confDir, "10-canopy.conflist")

	// Foreign state: a static route, a rule in each iptables back end, an ipset.
	foreignRoute := "192.0.2.0/24"
	foreignRule := []string{"INPUT", "-s", "192.0.2.99/32", "-m", "comment", "--comment", "e2e foreign rule, mentions CANOPY-SERVICES", "-j", "ACCEPT"}
	must := func(cmd ...string) {
		t.Helper()
		if out, err := n.Exec(ctx, cmd...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	must("ip", "route", "add", foreignRoute, "via", l.ToR.IP.String())
	must("ipset", "create", "E2E-FOREIGN", "hash:ip")
	for _, b := range []string{"iptables-nft", "iptables-legacy"} {
		must(append([]string{b, "-A"}, foreignRule...)...)
	}
	t.Cleanup(func() {
		_, _ = n.Exec(ctx, "ip", "route", "del", foreignRoute)
		for _, b := range []string{"iptables-nft", "iptables-legacy"} {
			_, _ = n.Exec(ctx, append([]string{b, "-D"}, foreignRule...)...)
		}
		_, _ = n.Exec(ctx, "ipset", "destroy", "E2E-FOREIGN")
	})

	// The agent has programmed the node: routes to the other nodes, chains, sets, the conflist.
	eventually(t, 30*time.Second, "the node holds Canopy's state", func(ctx context.Context) error {
		st, err := canopyState(ctx, n)
		if err != nil {
			return err
		}
		for _, want := range []string{"route ", "nft table ip canopy", ":CANOPY-POL-FORWARD ", "ipset CANOPY-POL-READY"} {
			if !strings.Contains(st, want) {
				return fmt.Errorf("no %q yet in\n%s", want, st)
			}
		}
		if _, err := os.Stat(conf); err != nil {
			return err
		}
		return nil
	})
	hadBridge := false
	if out, err := n.Exec(ctx, "ip", "link", "show", "canopy0"); err == nil && strings.Contains(out, "canopy0") {
		hadBridge = true
	}

	// Run while the agent still runs, cleanup warns that it would re-create everything, and its live hint
	// socket cannot be removed (exit 1).
	live, code := runCleanupOn(t, n, "--dry-run")
	if len(live.Warnings) != 1 || !strings.Contains(live.Warnings[0], "agent answers") {
		t.Errorf("dry run with the agent running: warnings %q, want one about the running agent", live.Warnings)
	}
	if f := live.failed(); code != 1 || len(f) != 1 || !strings.Contains(f[0], "an agent is listening") {
		t.Errorf("dry run with the agent running: exit %d, failures %q, want 1 and the live socket", code, f)
	}

	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = n.StartAgent()
		}
	})
	stateBefore, err := canopyState(ctx, n)
	if err != nil {
		t.Fatal(err)
	}

	dry, code := runCleanupOn(t, n, "--dry-run")
	if code != 0 || !dry.DryRun || len(dry.Warnings) != 0 || dry.removed("routes") == 0 || dry.removed("iptables") == 0 || dry.removed("ipsets") == 0 || dry.removed("files") == 0 {
		t.Errorf("dry run: exit %d, report %+v", code, dry)
	}
	if st, err := canopyState(ctx, n); err != nil || st != stateBefore {
		t.Errorf("the dry run changed the node (%v):\nbefore:\n%s\nafter:\n%s", err, stateBefore, st)
	}
	if _, err := os.Stat(conf); err != nil {
		t.Errorf("the dry run removed the conflist: %v", err)
	}

	r, code := runCleanupOn(t, n)
	if code != 0 {
		t.Errorf("cleanup exited %d", code)
	}
	for _, s := range r.Sections {
		if len(s.Failed) > 0 {
			t.Errorf("%s (%s) failed: %+v", s.Kind, s.Scope, s.Failed)
		}
		if s.Skipped != "" && s.Kind != "ipvs" {
			t.Errorf("%s (%s) skipped: %s", s.Kind, s.Scope, s.Skipped)
		}
	}
	if st, err := canopyState(ctx, n); err != nil || st != "" {
		t.Errorf("Canopy's state left after cleanup (%v):\n%s", err, st)
	}
	if _, err := os.Stat(conf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("conflist %s: %v, want it removed", conf, err)
	}
	// Foreign state survives.
	if out, err := n.Exec(ctx, "ip", "route", "show", foreignRoute); err != nil || !strings.Contains(out, l.ToR.IP.String()) {
		t.Errorf("foreign route removed: %v %q", err, out)
	}
	for _, b := range []string{"iptables-nft", "iptables-legacy"} {
		if _, err := n.Exec(ctx, append([]string{b, "-C"}, foreignRule...)...); err != nil {
			t.Errorf("foreign %s rule removed: %v", b, err)
		}
	}
	if _, err := n.Exec(ctx, "ipset", "list", "-n", "E2E-FOREIGN"); err != nil {
		t.Errorf("foreign ipset removed: %v", err)
	}
	// Without --remove-pod-network the pods keep their network.
	if hadBridge {
		if _, err := n.Exec(ctx, "ip", "link", "show", "canopy0"); err != nil {
			t.Errorf("the bridge canopy0 was removed without --remove-pod-network: %v", err)
		}
	}

	again, code := runCleanupOn(t, n)
	total := 0
	for _, s := range again.Sections {
		total += len(s.Removed)
	}
	if code != 0 || total != 0 {
		t.Errorf("second run: exit %d, %d removed", code, total)
	}

	// Back to normal for the tests that follow: the agent re-creates what it needs.
	restarted = true
	if err := n.StartAgent(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitConverged(t, l)
	eventually(t, 60*time.Second, "the restarted agent programs the node again", func(ctx context.Context) error {
		st, err := canopyState(ctx, n)
		if err != nil {
			return err
		}
		for _, want := range []string{"nft table ip canopy", ":CANOPY-POL-FORWARD ", "ipset CANOPY-POL-READY"} {
			if !strings.Contains(st, want) {
				return fmt.Errorf("no %q yet", want)
			}
		}
		_, err = os.Stat(conf)
		return err
	})
	t.Logf("the restarted agent converged and programmed the node in %v", time.Since(start).Round(time.Millisecond))
}
