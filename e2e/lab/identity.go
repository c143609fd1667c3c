package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// The identity canopy-controller runs under in a cluster (manifests/controller.yaml, rbac-controller.yaml), and
// so in the lab (StartController).
const (
	ControllerNamespace      = "kube-system"
	ControllerServiceAccount = "canopy-controller"
)

// serviceAccountTokenTTL is how long a token from ServiceAccountKubeconfig is valid.
const serviceAccountTokenTTL = 24 * 60 * 60

// ServiceAccountKubeconfig makes the ServiceAccount namespace/name if it is missing, asks the API server for a
// token of it (TokenRequest, valid 24 h) and writes a kubeconfig with that token to
// <WorkDir>/credentials/<namespace>-<name>.kubeconfig, usable from any lab namespace. A client using it is that
// ServiceAccount exactly as a pod's would be: user system:serviceaccount:<namespace>:<name>, groups
// system:serviceaccounts, system:serviceaccounts:<namespace> and system:authenticated; it has the rights bound
// to those, nothing else.
func (l *Lab) ServiceAccountKubeconfig(ctx context.Context, namespace, name string) (string, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if _, err := l.Kube.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("ServiceAccount %s/%s: %w", namespace, name, err)
	}
	ttl := int64(serviceAccountTokenTTL)
	tr, err := l.Kube.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &ttl}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for ServiceAccount %s/%s: %w", namespace, name, err)
	}
	if tr.Status.Token == "" {
		return "", fmt.Errorf("token for ServiceAccount %s/%s: the API server returned none", namespace, name)
	}
	dir := filepath.Join(l.WorkDir, "credentials")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, namespace+"-"+name+".kubeconfig")
	server := "https://" + netip.AddrPortFrom(l.CP.IP, apiPort).String()
	if err := writeKubeconfig(path, server, l.pki.caPEM, "system:serviceaccount:"+namespace+":"+name, tr.Status.Token); err != nil {
		return "", err
	}
	return path, nil
}

// RestConfigFor returns a rest.Config for the test process (dialing inside the control-plane namespace, like
// Kube) that authenticates with the bearer token of kubeconfig: a node's KubeconfigPath (the agent's identity)
// or one from ServiceAccountKubeconfig. Tests use it to act as that identity.
func (l *Lab) RestConfigFor(kubeconfig string) (*rest.Config, error) {
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		return nil, err
	}
	ctx, ok := cfg.Contexts[cfg.CurrentContext]
	if !ok {
		return nil, fmt.Errorf("%s: no current context", kubeconfig)
	}
	auth, ok := cfg.AuthInfos[ctx.AuthInfo]
	if !ok || auth.Token == "" {
		return nil, fmt.Errorf("%s: the current user has no bearer token", kubeconfig)
	}
	rc := l.RestConfig()
	rc.BearerToken = auth.Token
	rc.UserAgent = "canopy-lab/" + ctx.AuthInfo
	return rc, nil
}

// StartController starts bin (canopy-controller) in the control-plane namespace under the ServiceAccount
// ControllerNamespace/ControllerServiceAccount (see ServiceAccountKubeconfig), with --kubeconfig and
// --identity=name, then args (which may override both). Bind that ServiceAccount's rights first
// (manifests/rbac-controller.yaml). Its log is <WorkDir>/procs/cp-<name>.log; Proc.Stop sends SIGTERM (a clean
// stop releases the allocator's Lease), Down kills whatever still runs.
func (l *Lab) StartController(ctx context.Context, name, bin string, args ...string) (*Proc, error) {
	if bin == "" {
		return nil, errors.New("lab: StartController: no binary")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	kc, err := l.ServiceAccountKubeconfig(ctx, ControllerNamespace, ControllerServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("lab: StartController: %w", err)
	}
	argv := append([]string{bin, "--kubeconfig=" + kc, "--identity=" + name}, args...)
	return l.CP.Start(name, argv...)
}
