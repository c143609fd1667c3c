package e2e

// BGP configured by Kubernetes objects: the agents follow canopy.io BGPPeers (with a node selector, a password
// Secret, timers), report each session in their node's BGPNodeStatus, let a BGPPeer win over a flag with an
// Event, keep the last good version of an object made invalid, and stop reporting when the BGPConfiguration
// says so — all live, against gobgpd on a fabric host and FRR on the ToR.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/e2e/lab"
)

const (
	objPeerASN   = 65010
	objRackLabel = "topology.canopy.io/rack"
	objPassword  = "obj-md5-secret"
	objSecretKey = "e2e-obj"
	objPrefix    = "100.64.7.0/24" // inside the lab agents' --import-allow
)

// objRouter starts gobgpd on a new fabric host, configured for a session with every node (password objPassword),
// announcing objPrefix.
func objRouter(t *testing.T, l *lab.Lab) *lab.Host {
	t.Helper()
	ctx := context.Background()
	h, err := l.AddFabricHost(ctx, "objrtr")
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`[global.config]
  as = %d
  router-id = "%[2]s"
  port = 179
  local-address-list = ["%[2]s"]
`, objPeerASN, h.IP)
	for _, n := range l.Nodes {
		conf += fmt.Sprintf(`[[neighbors]]
  [neighbors.config]
    neighbor-address = "%s"
    peer-as = 64512
    auth-password = "%s"
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
`, n.IP, objPassword)
	}
	path := filepath.Join(t.TempDir(), "gobgpd.toml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := h.Start("gobgpd", "gobgpd", "-f", path, "--api-hosts", "127.0.0.1:50051", "--pprof-disable", "-l", "warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	eventually(t, 20*time.Second, "gobgpd answers", func(ctx context.Context) error {
		_, err := h.Exec(ctx, "gobgp", "global")
		return err
	})
	if out, err := h.Exec(ctx, "gobgp", "global", "rib", "add", "-a", "ipv4", objPrefix); err != nil {
		t.Fatalf("gobgp global rib add: %v: %s", err, out)
	}
	return h
}

// objEstablished returns the node addresses gobgpd on h has an Established session with.
func objEstablished(ctx context.Context, h *lab.Host) (map[netip.Addr]bool, error) {
	out, err := h.Exec(ctx, "gobgp", "neighbor", "-j")
	if err != nil {
		return nil, err
	}
	up, err := parseUptimes(out)
	if err != nil {
		return nil, err
	}
	res := map[netip.Addr]bool{}
	for a := range up {
		res[a] = true
	}
	return res, nil
}

// objNodeStatus reads node's BGPNodeStatus.
func objNodeStatus(ctx context.Context, dyn dynamic.Interface, node string) (*v1alpha1.BGPNodeStatus, error) {
	u, err := dyn.Resource(v1alpha1.BGPNodeStatusesResource).Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return v1alpha1.NodeStatusFromUnstructured(u)
}

func objSession(st *v1alpha1.BGPNodeStatus, peer netip.Addr) *v1alpha1.BGPSession {
	for i := range st.Status.Sessions {
		if st.Status.Sessions[i].PeerAddress == peer.String() {
			return &st.Status.Sessions[i]
		}
	}
	return nil
}

// objApply creates or updates a BGPPeer.
func objApply(t *testing.T, dyn dynamic.Interface, p *v1alpha1.BGPPeer) {
	t.Helper()
	ctx := context.Background()
	ri := dyn.Resource(v1alpha1.BGPPeersResource)
	u := crdObject(t, p)
	cur, err := ri.Get(ctx, p.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := ri.Create(ctx, u, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
			t.Fatalf("create BGPPeer %s: %v", p.Name, err)
		}
		t.Cleanup(func() { _ = ri.Delete(context.Background(), p.Name, metav1.DeleteOptions{}) })
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ri.Update(ctx, withVersion(u, cur), metav1.UpdateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
		t.Fatalf("update BGPPeer %s: %v", p.Name, err)
	}
}

// objLabel sets (value != "") or removes a node label, and restores the old value when the test ends.
func objLabel(t *testing.T, l *lab.Lab, node, key, value string) {
	t.Helper()
	ctx := context.Background()
	n, err := l.Kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old, had := n.Labels[key]
	patch := func(v *string) error {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{key: v}}})
		_, err := l.Kube.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, b, metav1.PatchOptions{})
		return err
	}
	var v *string
	if value != "" {
		v = &value
	}
	if err := patch(v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if had {
			_ = patch(&old)
		} else {
			_ = patch(nil)
		}
	})
}

// objNegotiatedHold returns the hold time node negotiated with peer (gobgp neighbor on the node).
func objNegotiatedHold(ctx context.Context, n *lab.Node, peer netip.Addr) (int, error) {
	out, err := n.Exec(ctx, "gobgp", "neighbor", peer.String(), "-j")
	if err != nil {
		return 0, err
	}
	var p struct {
		Timers struct {
			State struct {
				NegotiatedHoldTime int `json:"negotiated_hold_time"`
			} `json:"state"`
		} `json:"timers"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return 0, err
	}
	return p.Timers.State.NegotiatedHoldTime, nil
}

func TestBGPObjects(t *testing.T) {
	l := needLab(t)
	waitConverged(t, l)
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(l.RestConfig())
	n1, n2, n3 := l.Nodes[0], l.Nodes[1], l.Nodes[2]
	rtr := objRouter(t, l)

	// The password lives in the one Secret manifests/rbac.yaml lets the agents read.
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "canopy-bgp-passwords", Namespace: "kube-system"},
		StringData: map[string]string{objSecretKey: objPassword + "\n"}}
	if _, err := l.Kube.CoreV1().Secrets("kube-system").Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.Kube.CoreV1().Secrets("kube-system").Delete(context.Background(), sec.Name, metav1.DeleteOptions{})
	})
	objLabel(t, l, n1.Name, objRackLabel, "e2e")
	objLabel(t, l, n2.Name, objRackLabel, "e2e")

	peer := &v1alpha1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "e2e-obj"}, Spec: v1alpha1.BGPPeerSpec{
		PeerAddress:       rtr.IP.String(),
		PeerASN:           objPeerASN,
		NodeSelector:      &metav1.LabelSelector{MatchLabels: map[string]string{objRackLabel: "e2e"}},
		PasswordSecretRef: &v1alpha1.SecretKeyReference{Namespace: "kube-system", Name: sec.Name, Key: objSecretKey},
		HoldTime:          &metav1.Duration{Duration: 9 * time.Second},
		ConnectRetryTime:  &metav1.Duration{Duration: time.Second},
	}}
	t0 := time.Now()
	objApply(t, dyn, peer)

	t.Run("SelectedNodesPeer", func(t *testing.T) {
		eventually(t, 30*time.Second, "gobgpd Established with node1 and node2 only", func(ctx context.Context) error {
			up, err := objEstablished(ctx, rtr)
			if err != nil {
				return err
			}
			if !up[n1.IP] || !up[n2.IP] || up[n3.IP] {
				return fmt.Errorf("established with %v", up)
			}
			return nil
		})
		t.Logf("BGPPeer created -> both selected nodes Established at the router (MD5 from the Secret): %v", time.Since(t0).Round(time.Millisecond))
	})

	t.Run("NodeStatus", func(t *testing.T) {
		eventually(t, 30*time.Second, "node1's BGPNodeStatus: the BGPPeer's session Established with prefix counts", func(ctx context.Context) error {
			st, err := objNodeStatus(ctx, dyn, n1.Name)
			if err != nil {
				return err
			}
			s := objSession(st, rtr.IP)
			switch {
			case s == nil:
				return fmt.Errorf("no session with %s in %+v", rtr.IP, st.Status.Sessions)
			case s.Source != v1alpha1.PeerSource(peer.Name) || s.State != v1alpha1.SessionEstablished || s.PeerASN != objPeerASN:
				return fmt.Errorf("session %+v", *s)
			case s.PrefixesReceived < 1 || s.PrefixesAccepted < 1 || s.PrefixesAdvertised < 1 || s.Since == nil:
				return fmt.Errorf("counts %+v", *s)
			}
			if len(st.OwnerReferences) != 1 || st.OwnerReferences[0].Kind != "Node" || st.OwnerReferences[0].Name != n1.Name {
				return fmt.Errorf("owner references %+v", st.OwnerReferences)
			}
			return nil
		})
		t.Logf("BGPPeer created -> node1's BGPNodeStatus shows it Established with prefixes: %v", time.Since(t0).Round(time.Millisecond))
		// node3's status is written periodically: an earlier test may have restarted its agent, so wait for a
		// status that has its sessions up again.
		eventually(t, 30*time.Second, "node3's BGPNodeStatus: the ToR and both other nodes, not the BGPPeer's router", func(ctx context.Context) error {
			st, err := objNodeStatus(ctx, dyn, n3.Name)
			if err != nil {
				return err
			}
			if s := objSession(st, rtr.IP); s != nil {
				return fmt.Errorf("node3 is not selected but reports %+v", *s)
			}
			if st.Status.Established < 3 {
				return fmt.Errorf("node3: %s established, want the ToR and both other nodes", st.Status.Summary)
			}
			return nil
		})
		out, err := l.Kubectl(ctx, "get", "bgppeers,bgpnodestatuses")
		t.Logf("kubectl get bgppeers,bgpnodestatuses (%v):\n%s", err, out)
	})

	t.Run("TimersChangeOnlyThatSession", func(t *testing.T) {
		before, err := uptimes(ctx, n1)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // uptimes have a resolution of one second
		edited := peer.DeepCopy()
		edited.Spec.HoldTime = &metav1.Duration{Duration: 6 * time.Second}
		objApply(t, dyn, edited)
		eventually(t, 30*time.Second, "node1 negotiates hold time 6 with the router", func(ctx context.Context) error {
			h, err := objNegotiatedHold(ctx, n1, rtr.IP)
			if err != nil {
				return err
			}
			if h != 6 {
				return fmt.Errorf("negotiated hold time %d", h)
			}
			up, err := objEstablished(ctx, rtr)
			if err != nil || !up[n1.IP] {
				return fmt.Errorf("not established again: %v %v", up, err)
			}
			return nil
		})
		after, err := uptimes(ctx, n1)
		if err != nil {
			t.Fatal(err)
		}
		for a, t0 := range before {
			if a == rtr.IP {
				continue
			}
			if !after[a].Equal(t0) {
				t.Errorf("session with %s was reset by an edit of another peer's timers (up since %v, now %v)", a, t0, after[a])
			}
		}
		if !after[rtr.IP].After(before[rtr.IP]) {
			t.Errorf("the edited session was not re-created (up since %v, before %v)", after[rtr.IP], before[rtr.IP])
		}
		peer = edited
	})

	t.Run("InvalidEditKeepsLastGood", func(t *testing.T) {
		before, err := uptimes(ctx, n1)
		if err != nil {
			t.Fatal(err)
		}
		bad := peer.DeepCopy()
		bad.Spec.PasswordSecretRef.Namespace = "default"
		objApply(t, dyn, bad)
		waitWarningEvent(t, l, peer.Name, "InvalidBGPPeer", "only in namespace")
		time.Sleep(time.Second)
		after, err := uptimes(ctx, n1)
		if err != nil {
			t.Fatal(err)
		}
		if !after[rtr.IP].Equal(before[rtr.IP]) {
			t.Errorf("the session was touched by a refused edit (up since %v, before %v)", after[rtr.IP], before[rtr.IP])
		}
		objApply(t, dyn, peer)
	})

	t.Run("ObjectWinsOverFlag", func(t *testing.T) {
		before, err := uptimes(ctx, n1)
		if err != nil {
			t.Fatal(err)
		}
		// The ToR, which the flags already name, now also as a BGPPeer for node1 (same settings as the flags).
		tor := &v1alpha1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "e2e-tor"}, Spec: v1alpha1.BGPPeerSpec{
			PeerAddress: l.ToR.IP.String(), PeerASN: int64(l.ToR.ASN), NodeNames: []string{n1.Name}, TTLSecurity: crdPtr(true)}}
		objApply(t, dyn, tor)
		waitWarningEvent(t, l, n1.Name, "BGPPeerConflict", "BGPPeer/e2e-tor wins")
		eventually(t, 10*time.Second, "node1 reports the ToR session from BGPPeer/e2e-tor", func(ctx context.Context) error {
			st, err := objNodeStatus(ctx, dyn, n1.Name)
			if err != nil {
				return err
			}
			if s := objSession(st, l.ToR.IP); s == nil || s.Source != "BGPPeer/e2e-tor" || s.State != v1alpha1.SessionEstablished {
				return fmt.Errorf("ToR session %+v", s)
			}
			return nil
		})
		after, err := uptimes(ctx, n1)
		if err != nil {
			t.Fatal(err)
		}
		if !after[l.ToR.IP].Equal(before[l.ToR.IP]) {
			t.Errorf("the ToR session was reset although the BGPPeer asks for the same session (up since %v, before %v)", after[l.ToR.IP], before[l.ToR.IP])
		}
		if err := dyn.Resource(v1alpha1.BGPPeersResource).Delete(ctx, tor.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "node1 reports the ToR session from the flag again", func(ctx context.Context) error {
			st, err := objNodeStatus(ctx, dyn, n1.Name)
			if err != nil {
				return err
			}
			if s := objSession(st, l.ToR.IP); s == nil || s.Source != v1alpha1.SourceFlag {
				return fmt.Errorf("ToR session %+v", s)
			}
			return nil
		})
	})

	t.Run("SelectorChangeIsLive", func(t *testing.T) {
		objLabel(t, l, n2.Name, objRackLabel, "")
		eventually(t, 30*time.Second, "node2 leaves the router, node1 stays", func(ctx context.Context) error {
			up, err := objEstablished(ctx, rtr)
			if err != nil {
				return err
			}
			st, err := objNodeStatus(ctx, dyn, n2.Name)
			if err != nil {
				return err
			}
			if up[n2.IP] || !up[n1.IP] || objSession(st, rtr.IP) != nil {
				return fmt.Errorf("router established with %v; node2 reports %+v", up, objSession(st, rtr.IP))
			}
			return nil
		})
	})

	t.Run("DeleteRemovesSession", func(t *testing.T) {
		if err := dyn.Resource(v1alpha1.BGPPeersResource).Delete(ctx, peer.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		t1 := time.Now()
		eventually(t, 30*time.Second, "node1's session with the router is gone", func(ctx context.Context) error {
			up, err := objEstablished(ctx, rtr)
			if err != nil {
				return err
			}
			st, err := objNodeStatus(ctx, dyn, n1.Name)
			if err != nil {
				return err
			}
			if up[n1.IP] || objSession(st, rtr.IP) != nil {
				return fmt.Errorf("router established with %v; node1 reports %+v", up, objSession(st, rtr.IP))
			}
			return nil
		})
		t.Logf("BGPPeer deleted -> session closed and gone from the status: %v", time.Since(t1).Round(time.Millisecond))
		eventually(t, 15*time.Second, "node1 no longer has the router's prefix", func(ctx context.Context) error {
			out, err := n1.Exec(ctx, "ip", "route", "show", objPrefix)
			if err != nil || strings.TrimSpace(out) != "" {
				return fmt.Errorf("route %q (%v)", out, err)
			}
			return nil
		})
	})

	t.Run("ConfigurationOverridesFlags", func(t *testing.T) {
		before, err := uptimes(ctx, n1)
		if err != nil {
			t.Fatal(err)
		}
		conf := &v1alpha1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ConfigurationName},
			Spec: v1alpha1.BGPConfigurationSpec{MaxPrefixes: crdPtr(int64(5000))}}
		ri := dyn.Resource(v1alpha1.BGPConfigurationsResource)
		if _, err := ri.Create(ctx, crdObject(t, conf), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ri.Delete(context.Background(), conf.Name, metav1.DeleteOptions{}) })
		waitWarningEvent(t, l, conf.Name, "BGPConfigConflict", "maxPrefixes 5000 wins over --max-prefixes 16384")
		eventually(t, 20*time.Second, "node1's BGPNodeStatus reports the conflict", func(ctx context.Context) error {
			st, err := objNodeStatus(ctx, dyn, n1.Name)
			if err != nil {
				return err
			}
			for _, c := range st.Status.Conditions {
				if c.Type == "ConfigConflict" && c.Status == metav1.ConditionTrue && strings.Contains(c.Message, "maxPrefixes 5000") {
					return nil
				}
			}
			return fmt.Errorf("conditions %+v", st.Status.Conditions)
		})
		after, err := uptimes(ctx, n1)
		if err != nil {
			t.Fatal(err)
		}
		for a, t0 := range before {
			if !after[a].Equal(t0) {
				t.Errorf("a new prefix limit reset the session with %s (up since %v, now %v): it applies in place", a, t0, after[a])
			}
		}
		if err := ri.Delete(ctx, conf.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("NodeStatusSwitchedOff", func(t *testing.T) {
		conf := &v1alpha1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ConfigurationName},
			Spec: v1alpha1.BGPConfigurationSpec{NodeStatus: &v1alpha1.NodeStatusReporting{Enabled: crdPtr(false)}}}
		ri := dyn.Resource(v1alpha1.BGPConfigurationsResource)
		if _, err := ri.Create(ctx, crdObject(t, conf), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		deleted := false
		t.Cleanup(func() {
			if !deleted {
				_ = ri.Delete(context.Background(), conf.Name, metav1.DeleteOptions{})
			}
		})
		eventually(t, 20*time.Second, "every node's BGPNodeStatus is deleted", func(ctx context.Context) error {
			for _, n := range l.Nodes {
				if _, err := objNodeStatus(ctx, dyn, n.Name); !apierrors.IsNotFound(err) {
					return fmt.Errorf("%s: %v", n.Name, err)
				}
			}
			return nil
		})
		if err := ri.Delete(ctx, conf.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		deleted = true
		eventually(t, 20*time.Second, "every node reports again", func(ctx context.Context) error {
			for _, n := range l.Nodes {
				st, err := objNodeStatus(ctx, dyn, n.Name)
				if err != nil {
					return fmt.Errorf("%s: %v", n.Name, err)
				}
				if st.Status.Established < 3 {
					return fmt.Errorf("%s: %s", n.Name, st.Status.Summary)
				}
			}
			return nil
		})
	})
}
