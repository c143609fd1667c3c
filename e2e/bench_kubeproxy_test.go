package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	"canopy.io/canopy/internal/model"
	iptproxy "canopy.io/canopy/proxy/iptables"
	nftproxy "canopy.io/canopy/proxy/nftables"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// BenchmarkProxySideBySide times Canopy's service proxy and kube-proxy (v1.35.4, hack/build-kube-proxy.sh) in
// one lab, on the same API objects at the same time: node1 runs the Canopy agent with its proxy, node2 runs
// kube-proxy and a Canopy agent with --run-service-proxy=false (so only kube-proxy programs Services there).
// Phase 1 pairs Canopy --proxy-mode=iptables with kube-proxy nftables; phase 2
// pairs Canopy --proxy-mode=nftables with kube-proxy iptables (every object deleted in between, both proxies
// restarted in the new mode on a clean kernel state).
//
// Workload per phase: ClusterIP Services (TCP 80 -> 8080, no selector) with an EndpointSlice of 2 ready
// endpoints each, written directly by the benchmark with 16 concurrent writers: 1,000, then up to 10,000. At
// each size, 5 times: +1 Service (Service and its EndpointSlice written back to back), then 5 times one
// endpoint change (one address of one slice replaced). At 10,000, each proxy is restarted (the other keeps
// running) with a Service created while it was down.
//
// What "programmed" means, read over a netfilter netlink socket inside the node's namespace (lab.NFTReader:
// one map element or one chain's rules per look, well under a millisecond; the nft 1.0.6 command reads the
// whole ruleset for every command, a second and more at 10,000 Services), polled every 5 ms:
//   - iptables (iptables-nft, table ip nat): the Service's SVC chain (named as each proxy names it) compares
//     the VIP and jumps to each endpoint's SEP chain (and to none of a removed endpoint's); after each +1
//     sample, iptables-save must show the dispatch line `-A CANOPY-SERVICES|KUBE-SERVICES -d VIP/32 ... -j
//     <SVC chain>` (both proxies write a chain and its dispatch line in one iptables-restore).
//   - nftables (table ip canopy or ip kube-proxy): the element `VIP . tcp . 80` of the verdict map service-ips,
//     and the chain it goes to names each endpoint's chain (...__<ip>/<port>, both proxies' naming).
//   - complete: the number of the benchmark's VIPs in the dispatch (CANOPY-SERVICES/KUBE-SERVICES rules, or
//     service-ips elements) equals the Services created.
//
// A latency is the time from just before the first API write to the end of the first look that saw the rules:
// an upper bound, by at most one look and one 5 ms pause.
//
// At the end of each phase kube-proxy is restarted once more with --iptables-min-sync-period=0 (its default is
// 1 s, which sets the floor of its latencies; the flag is the nftables mode's too) and +1 and the endpoint change are timed again, kube-proxy alone:
// the table shows those next to Canopy's (which has no such period), naming the knob.
//
// Per proxy: latencies from the API write to the kernel (median of 5), CPU seconds of the process during each
// bulk load (utime+stime, and cutime+cstime: the iptables-restore/nft children it waited for), RSS after the
// 10,000 load, and after a restart: the time from process start until the Service created while it was down
// is programmed, and until the dispatch is complete. Canopy's numbers are its whole agent's (BGP speaker, route
// manager, NetworkPolicy and VIP controllers also watch); node2's agent without the proxy is shown as the
// baseline of that part.
//
//	go test -run '^$' -bench ProxySideBySide -benchtime 1x -timeout 90m ./e2e/
//
// It takes about 45 min on 2 busy cores (the API server writes ~20 Service+EndpointSlice pairs/s while both
// proxies program them), most of it in the two loads to 10,000. The table goes to stdout (a benchmark's
// b.Logf output is cut to 10 lines), progress lines to stderr as they happen.
//
// CANOPY_SBS_SIZES (default "1000,10000") changes the two sizes, e.g. "200,1000" for a quick try.
func BenchmarkProxySideBySide(b *testing.B) {
	if testing.Short() {
		b.Skip("-short: no lab")
	}
	kpBin := lab.KubeProxyBin()
	if _, err := os.Stat(kpBin); err != nil {
		sbsSkip(b, "no kube-proxy (hack/build-kube-proxy.sh builds it): %v", err)
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		sbsSkip(b, "no nsenter (util-linux): %v", err)
	}
	sizes := [2]int{1000, 10000}
	if v := os.Getenv("CANOPY_SBS_SIZES"); v != "" {
		if _, err := fmt.Sscanf(v, "%d,%d", &sizes[0], &sizes[1]); err != nil || sizes[0] < 1 || sizes[1] <= sizes[0] {
			b.Fatalf("CANOPY_SBS_SIZES=%q: want two increasing sizes, e.g. 1000,10000", v)
		}
	}
	// The agents log at info: at debug the proxy logs a line per sync.
	cfg := lab.Config{Nodes: 2, AgentBin: agentBin(), AgentArgs: []string{"--log-level=info"},
		PerNodeArgs: map[int][]string{1: {"--proxy-mode=iptables"}, 2: {"--run-service-proxy=false"}}}
	cfg.Logf = sbsLog // b.Logf keeps only 10 lines of a benchmark's output
	l := lab.New(b, cfg)
	ctx := context.Background()
	rc := l.RestConfig()
	rc.QPS, rc.Burst = 5000, 5000 // the writers are bounded by their number, not by client-side throttling
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: sbsNamespace}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	w := &sbsWorkload{cs: cs}
	nodeA, nodeB := l.Nodes[0], l.Nodes[1]

	var kp *lab.KubeProxy
	b.Cleanup(func() {
		if kp != nil {
			_ = kp.Stop()
		}
	})
	results := map[string]*sbsResult{}
	baselines := map[string]*sbsResult{} // node2's agent without the proxy, per phase
	for phase, pm := range []struct{ canopyMode, kpMode string }{{"iptables", "nftables"}, {"nftables", "iptables"}} {
		canopyArgs := []string{"--proxy-mode=" + pm.canopyMode} // named in both phases: the default is nftables here
		if phase > 0 {
			// Everything from phase 1 goes while no proxy runs; each proxy then starts on a clean kernel state.
			if err := kp.Stop(); err != nil {
				sbsLog("stopping kube-proxy: %v", err)
			}
			if err := nodeA.StopAgent(); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if err := w.deleteAll(ctx); err != nil {
				b.Fatal(err)
			}
			sbsLog("phase %d: deleted every Service and EndpointSlice in %v", phase+1, time.Since(t0).Round(time.Millisecond))
			if err := l.CleanupKubeProxy(ctx, nodeB, kpBin); err != nil {
				b.Fatal(err)
			}
			if err := nodeA.StartAgent(canopyArgs...); err != nil {
				b.Fatal(err)
			}
		}
		kp, err = l.StartKubeProxy(ctx, nodeB, pm.kpMode, kpBin)
		if err != nil {
			b.Fatal(err)
		}
		canopy := &sbsSide{name: "Canopy " + pm.canopyMode, node: nodeA, mode: pm.canopyMode, canopyArgs: canopyArgs, lab: l,
			probe: newSBSProbe(b, nodeA, true, pm.canopyMode), res: &sbsResult{}}
		kubeProxy := &sbsSide{name: "kube-proxy " + pm.kpMode, node: nodeB, mode: pm.kpMode, kp: kp, kpBin: kpBin, lab: l,
			probe: newSBSProbe(b, nodeB, false, pm.kpMode), res: &sbsResult{}}
		sides := []*sbsSide{canopy, kubeProxy}
		results[canopy.name], results[kubeProxy.name] = canopy.res, kubeProxy.res
		base := &sbsResult{}
		baselines[pm.canopyMode] = base
		sbsPhase(b, ctx, w, sides, nodeB, base, sizes, phase+1)
		kp = kubeProxy.kp // restarted
	}
	sbsReport(b, results, baselines, sizes)
}

const (
	sbsNamespace = "proxybench"
	sbsManagedBy = "canopy-bench"
	sbsWriters   = 16
	sbsSamples   = 5
)

// sbsVIP is Service i's cluster IP: 10.96.100.1 on, 250 per /24 (service CIDR 10.96.0.0/16).
func sbsVIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 96, byte(100 + i/250), byte(i%250 + 1)})
}

// sbsEP is endpoint address k: 10.244.128.1 on, in the pod network but outside every node's pod CIDR (no pod
// needs to exist: nothing connects).
func sbsEP(k int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 244, byte(128 + k/250), byte(k%250 + 1)})
}

// sbsVIPRE matches the benchmark's VIPs (10.96.100.0 - 10.96.149.255).
const sbsVIPRE = `10\.96\.1[0-4][0-9]\.[0-9]+`

// sbsService is one Service port as the proxies see it.
type sbsService struct {
	ns, name, portName string
	vip                netip.Addr
	port, epPort       uint16
	eps                []netip.Addr
}

func (s sbsService) String() string { return s.ns + "/" + s.name }

// kubernetesService is the API server's Service, which both proxies program as soon as they run.
func kubernetesService(l *lab.Lab) sbsService {
	return sbsService{ns: "default", name: "kubernetes", portName: "https", vip: netip.MustParseAddr("10.96.0.1"),
		port: 443, epPort: 6443, eps: []netip.Addr{l.CP.IP}}
}

// sbsWorkload writes the benchmark's Services and EndpointSlices.
type sbsWorkload struct {
	cs     kubernetes.Interface
	mu     sync.Mutex
	svcs   []sbsService // created so far, by index
	nextEP int          // next endpoint address index for a changed endpoint
}

func (w *sbsWorkload) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.svcs)
}

func (w *sbsWorkload) get(i int) sbsService {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.svcs[i]
	s.eps = slices.Clone(s.eps)
	return s
}

// create writes Services [count(), to) with their EndpointSlices, sbsWriters at a time (each writes a Service,
// then its slice).
func (w *sbsWorkload) create(ctx context.Context, to int) error {
	from := w.count()
	w.mu.Lock()
	for i := from; i < to; i++ {
		w.svcs = append(w.svcs, sbsService{ns: sbsNamespace, name: fmt.Sprintf("s%05d", i), portName: "http",
			vip: sbsVIP(i), port: 80, epPort: 8080, eps: []netip.Addr{sbsEP(2 * i), sbsEP(2*i + 1)}})
	}
	if w.nextEP < 2*to+1000 {
		w.nextEP = 2*to + 1000 // changed endpoints come after every Service's own (room for 500 more Services)
	}
	w.mu.Unlock()
	idx := make(chan int)
	errs := make(chan error, sbsWriters)
	var wg sync.WaitGroup
	for range sbsWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				if err := w.write(ctx, w.get(i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
loop:
	for i := from; i < to; i++ {
		select {
		case idx <- i:
		case err = <-errs:
			break loop
		}
	}
	close(idx)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// write creates the Service, then its EndpointSlice, retrying what a loaded API server may refuse for a moment.
func (w *sbsWorkload) write(ctx context.Context, s sbsService) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.ns},
		Spec: corev1.ServiceSpec{ClusterIP: s.vip.String(), Ports: []corev1.ServicePort{
			{Name: s.portName, Port: int32(s.port), TargetPort: intstr.FromInt(int(s.epPort)), Protocol: corev1.ProtocolTCP}}},
	}
	if err := retry(ctx, func() error {
		_, err := w.cs.CoreV1().Services(s.ns).Create(ctx, svc, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}); err != nil {
		return fmt.Errorf("Service %s: %w", s, err)
	}
	sl := sbsSlice(s)
	if err := retry(ctx, func() error {
		_, err := w.cs.DiscoveryV1().EndpointSlices(s.ns).Create(ctx, sl, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}); err != nil {
		return fmt.Errorf("EndpointSlice of %s: %w", s, err)
	}
	return nil
}

func sbsSlice(s sbsService) *discoveryv1.EndpointSlice {
	t, f := true, false
	name, proto, port := s.portName, corev1.ProtocolTCP, int32(s.epPort)
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: s.name + "-1", Namespace: s.ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: s.name, discoveryv1.LabelManagedBy: sbsManagedBy}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
	for _, ep := range s.eps {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ep.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &t, Serving: &t, Terminating: &f}})
	}
	return sl
}

// changeEndpoint replaces Service i's second endpoint with a new address; it returns the Service as it is now
// and the address that went.
func (w *sbsWorkload) changeEndpoint(ctx context.Context, i int) (sbsService, netip.Addr, error) {
	w.mu.Lock()
	s := &w.svcs[i]
	old := s.eps[1]
	s.eps[1] = sbsEP(w.nextEP)
	w.nextEP++
	now := *s
	now.eps = slices.Clone(s.eps)
	w.mu.Unlock()
	err := retry(ctx, func() error {
		sl, err := w.cs.DiscoveryV1().EndpointSlices(now.ns).Get(ctx, now.name+"-1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		sl.Endpoints = sbsSlice(now).Endpoints
		_, err = w.cs.DiscoveryV1().EndpointSlices(now.ns).Update(ctx, sl, metav1.UpdateOptions{})
		return err
	})
	return now, old, err
}

// deleteAll deletes every Service and EndpointSlice of the benchmark, sbsWriters at a time.
func (w *sbsWorkload) deleteAll(ctx context.Context) error {
	w.mu.Lock()
	names := make([]string, len(w.svcs))
	for i, s := range w.svcs {
		names[i] = s.name
	}
	w.svcs, w.nextEP = nil, 0
	w.mu.Unlock()
	idx := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	del := func(what, name string, f func() error) {
		if err := retry(ctx, func() error {
			if err := f(); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			return nil
		}); err != nil {
			mu.Lock()
			errs = append(errs, fmt.Errorf("%s %s: %w", what, name, err))
			mu.Unlock()
		}
	}
	for range sbsWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range idx {
				del("EndpointSlice", n+"-1", func() error {
					return w.cs.DiscoveryV1().EndpointSlices(sbsNamespace).Delete(ctx, n+"-1", metav1.DeleteOptions{})
				})
				del("Service", n, func() error {
					return w.cs.CoreV1().Services(sbsNamespace).Delete(ctx, n, metav1.DeleteOptions{})
				})
			}
		}()
	}
	for _, n := range names {
		idx <- n
	}
	close(idx)
	wg.Wait()
	return errors.Join(errs...)
}

// retry runs f up to 5 times, 1 s apart, while it fails.
func retry(ctx context.Context, f func() error) error {
	var err error
	for range 5 {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
	return err
}

// nsExec runs argv in the node's network namespace with nsenter (lighter than `ip netns exec`, which also
// makes a mount namespace and remounts /sys), for the checks that need the real tools (iptables-save).
func nsExec(ctx context.Context, n *lab.Node, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + n.NS, "--"}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s: %w: %s", n.Name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// sbsProbe reads one proxy's rules in its node's kernel.
type sbsProbe interface {
	// programmed: the VIP dispatches to exactly s.eps (none of gone).
	programmed(ctx context.Context, s sbsService, gone ...netip.Addr) (bool, error)
	// dispatched: the VIP's line in the shared dispatch is there (checked after a sample, in the full ruleset).
	dispatched(ctx context.Context, s sbsService) (bool, error)
	// count: how many of the benchmark's VIPs the dispatch holds.
	count(ctx context.Context) (int, error)
}

// newSBSProbe reads the rules of one proxy on node n through an nftables netlink socket in its namespace
// (iptables-nft's chains are nftables chains of table ip nat): one chain's rules or one map element per look,
// well under a millisecond, where the nft command reads the whole ruleset each time (a second at 10,000
// Services).
func newSBSProbe(b *testing.B, n *lab.Node, canopy bool, mode string) sbsProbe {
	r, err := lab.OpenNFTReader(n.NS)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	switch {
	case mode == "nftables" && canopy:
		var tables []string
		for i := range nftproxy.DefaultShards {
			tables = append(tables, nftproxy.ShardTable(i))
		}
		return &nftProbe{r: r, tables: tables, chains: map[netip.Addr][2]string{}}
	case mode == "nftables":
		return &nftProbe{r: r, tables: []string{"kube-proxy"}, chains: map[netip.Addr][2]string{}}
	case canopy:
		return &iptProbe{node: n, r: r, dispatch: "CANOPY-SERVICES",
			svcChain: func(s sbsService) string {
				return iptproxy.SVCChain(model.ServicePortKey(s.ns, s.name, s.portName, model.TCP))
			},
			sepChain: func(s sbsService, ep netip.Addr) string {
				return iptproxy.SEPChain(model.ServicePortKey(s.ns, s.name, s.portName, model.TCP), ep, s.epPort)
			}}
	default:
		// kube-proxy's names (pkg/proxy/iptables: portProtoHash, servicePortEndpointChainName).
		return &iptProbe{node: n, r: r, dispatch: "KUBE-SERVICES",
			svcChain: func(s sbsService) string {
				return "KUBE-SVC-" + kpHash(s.ns+"/"+s.name+":"+s.portName+"tcp")
			},
			sepChain: func(s sbsService, ep netip.Addr) string {
				return "KUBE-SEP-" + kpHash(s.ns+"/"+s.name+":"+s.portName+"tcp"+netip.AddrPortFrom(ep, s.epPort).String())
			}}
	}
}

func kpHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(h[:])[:16]
}

// isSBSVIP: a in the benchmark's VIP range.
func isSBSVIP(a [4]byte) bool { return a[0] == 10 && a[1] == 96 && a[2] >= 100 && a[2] < 150 }

// iptProbe reads an iptables proxy's chains (iptables-nft: table ip nat).
type iptProbe struct {
	node     *lab.Node
	r        *lab.NFTReader
	dispatch string // CANOPY-SERVICES, KUBE-SERVICES
	svcChain func(sbsService) string
	sepChain func(sbsService, netip.Addr) string
}

// programmed: the Service's SVC chain matches the VIP (its masquerade rule) and jumps to each endpoint's SEP
// chain, and to none of gone.
func (p *iptProbe) programmed(ctx context.Context, s sbsService, gone ...netip.Addr) (bool, error) {
	raw, err := p.r.ChainDump(lab.NFProtoIPv4, "nat", p.svcChain(s))
	if err != nil || len(raw) == 0 {
		return false, err
	}
	vip := s.vip.As4()
	if !bytes.Contains(raw, vip[:]) {
		return false, nil
	}
	for _, ep := range s.eps {
		if !bytes.Contains(raw, []byte(p.sepChain(s, ep)+"\x00")) {
			return false, nil
		}
	}
	for _, ep := range gone {
		if bytes.Contains(raw, []byte(p.sepChain(s, ep)+"\x00")) {
			return false, nil
		}
	}
	return true, nil
}

// dispatched: iptables-save shows the VIP's line in the dispatch chain, jumping to its SVC chain.
func (p *iptProbe) dispatched(ctx context.Context, s sbsService) (bool, error) {
	out, err := nsExec(ctx, p.node, "iptables-save", "-t", "nat")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "-A "+p.dispatch+" -d "+s.vip.String()+"/32 ") && strings.HasSuffix(line, " -j "+p.svcChain(s)) {
			return true, nil
		}
	}
	return false, nil
}

// svcJumpRE finds a jump to a per-service chain in a rule's attributes; vipCmpRE the 4-byte value an
// `ip daddr 10.96.x.y` comparison holds (NFTA_DATA_VALUE, length 8).
var (
	svcJumpRE = regexp.MustCompile(`(?:CANOPY|KUBE)-SVC-[A-Z2-7]{16}\x00`)
	vipCmpRE  = regexp.MustCompile(`(?s)\x08\x00\x01\x00\x0a\x60(.)(.)`)
)

// count: the benchmark's VIPs whose dispatch line (in CANOPY-SERVICES/KUBE-SERVICES) jumps to an SVC chain.
func (p *iptProbe) count(ctx context.Context) (int, error) {
	rules, err := p.r.ChainRules(lab.NFProtoIPv4, "nat", p.dispatch)
	if err != nil {
		return 0, err
	}
	seen := map[[4]byte]bool{}
	for _, rule := range rules {
		if !svcJumpRE.Match(rule) {
			continue
		}
		for _, m := range vipCmpRE.FindAllSubmatch(rule, -1) {
			if a := [4]byte{10, 96, m[1][0], m[2][0]}; isSBSVIP(a) {
				seen[a] = true
			}
		}
	}
	return len(seen), nil
}

// nftProbe reads an nftables proxy's table (canopy or kube-proxy, family ip): both dispatch a VIP through the
// verdict map service-ips to a per-service chain, and name an endpoint's chain ...__<ip>/<port>.
type nftProbe struct {
	r      *lab.NFTReader
	tables []string // Canopy: its shards' tables (a service port is in one of them)

	mu     sync.Mutex
	chains map[netip.Addr][2]string // VIP -> the table and chain its element jumps to
}

// verdict is the VIP's service-ips element's chain, and the table it is in ("" if none has it).
func (p *nftProbe) verdict(s sbsService) (table, chain string, err error) {
	for _, t := range p.tables {
		c, err := p.r.MapVerdict(lab.NFProtoIPv4, t, "service-ips", svcKey(s))
		if errors.Is(err, lab.ErrNotFound) {
			continue
		}
		if err != nil || c != "" {
			return t, c, err
		}
	}
	return "", "", nil
}

func svcKey(s sbsService) []byte {
	vip := s.vip.As4()
	return lab.ConcatKey(vip[:], []byte{6}, []byte{byte(s.port >> 8), byte(s.port)})
}

// programmed: the VIP's service-ips element is there and the chain it goes to reaches each endpoint and none
// of gone.
func (p *nftProbe) programmed(ctx context.Context, s sbsService, gone ...netip.Addr) (bool, error) {
	p.mu.Lock()
	tc := p.chains[s.vip]
	p.mu.Unlock()
	if tc[1] == "" {
		t, c, err := p.verdict(s)
		if err != nil || c == "" {
			return false, err
		}
		tc = [2]string{t, c}
		p.mu.Lock()
		p.chains[s.vip] = tc
		p.mu.Unlock()
	}
	raw, err := p.r.ChainDump(lab.NFProtoIPv4, tc[0], tc[1])
	if err != nil || len(raw) == 0 {
		return false, err
	}
	for _, ep := range s.eps {
		if !bytes.Contains(raw, fmt.Appendf(nil, "__%s/%d\x00", ep, s.epPort)) {
			return false, nil
		}
	}
	for _, ep := range gone {
		if bytes.Contains(raw, fmt.Appendf(nil, "__%s/%d\x00", ep, s.epPort)) {
			return false, nil
		}
	}
	return true, nil
}

func (p *nftProbe) dispatched(ctx context.Context, s sbsService) (bool, error) {
	_, c, err := p.verdict(s)
	return c != "", err
}

// count: the benchmark's VIPs (TCP 80) in service-ips.
func (p *nftProbe) count(ctx context.Context) (int, error) {
	n := 0
	for _, t := range p.tables {
		keys, err := p.r.SetKeys(lab.NFProtoIPv4, t, "service-ips")
		if err != nil {
			return 0, err
		}
		for _, k := range keys {
			if len(k) == 12 && isSBSVIP([4]byte(k[:4])) && k[4] == 6 && k[8] == 0 && k[9] == 80 {
				n++
			}
		}
	}
	return n, nil
}

// sbsSide is one proxy under test.
type sbsSide struct {
	name       string
	node       *lab.Node
	mode       string
	canopyArgs []string       // Canopy: the agent's extra flags
	kp         *lab.KubeProxy // kube-proxy: the running one
	kpBin      string
	kpExtra    []string // kube-proxy: extra flags for its next start
	lab        *lab.Lab
	probe      sbsProbe
	res        *sbsResult
}

// otherModeGone: the side's proxy left nothing of its other mode (iptables chains, or its nftables table).
func otherModeGone(ctx context.Context, s *sbsSide) error {
	prefix, table := "CANOPY", "canopy"
	if s.kp != nil {
		prefix, table = "KUBE", "kube-proxy"
	}
	if s.mode == "iptables" {
		out, err := nsExec(ctx, s.node, "nft", "list", "tables", "ip")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && (f[2] == table || (s.kp == nil && nftproxy.IsShardTable(f[2]))) {
				return fmt.Errorf("%s: table ip %s is still there", s.node.Name, f[2])
			}
		}
		return nil
	}
	out, err := nsExec(ctx, s.node, "iptables-save", "-t", "nat")
	if err != nil {
		return err
	}
	if n := strings.Count(out, ":"+prefix+"-SEP-"); n > 0 {
		return fmt.Errorf("%s: %d %s-SEP- chains are still there", s.node.Name, n, prefix)
	}
	return nil
}

func (s *sbsSide) proc() *lab.Proc {
	if s.kp != nil {
		return s.kp.Proc
	}
	return s.node.Agent()
}

// usage reads the process's CPU and RSS once no child of it runs (a child's CPU counts when it is reaped).
func (s *sbsSide) usage(b *testing.B) lab.ProcUsage {
	b.Helper()
	u, err := s.proc().SettledUsage(30 * time.Second)
	if err != nil {
		b.Fatalf("%s: %v", s.name, err)
	}
	return u
}

func (s *sbsSide) stop() error {
	if s.kp != nil {
		return s.kp.Stop()
	}
	return s.node.StopAgent()
}

func (s *sbsSide) start(ctx context.Context) error {
	if s.kp != nil {
		kp, err := s.lab.StartKubeProxy(ctx, s.node, s.mode, s.kpBin, s.kpExtra...)
		if err != nil {
			return err
		}
		s.kp = kp
		return nil
	}
	return s.node.StartAgent(s.canopyArgs...)
}

// sbsResult is one proxy's numbers.
type sbsResult struct {
	add1, epChange [2][]time.Duration // per size: the samples
	// Canopy: the mean of its canopy_proxy_change_to_kernel_seconds over the +1 samples, per size (the change
	// reaching the agent -> its transaction done; the API writes and the watch are not in it)
	add1Agent   [2]time.Duration
	load        [2]sbsLoad
	rss         int64
	restartProg time.Duration // process start -> the Service created while it was down is programmed
	restartFull time.Duration // process start -> the dispatch is complete
	restartCPU  time.Duration // CPU (own + children) of the new process until then
	restartNote string        // what its log says about the first sync
	// kube-proxy restarted with --iptables-min-sync-period=0 (its default is 1 s), at the larger size.
	add1Min0, epChangeMin0 []time.Duration
}

type sbsLoad struct {
	services  int
	lag       time.Duration // last write -> everything programmed
	total     time.Duration // first write -> everything programmed
	cpu, kids time.Duration // own and children's CPU
}

// sbsPhase runs the workload once against both sides (base: node2's agent without the proxy).
func sbsPhase(b *testing.B, ctx context.Context, w *sbsWorkload, sides []*sbsSide, baseNode *lab.Node, base *sbsResult, sizes [2]int, phase int) {
	kube := kubernetesService(sides[0].lab)
	for _, s := range sides {
		eventually(b, 2*time.Minute, s.name+" programs the kubernetes Service", func(ctx context.Context) error {
			if exited, err := s.proc().Exited(); exited {
				b.Fatalf("%s exited: %v", s.name, err)
			}
			if ok, _ := s.probe.programmed(ctx, kube); !ok {
				return fmt.Errorf("not yet")
			}
			return nil
		})
	}
	// Each proxy removes what another mode left when it starts; let that finish before the CPU counts.
	for _, s := range sides {
		eventually(b, 5*time.Minute, s.name+" removed the rules of its other mode", func(ctx context.Context) error {
			return otherModeGone(ctx, s)
		})
	}
	time.Sleep(3 * time.Second)
	for si, size := range sizes {
		sbsLoadTo(b, ctx, w, sides, baseNode, base, size, si, phase)
		if si == 1 {
			time.Sleep(5 * time.Second)
			for _, s := range sides {
				s.res.rss = s.usage(b).RSS
			}
			if a := baseNode.Agent(); a != nil {
				if u, err := a.Usage(); err == nil {
					base.rss = u.RSS
				}
			}
		}
		const c2k = "canopy_proxy_change_to_kernel_seconds"
		m0 := make([]map[string]float64, len(sides))
		for k, s := range sides {
			if s.kp == nil {
				m0[k], _ = metrics(ctx, s.node)
			}
		}
		for range sbsSamples {
			time.Sleep(2 * time.Second) // kube-proxy's default --*-min-sync-period is 1 s
			i := w.count()
			t0 := time.Now()
			if err := w.create(ctx, i+1); err != nil {
				b.Fatal(err)
			}
			svc := w.get(i)
			lat := sbsWait(b, ctx, sides, t0, 5*time.Minute, "+1 Service "+svc.String(), func(ctx context.Context, s *sbsSide) (bool, error) {
				return s.probe.programmed(ctx, svc)
			})
			for k, s := range sides {
				s.res.add1[si] = append(s.res.add1[si], lat[k])
				if ok, err := s.probe.dispatched(ctx, svc); err != nil || !ok {
					b.Fatalf("%s: %s's chains are there but not its dispatch line (err %v)", s.name, svc, err)
				}
			}
		}
		for k, s := range sides {
			if m1, err := metrics(ctx, s.node); err == nil && m0[k] != nil {
				sum, cnt := c2k+`_sum{backend="`+s.mode+`"}`, c2k+`_count{backend="`+s.mode+`"}`
				if n := m1[cnt] - m0[k][cnt]; n > 0 {
					s.res.add1Agent[si] = time.Duration((m1[sum] - m0[k][sum]) / n * float64(time.Second))
				}
			}
		}
		for k := range sbsSamples {
			time.Sleep(2 * time.Second)
			i := (k*7919 + 13) % sizes[0] // spread over the first load's Services
			t0 := time.Now()
			svc, old, err := w.changeEndpoint(ctx, i)
			if err != nil {
				b.Fatal(err)
			}
			lat := sbsWait(b, ctx, sides, t0, 5*time.Minute, "endpoint change of "+svc.String(), func(ctx context.Context, s *sbsSide) (bool, error) {
				return s.probe.programmed(ctx, svc, old)
			})
			for k, s := range sides {
				s.res.epChange[si] = append(s.res.epChange[si], lat[k])
			}
		}
		for _, s := range sides {
			sbsLog("phase %d, %d Services: %s: +1 Service %v, endpoint change %v", phase, w.count(), s.name,
				roundAll(s.res.add1[si]), roundAll(s.res.epChange[si]))
		}
	}
	// Restart each proxy in turn (the other keeps running), with a Service created while it is down.
	for _, s := range sides {
		time.Sleep(2 * time.Second)
		if err := s.stop(); err != nil {
			b.Fatalf("stopping %s: %v", s.name, err)
		}
		i := w.count()
		if err := w.create(ctx, i+1); err != nil {
			b.Fatal(err)
		}
		svc := w.get(i)
		want := w.count()
		time.Sleep(2 * time.Second)
		t0 := time.Now()
		if err := s.start(ctx); err != nil {
			b.Fatal(err)
		}
		prog := sbsWait(b, ctx, []*sbsSide{s}, t0, 10*time.Minute, "restarted "+s.name+" programs "+svc.String(), func(ctx context.Context, s *sbsSide) (bool, error) {
			return s.probe.programmed(ctx, svc)
		})
		full := sbsWait(b, ctx, []*sbsSide{s}, t0, 10*time.Minute, fmt.Sprintf("restarted %s has %d VIPs", s.name, want), func(ctx context.Context, s *sbsSide) (bool, error) {
			n, err := s.probe.count(ctx)
			return n == want, err
		})
		s.res.restartProg, s.res.restartFull = prog[0], full[0]
		s.res.restartCPU = s.usage(b).Total()
		time.Sleep(6 * time.Second) // kube-proxy's klog flushes every 5 s
		s.res.restartNote = firstSyncNote(s.proc().LogPath)
		sbsLog("phase %d: restarted %s at %d Services: %s programmed after %v, all %d after %v (CPU %v); log: %s", phase, s.name,
			want, svc, prog[0].Round(time.Millisecond), want, full[0].Round(time.Millisecond), s.res.restartCPU, s.res.restartNote)
	}
	// kube-proxy with its minimum sync period at 0 (the second setting; Canopy has no such knob): +1
	// and endpoint change again, kube-proxy alone.
	for _, s := range sides {
		if s.kp == nil {
			continue
		}
		if err := s.stop(); err != nil {
			b.Fatalf("stopping %s: %v", s.name, err)
		}
		s.kpExtra = []string{"--iptables-min-sync-period=0s"} // also the nftables mode's (kube-proxy's options.go)
		if err := s.start(ctx); err != nil {
			b.Fatal(err)
		}
		want := w.count()
		sbsWait(b, ctx, []*sbsSide{s}, time.Now(), 10*time.Minute, fmt.Sprintf("%s (min-sync-period 0) has %d VIPs", s.name, want), func(ctx context.Context, s *sbsSide) (bool, error) {
			n, err := s.probe.count(ctx)
			return n == want, err
		})
		for range sbsSamples {
			time.Sleep(2 * time.Second)
			i := w.count()
			t0 := time.Now()
			if err := w.create(ctx, i+1); err != nil {
				b.Fatal(err)
			}
			svc := w.get(i)
			lat := sbsWait(b, ctx, []*sbsSide{s}, t0, 5*time.Minute, "+1 Service "+svc.String(), func(ctx context.Context, s *sbsSide) (bool, error) {
				return s.probe.programmed(ctx, svc)
			})
			s.res.add1Min0 = append(s.res.add1Min0, lat[0])
		}
		for k := range sbsSamples {
			time.Sleep(2 * time.Second)
			i := (k*7919 + 29) % sizes[0]
			t0 := time.Now()
			svc, old, err := w.changeEndpoint(ctx, i)
			if err != nil {
				b.Fatal(err)
			}
			lat := sbsWait(b, ctx, []*sbsSide{s}, t0, 5*time.Minute, "endpoint change of "+svc.String(), func(ctx context.Context, s *sbsSide) (bool, error) {
				return s.probe.programmed(ctx, svc, old)
			})
			s.res.epChangeMin0 = append(s.res.epChangeMin0, lat[0])
		}
		sbsLog("phase %d, %d Services: %s --iptables-min-sync-period=0: +1 Service %v, endpoint change %v", phase, w.count(), s.name,
			roundAll(s.res.add1Min0), roundAll(s.res.epChangeMin0))
		s.kpExtra = nil
	}
}

// sbsLoadTo creates Services up to size while both proxies run, and waits until each has programmed them all.
func sbsLoadTo(b *testing.B, ctx context.Context, w *sbsWorkload, sides []*sbsSide, baseNode *lab.Node, base *sbsResult, size, si, phase int) {
	before := make([]lab.ProcUsage, len(sides))
	for k, s := range sides {
		before[k] = s.usage(b)
	}
	var baseBefore lab.ProcUsage
	if a := baseNode.Agent(); a != nil {
		baseBefore, _ = a.Usage()
	}
	from := w.count()
	t0 := time.Now()
	if err := w.create(ctx, size); err != nil {
		b.Fatal(err)
	}
	written := time.Since(t0)
	last := w.get(size - 1)
	var wg sync.WaitGroup
	for k, s := range sides {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(20 * time.Minute)
			// The last Service written, cheaply; then the whole dispatch, which costs a full listing.
			for {
				ok, _ := s.probe.programmed(ctx, last)
				if ok {
					break
				}
				if time.Now().After(deadline) {
					b.Errorf("%s: %s not programmed within 20 min", s.name, last)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			for {
				n, err := s.probe.count(ctx)
				if err == nil && n == size {
					break
				}
				if time.Now().After(deadline) {
					b.Errorf("%s: %d of %d VIPs after 20 min (%v)", s.name, n, size, err)
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
			done := time.Since(t0)
			u := s.usage(b).Sub(before[k])
			s.res.load[si] = sbsLoad{services: size - from, total: done, lag: max(0, done-written), cpu: u.CPU(), kids: u.ChildCPU()}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	if a := baseNode.Agent(); a != nil {
		if u, err := a.Usage(); err == nil {
			u = u.Sub(baseBefore)
			base.load[si] = sbsLoad{services: size - from, cpu: u.CPU(), kids: u.ChildCPU()}
		}
	}
	for _, s := range sides {
		r := s.res.load[si]
		sbsLog("phase %d: %d -> %d Services written in %v; %s: all programmed %v after the first write (%v after the last), CPU %v + children %v",
			phase, from, size, written.Round(time.Millisecond), s.name, r.total.Round(time.Millisecond), r.lag.Round(time.Millisecond), r.cpu, r.kids)
	}
}

// sbsWait polls check on every side at once until each holds, and returns each side's time since t0 (the end
// of the first check that held: an upper bound, by at most one check's duration).
func sbsWait(b *testing.B, ctx context.Context, sides []*sbsSide, t0 time.Time, timeout time.Duration, what string, check func(context.Context, *sbsSide) (bool, error)) []time.Duration {
	b.Helper()
	res := make([]time.Duration, len(sides))
	errs := make([]error, len(sides))
	var wg sync.WaitGroup
	for k, s := range sides {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := t0.Add(timeout)
			var last error
			for {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				ok, err := check(cctx, s)
				cancel()
				if ok {
					res[k] = time.Since(t0)
					return
				}
				if err != nil {
					last = err
				}
				if exited, perr := s.proc().Exited(); exited {
					errs[k] = fmt.Errorf("%s: %s exited: %v", what, s.name, perr)
					return
				}
				if time.Now().After(deadline) {
					errs[k] = fmt.Errorf("%s: %s not within %v (last error: %v)", what, s.name, timeout, last)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	return res
}

var (
	labMarkerRE = regexp.MustCompile(`^=== canopy-lab (\S+): `)
	slogLineRE  = regexp.MustCompile(`^time=(\S+) level=\S+ msg=("[^"]*"|\S+)(.*)$`)
	klogLineRE  = regexp.MustCompile(`^I\d{4} (\d\d:\d\d:\d\d\.\d+)\s+\d+ \S+\] "([^"]*)"(.*)$`)
	tookRE      = regexp.MustCompile(`(?:controller=(\S+) )?took=(\S+)`)
	chainsRE    = regexp.MustCompile(`chains=(\d+)`)
	elapsedRE   = regexp.MustCompile(`elapsed="([^"]+)"`)
)

// firstSyncNote says, from the restarted process's log, where its restart time went: for Canopy the lines
// about the proxy's start and every controller's "first full sync done" (time after the process started, and
// how long that sync took); for kube-proxy its informers' sync, the start of its first (full) sync and the end
// of its first two syncs.
func firstSyncNote(log string) string {
	b, err := os.ReadFile(log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(string(b), "\n")
	startAt := 0
	var started time.Time
	for i, l := range lines {
		if m := labMarkerRE.FindStringSubmatch(l); m != nil {
			startAt = i
			started, _ = time.Parse(time.RFC3339Nano, m[1])
		}
	}
	at := func(t time.Time) string { return "+" + t.Sub(started).Round(time.Millisecond).String() }
	var notes []string
	syncs := 0
	for _, l := range lines[startAt:] {
		if m := slogLineRE.FindStringSubmatch(l); m != nil {
			t, _ := time.Parse(time.RFC3339Nano, m[1])
			msg := strings.Trim(m[2], `"`)
			switch {
			case msg == "first full sync done":
				if tm := tookRE.FindStringSubmatch(m[3]); tm != nil {
					notes = append(notes, fmt.Sprintf("%s synced %s (took %s)", tm[1], at(t), tm[2]))
				}
			case msg == "iptables":
				notes = append(notes, "iptables flavour known "+at(t))
			case strings.HasPrefix(msg, "found service chains"):
				n := ""
				if cm := chainsRE.FindStringSubmatch(m[3]); cm != nil {
					n = " (" + cm[1] + ")"
				}
				notes = append(notes, "previous run's chains read"+n+" "+at(t))
			case msg == "service proxy":
				notes = append(notes, "proxy back end ready "+at(t))
			case msg == "other proxy modes' rules removed" || msg == "service proxy back end started":
				what := map[bool]string{true: "other modes' rules removed", false: "proxy back end started"}[strings.HasPrefix(msg, "other")]
				if tm := tookRE.FindStringSubmatch(m[3]); tm != nil {
					what += " (took " + tm[2] + ")"
				}
				notes = append(notes, what+" "+at(t))
			}
			continue
		}
		if m := klogLineRE.FindStringSubmatch(l); m != nil {
			tod, err := time.Parse("15:04:05.000000", m[1])
			if err != nil {
				continue
			}
			st := started.UTC()
			t := time.Date(st.Year(), st.Month(), st.Day(), tod.Hour(), tod.Minute(), tod.Second(), tod.Nanosecond(), time.UTC)
			switch {
			case m[2] == "Caches are synced" && strings.Contains(m[3], `controller="service config"`):
				notes = append(notes, "informers synced "+at(t))
			case strings.HasPrefix(m[2], "Syncing ") && strings.Contains(m[3], "fullSync=true") && syncs == 0:
				notes = append(notes, "first (full) sync started "+at(t))
			case m[2] == "SyncProxyRules complete" && syncs < 2:
				syncs++
				e := ""
				if em := elapsedRE.FindStringSubmatch(m[3]); em != nil {
					e = " (took " + em[1] + ")"
				}
				notes = append(notes, fmt.Sprintf("sync %d done %s%s", syncs, at(t), e))
			}
		}
	}
	if len(notes) == 0 {
		return "nothing about its first sync in " + log
	}
	return strings.Join(notes, ", ")
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// sbsReport prints the table and reports the headline metrics.
func sbsReport(b *testing.B, res, base map[string]*sbsResult, sizes [2]int) {
	cols := []string{"Canopy iptables", "Canopy nftables", "kube-proxy nftables", "kube-proxy iptables"}
	for _, c := range cols {
		if res[c] == nil {
			b.Fatalf("no result for %s", c)
		}
	}
	ci, cn, kn, ki := res[cols[0]], res[cols[1]], res[cols[2]], res[cols[3]]
	k := func(n int) string {
		if n%1000 == 0 {
			return fmt.Sprintf("%dk", n/1000)
		}
		return strconv.Itoa(n)
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	ratio := func(a, b time.Duration) string {
		if b <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", float64(a)/float64(b))
	}
	header := []string{"", cols[0], cols[1], cols[2], cols[3], "Canopy/kp iptables", "Canopy/kp nftables"}
	rows := [][]string{header}
	row := func(name string, f func(*sbsResult) time.Duration, format func(time.Duration) string) {
		rows = append(rows, []string{name, format(f(ci)), format(f(cn)), format(f(kn)), format(f(ki)), ratio(f(ci), f(ki)), ratio(f(cn), f(kn))})
	}
	for si := range sizes {
		row(fmt.Sprintf("+1 Service @%s (median of %d)", k(sizes[si]), sbsSamples), func(r *sbsResult) time.Duration { return median(r.add1[si]) }, ms)
	}
	for si := range sizes {
		rows = append(rows, []string{fmt.Sprintf("+1 Service @%s, change reaching Canopy -> its transaction done (mean)", k(sizes[si])),
			ms(ci.add1Agent[si]), ms(cn.add1Agent[si]), "", "", "", ""})
	}
	for si := range sizes {
		row(fmt.Sprintf("endpoint change @%s (median of %d)", k(sizes[si]), sbsSamples), func(r *sbsResult) time.Duration { return median(r.epChange[si]) }, ms)
	}
	for si := range sizes {
		from := 0
		if si > 0 {
			from = sizes[0] + sbsSamples
		}
		lbl := fmt.Sprintf("load %s->%s", k(from), k(sizes[si]))
		row(lbl+": all programmed, after 1st write", func(r *sbsResult) time.Duration { return r.load[si].total }, sec)
		row(lbl+": all programmed, after last write", func(r *sbsResult) time.Duration { return r.load[si].lag }, sec)
		row(lbl+": CPU own+children", func(r *sbsResult) time.Duration { return r.load[si].cpu + r.load[si].kids }, sec)
		row(lbl+": CPU own", func(r *sbsResult) time.Duration { return r.load[si].cpu }, sec)
		row(lbl+": CPU children", func(r *sbsResult) time.Duration { return r.load[si].kids }, sec)
	}
	rows = append(rows, []string{fmt.Sprintf("RSS after the %s load", k(sizes[1])), mb(ci.rss), mb(cn.rss), mb(kn.rss), mb(ki.rss),
		ratio(time.Duration(ci.rss), time.Duration(ki.rss)), ratio(time.Duration(cn.rss), time.Duration(kn.rss))})
	row(fmt.Sprintf("restart @%s: new Service programmed", k(sizes[1])), func(r *sbsResult) time.Duration { return r.restartProg }, sec)
	row(fmt.Sprintf("restart @%s: dispatch complete", k(sizes[1])), func(r *sbsResult) time.Duration { return r.restartFull }, sec)
	row(fmt.Sprintf("restart @%s: CPU until complete", k(sizes[1])), func(r *sbsResult) time.Duration { return r.restartCPU }, sec)
	// kube-proxy at --*-min-sync-period=0 against Canopy as measured above (it has no such period).
	min0 := func(name string, canopy func(*sbsResult) time.Duration, kp func(*sbsResult) []time.Duration) {
		kn0, ki0 := median(kp(kn)), median(kp(ki))
		rows = append(rows, []string{name, ms(canopy(ci)), ms(canopy(cn)), ms(kn0), ms(ki0), ratio(canopy(ci), ki0), ratio(canopy(cn), kn0)})
	}
	min0(fmt.Sprintf("+1 Service @%s, kube-proxy min-sync-period 0", k(sizes[1])), func(r *sbsResult) time.Duration { return median(r.add1[1]) },
		func(r *sbsResult) []time.Duration { return r.add1Min0 })
	min0(fmt.Sprintf("endpoint change @%s, kube-proxy min-sync-period 0", k(sizes[1])), func(r *sbsResult) time.Duration { return median(r.epChange[1]) },
		func(r *sbsResult) []time.Duration { return r.epChangeMin0 })
	width := make([]int, len(header))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nService proxies side by side, one lab, the same objects watched by both at the same time: phase 1 Canopy iptables\n"+
		"(node1) with kube-proxy nftables (node2), phase 2 Canopy nftables with kube-proxy iptables. Ratios: Canopy / kube-proxy\n"+
		"in the same mode (< 1: Canopy is faster or smaller). Canopy's CPU and RSS are its whole agent's.\n\n")
	for _, r := range rows {
		for i, c := range r {
			if i == 0 {
				fmt.Fprintf(&sb, "%-*s", width[i], c)
			} else {
				fmt.Fprintf(&sb, "  %*s", width[i], c)
			}
		}
		sb.WriteString("\n")
	}
	sb.WriteString("\n")
	for _, mode := range []string{"iptables", "nftables"} {
		if r := base[mode]; r != nil {
			fmt.Fprintf(&sb, "baseline: node2's Canopy agent without the proxy (the phase of Canopy %s): CPU during the loads %v and %v (own+children), RSS %s\n",
				mode, r.load[0].cpu+r.load[0].kids, r.load[1].cpu+r.load[1].kids, mb(r.rss))
		}
	}
	for _, c := range cols {
		fmt.Fprintf(&sb, "%s restart, from its log: %s\n", c, res[c].restartNote)
	}
	for _, c := range cols {
		r := res[c]
		fmt.Fprintf(&sb, "%s samples: +1 Service %v / %v, endpoint change %v / %v\n", c, roundAll(r.add1[0]), roundAll(r.add1[1]), roundAll(r.epChange[0]), roundAll(r.epChange[1]))
	}
	fmt.Print(sb.String())
	b.Logf("the side-by-side table is on stdout")
	for _, m := range []struct {
		r    *sbsResult
		name string
	}{{ci, "canopy-ipt"}, {cn, "canopy-nft"}, {kn, "kp-nft"}, {ki, "kp-ipt"}} {
		b.ReportMetric(float64(median(m.r.add1[1]).Milliseconds()), "ms-add1-"+m.name)
		b.ReportMetric(float64(median(m.r.epChange[1]).Milliseconds()), "ms-epchange-"+m.name)
		b.ReportMetric((m.r.load[1].cpu + m.r.load[1].kids).Seconds(), "cpu-s-load-"+m.name)
		b.ReportMetric(float64(m.r.rss)/(1<<20), "MB-rss-"+m.name)
		b.ReportMetric(m.r.restartFull.Seconds(), "s-restart-"+m.name)
	}
}

// sbsLog prints a progress line on stderr as it happens (a benchmark's b.Logf output is cut to 10 lines).
func sbsLog(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s proxy-side-by-side: "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// sbsSkip skips, or fails under CI=true (where everything the benchmark needs must be there).
func sbsSkip(b *testing.B, format string, args ...any) {
	b.Helper()
	if os.Getenv("CI") == "true" {
		b.Fatalf(format+" (CI must run this benchmark)", args...)
	}
	b.Skipf(format, args...)
}

func mb(n int64) string { return fmt.Sprintf("%.0f MB", float64(n)/(1<<20)) }
