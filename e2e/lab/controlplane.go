package lab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const apiPort = 6443

// pki is the lab's certificate authority, serving certificate, service-account key pair and bearer tokens,
// all made in Go (no openssl).
type pki struct {
	dir                string
	caPEM              []byte
	caFile             string
	certFile, keyFile  string // kube-apiserver serving pair
	saKey, saPub       string // service-account signing key pair (RSA, PEM)
	tokenFile          string
	adminToken, kcmTok string
	nodeTokens         map[string]string // node name → token
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func makePKI(dir string, apiIP netip.Addr, serviceCIDR netip.Prefix, nodes []string, nodeGroups []string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir, caFile: filepath.Join(dir, "ca.crt"), certFile: filepath.Join(dir, "apiserver.crt"),
		keyFile: filepath.Join(dir, "apiserver.key"), saKey: filepath.Join(dir, "sa.key"), saPub: filepath.Join(dir, "sa.pub"),
		tokenFile: filepath.Join(dir, "tokens.csv"), nodeTokens: map[string]string{}}

	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "canopy-lab-ca"},
		NotBefore: now, NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(p.caFile, p.caPEM, 0o644); err != nil {
		return nil, err
	}

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now, NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		IPAddresses: []net.IP{apiIP.AsSlice(), net.IPv4(127, 0, 0, 1), net.IPv6loopback, nthAddr(serviceCIDR, 1).AsSlice()},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.certFile, "CERTIFICATE", srvDER, 0o644); err != nil {
		return nil, err
	}
	srvKeyDER, _ := x509.MarshalECPrivateKey(srvKey)
	if err := writePEM(p.keyFile, "EC PRIVATE KEY", srvKeyDER, 0o600); err != nil {
		return nil, err
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.saKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey), 0o600); err != nil {
		return nil, err
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err := writePEM(p.saPub, "PUBLIC KEY", pubDER, 0o644); err != nil {
		return nil, err
	}

	// token,user,uid,"group1,group2"
	p.adminToken, p.kcmTok = randString(32), randString(32)
	lines := []string{
		p.adminToken + `,admin,admin,"system:masters"`,
		p.kcmTok + `,system:kube-controller-manager,kcm,"system:masters"`,
	}
	for _, n := range nodes {
		tok := randString(32)
		p.nodeTokens[n] = tok
		lines = append(lines, fmt.Sprintf(`%s,system:canopy:%s,canopy-%s,"%s"`, tok, n, n, strings.Join(nodeGroups, ",")))
	}
	if err := os.WriteFile(p.tokenFile, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// writeKubeconfig writes a token kubeconfig for server.
func writeKubeconfig(path, server string, caPEM []byte, user, token string) error {
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"lab": {Server: server, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{user: {Token: token}},
		Contexts:       map[string]*clientcmdapi.Context{"lab": {Cluster: "lab", AuthInfo: user}},
		CurrentContext: "lab",
	}
	if err := clientcmd.WriteToFile(cfg, path); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// startControlPlane starts etcd and kube-apiserver together in the control-plane namespace (the apiserver
// retries etcd), which is faster than waiting for each in turn. kube-controller-manager starts once the
// apiserver is ready (startControllerManager): it gives up after 10 s without a healthy apiserver, which a busy
// machine can take.
func (l *Lab) startControlPlane() error {
	c := l.cfg
	dir := filepath.Join(l.WorkDir, "cp")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ns := l.CP.NS
	server := fmt.Sprintf("https://%s", net.JoinHostPort(l.CP.IP.String(), fmt.Sprint(apiPort)))
	kcmKubeconfig := filepath.Join(dir, "kcm.kubeconfig")
	if err := writeKubeconfig(kcmKubeconfig, server, l.pki.caPEM, "kcm", l.pki.kcmTok); err != nil {
		return err
	}
	etcd := []string{c.EtcdBin,
		"--name=lab", "--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=lab=http://127.0.0.1:2380",
		"--logger=zap", "--log-outputs=stderr", "--log-level=warn",
	}
	apiserver := []string{filepath.Join(c.K8sBinDir, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=" + c.bindAddress(), // inside the cp namespace: its loopback and its fabric address only
		"--advertise-address=" + l.CP.IP.String(),
		fmt.Sprintf("--secure-port=%d", apiPort),
		"--tls-cert-file=" + l.pki.certFile, "--tls-private-key-file=" + l.pki.keyFile,
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--token-auth-file=" + l.pki.tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + l.pki.saPub,
		"--service-account-signing-key-file=" + l.pki.saKey,
		"--service-cluster-ip-range=" + c.ServiceCIDR.String(),
		"--allow-privileged=true",
		// The harness creates Pods itself (it plays the kubelet); the ServiceAccount admission plugin would
		// reject them until the serviceaccount controller has made "default" in a new namespace.
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	kcm := []string{filepath.Join(c.K8sBinDir, "kube-controller-manager"),
		"--kubeconfig=" + kcmKubeconfig,
		"--controllers=endpointslice,endpointslicemirroring,serviceaccount,nodeipam",
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + c.ClusterCIDR.String(),
		fmt.Sprintf("--node-cidr-mask-size=%d", c.NodeCIDRMaskSize),
		"--service-cluster-ip-range=" + c.ServiceCIDR.String(),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
	}
	apiserver, kcm = c.dualStackControlPlane(apiserver, kcm)
	l.kcmArgv = kcm
	for _, p := range []struct {
		name string
		argv []string
	}{{"etcd", etcd}, {"kube-apiserver", apiserver}} {
		if _, err := l.startProc(p.name, ns, filepath.Join(dir, p.name+".log"), p.argv); err != nil {
			return err
		}
	}
	return nil
}

// startControllerManager starts kube-controller-manager (the apiserver is ready).
func (l *Lab) startControllerManager() error {
	_, err := l.startProc("kube-controller-manager", l.CP.NS, filepath.Join(l.WorkDir, "cp", "kube-controller-manager.log"), l.kcmArgv)
	return err
}

// restConfig is an admin rest.Config whose connections are made inside the control-plane namespace.
func (l *Lab) restConfig(server string, caPEM []byte, token string) *rest.Config {
	ns := l.CP.NS
	return &rest.Config{
		Host:            server,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: caPEM},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.dialer.Dial(ctx, ns, network, addr)
		},
		QPS: 100, Burst: 200, UserAgent: "canopy-lab",
		Timeout: 30 * time.Second,
	}
}

// waitAPIServer polls /readyz until it answers ok, failing early if a control-plane process dies.
func (l *Lab) waitAPIServer(ctx context.Context) error {
	rc := l.Kube.Discovery().RESTClient()
	var last error
	for {
		if err := l.procsFailed("etcd", "kube-apiserver", "kube-controller-manager"); err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		body, err := rc.Get().AbsPath("/readyz").DoRaw(rctx)
		cancel()
		if err == nil && strings.TrimSpace(string(body)) == "ok" {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready: %v (last: %v)\n%s", ctx.Err(), last, tail(l.logPath("kube-apiserver"), 15))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// registerNodes creates a Node per lab node (what a kubelet would do) and waits for nodeipam to give each a
// pod CIDR.
func (l *Lab) registerNodes(ctx context.Context) error {
	now := metav1.Now()
	for _, n := range l.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
				"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			}},
			Status: corev1.NodeStatus{
				Addresses: []corev1.NodeAddress{
					{Type: corev1.NodeInternalIP, Address: n.IP.String()},
					{Type: corev1.NodeHostName, Address: n.Name},
				},
				Conditions: []corev1.NodeCondition{{
					Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "CanopyLab",
					Message: "registered by the lab harness", LastHeartbeatTime: now, LastTransitionTime: now,
				}},
			},
		}
		if n.Rack != nil && l.cfg.multiRack() {
			node.Labels[RackLabel] = n.Rack.Name
		}
		node.Status.Addresses = n.dualStackAddresses(node.Status.Addresses)
		if n.Rack != nil && n.Rack.NodeASN != 0 {
			node.Annotations = map[string]string{AnnotationNodeASN: fmt.Sprint(n.Rack.NodeASN)}
		}
		got, err := l.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			got, err = l.Kube.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		}
		if err != nil {
			return fmt.Errorf("register node %s: %w", n.Name, err)
		}
		if len(got.Status.Addresses) == 0 {
			got.Status = node.Status
			if _, err := l.Kube.CoreV1().Nodes().UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("node %s status: %w", n.Name, err)
			}
		}
	}
	for _, n := range l.Nodes {
		for {
			got, err := l.Kube.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err == nil && got.Spec.PodCIDR != "" {
				p, err := netip.ParsePrefix(got.Spec.PodCIDR)
				if err != nil {
					return fmt.Errorf("node %s: podCIDR %q: %w", n.Name, got.Spec.PodCIDR, err)
				}
				n.PodCIDR = p
				if err := n.setPodCIDR6(got); err != nil {
					return err
				}
				break
			}
			if err := l.procsFailed("kube-controller-manager"); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("node %s got no podCIDR from nodeipam: %v\n%s", n.Name, ctx.Err(), tail(l.logPath("kube-controller-manager"), 15))
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}
