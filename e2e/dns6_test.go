package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"canopy.io/canopy/e2e/lab"
)

// checkDNSOverIPv6 is the cluster DNS over IPv6 (issue 13), on a dual-stack lab with a pod on each node: the
// lab's DNS server (e2e/dnsd) runs in pods[0] behind a RequireDualStack UDP Service, and pods[2], on another
// node, asks it over IPv6 (the Service's IPv6 ClusterIP, port 53) for the AAAA record of a name that points at
// pods[1]'s IPv6 address, then reaches that address; it also asks over IPv4 for the same name's A record (one
// Service, both families).
func checkDNSOverIPv6(t *testing.T, l *lab.Lab, pods []*lab.Pod) {
	t.Helper()
	ctx := context.Background()
	dnsd := buildDNSD(t)
	const name = "my-svc.my-ns.svc.cluster.local"
	server, client, target := pods[0], pods[2], pods[1]
	if _, err := server.Start("dnsd6", dnsd, "-listen", ":53",
		"-record", name+"="+target.IP6.String(), "-record", name+"="+target.IP.String()); err != nil {
		t.Fatal(err)
	}
	patch := `{"metadata":{"labels":{"app":"cluster-dns6"}}}`
	if _, err := l.Kube.CoreV1().Pods("default").Patch(ctx, server.PodObjectName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	policy := corev1.IPFamilyPolicyRequireDualStack
	t0 := time.Now()
	svc := createService(t, l, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cluster-dns6"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "cluster-dns6"},
			IPFamilyPolicy: &policy, IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol},
			Ports: []corev1.ServicePort{{Name: "dns", Port: 53, TargetPort: intstr.FromInt(53), Protocol: corev1.ProtocolUDP}}}})
	var cip4, cip6 netip.Addr
	for _, s := range svc.Spec.ClusterIPs {
		if a := netip.MustParseAddr(s); a.Is6() {
			cip6 = a
		} else {
			cip4 = a
		}
	}
	if !cip4.IsValid() || !cip6.IsValid() {
		t.Fatalf("cluster-dns6: cluster IPs %v, want one of each family", svc.Spec.ClusterIPs)
	}
	resolve := func(qtype string, server netip.Addr, want netip.Addr) func(context.Context) error {
		return func(ctx context.Context) error {
			out, err := client.Exec(ctx, dnsd, "-query", name, "-type", qtype, "-server", net.JoinHostPort(server.String(), "53"))
			if err != nil {
				return fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
			}
			if got := strings.TrimSpace(out); got != want.String() {
				return fmt.Errorf("resolved to %q, want %s", got, want)
			}
			return nil
		}
	}
	eventually(t, 30*time.Second, fmt.Sprintf("pod %s resolves %s (AAAA) through the DNS Service's IPv6 ClusterIP %s", client.Name, name, cip6),
		resolve("AAAA", cip6, target.IP6))
	t.Logf("DNS over IPv6: %s resolved %s AAAA = %s through [%s]:53 (dnsd on %s) %s after the Service was created",
		client.Name, name, target.IP6, cip6, server.Name, time.Since(t0).Round(time.Millisecond))
	eventually(t, 10*time.Second, "the same name's A record through the IPv4 ClusterIP", resolve("A", cip4, target.IP))
	eventually(t, 10*time.Second, fmt.Sprintf("ping -6 %s -> the resolved %s", client.Name, target.IP6), func(ctx context.Context) error {
		return client.Ping(ctx, target.IP6)
	})
}
