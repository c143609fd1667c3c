package e2e

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// BenchmarkAgentAtScale measures what one Canopy agent costs on a large cluster (issue 16, "The agent at
// scale"): a one-node lab whose API server also holds, as objects only (no kubelets, no agents),
//
//   - CANOPY_SCALE_NODES Node objects (5,000): InternalIPs in 10.100.0.0/16 (routed nowhere), a /26
//     pod CIDR each in 10.241.0.0/16+ (inside the lab's cluster CIDR 10.240.0.0/12), labels, a few images
//     and conditions like a kubelet's;
//   - CANOPY_SCALE_SERVICES ClusterIP Services (10,000) with CANOPY_SCALE_ENDPOINTS endpoints in all
//     (50,000), one EndpointSlice each, the endpoints being the pods' addresses;
//   - CANOPY_SCALE_PODS Pods (20,000) in 50 namespaces, Running with an address, on the fake nodes
//     except one in 400, which is on node1 (node1's pods have no sandbox: the firewall programs them all the
//     same);
//   - CANOPY_SCALE_POLICIES NetworkPolicies (1,000), ingress from pod and namespace selectors, some
//     with egress to an ipBlock.
//
// Those are the sizes, which CANOPY_SCALE_FACTOR=1 runs (0.1 runs a tenth of each). Without it, the
// default (what make bench runs) is 5,000 Nodes and 1,000 NetworkPolicies but a quarter of the Services,
// endpoints and Pods: writing them is most of the time, and on this 2-core machine shared with other labs the
// API server took 19 minutes for the full set (nodes 44 s, pods 5 min, Services with their slices 13 min).
// CANOPY_SCALE_PROXY_MODE=iptables runs the agent with --proxy-mode=iptables (default: nftables, the agent's
// default on a kernel without IPVS). The agent runs with --nodes-full-mesh=false
// (ToR peering only, so no session to the fake nodes), --log-level=info and --pprof. It is stopped while the
// objects are written (32 writers, no client-side throttling), then started: from its start to each
// subsystem's first full sync (canopy_controller_first_sync_seconds: bgp-nodes, service-model, proxy, policy,
// vips) is the initial sync. Then: RSS and Go heap (go_memstats_*, after the sync and after a forced GC via
// /debug/pprof/heap?gc=1, whose profile is kept in CANOPY_SCALE_PPROF_DIR if set), CPU per minute at rest and
// under 10 EndpointSlice changes per second (CANOPY_SCALE_MINUTE shortens the minute), +1 Service latency (API
// write to the rules in the kernel, 5 samples; with the time our own watch saw the slice, which splits the API
// server's share from the agent's) and a restart to the first full proxy sync with every object present.
//
//	CANOPY_SCALE_FACTOR=1 go test -run '^$' -bench AgentAtScale -benchtime 1x -timeout 60m ./e2e/
//
// The table goes to stdout, progress to stderr.
func BenchmarkAgentAtScale(b *testing.B) {
	if testing.Short() {
		b.Skip("-short: no lab")
	}
	sz := scaleSizes(b)
	mode := "nftables" // the agent's default on this kernel (ipvs, which has no IPVS here)
	args := []string{"--log-level=info", "--nodes-full-mesh=false", "--pprof"}
	if v := os.Getenv("CANOPY_SCALE_PROXY_MODE"); v != "" {
		mode = v
		args = append(args, "--proxy-mode="+v)
	}
	cfg := lab.Config{Nodes: 1, AgentBin: agentBin(),
		AgentArgs:        args,
		ClusterCIDR:      netip.MustParsePrefix("10.240.0.0/12"),
		NodeCIDRMaskSize: 26,
		Logf:             scaleLog}
	l := lab.New(b, cfg)
	ctx := context.Background()
	rc := l.RestConfig()
	rc.QPS, rc.Burst = 5000, 5000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	node := l.Nodes[0]
	if err := node.StopAgent(); err != nil { // just started: SIGTERM may come before its handler is set
		scaleLog("stopping the agent: %v", err)
	}
	w := newScaleWorkload(cs, sz, node)
	t0 := time.Now()
	if err := w.load(ctx); err != nil {
		b.Fatal(err)
	}
	loadTook := time.Since(t0)
	scaleLog("wrote %d objects in %v", w.written.Load(), loadTook.Round(time.Second))

	res := scaleResult{sizes: sz, load: loadTook, mode: mode}
	// Initial sync from a clean start (no rules in the kernel yet).
	start := time.Now()
	if err := node.StartAgent(); err != nil {
		b.Fatal(err)
	}
	first, err := waitFirstSyncs(ctx, node, 10*time.Minute)
	if err != nil {
		b.Fatalf("initial sync: %v\n%s", err, scaleTail(node.LogPath, 30))
	}
	res.firstSync = first
	res.readyWall = time.Since(start)
	scaleLog("initial sync: %v (wall %v)", first, res.readyWall.Round(time.Millisecond))
	time.Sleep(5 * time.Second) // the tail of the first sync (the proxy's batches after its first Full)
	m, err := metrics(ctx, node)
	if err != nil {
		b.Fatal(err)
	}
	res.rss, res.heapInuse, res.heapAlloc = m["process_resident_memory_bytes"], m["go_memstats_heap_inuse_bytes"], m["go_memstats_heap_alloc_bytes"]
	// Where the RSS goes beyond the heap: what the Go runtime holds besides it, and what is left (the binary's
	// pages, cgo-free C libraries: none).
	scaleLog("memory: heap in use %s, stacks %s, spans %s, GC metadata %s, other runtime %s, heap idle %s of which released %s, Go sys %s",
		mb(int64(m["go_memstats_heap_inuse_bytes"])), mb(int64(m["go_memstats_stack_inuse_bytes"])), mb(int64(m["go_memstats_mspan_inuse_bytes"])),
		mb(int64(m["go_memstats_gc_sys_bytes"])), mb(int64(m["go_memstats_other_sys_bytes"])), mb(int64(m["go_memstats_heap_idle_bytes"])),
		mb(int64(m["go_memstats_heap_released_bytes"])), mb(int64(m["go_memstats_sys_bytes"])))
	if err := scaleHeapProfile(ctx, node, "initial"); err != nil {
		scaleLog("heap profile: %v", err)
	}
	if m, err = metrics(ctx, node); err == nil {
		res.rssGC, res.heapGC, res.heapInuseGC = m["process_resident_memory_bytes"], m["go_memstats_heap_alloc_bytes"], m["go_memstats_heap_inuse_bytes"]
	}
	// After the GC, heap in use minus allocated is the room inside the pages the live objects keep (fragmentation:
	// what the decoded lists left between the parts the caches kept), not garbage.
	scaleLog("RSS %s, heap in use %s (after GC: RSS %s, heap %s allocated in %s of pages)", mb(int64(res.rss)), mb(int64(res.heapInuse)),
		mb(int64(res.rssGC)), mb(int64(res.heapGC)), mb(int64(res.heapInuseGC)))

	minute := time.Minute
	if v := os.Getenv("CANOPY_SCALE_MINUTE"); v != "" {
		if minute, err = time.ParseDuration(v); err != nil {
			b.Fatalf("CANOPY_SCALE_MINUTE=%q: %v", v, err)
		}
	}
	res.minute = minute
	// CPU at rest.
	res.cpuRest = cpuOver(b, node, minute, nil)
	scaleLog("CPU at rest: %v per %v", res.cpuRest.Round(time.Millisecond), minute)
	// CPU under 10 Service (EndpointSlice) changes per second.
	var changes atomic.Int64
	res.cpuChurn = cpuOver(b, node, minute, func(stop <-chan struct{}) {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			go func(i int) {
				if err := w.changeEndpoint(ctx, (i*7919)%sz.services); err != nil {
					scaleLog("endpoint change: %v", err)
					return
				}
				changes.Add(1)
			}(i)
		}
	})
	res.changes = int(changes.Load())
	scaleLog("CPU under %d changes: %v per %v", res.changes, res.cpuChurn.Round(time.Millisecond), minute)
	if m, err = metrics(ctx, node); err == nil {
		res.rssChurn = m["process_resident_memory_bytes"]
	}

	// +1 Service at N, API write to kernel: a lone change, once the churn's pace is paid. The proxy's debt is at
	// most its credit (two syncs like the last: about 1.5 s at 5,000 nodes) plus proxy.SyncPaceMax, and the
	// churn's last batch may still wait SyncPaceMax: with 2 s here, the first sample's slice waited for the
	// Service's sync to be paid (1.17 s against 0.1 s for the others).
	time.Sleep(5 * time.Second)
	probe := newSBSProbe(b, node, true, mode)
	m0, _ := metrics(ctx, node)
	for k := range sbsSamples {
		lat, watched, err := w.plusOne(ctx, probe, sz.services+k)
		if err != nil {
			b.Fatal(err)
		}
		res.plusOne = append(res.plusOne, lat)
		res.plusOneWatch = append(res.plusOneWatch, watched)
		time.Sleep(time.Second)
	}
	if m1, err := metrics(ctx, node); err == nil && m0 != nil {
		// The back end's share: its syncs during the samples (a +1 is a Service then its slice: one or two).
		sum := `canopy_proxy_sync_duration_seconds_sum{backend="` + mode + `"}`
		cnt := `canopy_proxy_sync_duration_seconds_count{backend="` + mode + `"}`
		if n := m1[cnt] - m0[cnt]; n > 0 {
			res.backendSyncs = int(n)
			res.backendSync = time.Duration((m1[sum] - m0[sum]) / n * float64(time.Second))
		}
		sum = `canopy_proxy_change_to_kernel_seconds_sum{backend="` + mode + `"}`
		cnt = `canopy_proxy_change_to_kernel_seconds_count{backend="` + mode + `"}`
		if n := m1[cnt] - m0[cnt]; n > 0 {
			res.changeToKernel = time.Duration((m1[sum] - m0[sum]) / n * float64(time.Second))
		}
	}
	scaleLog("+1 Service: %v (our watch saw the slice after %v; %d back end syncs of %v on average)", res.plusOne, res.plusOneWatch,
		res.backendSyncs, res.backendSync)

	// Restart with every object (and the rules of the earlier run) present.
	if err := node.StopAgent(); err != nil {
		b.Fatal(err)
	}
	start = time.Now()
	if err := node.StartAgent(); err != nil {
		b.Fatal(err)
	}
	if res.restart, err = waitFirstSyncs(ctx, node, 10*time.Minute); err != nil {
		b.Fatalf("restart: %v\n%s", err, scaleTail(node.LogPath, 30))
	}
	res.restartWall = time.Since(start)
	scaleLog("restart: %v (wall %v)", res.restart, res.restartWall.Round(time.Millisecond))
	res.restartNote = firstSyncNote(node.LogPath)
	scaleLog("restart, from the agent's log: %s", res.restartNote)
	scaleLog("the agent's log since its restart (info):\n%s", sinceLastStart(node.LogPath, 80))
	if err := scaleHeapProfile(ctx, node, "restart"); err != nil {
		scaleLog("heap profile: %v", err)
	}
	res.report(b)
}

// scaleSizes reads CANOPY_SCALE_* (and CANOPY_SCALE_FACTOR).
type scaleSize struct{ nodes, services, endpoints, pods, policies int }

func scaleSizes(b *testing.B) scaleSize {
	// The sizes; without CANOPY_SCALE_FACTOR, Services, endpoints and Pods are a quarter of them (see
	// the benchmark's doc).
	f, quarter := 1.0, 0.25
	if v := os.Getenv("CANOPY_SCALE_FACTOR"); v != "" {
		var err error
		if f, err = strconv.ParseFloat(v, 64); err != nil || f <= 0 {
			b.Fatalf("CANOPY_SCALE_FACTOR=%q: want a positive number", v)
		}
		quarter = f
	}
	get := func(name string, def int) int {
		n := int(float64(def) * f)
		if name == "SERVICES" || name == "ENDPOINTS" || name == "PODS" {
			n = int(float64(def) * quarter)
		}
		if v := os.Getenv("CANOPY_SCALE_" + name); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < 0 {
				b.Fatalf("CANOPY_SCALE_%s=%q: want a count", name, v)
			}
		}
		return max(n, 1)
	}
	s := scaleSize{nodes: get("NODES", 5000), services: get("SERVICES", 10000), endpoints: get("ENDPOINTS", 50000),
		pods: get("PODS", 20000), policies: get("POLICIES", 1000)}
	if s.services > 12000 || s.nodes > 60000 {
		b.Fatalf("at most 12,000 Services (VIPs 10.96.100-147.x) and 60,000 nodes")
	}
	return s
}

const (
	scaleNamespaces = 50
	scaleWriters    = 32
)

func scaleNS(i int) string { return fmt.Sprintf("scale-%02d", i%scaleNamespaces) }

// scaleWorkload writes the benchmark's objects.
type scaleWorkload struct {
	cs      kubernetes.Interface
	sz      scaleSize
	node1   *lab.Node
	written atomic.Int64

	mu     sync.Mutex
	podIPs []netip.Addr // by pod index
	podOn  []string     // node name by pod index
	epOf   [][]int      // pod indexes of Service i's endpoints
	next   int          // next pod index an endpoint change uses
}

func newScaleWorkload(cs kubernetes.Interface, sz scaleSize, node1 *lab.Node) *scaleWorkload {
	w := &scaleWorkload{cs: cs, sz: sz, node1: node1}
	local := 0
	perNode := map[int]int{}
	for j := range sz.pods {
		if j%400 == 0 && local < 60 { // node1's /26 holds 62 addresses
			w.podOn = append(w.podOn, node1.Name)
			w.podIPs = append(w.podIPs, nthIP(node1.PodCIDR.Masked().Addr(), 2+local))
			local++
			continue
		}
		n := j % sz.nodes
		w.podOn = append(w.podOn, scaleNodeName(n))
		w.podIPs = append(w.podIPs, nthIP(scalePodCIDR(n).Addr(), 2+perNode[n]%60))
		perNode[n]++
	}
	per := max(sz.endpoints/sz.services, 1)
	for i := range sz.services {
		var eps []int
		for k := range per {
			eps = append(eps, (i*per+k)%sz.pods)
		}
		w.epOf = append(w.epOf, eps)
	}
	return w
}

func scaleNodeName(i int) string { return fmt.Sprintf("scale-n%05d", i) }

// scaleNodeIP: 10.100.0.1 on, 250 per /24 (routed nowhere).
func scaleNodeIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(100 + i/62500), byte(i / 250 % 250), byte(i%250 + 1)})
}

// scalePodCIDR: node i's /26, from 10.241.0.0 on.
func scalePodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(nthIP(netip.MustParseAddr("10.241.0.0"), 64*i), 26)
}

func nthIP(base netip.Addr, n int) netip.Addr {
	a := base.As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// parallel runs f(0..n-1) on scaleWriters goroutines; the first error stops it.
func (w *scaleWorkload) parallel(ctx context.Context, what string, n int, f func(i int) error) error {
	t0 := time.Now()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range scaleWriters {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := retry(ctx, func() error {
					err := f(i)
					if apierrors.IsAlreadyExists(err) {
						return nil
					}
					return err
				}); err != nil {
					cancel(fmt.Errorf("%s %d: %w", what, i, err))
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && ctx.Err() != nil {
		return err
	}
	scaleLog("%d %s in %v", n, what, time.Since(t0).Round(time.Millisecond))
	return nil
}

func (w *scaleWorkload) create(f func() error) error {
	err := f()
	if err == nil {
		w.written.Add(1)
	}
	return err
}

// load writes every object.
func (w *scaleWorkload) load(ctx context.Context) error {
	cs := w.cs
	if err := w.parallel(ctx, "namespaces", scaleNamespaces, func(i int) error {
		return w.create(func() error {
			_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scaleNS(i),
				Labels: map[string]string{"team": fmt.Sprintf("t%d", i%10)}}}, metav1.CreateOptions{})
			return err
		})
	}); err != nil {
		return err
	}
	if err := w.parallel(ctx, "nodes", w.sz.nodes, func(i int) error {
		return w.create(func() error {
			_, err := cs.CoreV1().Nodes().Create(ctx, scaleNode(i), metav1.CreateOptions{})
			return err
		})
	}); err != nil {
		return err
	}
	if err := w.parallel(ctx, "pods", w.sz.pods, func(j int) error { return w.writePod(ctx, j) }); err != nil {
		return err
	}
	if err := w.parallel(ctx, "services", w.sz.services, func(i int) error { return w.writeService(ctx, i) }); err != nil {
		return err
	}
	return w.parallel(ctx, "network policies", w.sz.policies, func(p int) error {
		return w.create(func() error {
			_, err := cs.NetworkingV1().NetworkPolicies(scaleNS(p)).Create(ctx, scalePolicy(p), metav1.CreateOptions{})
			return err
		})
	})
}

// scaleNode is fake node i, about the size of a kubelet's Node (labels, images, conditions, node info).
func scaleNode(i int) *corev1.Node {
	now := metav1.Now()
	name := scaleNodeName(i)
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			"topology.kubernetes.io/zone": fmt.Sprintf("zone-%d", i%3), "node.kubernetes.io/instance-type": "bare-metal-64c",
			"topology.example.com/rack": fmt.Sprintf("rack%d", i/40),
		}, Annotations: map[string]string{
			"node.alpha.kubernetes.io/ttl":                           "0",
			"volumes.kubernetes.io/controller-managed-attach-detach": "true",
		}},
		Spec: corev1.NodeSpec{PodCIDR: scalePodCIDR(i).String(), PodCIDRs: []string{scalePodCIDR(i).String()}},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: scaleNodeIP(i).String()},
				{Type: corev1.NodeHostName, Address: name}},
			Capacity: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("256Gi"),
				corev1.ResourcePods: resource.MustParse("110")},
			NodeInfo: corev1.NodeSystemInfo{MachineID: fmt.Sprintf("%032x", i), KernelVersion: "6.1.0-28-amd64",
				OSImage: "Debian GNU/Linux 12 (bookworm)", ContainerRuntimeVersion: "containerd://1.7.24", KubeletVersion: "v1.35.4",
				OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
	for _, c := range []corev1.NodeConditionType{corev1.NodeReady, corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		st := corev1.ConditionFalse
		if c == corev1.NodeReady {
			st = corev1.ConditionTrue
		}
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: c, Status: st, Reason: "Scale",
			Message: "set by BenchmarkAgentAtScale", LastHeartbeatTime: now, LastTransitionTime: now})
	}
	for k := range 10 {
		n.Status.Images = append(n.Status.Images, corev1.ContainerImage{
			Names: []string{fmt.Sprintf("registry.example.com/team%d/app%d@sha256:%064x", k, k, k),
				fmt.Sprintf("registry.example.com/team%d/app%d:v1.%d.0", k, k, k)}, SizeBytes: int64(50_000_000 + k)})
	}
	return n
}

// writePod creates pod j and sets its status (Running, Ready, its address): two writes.
func (w *scaleWorkload) writePod(ctx context.Context, j int) error {
	ns, name := scaleNS(j), fmt.Sprintf("p%05d", j)
	pod, err := w.cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			"app": fmt.Sprintf("a%d", j%100), "tier": []string{"web", "api", "db"}[j%3]}},
		Spec: corev1.PodSpec{NodeName: w.podOn[j], Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/app:v1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}},
	}, metav1.CreateOptions{})
	if err == nil {
		w.written.Add(1)
	} else if apierrors.IsAlreadyExists(err) { // a retry
		pod, err = w.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return err
	}
	if pod.Status.PodIP != "" {
		return nil
	}
	now := metav1.Now()
	ip := w.podIPs[j].String()
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	if _, err := w.cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return err
	}
	w.written.Add(1)
	return nil
}

func (w *scaleWorkload) service(i int) sbsService {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := sbsService{ns: scaleNS(i), name: fmt.Sprintf("s%05d", i), portName: "http", vip: sbsVIP(i), port: 80, epPort: 8080}
	if i < len(w.epOf) {
		for _, j := range w.epOf[i] {
			s.eps = append(s.eps, w.podIPs[j])
		}
	} else { // a +1 Service: two endpoints of its own
		s.eps = []netip.Addr{w.podIPs[(2*i)%len(w.podIPs)], w.podIPs[(2*i+1)%len(w.podIPs)]}
	}
	return s
}

func (w *scaleWorkload) slice(i int, s sbsService) *discoveryv1.EndpointSlice {
	sl := sbsSlice(s)
	w.mu.Lock()
	defer w.mu.Unlock()
	for k := range sl.Endpoints {
		if i < len(w.epOf) { // as the endpointslice controller writes them: the node and the pod
			j := w.epOf[i][k]
			n := w.podOn[j]
			sl.Endpoints[k].NodeName = &n
			sl.Endpoints[k].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: scaleNS(j), Name: fmt.Sprintf("p%05d", j),
				UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", j))}
		}
	}
	return sl
}

// writeService creates Service i and its EndpointSlice.
func (w *scaleWorkload) writeService(ctx context.Context, i int) error {
	s := w.service(i)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.ns, Labels: map[string]string{"app": fmt.Sprintf("a%d", i%100)}},
		Spec: corev1.ServiceSpec{ClusterIP: s.vip.String(), Ports: []corev1.ServicePort{
			{Name: s.portName, Port: int32(s.port), TargetPort: intstr.FromInt(int(s.epPort)), Protocol: corev1.ProtocolTCP}}},
	}
	if err := w.create(func() error {
		_, err := w.cs.CoreV1().Services(s.ns).Create(ctx, svc, metav1.CreateOptions{})
		return err
	}); err != nil && !apierrors.IsAlreadyExists(err) {
		// A retry whose first attempt reached the API server (its answer lost to a timeout) is refused with "the
		// ClusterIP is already allocated", not AlreadyExists: the Service is there (a full-size load failed so
		// at Service 7,780 of 10,000 on a machine at load 38).
		if got, gerr := w.cs.CoreV1().Services(s.ns).Get(ctx, s.name, metav1.GetOptions{}); gerr != nil || got.Spec.ClusterIP != svc.Spec.ClusterIP {
			return err
		}
	}
	return w.create(func() error {
		_, err := w.cs.DiscoveryV1().EndpointSlices(s.ns).Create(ctx, w.slice(i, s), metav1.CreateOptions{})
		return err
	})
}

// scalePolicy is policy p: pods app=a(p%100) take ingress on 8080 from app=a((p+1)%100) in namespaces of one
// team, and from one tier in their own namespace; every fourth also limits egress to its namespace's db tier
// and 192.0.2.0/24.
func scalePolicy(p int) *networkingv1.NetworkPolicy {
	port := intstr.FromInt(8080)
	tcp := corev1.ProtocolTCP
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np%04d", p), Namespace: scaleNS(p)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a%d", p%100)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a%d", (p+1)%100)}},
						NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", p%10)}}},
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": []string{"web", "api", "db"}[p%3]}}},
				},
			}},
		},
	}
	if p%4 == 0 {
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
			{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "db"}}},
			{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}},
		}}}
	}
	return np
}

// changeEndpoint replaces one endpoint of Service i's slice with another pod's address.
func (w *scaleWorkload) changeEndpoint(ctx context.Context, i int) error {
	w.mu.Lock()
	eps := w.epOf[i]
	w.next = (w.next + 7) % len(w.podIPs)
	eps[len(eps)-1] = w.next
	w.mu.Unlock()
	s := w.service(i)
	return retry(ctx, func() error {
		sl, err := w.cs.DiscoveryV1().EndpointSlices(s.ns).Get(ctx, s.name+"-1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		sl.Endpoints = w.slice(i, s).Endpoints
		_, err = w.cs.DiscoveryV1().EndpointSlices(s.ns).Update(ctx, sl, metav1.UpdateOptions{})
		return err
	})
}

// plusOne writes Service i (one past the loaded ones) and its slice, and times until its rules are in node1's
// kernel; watched is when a watch of ours saw the slice (API server write and watch delivery).
func (w *scaleWorkload) plusOne(ctx context.Context, probe sbsProbe, i int) (lat, watched time.Duration, err error) {
	s := w.service(i)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	wi, err := w.cs.DiscoveryV1().EndpointSlices(s.ns).Watch(wctx, metav1.ListOptions{FieldSelector: "metadata.name=" + s.name + "-1"})
	if err != nil {
		return 0, 0, err
	}
	defer wi.Stop()
	seen := make(chan time.Time, 1)
	go func() {
		for ev := range wi.ResultChan() {
			if ev.Type == watch.Added {
				seen <- time.Now()
				return
			}
		}
	}()
	t0 := time.Now()
	if err := w.writeService(ctx, i); err != nil {
		return 0, 0, err
	}
	for {
		ok, err := probe.programmed(wctx, s)
		if err != nil {
			return 0, 0, err
		}
		if ok {
			lat = time.Since(t0)
			break
		}
		if wctx.Err() != nil {
			return 0, 0, fmt.Errorf("+1 Service %s not programmed in a minute", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case at := <-seen:
		watched = at.Sub(t0)
	case <-time.After(5 * time.Second):
	}
	return lat, watched, nil
}

// waitFirstSyncs polls node's metrics until every subsystem reported its first full sync; it returns the
// seconds from the agent's start per controller.
func waitFirstSyncs(ctx context.Context, n *lab.Node, timeout time.Duration) (map[string]time.Duration, error) {
	want := []string{"bgp-nodes", "service-model", "proxy", "policy", "vips"}
	deadline := time.Now().Add(timeout)
	var last map[string]time.Duration
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		m, err := metrics(ctx, n)
		if err != nil {
			continue
		}
		got := map[string]time.Duration{}
		for k, v := range m {
			if name, ok := strings.CutPrefix(k, `canopy_controller_first_sync_seconds{controller="`); ok {
				got[strings.TrimSuffix(name, `"}`)] = time.Duration(v * float64(time.Second))
			}
		}
		last = got
		done := true
		for _, c := range want {
			if _, ok := got[c]; !ok {
				done = false
			}
		}
		if done {
			return got, nil
		}
	}
	return last, fmt.Errorf("not every subsystem synced within %v: %v", timeout, last)
}

// cpuOver is the agent's CPU (its own and its children's) over d, while load (if any) runs.
func cpuOver(b *testing.B, n *lab.Node, d time.Duration, load func(stop <-chan struct{})) time.Duration {
	u0, err := n.Agent().SettledUsage(2 * time.Second)
	if err != nil {
		b.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	if load != nil {
		go func() { load(stop); close(done) }()
	} else {
		close(done)
	}
	time.Sleep(d)
	close(stop)
	<-done
	u1, err := n.Agent().SettledUsage(2 * time.Second)
	if err != nil {
		b.Fatal(err)
	}
	return u1.CPU() + u1.ChildCPU() - u0.CPU() - u0.ChildCPU()
}

// scaleHeapProfile fetches /debug/pprof/heap?gc=1 (which also runs a GC) into CANOPY_SCALE_PPROF_DIR, if set.
func scaleHeapProfile(ctx context.Context, n *lab.Node, name string) error {
	req, err := newRequest(ctx, "http://127.0.0.1:9469/debug/pprof/heap?gc=1")
	if err != nil {
		return err
	}
	resp, err := n.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if dir := os.Getenv("CANOPY_SCALE_PPROF_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "heap-"+name+".pb.gz"), body, 0o644)
	}
	return nil
}

type scaleResult struct {
	sizes                        scaleSize
	load, readyWall, restartWall time.Duration
	firstSync, restart           map[string]time.Duration
	rss, heapInuse, heapAlloc    float64
	rssGC, heapGC, rssChurn      float64
	heapInuseGC                  float64
	minute, cpuRest, cpuChurn    time.Duration
	changes, backendSyncs        int
	backendSync                  time.Duration
	changeToKernel               time.Duration // the agent's canopy_proxy_change_to_kernel_seconds, mean over the +1 samples
	mode                         string
	restartNote                  string
	plusOne, plusOneWatch        []time.Duration
}

func (r scaleResult) report(b *testing.B) {
	perMin := func(d time.Duration) float64 { return d.Seconds() * float64(time.Minute) / float64(r.minute) }
	out := os.Stdout
	s := r.sizes
	fmt.Fprintf(out, "\nBenchmarkAgentAtScale: %d Nodes, %d Services, %d endpoints, %d Pods, %d NetworkPolicies (written in %v); one agent (proxy %s), node mesh off\n",
		s.nodes, s.services, s.services*max(s.endpoints/s.services, 1), s.pods, s.policies, r.load.Round(time.Second), r.mode)
	fmt.Fprintf(out, "| what | value |\n|---|---|\n")
	fmt.Fprintf(out, "| RSS after the initial sync | %s (goal < 150 MB) |\n", mb(int64(r.rss)))
	fmt.Fprintf(out, "| Go heap in use / allocated after the initial sync | %s / %s |\n", mb(int64(r.heapInuse)), mb(int64(r.heapAlloc)))
	fmt.Fprintf(out, "| after a forced GC: RSS / heap allocated / heap in use | %s / %s / %s |\n", mb(int64(r.rssGC)), mb(int64(r.heapGC)), mb(int64(r.heapInuseGC)))
	fmt.Fprintf(out, "| RSS after the churn minute | %s |\n", mb(int64(r.rssChurn)))
	names := make([]string, 0, len(r.firstSync))
	for k := range r.firstSync {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(out, "| first full sync, start -> %s | %v (after a restart: %v) |\n", k, r.firstSync[k].Round(time.Millisecond), r.restart[k].Round(time.Millisecond))
	}
	fmt.Fprintf(out, "| restart, from the agent's log | %s |\n", r.restartNote)
	fmt.Fprintf(out, "| CPU at rest | %.2f s/min |\n", perMin(r.cpuRest))
	fmt.Fprintf(out, "| CPU under 10 EndpointSlice changes/s (%d changes) | %.2f s/min |\n", r.changes, perMin(r.cpuChurn))
	fmt.Fprintf(out, "| +1 Service, API write to kernel (median of %d) | %v %v |\n", len(r.plusOne), median(r.plusOne).Round(time.Millisecond), roundAll(r.plusOne))
	fmt.Fprintf(out, "| of which: until our own watch saw the slice | %v %v |\n", median(r.plusOneWatch).Round(time.Millisecond), roundAll(r.plusOneWatch))
	fmt.Fprintf(out, "| the %s back end's syncs meanwhile (a +1 is a Service, then its slice) | %d, %v each on average |\n", r.mode, r.backendSyncs, r.backendSync.Round(time.Millisecond))
	fmt.Fprintf(out, "| +1 Service: the change reaching the agent -> its transaction done (canopy_proxy_change_to_kernel_seconds, mean) | %v |\n", r.changeToKernel.Round(time.Millisecond))
	b.ReportMetric(r.rss/(1<<20), "MiB-rss")
	b.ReportMetric(r.heapInuse/(1<<20), "MiB-heap")
	for _, k := range names {
		b.ReportMetric(r.firstSync[k].Seconds(), "s-first-sync-"+k)
		b.ReportMetric(r.restart[k].Seconds(), "s-restart-sync-"+k)
	}
	b.ReportMetric(perMin(r.cpuRest), "cpu-s/min-rest")
	b.ReportMetric(perMin(r.cpuChurn), "cpu-s/min-churn")
	b.ReportMetric(median(r.plusOne).Seconds()*1000, "ms-plus-one")
}

func scaleLog(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s agent-at-scale: "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

func scaleTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sinceLastStart is the first n lines of the log after the lab's last start marker.
func sinceLastStart(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(string(b), "\n")
	start := 0
	for i, l := range lines {
		if labMarkerRE.MatchString(l) {
			start = i
		}
	}
	lines = lines[start:]
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
