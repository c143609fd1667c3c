package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

// shared is the lab every test in the package uses; labErr says why there is none.
var (
	shared *lab.Lab
	labErr error
)

// benchPrefixes is where the route-install benchmark's injected prefixes live; every agent accepts it.
const benchPrefixes = "100.64.0.0/10"

func agentBin() string {
	if b := os.Getenv("CANOPY_BIN"); b != "" {
		return b
	}
	b, _ := filepath.Abs("../bin/canopy")
	return b
}

func cniBin() string {
	if b := os.Getenv("CANOPY_CNI_BIN"); b != "" {
		return b
	}
	b, _ := filepath.Abs("../bin/canopy-cni")
	return b
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() {
			labErr = fmt.Errorf("-short: the lab is not brought up")
			return m.Run()
		}
		if os.Getenv(vmNodeStep) == "only" {
			labErr = fmt.Errorf("%s=only: the shared lab is not brought up (run -run '^TestIPVS$')", vmNodeStep)
			return m.Run()
		}
		// The agents run with only the rights manifests/rbac.yaml grants (bound to their group below).
		cfg := lab.Config{Nodes: 3, AgentBin: agentBin(), CNIPlugin: cniBin(), AgentArgs: []string{"--import-allow=" + benchPrefixes,
			// The fabric is in the ExternalIP range too, so the attack tests prove that the cluster's own addresses
			// (nodes, the API server) are refused by rule, not only by the range.
			"--service-external-ip-range=" + extRange + ",10.99.0.0/24", "--loadbalancer-ip-range=" + lbRange,
			"--service-communities-allowed=" + allowedCommunities,
			"--bfd", "--bfd-node-mesh"}, // BFD with the ToR (FRR bfdd) and between the nodes
			AgentGroups: []string{agentGroup},
			// The agents find their rights and the canopy.io CRDs at their start, as under kubectl apply -f
			// manifests/crds -f manifests/rbac.yaml before the DaemonSet.
			BeforeAgents: func(ctx context.Context, l *lab.Lab) error {
				if err := installCRDs(ctx, dynamic.NewForConfigOrDie(l.RestConfig())); err != nil {
					return fmt.Errorf("CRDs: %w", err)
				}
				return applyAgentRBAC(ctx, l)
			}}
		if labErr = lab.Preflight(cfg); labErr != nil {
			return m.Run()
		}
		if testing.Verbose() {
			cfg.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "lab: "+f+"\n", a...) }
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		l, err := lab.Up(ctx, cfg)
		if err != nil {
			labErr = fmt.Errorf("lab.Up: %w", err)
			fmt.Fprintln(os.Stderr, labErr)
			return 1
		}
		shared = l
		// LoadBalancer IPs come from canopy-controller, under its own ServiceAccount and the rights of
		// manifests/rbac-controller.yaml, as in a cluster: the agents may not allocate.
		if err := startSharedController(ctx, l); err != nil {
			fmt.Fprintln(os.Stderr, "canopy-controller:", err)
			_ = l.Down()
			return 1
		}
		// Like a real node's uplink, every node reaches the world outside the rack through the ToR.
		for _, n := range l.Nodes {
			if out, err := n.Exec(ctx, "ip", "route", "add", l.Config().ExternalCIDR.String(), "via", l.ToR.IP.String()); err != nil {
				fmt.Fprintln(os.Stderr, "external route:", err, out)
				_ = l.Down()
				return 1
			}
		}
		code := m.Run()
		if code != 0 || os.Getenv("CANOPY_LAB_KEEP_LOGS") != "" {
			l.KeepWorkDir()
			fmt.Fprintf(os.Stderr, "lab %s: logs kept in %s\n", l.Prefix, l.WorkDir)
		}
		if err := l.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "lab.Down:", err)
			code = 1
		}
		if dnsdOnce.path != "" {
			_ = os.RemoveAll(filepath.Dir(dnsdOnce.path))
		}
		return code
	}()
	os.Exit(code)
}

// vmNodeStep names the variable make test uses to run TestIPVS (a lab with a qemu VM node) apart from the other
// tests: "later" skips it, saying so; "only" leaves out the shared lab (for a run of TestIPVS alone).
const vmNodeStep = "CANOPY_E2E_VM_NODE"

// agentGroup is the Kubernetes group of the lab agents' credentials.
const agentGroup = "canopy-agents"

// applyAgentRBAC creates the ClusterRole and the Roles of manifests/rbac.yaml and binds them to the agents'
// group, so the e2e tests prove the manifest grants what the agent needs.
func applyAgentRBAC(ctx context.Context, l *lab.Lab) error {
	b, err := os.ReadFile("../manifests/rbac.yaml")
	if err != nil {
		return err
	}
	subjects := []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: agentGroup}}
	clusterRoles := 0
	for _, doc := range strings.Split(string(b), "\n---") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return err
		}
		switch meta.Kind {
		case "ClusterRole":
			var role rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict([]byte(doc), &role); err != nil {
				return err
			}
			if _, err := l.Kube.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil {
				return err
			}
			bind := &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: role.Name},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
				Subjects:   subjects,
			}
			if _, err := l.Kube.RbacV1().ClusterRoleBindings().Create(ctx, bind, metav1.CreateOptions{}); err != nil {
				return err
			}
			clusterRoles++
		case "Role":
			var role rbacv1.Role
			if err := yaml.UnmarshalStrict([]byte(doc), &role); err != nil {
				return err
			}
			if _, err := l.Kube.RbacV1().Roles(role.Namespace).Create(ctx, &role, metav1.CreateOptions{}); err != nil {
				return err
			}
			bind := &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: role.Namespace},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
				Subjects:   subjects,
			}
			if _, err := l.Kube.RbacV1().RoleBindings(role.Namespace).Create(ctx, bind, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
	}
	if clusterRoles == 0 {
		return fmt.Errorf("no ClusterRole in manifests/rbac.yaml")
	}
	return nil
}

// installCRDs creates every CRD of manifests/crds and waits until each is Established.
func installCRDs(ctx context.Context, dyn dynamic.Interface) error {
	files, err := filepath.Glob("../manifests/crds/*.yaml")
	if err != nil || len(files) == 0 {
		return fmt.Errorf("manifests/crds: no CRDs (%v)", err)
	}
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		j, err := yaml.YAMLToJSON(b)
		if err != nil {
			return fmt.Errorf("%s: %v", f, err)
		}
		crd := &unstructured.Unstructured{}
		if err := crd.UnmarshalJSON(j); err != nil {
			return fmt.Errorf("%s: %v", f, err)
		}
		if _, err := dyn.Resource(crdResource).Create(ctx, crd, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
			return fmt.Errorf("%s: the API server refuses the CRD: %v", filepath.Base(f), err)
		}
		names = append(names, crd.GetName())
	}
	for _, n := range names {
		for {
			if err := crdEstablished(ctx, dyn, n); err == nil {
				break
			} else if ctx.Err() != nil {
				return fmt.Errorf("CRD %s: %v", n, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// crdEstablished returns nil once the CRD named n is Established.
func crdEstablished(ctx context.Context, dyn dynamic.Interface, n string) error {
	crd, err := dyn.Resource(crdResource).Get(ctx, n, metav1.GetOptions{})
	if err != nil {
		return err
	}
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return nil
		}
	}
	return fmt.Errorf("conditions %v", conds)
}

// needLab returns the shared lab once it has converged, or skips (fails under CI) saying why there is none.
func needLab(t testing.TB) *lab.Lab {
	t.Helper()
	if shared == nil {
		if os.Getenv("CI") == "true" && !testing.Short() {
			t.Fatalf("the lab must run in CI: %v", labErr)
		}
		t.Skipf("no lab: %v", labErr)
	}
	waitConverged(t, shared)
	return shared
}

// waitConverged waits until every node is Established with the ToR and every other node, and every node's
// kernel has every other node's pod CIDR.
func waitConverged(t testing.TB, l *lab.Lab) {
	t.Helper()
	eventually(t, 60*time.Second, "the lab converges", func(ctx context.Context) error {
		for _, n := range l.Nodes {
			st, err := neighbors(ctx, n)
			if err != nil {
				return err
			}
			want := []netip.Addr{l.ToR.IP}
			for _, o := range l.Nodes {
				if o != n {
					want = append(want, o.IP)
				}
			}
			for _, w := range want {
				if st[w] != "ESTABLISHED" {
					return fmt.Errorf("%s: session with %s is %q", n.Name, w, st[w])
				}
			}
			rt, err := kernelRoutes(ctx, n)
			if err != nil {
				return err
			}
			for _, o := range l.Nodes {
				if o != n && !slices.Equal(rt[o.PodCIDR], []netip.Addr{o.IP}) {
					return fmt.Errorf("%s: route to %s is %v, want via %s", n.Name, o.PodCIDR, rt[o.PodCIDR], o.IP)
				}
			}
		}
		return nil
	})
}

// eventually retries f every 100 ms until it returns nil or timeout passes, then fails with f's last error.
func eventually(t testing.TB, timeout time.Duration, what string, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var err error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		err = f(cctx)
		ccancel()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// neighbors runs `gobgp neighbor -j` in the node's namespace (the stock CLI against the agent's gRPC API)
// and returns each peer's session state.
func neighbors(ctx context.Context, n *lab.Node) (map[netip.Addr]string, error) {
	out, err := n.Exec(ctx, "gobgp", "neighbor", "-j")
	if err != nil {
		return nil, fmt.Errorf("%s: gobgp neighbor: %v: %s", n.Name, err, out)
	}
	var peers []struct {
		State struct {
			NeighborAddress string `json:"neighbor_address"`
			SessionState    int    `json:"session_state"`
		} `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		return nil, fmt.Errorf("%s: gobgp neighbor -j: %v", n.Name, err)
	}
	names := []string{"UNKNOWN", "IDLE", "CONNECT", "ACTIVE", "OPENSENT", "OPENCONFIRM", "ESTABLISHED"}
	res := map[netip.Addr]string{}
	for _, p := range peers {
		a, err := netip.ParseAddr(p.State.NeighborAddress)
		if err != nil {
			continue
		}
		s := "?"
		if p.State.SessionState >= 0 && p.State.SessionState < len(names) {
			s = names[p.State.SessionState]
		}
		res[a] = s
	}
	return res, nil
}

// kernelRoutes returns the node's routes of Canopy's protocol (186), next hops sorted.
func kernelRoutes(ctx context.Context, n *lab.Node) (map[netip.Prefix][]netip.Addr, error) {
	return routesIn(ctx, n.Exec, "proto", "186")
}

func routesIn(ctx context.Context, exec func(context.Context, ...string) (string, error), filter ...string) (map[netip.Prefix][]netip.Addr, error) {
	out, err := exec(ctx, append([]string{"ip", "-j", "route", "show"}, filter...)...)
	if err != nil {
		return nil, fmt.Errorf("ip route: %v: %s", err, out)
	}
	var rs []struct {
		Dst      string `json:"dst"`
		Gateway  string `json:"gateway"`
		Nexthops []struct {
			Gateway string `json:"gateway"`
		} `json:"nexthops"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return nil, fmt.Errorf("ip -j route: %v: %s", err, out)
	}
	res := map[netip.Prefix][]netip.Addr{}
	for _, r := range rs {
		dst := r.Dst
		if dst == "default" {
			dst = "0.0.0.0/0"
		} else if !strings.Contains(dst, "/") { // a host route: /32, or /128 for IPv6 (ip -6)
			if strings.Contains(dst, ":") {
				dst += "/128"
			} else {
				dst += "/32"
			}
		}
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			continue
		}
		var nhs []netip.Addr
		if a, err := netip.ParseAddr(r.Gateway); err == nil {
			nhs = append(nhs, a)
		}
		for _, h := range r.Nexthops {
			if a, err := netip.ParseAddr(h.Gateway); err == nil {
				nhs = append(nhs, a)
			}
		}
		slices.SortFunc(nhs, func(a, b netip.Addr) int { return a.Compare(b) })
		res[p] = nhs
	}
	return res, nil
}
