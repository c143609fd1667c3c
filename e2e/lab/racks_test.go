package lab_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"canopy.io/canopy/e2e/lab"
)

// rackStandIn is an agent stand-in for a multi-rack lab: gobgpd in the node's namespace in AS 65000+<node
// index>, peering with the ToR its --peer-router-* flags name (GTSM, as the agent does), announcing the node's
// pod CIDR (--pod-cidr, given per node) and the shared VIP rackVIP. A node without peer flags only sleeps.
const rackStandIn = `#!/bin/sh
trap '[ -n "$pid" ] && kill $pid && wait $pid; exit 0' TERM
echo "standin-agent args: $*"
for a in "$@"; do
  case "$a" in
    --node-name=*) node=${a#*=} ;;
    --peer-router-ips=*) peer=${a#*=} ;;
    --peer-router-asns=*) asn=${a#*=} ;;
    --pod-cidr=*) podcidr=${a#*=} ;;
  esac
done
[ -n "$peer" ] || exec sleep infinity
ip=$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
conf="$(dirname "$0")/$node.toml"
cat > "$conf" <<EOF
[global.config]
  as = $((65000 + ${node#node}))
  router-id = "$ip"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "$peer"
    peer-as = $asn
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  [neighbors.ttl-security.config]
    enabled = true
    ttl-min = 255
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
EOF
gobgpd -f "$conf" -p --pprof-disable --api-hosts 127.0.0.1:50051 -l info &
pid=$!
until gobgp global >/dev/null 2>&1; do sleep 0.1; done
gobgp global rib add -a ipv4 "$podcidr"
gobgp global rib add -a ipv4 ` + rackVIP + `/32
wait $pid
`

const rackVIP = "198.51.100.7"

// TestLabRacks brings up a 4-rack fabric, one node per rack and one ToR kind per rack — FRR, BIRD, gobgpd, and
// a rack whose ToR does not peer with its node — with stand-in agents, and checks the layout (subnets,
// labels, node ASN annotations, agent flags), every ToR's sessions with its nodes and the spine's with every
// ToR, pod CIDRs routed across racks by the spine, ECMP at the spine for a /32 announced from three racks,
// reachability of the unpeered node over its static uplink routes, Attach, Show, and that Down leaves nothing.
func TestLabRacks(t *testing.T) {
	if _, err := exec.LookPath("gobgpd"); err != nil {
		t.Skip("gobgpd not installed: the stand-in agents need it")
	}
	standIn := filepath.Join(t.TempDir(), "standin-agent")
	if err := os.WriteFile(standIn, []byte(rackStandIn), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := lab.Config{Nodes: 4, AgentBin: standIn, Racks: 4, PerRack: []lab.RackConfig{
		{ToRKind: lab.ToRFRR, NodeASN: 65001},
		{ToRKind: lab.ToRBIRD},
		{ToRKind: lab.ToRGoBGP},
		{NoNodePeering: true},
	}}
	t0 := time.Now()
	l := lab.New(t, cfg)
	t.Logf("Up took %s", time.Since(t0).Round(time.Millisecond))
	nodes := l.Nodes
	// The checks' deadline starts once the lab is up: on a loaded machine Up alone took 72 s of a deadline
	// that used to include it.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	t.Run("layout", func(t *testing.T) {
		if len(l.Racks) != 4 || l.Spine == nil || l.ToR != l.Racks[0].ToR {
			t.Fatalf("racks %v, spine %v", l.Racks, l.Spine)
		}
		for i, r := range l.Racks {
			want := netip.MustParsePrefix(fmt.Sprintf("10.99.%d.0/24", i))
			if r.Subnet != want || len(r.Nodes) != 1 || r.Nodes[0] != nodes[i] || nodes[i].Rack != r {
				t.Errorf("rack %d: subnet %s, nodes %v", r.Index, r.Subnet, r.Nodes)
			}
			if ip := netip.MustParseAddr(fmt.Sprintf("10.99.%d.%d", i, 11+i)); nodes[i].IP != ip {
				t.Errorf("%s: %s, want %s", nodes[i].Name, nodes[i].IP, ip)
			}
			if r.ToR.ASN != uint32(64500+i) {
				t.Errorf("%s: ToR AS %d", r.Name, r.ToR.ASN)
			}
			obj, err := l.Kube.CoreV1().Nodes().Get(ctx, nodes[i].Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if obj.Labels[lab.RackLabel] != r.Name {
				t.Errorf("%s: labels %v", obj.Name, obj.Labels)
			}
			if wantASN := map[int]string{0: "65001"}[i]; obj.Annotations[lab.AnnotationNodeASN] != wantASN {
				t.Errorf("%s: annotations %v", obj.Name, obj.Annotations)
			}
		}
		if l.CP.IP != netip.MustParseAddr("10.98.0.2") {
			t.Errorf("control plane at %s", l.CP.IP)
		}
		for i, n := range nodes {
			log := waitLog(t, n.LogPath, "standin-agent args:")
			peer := "--peer-router-ips=" + l.Racks[i].ToR.IP.String()
			if got := strings.Contains(log, peer); got != (i < 3) {
				t.Errorf("%s: %q in its flags: %v, want %v:\n%s", n.Name, peer, got, i < 3, log)
			}
		}
	})

	// Every stand-in announces its pod CIDR: start them again with it (their flags carry no pod CIDR).
	for _, n := range nodes[:3] {
		if err := n.StopAgent(); err != nil {
			t.Fatal(err)
		}
		if err := n.StartAgent("--pod-cidr=" + n.PodCIDR.String()); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("sessions", func(t *testing.T) {
		t1 := time.Now()
		for _, r := range l.Racks[:3] {
			if err := r.ToR.WaitEstablished(ctx, r.NodeIPs()...); err != nil {
				t.Errorf("%s (%s): %v", r.Name, r.ToR.Kind, err)
			}
		}
		var uplinks []netip.Addr
		for _, r := range l.Racks {
			uplinks = append(uplinks, r.ToR.Uplink)
		}
		if err := l.Spine.WaitEstablished(ctx, uplinks...); err != nil {
			t.Error(err)
		}
		t.Logf("every ToR established with its node, the spine with every ToR: %s", time.Since(t1).Round(time.Millisecond))
	})

	t.Run("routes", func(t *testing.T) {
		vip := netip.MustParsePrefix(rackVIP + "/32")
		t1 := time.Now()
		err := retry(ctx, func() error {
			rt, err := l.Spine.KernelRoutes(ctx)
			if err != nil {
				return err
			}
			for i, n := range nodes[:3] {
				if got := rt[n.PodCIDR]; !slices.Equal(got, []netip.Addr{l.Racks[i].ToR.Uplink}) {
					return fmt.Errorf("spine: %s via %v, want %s", n.PodCIDR, got, l.Racks[i].ToR.Uplink)
				}
			}
			if got, want := rt[vip], []netip.Addr{l.Racks[0].ToR.Uplink, l.Racks[1].ToR.Uplink, l.Racks[2].ToR.Uplink}; !slices.Equal(got, want) {
				return fmt.Errorf("spine: %s via %v, want ECMP over %v", vip, got, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("spine kernel: every pod CIDR via its rack's ToR, %s over 3 ToRs (%s)", vip, time.Since(t1).Round(time.Millisecond))
		// Every ToR forwards to the others' pod CIDRs through the spine, and to its own node's directly.
		for i, r := range l.Racks[:3] {
			err := retry(ctx, func() error {
				rt, err := r.ToR.KernelRoutes(ctx)
				if err != nil {
					return err
				}
				for j, n := range nodes[:3] {
					want := []netip.Addr{l.Racks[i].ToR.SpineIP}
					if i == j {
						want = []netip.Addr{n.IP}
					}
					if got := rt[n.PodCIDR]; !slices.Equal(got, want) {
						return fmt.Errorf("%s (%s): %s via %v, want %v", r.Name, r.ToR.Kind, n.PodCIDR, got, want)
					}
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("unpeered-node", func(t *testing.T) {
		// node4 is on its own subnet, behind a ToR that peers with no node: it reaches the others (and the API
		// server) over its static uplink routes alone.
		n4 := nodes[3]
		for _, dst := range []netip.Addr{nodes[0].IP, nodes[1].IP, nodes[2].IP, l.CP.IP, l.Ext.IP} {
			if err := retry(ctx, func() error { return n4.Ping(ctx, dst) }); err != nil {
				t.Errorf("node4 → %s: %v", dst, err)
			}
		}
		if peers, err := l.Racks[3].ToR.Peers(ctx); err != nil || len(peers) != 1 {
			t.Errorf("rack4's ToR peers %v (%v), want the spine only", peers, err)
		}
	})

	t.Run("show-attach", func(t *testing.T) {
		var b bytes.Buffer
		if err := l.Show(ctx, &b); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"spine (", "tor2 (", "birdc show protocols", "tor3 (", "gobgp neighbor", nodes[1].PodCIDR.String()} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("Show lacks %q:\n%s", want, b.String())
			}
		}
		a, err := lab.Attach(l.Config().StateRoot, l.Prefix)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Detach()
		if len(a.Racks) != 4 || a.Spine == nil || a.Racks[1].ToR.Kind != lab.ToRBIRD || a.Nodes[2].Rack != a.Racks[2] ||
			a.Nodes[2].IP != nodes[2].IP || a.CP.IP != l.CP.IP {
			t.Errorf("attached lab differs: racks %v spine %v", a.Racks, a.Spine)
		}
		if peers, err := a.Racks[1].ToR.Peers(ctx); err != nil || peers[nodes[1].IP] != "Established" {
			t.Errorf("attached BIRD ToR peers: %v %v", peers, err)
		}
	})

	t.Run("restart-bird", func(t *testing.T) {
		tor := l.Racks[1].ToR
		p := tor.Daemon("bird")
		if p == nil {
			t.Fatal("no bird process")
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := tor.RestartDaemon(ctx, "bird"); err != nil {
			t.Fatal(err)
		}
		if err := tor.WaitEstablished(ctx, nodes[1].IP, tor.SpineIP); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("down", func(t *testing.T) {
		nss := l.Namespaces()
		var pids []int
		for _, p := range l.Procs() {
			if exited, _ := p.Exited(); !exited {
				pids = append(pids, p.PID())
			}
		}
		// spine, 4 ToRs, cp, ext, 4 nodes
		if len(nss) < 11 {
			t.Fatalf("expected ≥11 namespaces, have %v", nss)
		}
		if err := l.Down(); err != nil {
			t.Fatal(err)
		}
		for _, ns := range nss {
			if _, err := os.Stat("/run/netns/" + ns); err == nil {
				t.Errorf("namespace %s left", ns)
			}
		}
		for _, pid := range pids {
			if _, err := os.Stat(filepath.Join("/proc", itoa(pid))); err == nil {
				t.Errorf("process %d left", pid)
			}
		}
	})
}
