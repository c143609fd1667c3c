package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The ranges the lab's agents may announce and allocate from (see TestMain).
const (
	lbRange  = "10.200.0.0/22"
	extRange = "10.201.0.0/22"
	// the communities Services may ask for (--service-communities-allowed)
	allowedCommunities = "64512:300,large:64512:7:8"
)

// torNextHops returns the ToR's selected next hops for prefix (BGP) and its kernel's (FIB).
func torNextHops(ctx context.Context, l *lab.Lab, prefix netip.Prefix) (rib, fib []netip.Addr, err error) {
	r, err := l.ToR.Routes(ctx)
	if err != nil {
		return nil, nil, err
	}
	f, err := routesIn(ctx, l.ToR.Exec, "proto", "bgp")
	if err != nil {
		return nil, nil, err
	}
	return r[prefix], f[prefix], nil
}

func nodeIPs(nodes ...*lab.Node) []netip.Addr {
	var out []netip.Addr
	for _, n := range nodes {
		out = append(out, n.IP)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// waitLBIP waits for the allocator to fill the Service's status and returns the IP.
func waitLBIP(t *testing.T, l *lab.Lab, name string) netip.Addr {
	t.Helper()
	var ip netip.Addr
	eventually(t, 20*time.Second, "a LoadBalancer IP from the allocator", func(ctx context.Context) error {
		s, err := l.Kube.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(s.Status.LoadBalancer.Ingress) == 0 {
			return fmt.Errorf("no ingress yet")
		}
		ip, err = netip.ParseAddr(s.Status.LoadBalancer.Ingress[0].IP)
		return err
	})
	if !netip.MustParsePrefix(lbRange).Contains(ip) {
		t.Fatalf("allocated %s, outside %s", ip, lbRange)
	}
	return ip
}

// (1) A LoadBalancer service gets an IP from the allocator; the ToR learns it from every node (ECMP, one next
// hop per node, in BGP and in its FIB), and a client behind the ToR reaches the pods through it. (6) Deleting
// the Service withdraws it everywhere.
func TestLoadBalancerVIPAtTheToR(t *testing.T) {
	l := needLab(t)
	backend(t, l, l.Nodes[0], "la", "lb1")
	backend(t, l, l.Nodes[1], "lb", "lb1")
	svc := webService("lb1", "lb1")
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	created := createService(t, l, svc)
	_ = created
	ip := waitLBIP(t, l, "lb1")
	vip := netip.PrefixFrom(ip, 32)
	all := nodeIPs(l.Nodes...)
	t0 := time.Now()
	eventually(t, 15*time.Second, "the ToR routes the VIP over every node", func(ctx context.Context) error {
		rib, fib, err := torNextHops(ctx, l, vip)
		if err != nil {
			return err
		}
		if !slices.Equal(rib, all) || !slices.Equal(fib, all) {
			return fmt.Errorf("BGP %v, FIB %v, want %v", rib, fib, all)
		}
		return nil
	})
	t.Logf("LB IP %s at the ToR with %d next hops %s after the allocation", ip, len(all), time.Since(t0).Round(time.Millisecond))
	eventually(t, 10*time.Second, "the external client reaches the pods through the VIP", func(ctx context.Context) error {
		if s := spread(t, l.Ext, net.JoinHostPort(ip.String(), "80"), 20); s["la"] == 0 || s["lb"] == 0 {
			return fmt.Errorf("answers %v", s)
		}
		return nil
	})
	// No other node learns the VIP from its peers (VIPs go to the ToR only).
	for _, n := range l.Nodes {
		rt, err := kernelRoutes(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := rt[vip]; ok {
			t.Errorf("%s installed a route to the VIP %s", n.Name, vip)
		}
	}
	if err := l.Kube.CoreV1().Services("default").Delete(context.Background(), "lb1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the VIP withdrawn at the ToR", func(ctx context.Context) error {
		rib, fib, err := torNextHops(ctx, l, vip)
		if err != nil {
			return err
		}
		if len(rib)+len(fib) > 0 {
			return fmt.Errorf("still BGP %v FIB %v", rib, fib)
		}
		return nil
	})
}

// (2) externalTrafficPolicy Local: only the nodes with a ready local endpoint announce the VIP, and the pod sees
// the external client's own address; (3) when the last local endpoint on a node goes, that node withdraws.
func TestLoadBalancerLocalPolicy(t *testing.T) {
	l := needLab(t)
	a := backend(t, l, l.Nodes[0], "pa", "lb2")
	backend(t, l, l.Nodes[1], "pb", "lb2")
	svc := webService("lb2", "lb2")
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	createService(t, l, svc)
	ip := waitLBIP(t, l, "lb2")
	vip := netip.PrefixFrom(ip, 32)
	want := nodeIPs(l.Nodes[0], l.Nodes[1])
	eventually(t, 15*time.Second, "only the nodes with endpoints announce", func(ctx context.Context) error {
		rib, fib, err := torNextHops(ctx, l, vip)
		if err != nil {
			return err
		}
		if !slices.Equal(rib, want) || !slices.Equal(fib, want) {
			return fmt.Errorf("BGP %v FIB %v, want %v", rib, fib, want)
		}
		return nil
	})
	eventually(t, 10*time.Second, "the pod sees the client's address", func(ctx context.Context) error {
		line, err := readLine(ctx, l.Ext, "tcp", net.JoinHostPort(ip.String(), "81"))
		if err != nil {
			return err
		}
		if got, _ := netip.ParseAddr(line); got != l.Ext.IP {
			return fmt.Errorf("pod saw %q, want %s", line, l.Ext.IP)
		}
		return nil
	})
	if err := l.Kube.CoreV1().Pods("default").Delete(context.Background(), a.PodObjectName(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	eventually(t, 10*time.Second, l.Nodes[0].Name+" withdraws when its last local endpoint goes", func(ctx context.Context) error {
		rib, _, err := torNextHops(ctx, l, vip)
		if err != nil {
			return err
		}
		if !slices.Equal(rib, []netip.Addr{l.Nodes[1].IP}) {
			return fmt.Errorf("BGP %v", rib)
		}
		return nil
	})
	t.Logf("withdrawn %s after the pod was deleted", time.Since(t0).Round(time.Millisecond))
}

// (4) An ExternalIP outside --service-external-ip-range is never announced, and an Event says why; one inside
// is announced. (5) Communities from the annotation appear at the ToR.
func TestExternalIPRangeAndCommunities(t *testing.T) {
	l := needLab(t)
	backend(t, l, l.Nodes[0], "xa", "ext1")
	svc := webService("ext1", "ext1")
	svc.Spec.ExternalIPs = []string{"10.201.0.7", "192.0.2.99"}
	svc.Annotations = map[string]string{"canopy.io/communities": "64512:300,large:64512:7:8"}
	createService(t, l, svc)
	inside, outside := netip.MustParsePrefix("10.201.0.7/32"), netip.MustParsePrefix("192.0.2.99/32")
	eventually(t, 15*time.Second, "the ExternalIP inside the range is announced", func(ctx context.Context) error {
		rib, _, err := torNextHops(ctx, l, inside)
		if err != nil {
			return err
		}
		if len(rib) != len(l.Nodes) {
			return fmt.Errorf("next hops %v", rib)
		}
		return nil
	})
	waitWarningEvent(t, l, "ext1", "", "192.0.2.99")
	if rib, _, err := torNextHops(context.Background(), l, outside); err != nil || len(rib) > 0 {
		t.Errorf("the ToR has the refused ExternalIP: %v %v", rib, err)
	}
	var detail struct {
		Paths []struct {
			Community      struct{ String string } `json:"community"`
			LargeCommunity struct{ String string } `json:"largeCommunity"`
		} `json:"paths"`
	}
	if err := l.ToR.VtyshJSON(context.Background(), "show ip bgp 10.201.0.7/32", &detail); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(detail)
	if len(detail.Paths) == 0 || !strings.Contains(detail.Paths[0].Community.String, "64512:300") || !strings.Contains(detail.Paths[0].LargeCommunity.String, "64512:7:8") {
		t.Errorf("communities at the ToR: %s", raw)
	}
}
