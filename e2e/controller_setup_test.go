package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"canopy.io/canopy/e2e/lab"
	"canopy.io/canopy/loadbalancer"
)

// controllerBinEnv names the prebuilt canopy-controller (make sets it); without it the test builds one.
const controllerBinEnv = "CANOPY_CONTROLLER_BIN"

var controllerBuild struct {
	sync.Mutex
	path string
}

// controllerBin returns $CANOPY_CONTROLLER_BIN, or builds cmd/canopy-controller once into the lab's work
// directory (removed with the lab).
func controllerBin(l *lab.Lab) (string, error) {
	if b := os.Getenv(controllerBinEnv); b != "" {
		return filepath.Abs(b)
	}
	controllerBuild.Lock()
	defer controllerBuild.Unlock()
	if controllerBuild.path != "" {
		if _, err := os.Stat(controllerBuild.path); err == nil {
			return controllerBuild.path, nil
		}
	}
	path := filepath.Join(l.WorkDir, "bin", "canopy-controller")
	if out, err := exec.Command("go", "build", "-o", path, "../cmd/canopy-controller").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/canopy-controller (or set %s): %v: %s", controllerBinEnv, err, out)
	}
	controllerBuild.path = path
	return path, nil
}

// controllerRBAC is manifests/rbac-controller.yaml, decoded.
type controllerRBAC struct {
	ServiceAccount     *corev1.ServiceAccount
	ClusterRole        *rbacv1.ClusterRole
	ClusterRoleBinding *rbacv1.ClusterRoleBinding
	Role               *rbacv1.Role
	RoleBinding        *rbacv1.RoleBinding
}

// readControllerRBAC decodes manifests/rbac-controller.yaml strictly: one object of each kind, nothing else.
func readControllerRBAC() (*controllerRBAC, error) {
	const path = "../manifests/rbac-controller.yaml"
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r controllerRBAC
	for _, doc := range strings.Split(string(b), "\n---") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var into any
		switch meta.Kind {
		case "":
			continue
		case "ServiceAccount":
			r.ServiceAccount = &corev1.ServiceAccount{}
			into = r.ServiceAccount
		case "ClusterRole":
			r.ClusterRole = &rbacv1.ClusterRole{}
			into = r.ClusterRole
		case "ClusterRoleBinding":
			r.ClusterRoleBinding = &rbacv1.ClusterRoleBinding{}
			into = r.ClusterRoleBinding
		case "Role":
			r.Role = &rbacv1.Role{}
			into = r.Role
		case "RoleBinding":
			r.RoleBinding = &rbacv1.RoleBinding{}
			into = r.RoleBinding
		default:
			return nil, fmt.Errorf("%s: unexpected kind %s", path, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, meta.Kind, err)
		}
	}
	if r.ServiceAccount == nil || r.ClusterRole == nil || r.ClusterRoleBinding == nil || r.Role == nil || r.RoleBinding == nil {
		return nil, fmt.Errorf("%s: want a ServiceAccount, ClusterRole, ClusterRoleBinding, Role and RoleBinding", path)
	}
	if r.ServiceAccount.Namespace != lab.ControllerNamespace || r.ServiceAccount.Name != lab.ControllerServiceAccount {
		return nil, fmt.Errorf("%s: the ServiceAccount is %s/%s, the lab runs the controller as %s/%s", path,
			r.ServiceAccount.Namespace, r.ServiceAccount.Name, lab.ControllerNamespace, lab.ControllerServiceAccount)
	}
	return &r, nil
}

// applyControllerRBAC creates (or updates to the manifest) every object of manifests/rbac-controller.yaml in
// the lab, so the controller runs with exactly the rights the manifest grants. It is idempotent.
func applyControllerRBAC(ctx context.Context, l *lab.Lab) (*controllerRBAC, error) {
	r, err := readControllerRBAC()
	if err != nil {
		return nil, err
	}
	c := l.Kube.RbacV1()
	steps := []struct {
		what           string
		create, update func() error
	}{
		{"ServiceAccount", func() error {
			_, err := l.Kube.CoreV1().ServiceAccounts(r.ServiceAccount.Namespace).Create(ctx, r.ServiceAccount.DeepCopy(), metav1.CreateOptions{})
			return err
		}, func() error { return nil }}, // nothing to update: its token must stay valid
		{"ClusterRole", func() error {
			_, err := c.ClusterRoles().Create(ctx, r.ClusterRole.DeepCopy(), metav1.CreateOptions{})
			return err
		}, func() error {
			cur, err := c.ClusterRoles().Get(ctx, r.ClusterRole.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Rules = r.ClusterRole.Rules
			_, err = c.ClusterRoles().Update(ctx, cur, metav1.UpdateOptions{})
			return err
		}},
		{"ClusterRoleBinding", func() error {
			_, err := c.ClusterRoleBindings().Create(ctx, r.ClusterRoleBinding.DeepCopy(), metav1.CreateOptions{})
			return err
		}, func() error {
			cur, err := c.ClusterRoleBindings().Get(ctx, r.ClusterRoleBinding.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Subjects = r.ClusterRoleBinding.Subjects
			_, err = c.ClusterRoleBindings().Update(ctx, cur, metav1.UpdateOptions{})
			return err
		}},
		{"Role", func() error { return ctlApplyRole(ctx, l, r.Role) }, nil},
		{"RoleBinding", func() error { return ctlApplyRoleBinding(ctx, l, r.RoleBinding) }, nil},
	}
	for _, s := range steps {
		err := s.create()
		if apierrors.IsAlreadyExists(err) && s.update != nil {
			err = s.update()
		}
		if err != nil {
			return nil, fmt.Errorf("controller RBAC: %s: %w", s.what, err)
		}
	}
	return r, nil
}

// ctlApplyRole creates role, or makes the existing one's rules the same.
func ctlApplyRole(ctx context.Context, l *lab.Lab, role *rbacv1.Role) error {
	c := l.Kube.RbacV1().Roles(role.Namespace)
	_, err := c.Create(ctx, role.DeepCopy(), metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	cur, err := c.Get(ctx, role.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	cur.Rules = role.Rules
	_, err = c.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// ctlApplyRoleBinding creates b, or makes the existing one's subjects the same.
func ctlApplyRoleBinding(ctx context.Context, l *lab.Lab, b *rbacv1.RoleBinding) error {
	c := l.Kube.RbacV1().RoleBindings(b.Namespace)
	_, err := c.Create(ctx, b.DeepCopy(), metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	cur, err := c.Get(ctx, b.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	cur.Subjects = b.Subjects
	_, err = c.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// ctlLeaseHolder returns the holder of the allocator's Lease in namespace ns ("" if none holds it).
func ctlLeaseHolder(ctx context.Context, l *lab.Lab, ns string) (string, error) {
	le, err := l.Kube.CoordinationV1().Leases(ns).Get(ctx, loadbalancer.LeaseName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if le.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *le.Spec.HolderIdentity, nil
}

// sharedControllerName is the identity (and process name) of the lab's canopy-controller.
const sharedControllerName = "canopy-controller"

// startSharedController runs canopy-controller for the whole e2e suite, as a cluster would (TestMain): the
// objects of manifests/rbac-controller.yaml, then the controller in the control-plane namespace under its
// ServiceAccount, allocating from lbRange for the default class with its Lease in kube-system. It returns once
// the controller holds the Lease.
func startSharedController(ctx context.Context, l *lab.Lab) error {
	if _, err := applyControllerRBAC(ctx, l); err != nil {
		return err
	}
	bin, err := controllerBin(l)
	if err != nil {
		return err
	}
	p, err := l.StartController(ctx, sharedControllerName, bin, "--loadbalancer-ip-range="+lbRange, "--log-level=debug")
	if err != nil {
		return err
	}
	for {
		h, err := ctlLeaseHolder(ctx, l, lab.ControllerNamespace)
		if err == nil && h == sharedControllerName {
			return nil
		}
		if exited, perr := p.Exited(); exited {
			return fmt.Errorf("canopy-controller exited: %v (log %s)", perr, p.LogPath)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("canopy-controller never took the Lease %s/%s (holder %q, %v; log %s)", lab.ControllerNamespace,
				loadbalancer.LeaseName, h, err, p.LogPath)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
