package e2e

// The controller/agent split (MetalLB's model): canopy-controller allocates LoadBalancer IPs under its own
// ServiceAccount with exactly the rights of manifests/rbac-controller.yaml; the node agents' ClusterRole
// (manifests/rbac.yaml) can no longer write services/status or the allocator's Lease; every manifest passes the
// lab's kube-apiserver; and the agent runs with only the capabilities its DaemonSet grants.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"canopy.io/canopy/e2e/lab"
	"canopy.io/canopy/loadbalancer"
)

// The test's own controller pair serves a class and a range of its own, with its Lease in namespace default, so
// it never competes with a controller the suite runs for the default class (startSharedController).
const (
	ctlClass   = "canopy.io/e2e-controller"
	ctlRange   = "10.202.0.0/29" // .1-.6
	ctlLeaseNS = "default"
)

// The identities under test, as the API server sees them.
var controllerGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + lab.ControllerNamespace, "system:authenticated"}

func controllerUser() string {
	return "system:serviceaccount:" + lab.ControllerNamespace + ":" + lab.ControllerServiceAccount
}

func mustControllerRBAC(t *testing.T, l *lab.Lab) (*controllerRBAC, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := applyControllerRBAC(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := controllerBin(l)
	if err != nil {
		t.Fatal(err)
	}
	return r, bin
}

// (a) Two replicas of canopy-controller, under the ServiceAccount and rights of the manifests: one takes the
// Lease, a LoadBalancer Service gets the first address of the range (with an Event), the standby says so on
// /readyz; SIGTERM stops the leader cleanly and releases the Lease, the other replica takes over within seconds,
// keeps the first Service's address and gives a new Service the next one. Neither ever meets a refusal.
func TestControllerAllocates(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	rbac, bin := mustControllerRBAC(t, l)
	// The manifest's Role, for the test's lease namespace (the manifest's is kube-system).
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "canopy-controller-e2e", Namespace: ctlLeaseNS}, Rules: rbac.Role.Rules}
	bind := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "canopy-controller-e2e", Namespace: ctlLeaseNS},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}, Subjects: rbac.RoleBinding.Subjects}
	if err := ctlApplyRole(ctx, l, role); err != nil {
		t.Fatal(err)
	}
	if err := ctlApplyRoleBinding(ctx, l, bind); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.Kube.RbacV1().RoleBindings(ctlLeaseNS).Delete(ctx, bind.Name, metav1.DeleteOptions{})
		_ = l.Kube.RbacV1().Roles(ctlLeaseNS).Delete(ctx, role.Name, metav1.DeleteOptions{})
		_ = l.Kube.CoordinationV1().Leases(ctlLeaseNS).Delete(ctx, loadbalancer.LeaseName, metav1.DeleteOptions{})
	})

	type replica struct {
		name, metrics string
		proc          *lab.Proc
	}
	replicas := []*replica{{name: "canopy-controller-e2e-a", metrics: "127.0.0.1:19471"}, {name: "canopy-controller-e2e-b", metrics: "127.0.0.1:19472"}}
	t0 := time.Now()
	for _, r := range replicas {
		p, err := l.StartController(ctx, r.name, bin, "--loadbalancer-ip-range="+ctlRange, "--loadbalancer-class="+ctlClass,
			"--lease-namespace="+ctlLeaseNS, "--metrics-addr="+r.metrics, "--log-level=debug")
		if err != nil {
			t.Fatal(err)
		}
		r.proc = p
		t.Cleanup(func() {
			if err := p.Stop(15 * time.Second); err != nil {
				t.Errorf("%s: %v", r.name, err)
			}
			if _, err := p.Exited(); err != nil {
				t.Errorf("%s exited with %v after SIGTERM, want status 0 (log %s)", r.name, err, p.LogPath)
			}
			if b, err := os.ReadFile(p.LogPath); err == nil && strings.Contains(strings.ToLower(string(b)), "forbidden") {
				t.Errorf("%s met a refusal: its rights (manifests/rbac-controller.yaml) miss something it uses; log %s", r.name, p.LogPath)
				l.KeepWorkDir()
			}
		})
	}
	byName := func(n string) *replica {
		for _, r := range replicas {
			if r.name == n {
				return r
			}
		}
		return nil
	}
	var leader *replica
	eventually(t, 30*time.Second, "a replica takes the Lease", func(ctx context.Context) error {
		h, err := ctlLeaseHolder(ctx, l, ctlLeaseNS)
		if err != nil {
			return err
		}
		if leader = byName(h); leader == nil {
			return fmt.Errorf("lease holder %q", h)
		}
		return nil
	})
	t.Logf("%s holds the Lease %s after start", leader.name, time.Since(t0).Round(time.Millisecond))
	standby := replicas[0]
	if standby == leader {
		standby = replicas[1]
	}

	lbService := func(name string) {
		svc := webService(name, name)
		svc.Namespace = ctlLeaseNS
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		class := ctlClass
		svc.Spec.LoadBalancerClass = &class
		createService(t, l, svc)
	}
	ipOf := func(ctx context.Context, name string) (netip.Addr, error) {
		s, err := l.Kube.CoreV1().Services(ctlLeaseNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return netip.Addr{}, err
		}
		if len(s.Status.LoadBalancer.Ingress) == 0 {
			return netip.Addr{}, fmt.Errorf("%s: no ingress yet", name)
		}
		return netip.ParseAddr(s.Status.LoadBalancer.Ingress[0].IP)
	}
	waitIP := func(name string, want netip.Addr) time.Duration {
		t.Helper()
		t0 := time.Now()
		eventually(t, 20*time.Second, name+" gets "+want.String(), func(ctx context.Context) error {
			ip, err := ipOf(ctx, name)
			if err != nil {
				return err
			}
			if ip != want {
				return fmt.Errorf("%s got %s, want %s", name, ip, want)
			}
			return nil
		})
		return time.Since(t0)
	}
	first, second := netip.MustParseAddr("10.202.0.1"), netip.MustParseAddr("10.202.0.2")
	lbService("ctl-e2e-1")
	t.Logf("ctl-e2e-1 got %s from %s %s after it was created", first, leader.name, waitIP("ctl-e2e-1", first).Round(time.Millisecond))
	eventually(t, 10*time.Second, "an Event says the address was allocated", func(ctx context.Context) error {
		evs, err := l.Kube.CoreV1().Events(ctlLeaseNS).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=ctl-e2e-1,reason=" + loadbalancer.ReasonAllocated})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Source.Component == "canopy-controller" && strings.Contains(e.Message, first.String()) {
				return nil
			}
		}
		return fmt.Errorf("%d %s events, none from canopy-controller naming %s", len(evs.Items), loadbalancer.ReasonAllocated, first)
	})
	for _, c := range []struct {
		r    *replica
		want string
	}{{leader, "leading"}, {standby, "standing by"}} {
		eventually(t, 10*time.Second, c.r.name+" /readyz", func(ctx context.Context) error {
			code, body, err := ctlGet(ctx, l.CP, "http://"+c.r.metrics+"/readyz")
			if err != nil {
				return err
			}
			if code != http.StatusOK || !strings.Contains(body, c.want) {
				return fmt.Errorf("%d %q, want 200 saying %q", code, body, c.want)
			}
			return nil
		})
	}
	if _, body, err := ctlGet(ctx, l.CP, "http://"+leader.metrics+"/metrics"); err != nil || !strings.Contains(body, "canopy_lballoc_leader 1") ||
		!strings.Contains(body, "canopy_lballoc_allocated_ips 1") {
		t.Errorf("leader's metrics: %v\n%s", err, ctlGrepLines(body, "canopy_lballoc"))
	}

	// Failover: a clean stop of the leader releases the Lease at once.
	t1 := time.Now()
	if err := leader.proc.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.proc.Exited(); err != nil {
		t.Fatalf("%s exited with %v after SIGTERM, want status 0", leader.name, err)
	}
	stopped := time.Since(t1)
	eventually(t, 10*time.Second, standby.name+" takes the released Lease", func(ctx context.Context) error {
		if h, err := ctlLeaseHolder(ctx, l, ctlLeaseNS); err != nil || h != standby.name {
			return fmt.Errorf("holder %q (%v)", h, err)
		}
		return nil
	})
	t.Logf("%s stopped %s after SIGTERM; %s held the Lease %s after the SIGTERM (the Lease lasts %s)", leader.name,
		stopped.Round(time.Millisecond), standby.name, time.Since(t1).Round(time.Millisecond), loadbalancer.DefaultLeaseDuration)
	lbService("ctl-e2e-2")
	t.Logf("ctl-e2e-2 got %s from %s %s after it was created", second, standby.name, waitIP("ctl-e2e-2", second).Round(time.Millisecond))
	if ip, err := ipOf(ctx, "ctl-e2e-1"); err != nil || ip != first {
		t.Errorf("ctl-e2e-1 has %s (%v) after the failover, want %s kept", ip, err, first)
	}
}

// (b) The node agents' identity (group canopy-agents, bound to the ClusterRole canopy of manifests/rbac.yaml)
// may no longer write services/status or the allocator's Lease: asked (SubjectAccessReview) and tried (with
// node1's own credentials).
func TestControllerAgentsCannotAllocate(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	n := l.Nodes[0]
	user, groups := "system:canopy:"+n.Name, []string{agentGroup, "system:authenticated"}
	ctlCheckAccess(t, l, "agent", user, groups, []ctlAccess{
		{allow: true, verb: "list", resource: "services"}, // what it still needs: the denials below are not blanket ones
		{allow: true, verb: "watch", group: "discovery.k8s.io", resource: "endpointslices"},
		{allow: false, ns: "default", verb: "update", resource: "services", sub: "status"},
		{allow: false, ns: "default", verb: "patch", resource: "services", sub: "status"},
		{allow: false, ns: "default", verb: "update", resource: "services"},
		{allow: false, ns: "kube-system", verb: "get", group: "coordination.k8s.io", resource: "leases", name: loadbalancer.LeaseName},
		{allow: false, ns: "kube-system", verb: "update", group: "coordination.k8s.io", resource: "leases", name: loadbalancer.LeaseName},
		{allow: false, ns: "kube-system", verb: "create", group: "coordination.k8s.io", resource: "leases"},
	})

	rc, err := l.RestConfigFor(n.KubeconfigPath)
	if err != nil {
		t.Fatal(err)
	}
	agent := kubernetes.NewForConfigOrDie(rc)
	createService(t, l, webService("ctl-agent-probe", "ctl-agent-probe"))
	svc, err := agent.CoreV1().Services("default").Get(ctx, "ctl-agent-probe", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the agent's identity cannot even read the Service: %v", err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "10.200.3.250"}}
	_, err = agent.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{})
	ctlWantForbidden(t, "the agent writing services/status", err)
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: loadbalancer.LeaseName, Namespace: "kube-system"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &n.Name}}
	_, err = agent.CoordinationV1().Leases("kube-system").Update(ctx, lease, metav1.UpdateOptions{})
	ctlWantForbidden(t, "the agent updating the Lease kube-system/"+loadbalancer.LeaseName, err)
	_, err = agent.CoordinationV1().Leases("kube-system").Create(ctx, lease, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	ctlWantForbidden(t, "the agent creating the Lease kube-system/"+loadbalancer.LeaseName, err)
}

// (c) The controller's ServiceAccount may do what the allocator uses — read Services, write their status, make
// Events, hold its own Lease in kube-system — and nothing else: asked (SubjectAccessReview) and, for a few,
// tried with its own token.
func TestControllerLeastPrivilege(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	mustControllerRBAC(t, l)
	ls := func(verb, ns, name string) ctlAccess {
		return ctlAccess{ns: ns, verb: verb, group: "coordination.k8s.io", resource: "leases", name: name}
	}
	allow := func(c ctlAccess) ctlAccess { c.allow = true; return c }
	ctlCheckAccess(t, l, "controller", controllerUser(), controllerGroups, []ctlAccess{
		// What the allocator does.
		{allow: true, verb: "list", resource: "services"},
		{allow: true, verb: "watch", resource: "services"},
		{allow: true, ns: "team-a", verb: "get", resource: "services"},
		{allow: true, ns: "team-a", verb: "update", resource: "services", sub: "status"},
		{allow: true, ns: "team-a", verb: "create", resource: "events"},
		{allow: true, ns: "team-a", verb: "patch", resource: "events"},
		allow(ls("get", "kube-system", loadbalancer.LeaseName)),
		allow(ls("update", "kube-system", loadbalancer.LeaseName)),
		allow(ls("create", "kube-system", "")),
		// Nothing more.
		{ns: "team-a", verb: "update", resource: "services"},
		{ns: "team-a", verb: "patch", resource: "services"},
		{ns: "team-a", verb: "create", resource: "services"},
		{ns: "team-a", verb: "delete", resource: "services"},
		{ns: "team-a", verb: "patch", resource: "services", sub: "status"},
		{ns: "team-a", verb: "update", resource: "events"},
		{ns: "team-a", verb: "delete", resource: "events"},
		{ns: "team-a", verb: "update", group: "discovery.k8s.io", resource: "endpointslices"},
		{ns: "team-a", verb: "create", resource: "pods"},
		{ns: "team-a", verb: "delete", resource: "pods"},
		{ns: "team-a", verb: "create", resource: "pods", sub: "exec"},
		{verb: "list", resource: "pods"},
		{verb: "update", resource: "nodes"},
		{verb: "patch", resource: "nodes", sub: "status"},
		{verb: "delete", resource: "nodes"},
		{verb: "list", resource: "secrets"},
		{ns: "kube-system", verb: "get", resource: "secrets"},
		{ns: "kube-system", verb: "list", resource: "configmaps"},
		{ns: "kube-system", verb: "create", resource: "serviceaccounts", sub: "token"},
		{verb: "impersonate", resource: "users"},
		{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings"},
		{verb: "escalate", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
		{verb: "list", group: "networking.k8s.io", resource: "networkpolicies"},
		ls("get", "kube-system", "kube-controller-manager"),
		ls("update", "kube-system", "kube-controller-manager"),
		ls("delete", "kube-system", loadbalancer.LeaseName),
		ls("patch", "kube-system", loadbalancer.LeaseName),
		ls("list", "kube-system", ""),
		ls("update", "kube-public", loadbalancer.LeaseName),
		ls("create", "kube-public", ""),
	})

	kc, err := l.ServiceAccountKubeconfig(ctx, lab.ControllerNamespace, lab.ControllerServiceAccount)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.RestConfigFor(kc)
	if err != nil {
		t.Fatal(err)
	}
	ctl := kubernetes.NewForConfigOrDie(rc)
	dry := []string{metav1.DryRunAll}
	createService(t, l, webService("ctl-priv-probe", "ctl-priv-probe"))
	svc, err := ctl.CoreV1().Services("default").Get(ctx, "ctl-priv-probe", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the controller cannot read a Service: %v", err)
	}
	if _, err := ctl.CoreV1().Services("default").UpdateStatus(ctx, svc.DeepCopy(), metav1.UpdateOptions{DryRun: dry}); err != nil {
		t.Errorf("the controller cannot write services/status: %v", err)
	}
	spec := svc.DeepCopy()
	spec.Spec.ExternalIPs = []string{"10.201.0.99"}
	_, err = ctl.CoreV1().Services("default").Update(ctx, spec, metav1.UpdateOptions{DryRun: dry})
	ctlWantForbidden(t, "the controller changing a Service's spec", err)
	_, err = ctl.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
	ctlWantForbidden(t, "the controller listing Secrets", err)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ctl-priv-probe"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	_, err = ctl.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{DryRun: dry})
	ctlWantForbidden(t, "the controller creating a Pod", err)
	node, err := l.Kube.CoreV1().Nodes().Get(ctx, l.Nodes[0].Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Labels["canopy.io/e2e"] = "x"
	_, err = ctl.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{DryRun: dry})
	ctlWantForbidden(t, "the controller updating a Node", err)
	other := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "canopy-e2e-other", Namespace: "kube-system"}}
	if _, err := l.Kube.CoordinationV1().Leases("kube-system").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.Kube.CoordinationV1().Leases("kube-system").Delete(ctx, other.Name, metav1.DeleteOptions{})
	})
	_, err = ctl.CoordinationV1().Leases("kube-system").Get(ctx, other.Name, metav1.GetOptions{})
	ctlWantForbidden(t, "the controller reading another Lease of kube-system", err)
	if _, err := ctl.CoordinationV1().Leases("kube-system").Get(ctx, loadbalancer.LeaseName, metav1.GetOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("the controller reading its own Lease: %v", err)
	}
}

// (d) Every manifest passes the lab's kube-apiserver: a server-side apply with dryRun=All and strict field
// validation (unknown or duplicate fields fail), which runs defaulting, validation and admission and stores
// nothing. The controller's pod also passes the "restricted" Pod Security Standard (a privileged pod, the
// control, does not).
func TestControllerManifestsDryRun(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	files, err := filepath.Glob("../manifests/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	dyn := dynamic.NewForConfigOrDie(l.RestConfig())
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(l.Kube.Discovery()))
	force := true
	applied := 0
	for _, f := range files {
		objs, err := ctlManifestObjects(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, obj := range objs {
			gvk := obj.GroupVersionKind()
			what := fmt.Sprintf("%s: %s %s/%s", filepath.Base(f), gvk.Kind, obj.GetNamespace(), obj.GetName())
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Errorf("%s: %v", what, err)
				continue
			}
			var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if m.Scope.Name() == "namespace" {
				ns := obj.GetNamespace()
				if ns == "" {
					ns = "default"
				}
				ri = dyn.Resource(m.Resource).Namespace(ns)
			}
			data, _ := json.Marshal(obj)
			_, err = ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll},
				FieldManager: "canopy-e2e-dry-run", Force: &force, FieldValidation: metav1.FieldValidationStrict})
			if err != nil {
				t.Errorf("%s: server-side dry run: %v", what, err)
				continue
			}
			applied++
		}
	}
	t.Logf("%d objects from %d manifests pass a server-side dry run", applied, len(files))
	// Nothing was stored.
	if _, err := l.Kube.AppsV1().Deployments("kube-system").Get(ctx, "canopy-controller", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the dry run stored the Deployment: %v", err)
	}

	dep := ctlReadDeployment(t, "../manifests/controller.yaml")
	ctlPodSecurityRestricted(t, l, dep.Spec.Template)
}

// ctlPodSecurityRestricted checks (dry run) that a pod from template is admitted in a namespace enforcing the
// restricted Pod Security Standard, and that a privileged pod is not (so the check checks).
func ctlPodSecurityRestricted(t *testing.T, l *lab.Lab, tpl corev1.PodTemplateSpec) {
	t.Helper()
	ctx := context.Background()
	const ns, label = "kube-public", "pod-security.kubernetes.io/enforce"
	patch := func(v string) {
		val := "null"
		if v != "" {
			val = fmt.Sprintf("%q", v)
		}
		p := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, label, val)
		if _, err := l.Kube.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(p), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	patch("restricted")
	t.Cleanup(func() { patch("") })
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	priv := true
	control := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "psa-control", Namespace: ns}, Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "c", Image: "x", SecurityContext: &corev1.SecurityContext{Privileged: &priv}}}}}
	eventually(t, 10*time.Second, "the restricted level is enforced in "+ns, func(ctx context.Context) error {
		_, err := l.Kube.CoreV1().Pods(ns).Create(ctx, control, dry)
		if err == nil {
			return fmt.Errorf("a privileged pod is admitted")
		}
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "restricted") {
			return err
		}
		return nil
	})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "canopy-controller-psa", Namespace: ns, Labels: tpl.Labels}, Spec: tpl.Spec}
	if _, err := l.Kube.CoreV1().Pods(ns).Create(ctx, pod, dry); err != nil {
		t.Errorf("canopy-controller's pod breaks the restricted Pod Security Standard: %v", err)
	}
}

// The manifests say what this split promises, checked without a cluster: the agents' ClusterRole writes only
// Events and their nodes' BGPNodeStatus (get/create/delete, and update of its status); the controller's roles grant only what the allocator uses; the controller pod is non-root, read-only,
// unprivileged and capability-free, with probes and limits; the agent is not privileged and has exactly
// NET_ADMIN, NET_RAW and NET_BIND_SERVICE (SYS_MODULE only in its init container), the host's /run/canopy for
// the CNI hint socket, and a memory limit; agents and controller share the LoadBalancer ranges.
func TestControllerManifestsPromises(t *testing.T) {
	// The agents' ClusterRole: reads, and Events.
	agentRole := ctlReadClusterRole(t, "../manifests/rbac.yaml", "canopy")
	for _, r := range agentRole.Rules {
		for _, res := range r.Resources {
			write := slices.ContainsFunc(r.Verbs, func(v string) bool { return !slices.Contains([]string{"get", "list", "watch"}, v) })
			allowed := res == "events" || (slices.Equal(r.APIGroups, []string{"canopy.io"}) &&
				(res == "bgpnodestatuses" && slices.Equal(r.Verbs, []string{"get", "create", "delete"}) ||
					res == "bgpnodestatuses/status" && slices.Equal(r.Verbs, []string{"update"})))
			if res == "services/status" || res == "leases" || res == "*" || (write && !allowed) {
				t.Errorf("manifests/rbac.yaml: the agents' ClusterRole grants %v on %s (groups %v)", r.Verbs, res, r.APIGroups)
			}
		}
	}
	rbac, err := readControllerRBAC()
	if err != nil {
		t.Fatal(err)
	}
	wantRules := func(what string, got []rbacv1.PolicyRule, want map[string][]string) {
		t.Helper()
		seen := map[string][]string{}
		for _, r := range got {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					k := g + "/" + res
					if len(r.ResourceNames) > 0 {
						k += "[" + strings.Join(r.ResourceNames, ",") + "]"
					}
					seen[k] = append(seen[k], r.Verbs...)
				}
			}
		}
		for k := range seen {
			slices.Sort(seen[k])
		}
		for k := range want {
			slices.Sort(want[k])
		}
		if fmt.Sprint(seen) != fmt.Sprint(want) {
			t.Errorf("%s grants %v, want exactly %v", what, seen, want)
		}
	}
	wantRules("ClusterRole canopy-controller", rbac.ClusterRole.Rules, map[string][]string{
		"/services": {"get", "list", "watch"}, "/services/status": {"update"}, "/events": {"create", "patch"}})
	wantRules("Role canopy-controller", rbac.Role.Rules, map[string][]string{
		"coordination.k8s.io/leases[" + loadbalancer.LeaseName + "]": {"get", "update"}, "coordination.k8s.io/leases": {"create"}})
	if rbac.Role.Namespace != "kube-system" || rbac.RoleBinding.Namespace != "kube-system" || rbac.RoleBinding.RoleRef.Kind != "Role" {
		t.Errorf("the Lease rights must be a Role in kube-system: Role %s, RoleBinding %s -> %s", rbac.Role.Namespace, rbac.RoleBinding.Namespace, rbac.RoleBinding.RoleRef.Kind)
	}
	for _, s := range append(rbac.ClusterRoleBinding.Subjects, rbac.RoleBinding.Subjects...) {
		if s.Kind != "ServiceAccount" || s.Name != lab.ControllerServiceAccount || s.Namespace != lab.ControllerNamespace {
			t.Errorf("the controller's rights are bound to %s %s/%s, want only the ServiceAccount %s/%s", s.Kind, s.Namespace, s.Name,
				lab.ControllerNamespace, lab.ControllerServiceAccount)
		}
	}

	dep := ctlReadDeployment(t, "../manifests/controller.yaml")
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 || dep.Spec.Template.Spec.ServiceAccountName != lab.ControllerServiceAccount {
		t.Errorf("controller Deployment: replicas %v, ServiceAccount %q", dep.Spec.Replicas, dep.Spec.Template.Spec.ServiceAccountName)
	}
	ps := dep.Spec.Template.Spec
	if ps.HostNetwork || ps.HostPID || ps.HostIPC || len(ps.Volumes) > 0 {
		t.Errorf("controller pod: host namespaces or volumes: %+v", ps)
	}
	if len(ps.Containers) != 1 {
		t.Fatalf("controller pod: %d containers", len(ps.Containers))
	}
	c := ps.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || (sc.Privileged != nil && *sc.Privileged) ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("controller container securityContext: %+v", sc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("controller container resources: %+v", c.Resources)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Port.IntValue() != 9470 ||
		c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port.IntValue() != 9470 {
		t.Errorf("controller probes: %+v %+v", c.LivenessProbe, c.ReadinessProbe)
	}
	ctlRanges := ctlFlagValues(c.Args, "--loadbalancer-ip-range")
	if _, err := loadbalancer.ParseRanges(ctlRanges); err != nil || len(ctlRanges) == 0 {
		t.Errorf("controller --loadbalancer-ip-range %v: %v", ctlRanges, err)
	}

	ds := ctlReadDaemonSet(t)
	agent, init := ds.Spec.Template.Spec.Containers, ds.Spec.Template.Spec.InitContainers
	if len(agent) != 1 {
		t.Fatalf("DaemonSet: %d containers", len(agent))
	}
	for _, c := range append(slices.Clone(agent), init...) {
		if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || *c.SecurityContext.Privileged {
			t.Errorf("DaemonSet container %s is (or may be) privileged", c.Name)
			continue
		}
		if c.SecurityContext.Capabilities == nil || !slices.Equal(c.SecurityContext.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("DaemonSet container %s does not drop every capability first", c.Name)
		}
	}
	if got := ctlAgentCapabilities(t); !slices.Equal(got, []string{"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"}) {
		t.Errorf("the agent's capabilities are %v, want NET_ADMIN, NET_BIND_SERVICE, NET_RAW", got)
	}
	for _, c := range init {
		for _, cp := range c.SecurityContext.Capabilities.Add {
			if cp != "SYS_MODULE" && cp != "NET_ADMIN" {
				t.Errorf("init container %s has %s", c.Name, cp)
			}
		}
	}
	a := agent[0]
	if a.Resources.Limits.Memory().IsZero() {
		t.Error("the agent has no memory limit")
	}
	if slices.ContainsFunc(a.Args, func(s string) bool { return strings.HasPrefix(s, "--run-loadbalancer") }) {
		t.Error("the DaemonSet still runs the allocator (--run-loadbalancer)")
	}
	if got := ctlFlagValues(a.Args, "--loadbalancer-ip-range"); !slices.Equal(got, ctlRanges) {
		t.Errorf("the agents announce %v, the controller allocates from %v", got, ctlRanges)
	}
	var runCanopy bool
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil && v.HostPath.Path == "/run/canopy" && v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathDirectoryOrCreate {
			for _, m := range a.VolumeMounts {
				runCanopy = runCanopy || (m.Name == v.Name && m.MountPath == "/run/canopy")
			}
		}
	}
	if !runCanopy {
		t.Error("the agent does not mount the host's /run/canopy (DirectoryOrCreate) at /run/canopy: the CNI plugin cannot reach /run/canopy/cni.sock")
	}
}

// The agent does its whole job as its DaemonSet runs it. On node3: the init container's script (read from the
// manifest) runs first under setpriv with only the init container's capabilities and sets the sysctls through a
// writable /proc/sys/net (here the node's own; in a pod the host's, mounted at /host/proc/sys/net); then the
// agent runs with /proc/sys read-only (as in an unprivileged container), under setpriv with exactly the agent
// container's capabilities as bounding set and no_new_privs (allowPrivilegeEscalation: false). It peers,
// installs routes, syncs every controller (service proxy, NetworkPolicy, node setup), proxies a ClusterIP for a
// pod of its node, and logs no permission error.
func TestControllerSplitAgentCapabilities(t *testing.T) {
	l := needLab(t)
	ctlRequireSetpriv(t)
	ctx := context.Background()
	n := l.Nodes[len(l.Nodes)-1]
	ds := ctlReadDaemonSet(t)
	var prep *corev1.Container
	for i, c := range ds.Spec.Template.Spec.InitContainers {
		if c.Name == "prepare-node" {
			prep = &ds.Spec.Template.Spec.InitContainers[i]
		}
	}
	if prep == nil || len(prep.Command) != 3 || prep.Command[0] != "sh" || prep.Command[1] != "-c" {
		t.Fatalf("manifests/daemonset.yaml: no init container prepare-node running sh -c <script>")
	}
	setpriv := func(caps []corev1.Capability) []string {
		set := "-all"
		for _, c := range caps {
			set += ",+" + strings.ToLower(string(c))
		}
		return []string{"setpriv", "--inh-caps=" + set, "--ambient-caps=" + set, "--bounding-set=" + set, "--no-new-privs", "--"}
	}
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.StopAgent(); err != nil {
			t.Errorf("stop the agent run as the DaemonSet does: %v", err)
		}
		if err := n.StartAgent(); err != nil {
			t.Fatal(err)
		}
		waitConverged(t, l)
	})

	// The init container: it must set what the agent can no longer write.
	sysctls := []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/bridge/bridge-nf-call-iptables",
		"/proc/sys/net/bridge/bridge-nf-call-ip6tables"}
	for _, p := range sysctls {
		if out, err := n.Exec(ctx, "sh", "-c", "echo 0 > "+p); err != nil {
			t.Fatalf("%s: %v %s", p, err, out)
		}
	}
	script := strings.ReplaceAll(prep.Command[2], "/host/proc/sys/net", "/proc/sys/net")
	out, err := n.Exec(ctx, append(setpriv(prep.SecurityContext.Capabilities.Add), "sh", "-c", script)...)
	if err != nil {
		t.Fatalf("prepare-node's script with only %v: %v\n%s", prep.SecurityContext.Capabilities.Add, err, out)
	}
	for _, p := range sysctls {
		if v, err := n.Exec(ctx, "cat", p); err != nil || strings.TrimSpace(v) != "1" {
			t.Errorf("after prepare-node, %s is %q (%v), want 1", p, v, err)
		}
	}

	caps := ctlAgentCapabilities(t)
	var agentCaps []corev1.Capability
	for _, c := range caps {
		agentCaps = append(agentCaps, corev1.Capability(c))
	}
	readOnlyProcSys := []string{"unshare", "-m", "--propagation", "private", "sh", "-c",
		`mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"`, "sh"}
	logStart := ctlFileSize(n.LogPath)
	t0 := time.Now()
	if err := n.StartAgentUnder(append(readOnlyProcSys, setpriv(agentCaps)...)); err != nil {
		t.Fatal(err)
	}
	// ip netns exec, unshare, sh and setpriv exec the agent in turn: read its capabilities once it is the agent.
	pid := n.Agent().PID()
	bin, _ := filepath.EvalSymlinks(agentBin())
	eventually(t, 10*time.Second, "the wrappers exec the agent", func(context.Context) error {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != bin {
			return fmt.Errorf("pid %d is %q (%v), not yet %s", pid, exe, err, bin)
		}
		return nil
	})
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := ctlCapMask(t, caps)
	for _, line := range strings.Split(string(st), "\n") {
		if f := strings.Fields(line); len(f) == 2 && (f[0] == "CapEff:" || f[0] == "CapBnd:") && f[1] != want {
			t.Fatalf("the agent runs with %s %s, want %s (%v)", f[0], f[1], want, caps)
		}
	}
	if m, err := os.ReadFile(fmt.Sprintf("/proc/%d/mounts", pid)); err != nil || !strings.Contains(string(m), "proc /proc/sys proc ro,") {
		t.Fatalf("the agent's /proc/sys is not read-only (%v)", err)
	}
	waitConverged(t, l)
	eventually(t, 30*time.Second, n.Name+"'s agent is ready", func(ctx context.Context) error {
		code, body, err := ctlGet(ctx, &n.Host, "http://127.0.0.1:9469/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/readyz %d: %s", code, body)
		}
		return nil
	})
	t.Logf("%s's agent with only %v and a read-only /proc/sys: converged and ready %s after start", n.Name, caps,
		time.Since(t0).Round(time.Millisecond))
	backend(t, l, l.Nodes[0], "capsrv", "capsrv")
	svc := createService(t, l, webService("capsrv", "capsrv"))
	client := addPod(t, l, n, "capcli")
	eventually(t, 20*time.Second, "a pod on "+n.Name+" reaches a ClusterIP", func(ctx context.Context) error {
		line, err := readLine(ctx, &client.Host, "tcp", net.JoinHostPort(svc.Spec.ClusterIP, "80"))
		if err != nil {
			return err
		}
		if line != "capsrv" {
			return fmt.Errorf("answer %q", line)
		}
		return nil
	})
	log := ctlReadFrom(t, n.LogPath, logStart)
	for _, bad := range []string{"operation not permitted", "permission denied", "you must be root"} {
		if i := strings.Index(strings.ToLower(log), bad); i >= 0 {
			t.Errorf("the agent's log says %q: ...%s...", bad, log[max(0, i-200):min(len(log), i+100)])
		}
	}
	// The agent reads a sysctl before it writes it (prepare-node set them; its /proc/sys is read-only).
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(strings.ToLower(line), "read-only file system") {
			t.Errorf("the agent wrote a sysctl that was set already: %s", line)
		}
	}
}

// ctlAccess is one SubjectAccessReview: may the identity do verb on group/resource[/sub] (name) in ns?
type ctlAccess struct {
	allow                                bool
	ns, verb, group, resource, sub, name string
}

func (c ctlAccess) String() string {
	r := c.resource
	if c.group != "" {
		r = c.group + "/" + r
	}
	if c.sub != "" {
		r += "/" + c.sub
	}
	if c.name != "" {
		r += " " + c.name
	}
	where := "cluster-wide"
	if c.ns != "" {
		where = "in " + c.ns
	}
	return c.verb + " " + r + " " + where
}

// ctlCheckAccess asks the API server (as admin) whether user with groups may do each check, and fails each answer
// that differs from check.allow.
func ctlCheckAccess(t *testing.T, l *lab.Lab, who, user string, groups []string, checks []ctlAccess) {
	t.Helper()
	var allowed, denied int
	for _, c := range checks {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: c.ns, Verb: c.verb, Group: c.group, Resource: c.resource,
				Subresource: c.sub, Name: c.name}}}
		got, err := l.Kube.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed != c.allow {
			t.Errorf("%s (%s): %s: allowed=%v, want %v (%s)", who, user, c, got.Status.Allowed, c.allow, got.Status.Reason)
		}
		if c.allow {
			allowed++
		} else {
			denied++
		}
	}
	t.Logf("%s: %d rights it needs allowed, %d others denied", who, allowed, denied)
}

func ctlWantForbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) {
		t.Errorf("%s: want 403 Forbidden, got %v", what, err)
	}
}

// ctlGet GETs url from inside h's namespace.
func ctlGet(ctx context.Context, h *lab.Host, url string) (int, string, error) {
	req, err := newRequest(ctx, url)
	if err != nil {
		return 0, "", err
	}
	resp, err := h.HTTPClient().Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func ctlGrepLines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// ctlManifestObjects decodes every document of a manifest file.
func ctlManifestObjects(path string) ([]*unstructured.Unstructured, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, doc := range strings.Split(string(b), "\n---") {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if s := strings.TrimSpace(string(j)); s == "null" || s == "{}" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, u)
	}
	return out, nil
}

// ctlReadKind strictly decodes the one object of kind (and name, if not "") in path into into.
func ctlReadKind(t *testing.T, path, kind, name string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(b), "\n---") {
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if meta.Kind == kind && (name == "" || meta.Metadata.Name == name) {
			if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
				t.Fatalf("%s: %s: %v", path, kind, err)
			}
			return
		}
	}
	t.Fatalf("%s: no %s %s", path, kind, name)
}

func ctlReadDeployment(t *testing.T, path string) *appsv1.Deployment {
	var d appsv1.Deployment
	ctlReadKind(t, path, "Deployment", "", &d)
	return &d
}

func ctlReadDaemonSet(t *testing.T) *appsv1.DaemonSet {
	var d appsv1.DaemonSet
	ctlReadKind(t, "../manifests/daemonset.yaml", "DaemonSet", "", &d)
	return &d
}

func ctlReadClusterRole(t *testing.T, path, name string) *rbacv1.ClusterRole {
	var r rbacv1.ClusterRole
	ctlReadKind(t, path, "ClusterRole", name, &r)
	return &r
}

// ctlAgentCapabilities is the agent container's capabilities.add in manifests/daemonset.yaml, sorted.
func ctlAgentCapabilities(t *testing.T) []string {
	t.Helper()
	ds := ctlReadDaemonSet(t)
	var caps []string
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil {
			for _, cp := range c.SecurityContext.Capabilities.Add {
				caps = append(caps, string(cp))
			}
		}
	}
	slices.Sort(caps)
	return caps
}

// ctlCapMask is /proc/<pid>/status's hex mask of caps.
func ctlCapMask(t *testing.T, caps []string) string {
	t.Helper()
	bits := map[string]uint{"NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13, "SYS_MODULE": 16, "SYS_ADMIN": 21}
	var m uint64
	for _, c := range caps {
		b, ok := bits[c]
		if !ok {
			t.Fatalf("capability %s: add its bit number here", c)
		}
		m |= 1 << b
	}
	return fmt.Sprintf("%016x", m)
}

// ctlFlagValues returns the values of flag in args (--flag=v, comma lists split).
func ctlFlagValues(args []string, flag string) []string {
	var out []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			for _, p := range strings.Split(v, ",") {
				if p = strings.TrimSpace(p); p != "" {
					out = append(out, p)
				}
			}
		}
	}
	return out
}

func ctlRequireSetpriv(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("setpriv (util-linux) is needed: %v", err)
		}
		t.Skipf("no setpriv (util-linux): %v", err)
	}
}

func ctlFileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func ctlReadFrom(t *testing.T, path string, off int64) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off > int64(len(b)) {
		off = 0
	}
	return string(b[off:])
}
