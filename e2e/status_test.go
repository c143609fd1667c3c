package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/internal/agent"
)

// `canopy status` on a node tells what the lab really is: every session Established with its prefix counts and
// BFD Up, the kernel routes, the proxy's mode and service ports, NetworkPolicy, health.
func TestCanopyStatus(t *testing.T) {
	l := needLab(t)
	n := l.Nodes[0]
	var st agent.Status
	eventually(t, 20*time.Second, "canopy status agrees with the lab", func(ctx context.Context) error {
		out, err := n.Exec(ctx, agentBin(), "status", "-o", "json")
		if err != nil {
			return err
		}
		st = agent.Status{}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if st.Node != n.Name || !st.BGP.Running || st.Health.Live != "ok" || st.Health.Ready != "ok" {
			return fmt.Errorf("status %+v", st)
		}
		peers := map[string]bool{}
		for _, p := range st.BGP.Peers {
			if p.State != "Established" || p.Received < 1 || p.Advertised < 1 || p.BFD != "Up" {
				return fmt.Errorf("peer %+v", p)
			}
			peers[p.Address.String()] = true
		}
		if !peers[l.ToR.IP.String()] || !peers[l.Nodes[1].IP.String()] || !peers[l.Nodes[2].IP.String()] || len(peers) != 3 {
			return fmt.Errorf("peers %v", peers)
		}
		rt, err := kernelRoutes(ctx, n)
		if err != nil {
			return err
		}
		if st.Routes.Installed != len(rt) || st.Routes.Stale != 0 {
			return fmt.Errorf("routes %+v, the kernel has %d of ours", st.Routes, len(rt))
		}
		if st.Proxy == nil || st.Proxy.Mode != "nftables" || st.Proxy.ServicePorts < 1 || st.Policy == nil {
			return fmt.Errorf("proxy %+v policy %+v", st.Proxy, st.Policy)
		}
		return nil
	})
	out, err := n.Exec(context.Background(), agentBin(), "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Canopy on node " + n.Name, "Established", l.ToR.IP.String(), "service proxy: nftables"} {
		if !strings.Contains(out, want) {
			t.Errorf("canopy status lacks %q:\n%s", want, out)
		}
	}
	t.Logf("canopy status on %s:\n%s", n.Name, out)
}
