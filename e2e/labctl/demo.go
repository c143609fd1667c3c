package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"canopy.io/canopy/e2e/lab"
)

// demoLBRange is where the demo's LoadBalancer addresses come from (the agents' --loadbalancer-ip-range).
const demoLBRange = "10.200.0.0/24"

// demoLBRange6 is the IPv6 LoadBalancer range of a dual-stack or IPv6-only lab (-family).
const demoLBRange6 = "fd00:200::/120"

// demo shows the product after the routing tables: canopy-controller allocating a LoadBalancer address, the ToR
// learning the VIP from every node, a page fetched through it from the external host, and NetworkPolicy
// refusing and then allowing that fetch — one printed line per step with its timing.
func demo(ctx context.Context, l *lab.Lab, controllerBin string, out io.Writer) error {
	step := func(t0 time.Time, format string, a ...any) {
		fmt.Fprintf(out, "%-90s (%s)\n", fmt.Sprintf(format, a...), time.Since(t0).Round(time.Millisecond))
	}
	wait := func(d time.Duration, what string, f func(context.Context) error) error {
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		var err error
		for {
			if err = f(wctx); err == nil {
				return nil
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("%s: %w", what, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	t0 := time.Now()
	rbac, _ := filepath.Abs("manifests/rbac-controller.yaml")
	if out, err := l.Kubectl(ctx, "apply", "-f", rbac); err != nil {
		return fmt.Errorf("kubectl apply %s: %v: %s", rbac, err, out)
	}
	if _, err := l.StartController(ctx, "canopy-controller", controllerBin, "--loadbalancer-ip-range="+demoLBRange); err != nil {
		return err
	}
	step(t0, "canopy-controller started under its own ServiceAccount (manifests/rbac-controller.yaml)")

	// A Deployment-like set: one web pod per node, each answering with its name.
	t0 = time.Now()
	for _, n := range l.Nodes {
		p, err := l.AddPodWith(ctx, n, "web", lab.PodOptions{Labels: map[string]string{"app": "web"}})
		if err != nil {
			return err
		}
		// Bare LF line ends: socat unescapes backslashes in its address itself. Go's HTTP client takes them.
		reply := fmt.Sprintf("SYSTEM:echo 'HTTP/1.0 200 OK'; echo; echo 'hello from %s on %s'", p.Name, n.Name)
		if _, err := p.Start("web-"+n.Name, "socat", "TCP-LISTEN:8080,reuseaddr,fork", reply); err != nil {
			return err
		}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "web"},
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP}},
	}}
	if _, err := l.Kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	var vip netip.Addr
	if err := wait(30*time.Second, "a LoadBalancer address", func(ctx context.Context) error {
		s, err := l.Kube.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(s.Status.LoadBalancer.Ingress) == 0 {
			return fmt.Errorf("none yet")
		}
		vip, err = netip.ParseAddr(s.Status.LoadBalancer.Ingress[0].IP)
		return err
	}); err != nil {
		return err
	}
	step(t0, "3 web pods and LoadBalancer Service web: canopy-controller gave it %s", vip)

	t0 = time.Now()
	var nhs []netip.Addr
	if l.Spine != nil { // a fabric: the spine spreads the VIP over every rack's ToR, each ToR over its nodes
		var uplinks []netip.Addr
		for _, r := range l.Racks {
			uplinks = append(uplinks, r.ToR.Uplink)
		}
		if err := wait(30*time.Second, "the VIP at the spine from every rack", func(ctx context.Context) error {
			rib, err := l.Spine.KernelRoutes(ctx)
			if err != nil {
				return err
			}
			if nhs = rib[netip.PrefixFrom(vip, 32)]; len(nhs) != len(uplinks) {
				return fmt.Errorf("next hops %v, want %v", nhs, uplinks)
			}
			return nil
		}); err != nil {
			return err
		}
		step(t0, "the spine routes %s/32 over every rack's ToR (ECMP): %s", vip, addrs(nhs))
		return fetchAndPolicy(ctx, l, vip, out, step, wait)
	}
	if err := wait(30*time.Second, "the VIP at the ToR from every node", func(ctx context.Context) error {
		rib, err := l.ToR.Routes(ctx)
		if err != nil {
			return err
		}
		nhs = rib[netip.PrefixFrom(vip, 32)]
		if len(nhs) != len(l.Nodes) {
			return fmt.Errorf("next hops %v", nhs)
		}
		return nil
	}); err != nil {
		return err
	}
	step(t0, "the ToR routes %s/32 over every node (ECMP): %s", vip, addrs(nhs))
	return fetchAndPolicy(ctx, l, vip, out, step, wait)
}

func addrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// fetchAndPolicy is the demo's second half: a page through the VIP from the external host, refused by a
// default-deny NetworkPolicy, allowed again by an allow policy.
func fetchAndPolicy(ctx context.Context, l *lab.Lab, vip netip.Addr, out io.Writer, step func(time.Time, string, ...any),
	wait func(time.Duration, string, func(context.Context) error) error) error {
	url := fmt.Sprintf("http://%s/", vip)
	fetch := func(ctx context.Context) (string, error) {
		c := l.Ext.HTTPClient()
		c.Timeout = time.Second
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), err
	}
	t0 := time.Now()
	var page string
	if err := wait(30*time.Second, "a page through the VIP", func(ctx context.Context) error {
		var err error
		page, err = fetch(ctx)
		return err
	}); err != nil {
		return err
	}
	step(t0, "the external host (%s) fetched %s: %q", l.Ext.IP, url, page)

	t0 = time.Now()
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default-deny"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{}, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if _, err := l.Kube.NetworkingV1().NetworkPolicies("default").Create(ctx, deny, metav1.CreateOptions{}); err != nil {
		return err
	}
	if err := wait(30*time.Second, "the fetch refused", func(ctx context.Context) error {
		if _, err := fetch(ctx); err == nil {
			return fmt.Errorf("still answered")
		}
		return nil
	}); err != nil {
		return err
	}
	step(t0, "NetworkPolicy default-deny (ingress) in default: the same fetch gets no answer")

	t0 = time.Now()
	port := intstr.FromInt(8080)
	allow := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "web-allow-8080"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &port}}}},
	}}
	if _, err := l.Kube.NetworkingV1().NetworkPolicies("default").Create(ctx, allow, metav1.CreateOptions{}); err != nil {
		return err
	}
	if err := wait(30*time.Second, "the fetch allowed again", func(ctx context.Context) error {
		var err error
		page, err = fetch(ctx)
		return err
	}); err != nil {
		return err
	}
	step(t0, "NetworkPolicy web-allow-8080 (app=web, port 8080): the fetch works again: %q", page)
	fmt.Fprintf(out, "\nTry (see the kubeconfig above): kubectl get svc,pods,networkpolicies; on a node: canopy status\n")
	return nil
}
