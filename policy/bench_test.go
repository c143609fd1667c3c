package policy

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/testsupport/testns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// workload is the benchmark: nPods pods on one node (50 namespaces) plus remote pods elsewhere in the
// cluster, and nPolicies policies (20 per namespace) selecting apps, admitting tiers of the same namespace
// and clients of labelled namespaces on numeric and named ports; every fifth also limits egress to an ipBlock
// with an except. family is "ipv4", "ipv6" (pods, pod CIDR and ipBlocks of that family) or "dual" (pods with
// both addresses, ipBlocks of both families).
type workload struct {
	pods     []*Pod
	nss      []*Namespace
	policies []*networkingv1.NetworkPolicy
	local    []LocalPod
	cidrs    []netip.Prefix
}

func makeWorkload(nPods, nRemote, nPolicies int, family ...string) *workload {
	w := &workload{}
	fam := "ipv4"
	if len(family) > 0 {
		fam = family[0]
	}
	v4, v6 := fam != "ipv6", fam != "ipv4"
	if v4 {
		w.cidrs = append(w.cidrs, netip.MustParsePrefix("10.128.0.0/16"))
	}
	if v6 {
		w.cidrs = append(w.cidrs, netip.MustParsePrefix("fd00:128::/64"))
	}
	const nNS = 50
	for i := range nNS {
		w.nss = append(w.nss, &Namespace{Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i%10)}})
	}
	tiers := []string{"web", "api", "db", "cache"}
	nth := func(base string, i int) netip.Addr {
		ip := netip.MustParseAddr(base)
		for range i {
			ip = ip.Next()
		}
		return ip
	}
	mkPod := func(i int, node, base4, base6 string) *Pod {
		p := &Pod{Namespace: fmt.Sprintf("ns%d", i%nNS), Name: fmt.Sprintf("%s-p%d", node, i), NodeName: node,
			Labels: map[string]string{"app": fmt.Sprintf("app%d", (i/nNS)%20), "tier": tiers[i%len(tiers)]},
			Ports:  []NamedPort{{Name: "http", Port: 8080}, {Name: "metrics", Port: 9090}}}
		if v4 {
			p.IPs = append(p.IPs, nth(base4, i))
		}
		if v6 {
			p.IPs = append(p.IPs, nth(base6, i))
		}
		p.IP = p.IPs[0]
		return p
	}
	for i := range nPods {
		p := mkPod(i, "n1", "10.128.0.10", "fd00:128::10")
		w.pods = append(w.pods, p)
		for _, a := range p.IPs {
			w.local = append(w.local, LocalPod{Key: p.Namespace + "/" + p.Name, IP: a})
		}
	}
	for i := range nRemote {
		w.pods = append(w.pods, mkPod(i, "n2", "10.160.0.10", "fd00:160::10"))
	}
	tcp := corev1.ProtocolTCP
	for i := range nPolicies {
		ns := fmt.Sprintf("ns%d", i%nNS)
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pol%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", (i/nNS)%20)}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tiers[i%len(tiers)]}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &intstr.IntOrString{IntVal: 80}}, {Port: &intstr.IntOrString{Type: intstr.String, StrVal: "http"}}}},
					{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%10)}},
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Port: &intstr.IntOrString{Type: intstr.String, StrVal: "metrics"}}}},
				},
			}}
		if i%5 == 0 {
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
			var to []networkingv1.NetworkPolicyPeer
			if v4 {
				to = append(to, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
					CIDR: fmt.Sprintf("172.%d.0.0/16", 16+i%16), Except: []string{fmt.Sprintf("172.%d.1.0/24", 16+i%16)}}})
			}
			if v6 {
				to = append(to, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
					CIDR: fmt.Sprintf("fd00:172:%x::/48", 16+i%16), Except: []string{fmt.Sprintf("fd00:172:%x:1::/64", 16+i%16)}}})
			}
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: to}}
		}
		w.policies = append(w.policies, np)
	}
	return w
}

func (w *workload) state() *State {
	return Build(Compute(w.policies, w.pods, w.nss, "n1"), w.local, Options{PodCIDRs: w.cidrs})
}

// rulesPerPod counts the rules of the per-pod chains, per policed pod.
func rulesPerPod(st *State) float64 {
	n := 0
	for _, chains := range []map[string][]string{st.Chains, st.Chains6} {
		for name, rules := range chains {
			if strings.HasPrefix(name, prefixPodIn) || strings.HasPrefix(name, prefixPodOut) {
				n += len(rules)
			}
		}
	}
	return float64(n) / float64(st.Pods)
}

func totalRules(st *State) int {
	n := 0
	for _, chains := range []map[string][]string{st.Chains, st.Chains6} {
		for _, rules := range chains {
			n += len(rules)
		}
	}
	return n + len(st.Ingress) + len(st.Egress)
}

// BenchmarkPolicy programs 1,000 policies over 5,000 pods of one node from empty, then one pod label change,
// on the kernel (in a namespace), per iptables flavour. The baseline is what a full rebuild costs for that same
// label change (what kube-router does on every event): the whole State written again. Per family: IPv4, IPv6
// (ip6tables, inet6 sets) and dual-stack (every pod in both: twice the chains; a label change edits both
// families' sets).
func BenchmarkPolicy(b *testing.B) {
	requireKernel6(b)
	// Rules per pod must not grow with the cluster: the same node in a 5,000 and a 50,000 pod cluster.
	small, big := makeWorkload(5000, 0, 1000).state(), makeWorkload(5000, 45000, 1000).state()
	b.ReportMetric(rulesPerPod(small), "rules/pod@5k")
	b.ReportMetric(rulesPerPod(big), "rules/pod@50k")
	b.Logf("rules per pod: %.2f with 5,000 pods in the cluster, %.2f with 50,000; total rules %d / %d, chains %d, sets %d",
		rulesPerPod(small), rulesPerPod(big), totalRules(small), totalRules(big), len(small.Chains), len(small.Sets))
	for _, f := range []ipt.Flavour{ipt.NFT, ipt.Legacy} {
		b.Run(string(f), func(b *testing.B) {
			for _, fam := range []string{"ipv4", "ipv6", "dual"} {
				b.Run(fam, func(b *testing.B) { benchPolicy(b, f, fam) })
			}
		})
	}
}

func benchPolicy(b *testing.B, flavour ipt.Flavour, fam string) {
	for b.Loop() {
		w := makeWorkload(5000, 0, 1000, fam)
		ns := testns.New(b, "pol-bench")
		var fw *Firewall
		do := func(f func() error) {
			if err := ns.Do(f); err != nil {
				b.Fatal(err)
			}
		}
		do(func() error {
			h, err := ipt.OpenFlavour(flavour)
			fw = NewHost(h, slog.New(slog.DiscardHandler))
			return err
		})
		do(func() error {
			return fw.Start(Options{PodCIDRs: w.cidrs})
		})

		t0 := time.Now()
		st := w.state()
		compute := time.Since(t0)
		var stats Stats
		do(func() (err error) { stats, err = fw.Sync(st); return err })
		fromEmpty := time.Since(t0)

		// One label change: a pod of ns8 moves from tier db to web (peers of several policies change).
		var moved *Pod
		for _, p := range w.pods {
			if p.Namespace == "ns8" && p.Labels["tier"] == "db" {
				moved = p
				break
			}
		}
		moved.Labels = map[string]string{"app": moved.Labels["app"], "tier": "web"}
		t1 := time.Now()
		st2 := w.state()
		var change Stats
		do(func() (err error) { change, err = fw.Sync(st2); return err })
		labelChange := time.Since(t1)

		// Baseline: the same change as a full rewrite.
		moved.Labels["tier"] = "db"
		fw.Invalidate()
		t2 := time.Now()
		st3 := w.state()
		do(func() (err error) { _, err = fw.Sync(st3); return err })
		full := time.Since(t2)

		var rules int
		do(func() error {
			for _, tool := range []string{"iptables", "ip6tables"} {
				out, err := exec.Command(tool+"-"+string(flavour)+"-save", "-t", "filter").Output()
				if err != nil {
					return err
				}
				rules += strings.Count(string(out), "\n-A ")
			}
			return nil
		})
		b.ReportMetric(fromEmpty.Seconds()*1000, "ms-from-empty")
		b.ReportMetric(compute.Seconds()*1000, "ms-compute")
		b.ReportMetric(labelChange.Seconds()*1000, "ms-label-change")
		b.ReportMetric(full.Seconds()*1000, "ms-full-rewrite")
		b.ReportMetric(labelChange.Seconds()/full.Seconds(), "label/full")
		b.Logf("%s %s: 1,000 policies x 5,000 pods from empty %v (compute %v; %d chains, %d set ops, %d rules in the kernel); "+
			"one label change %v (%d chains, %d set ops); the same change as a full rewrite %v: ratio %.3f",
			flavour, fam, fromEmpty.Round(time.Millisecond), compute.Round(time.Millisecond), stats.Chains, stats.SetOps, rules,
			labelChange.Round(time.Millisecond), change.Chains, change.SetOps, full.Round(time.Millisecond), labelChange.Seconds()/full.Seconds())
	}
}

// BenchmarkPodCache measures the heap a pod costs in the controller's informer cache, as a PodInfo,
// against keeping the whole object (the baseline: an informer without the transform).
func BenchmarkPodCache(b *testing.B) {
	const n = 20000
	full := func(i int) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-7d9f8c6b5-%05d", i), Namespace: fmt.Sprintf("ns%d", i%50),
				UID: "0b6b3a1e-2f4c-4a8e-9d7b-1c2e3f4a5b6c", ResourceVersion: "123456789",
				Labels:          map[string]string{"app": "web", "pod-template-hash": "7d9f8c6b5", "tier": "frontend"},
				Annotations:     map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z", "prometheus.io/scrape": "true"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9f8c6b5", UID: "x"}},
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: "Update", APIVersion: "v1",
					FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(strings.Repeat(`{"f:metadata":{}}`, 40))}}},
			},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%5000), ServiceAccountName: "default",
				Containers: []corev1.Container{{Name: "web", Image: "registry.example/web:1.2.3", Args: []string{"--port=8080", "--log=json"},
					Ports:        []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
					Env:          []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "B", Value: "2"}, {Name: "C", Value: "3"}},
					VolumeMounts: []corev1.VolumeMount{{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}}}},
				Volumes: []corev1.Volume{{Name: "kube-api-access"}}, Tolerations: []corev1.Toleration{{Key: "node.kubernetes.io/not-ready"}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.128.3.4", PodIPs: []corev1.PodIP{{IP: "10.128.3.4"}}, HostIP: "10.0.0.1",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}, {Type: corev1.ContainersReady, Status: corev1.ConditionTrue},
					{Type: corev1.PodInitialized, Status: corev1.ConditionTrue}, {Type: corev1.PodScheduled, Status: corev1.ConditionTrue}},
				ContainerStatuses: []corev1.ContainerStatus{{Name: "web", Ready: true, Image: "registry.example/web:1.2.3", ImageID: "sha256:" + strings.Repeat("ab", 32), ContainerID: "containerd://" + strings.Repeat("cd", 32)}}},
		}
		return p
	}
	measure := func(keep func(*corev1.Pod) any) float64 {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		kept := make([]any, n)
		for i := range n {
			kept[i] = keep(full(i))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(kept)
		return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
	}
	for b.Loop() {
		stripped := measure(func(p *corev1.Pod) any { s, _ := ToPodInfo(p); return s })
		whole := measure(func(p *corev1.Pod) any { return p })
		b.ReportMetric(stripped, "B/pod")
		b.ReportMetric(whole, "B/pod-unstripped")
		b.Logf("informer cache: %.0f B per pod stripped, %.0f B whole (ratio %.2f): 550,000 pods (5,000 nodes x 110) = %.0f MiB",
			stripped, whole, stripped/whole, stripped*550000/(1<<20))
	}
}
