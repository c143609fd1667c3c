package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"canopy.io/canopy/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The machinery of the NetworkPolicy suite (netpol_test.go), in the style of upstream's test/e2e/network/netpol:
// namespaces x, y, z with pods a, b, c each, spread over the three nodes, every pod serving its name on TCP and
// UDP ports 80 and 81 (e2e/netpold); a check probes the full 9×9 matrix for each port and protocol at once and
// compares it with the expected truth table, retrying a mismatch while the agents apply a change.

const (
	// npDeniedAfter is how long a probe waits before it calls a cell denied (the data path drops by default).
	npDeniedAfter = time.Second
	// npSettle is how long after a change a mismatched matrix is probed again before the case fails; at least
	// npMinRounds rounds are probed.
	npSettle    = 2 * time.Second
	npMinRounds = 3
)

// npNamespaces are the suite's namespaces, npPodNames the pods in each.
var (
	npNamespaces = []string{"x", "y", "z"}
	npPodNames   = []string{"a", "b", "c"}
)

// npPort is one port and protocol every pod serves.
type npPort struct {
	Port  int
	Proto corev1.Protocol
}

func (p npPort) String() string { return fmt.Sprintf("%s/%d", p.Proto, p.Port) }

func (p npPort) network() string { return strings.ToLower(string(p.Proto)) }

// npPorts are the ports of every matrix, in the order they are printed.
var npPorts = []npPort{{80, corev1.ProtocolTCP}, {81, corev1.ProtocolTCP}, {80, corev1.ProtocolUDP}, {81, corev1.ProtocolUDP}}

// npContainerPorts are the named container ports of every pod, named like upstream's (serve-80-tcp, …).
func npContainerPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, p := range npPorts {
		out = append(out, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-%s", p.Port, p.network()), ContainerPort: int32(p.Port), Protocol: p.Proto})
	}
	return out
}

// npPod is one pod of the matrix.
type npPod struct {
	NS, Name string // x, a
	*lab.Pod
	server *lab.Proc // its netpold
}

// ID is the pod as the matrix names it: x/a.
func (p *npPod) ID() string { return p.NS + "/" + p.Name }

// netpolEnv is the suite's lab state: the nine pods and the helper binaries.
type netpolEnv struct {
	l       *lab.Lab
	pods    []*npPod // x/a x/b x/c y/a … z/c
	netpold string   // the server binary
}

func (e *netpolEnv) pod(id string) *npPod {
	for _, p := range e.pods {
		if p.ID() == id {
			return p
		}
	}
	panic("no pod " + id)
}

// expectation says whether traffic from one pod to another on a port is allowed. Loopback (a pod to itself) is
// always expected to pass: it never leaves the pod's namespace, and no policy applies to it (as upstream).
type expectation func(from, to *npPod, port npPort) bool

func allAllowed(_, _ *npPod, _ npPort) bool { return true }

// npMatrix is one probe round: per port, [from][to] allowed, and why a cell was denied.
type npMatrix struct {
	ok   map[npPort][][]bool
	why  map[npPort][][]string
	took time.Duration
}

// probeOne connects from a host (a pod, a node) to an address: TCP connect and read the name, or UDP send and
// wait for the name to come back. nil means allowed (and, unless want is "", the right server answered).
func probeOne(ctx context.Context, from *lab.Host, to netip.Addr, port npPort, want string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := from.Dial(ctx, port.network(), net.JoinHostPort(to.String(), strconv.Itoa(port.Port)))
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	if port.Proto == corev1.ProtocolUDP {
		if _, err := c.Write([]byte("?\n")); err != nil {
			return err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(line); want != "" && got != want {
		return fmt.Errorf("answered %q, want %q", got, want)
	}
	return nil
}

// probeAll probes every pair on every port at once (9×9×4 probes).
func (e *netpolEnv) probeAll(ctx context.Context) *npMatrix {
	n := len(e.pods)
	m := &npMatrix{ok: map[npPort][][]bool{}, why: map[npPort][][]string{}}
	for _, port := range npPorts {
		m.ok[port], m.why[port] = make([][]bool, n), make([][]string, n)
		for i := range n {
			m.ok[port][i], m.why[port][i] = make([]bool, n), make([]string, n)
		}
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, port := range npPorts {
		for i, from := range e.pods {
			for j, to := range e.pods {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := probeOne(ctx, &from.Host, to.IP, port, to.ID(), npDeniedAfter)
					m.ok[port][i][j] = err == nil
					if err != nil {
						m.why[port][i][j] = err.Error()
					}
				}()
			}
		}
	}
	wg.Wait()
	m.took = time.Since(t0)
	return m
}

// diff counts the cells where m differs from exp (loopback always expected allowed).
func (e *netpolEnv) diff(m *npMatrix, exp expectation) (wrong map[npPort]int, total int) {
	wrong = map[npPort]int{}
	for _, port := range npPorts {
		for i, from := range e.pods {
			for j, to := range e.pods {
				if m.ok[port][i][j] != (i == j || exp(from, to, port)) {
					wrong[port]++
					total++
				}
			}
		}
	}
	return wrong, total
}

// format prints, for every port with a wrong cell, the expected and the observed truth tables like upstream
// (rows = from, columns = to, "." allowed, "X" denied; "*" marks an observed cell that differs), then the
// errors of the wrong cells.
func (e *netpolEnv) format(m *npMatrix, exp expectation) string {
	var b strings.Builder
	wrong, _ := e.diff(m, exp)
	for _, port := range npPorts {
		if wrong[port] == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s: %d of %d cells differ (rows = from, columns = to, . allowed, X denied, * differs)\n", port, wrong[port], len(e.pods)*len(e.pods))
		header := fmt.Sprintf("%-7s", "")
		for _, to := range e.pods {
			header += fmt.Sprintf("%-6s", to.ID())
		}
		width := len(header)
		fmt.Fprintf(&b, "%-*s | %s\n", width, "expected", "observed")
		fmt.Fprintf(&b, "%-*s | %s\n", width, header, header)
		var errs []string
		for i, from := range e.pods {
			exps, obs := fmt.Sprintf("%-7s", from.ID()), fmt.Sprintf("%-7s", from.ID())
			for j, to := range e.pods {
				want := i == j || exp(from, to, port)
				got := m.ok[port][i][j]
				exps += fmt.Sprintf("%-6s", mark(want))
				cell := mark(got)
				if got != want {
					cell += "*"
					why := m.why[port][i][j]
					if why == "" {
						why = "answered"
					}
					errs = append(errs, fmt.Sprintf("  %s -> %s (%s) %s: want %s, got %s", from.ID(), to.ID(), to.IP, port, word(want), why))
				}
				obs += fmt.Sprintf("%-6s", cell)
			}
			fmt.Fprintf(&b, "%-*s | %s\n", width, exps, strings.TrimRight(obs, " "))
		}
		if len(errs) > 12 {
			errs = append(errs[:12], fmt.Sprintf("  … and %d more", len(errs)-12))
		}
		b.WriteString(strings.Join(errs, "\n") + "\n")
	}
	return b.String()
}

func mark(ok bool) string {
	if ok {
		return "."
	}
	return "X"
}

func word(ok bool) string {
	if ok {
		return "allowed"
	}
	return "denied"
}

// expect probes the matrix until it matches exp, for at least npMinRounds rounds or npSettle after since (the
// change it waits for), and fails the test with the last matrix if it never does. It returns how long after
// since the matching round started.
func (e *netpolEnv) expect(t *testing.T, what string, since time.Time, exp expectation) time.Duration {
	t.Helper()
	var m *npMatrix
	for round := 1; ; round++ {
		start := time.Now()
		m = e.probeAll(context.Background())
		if _, n := e.diff(m, exp); n == 0 {
			d := start.Sub(since)
			if round > 1 {
				t.Logf("%s: matrix as expected in round %d (round started %s after the change)", what, round, d.Round(time.Millisecond))
			}
			return d
		}
		if round >= npMinRounds && time.Since(since) > npSettle {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s: the reachability matrix differs from the expected one %s after the change:%s", what, time.Since(since).Round(time.Millisecond), e.format(m, exp))
	return -1
}

// npCheck is one probe outside the pod matrix: from a node, to the external host, ….
type npCheck struct {
	from    *lab.Host
	to      netip.Addr
	toID    string // what the server there answers
	port    npPort
	allowed bool
}

func (c npCheck) String() string {
	return fmt.Sprintf("%s (%s) -> %s (%s) %s", c.from.Name, c.from.IP, c.toID, c.to, c.port)
}

// runChecks probes the checks at once and describes those that did not give their expected result.
func runChecks(checks []npCheck) (wrong []string) {
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = probeOne(context.Background(), c.from, c.to, c.port, c.toID, npDeniedAfter)
		}()
	}
	wg.Wait()
	for i, c := range checks {
		if (errs[i] == nil) != c.allowed {
			why := "answered"
			if errs[i] != nil {
				why = errs[i].Error()
			}
			wrong = append(wrong, fmt.Sprintf("  %s: want %s, got %s", c, word(c.allowed), why))
		}
	}
	return wrong
}

// expectChecks runs the checks until each gives its expected result, with expect's retry rules, and fails the
// test listing the wrong ones.
func (e *netpolEnv) expectChecks(t *testing.T, what string, since time.Time, checks []npCheck) {
	t.Helper()
	var wrong []string
	for round := 1; ; round++ {
		if wrong = runChecks(checks); len(wrong) == 0 {
			return
		}
		if round >= npMinRounds && time.Since(since) > npSettle {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s: %d of %d probes wrong %s after the change:\n%s", what, len(wrong), len(checks), time.Since(since).Round(time.Millisecond), strings.Join(wrong, "\n"))
}

// waitCell times a change on one cell: it starts a probe (250 ms timeout) every 25 ms until one started later
// than the others gets result want and every probe started after it too, and returns when that probe started,
// after since. It fails the test if no probe started within limit of since gets want.
func (e *netpolEnv) waitCell(t *testing.T, since time.Time, limit time.Duration, from, to *npPod, port npPort, want bool) time.Duration {
	t.Helper()
	type result struct {
		start time.Time
		ok    bool
		err   error
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for time.Since(since) <= limit {
		wg.Add(1)
		go func(start time.Time) {
			defer wg.Done()
			err := probeOne(context.Background(), &from.Host, to.IP, port, to.ID(), 250*time.Millisecond)
			mu.Lock()
			results = append(results, result{start, (err == nil) == want, err})
			mu.Unlock()
		}(time.Now())
		mu.Lock()
		done := false
		for _, r := range results {
			done = done || r.ok
		}
		mu.Unlock()
		if done {
			break
		}
		<-tick.C
	}
	wg.Wait()
	slices.SortFunc(results, func(a, b result) int { return a.start.Compare(b.start) })
	// The first probe from which on every probe got want.
	at := -1
	for i := len(results) - 1; i >= 0 && results[i].ok; i-- {
		at = i
	}
	if at < 0 {
		last := results[len(results)-1]
		t.Errorf("%s -> %s %s: still %s %s after the change (%v)", from.ID(), to.ID(), port, word(!want), limit, last.err)
		return -1
	}
	return results[at].start.Sub(since)
}

// setupNetpol creates the namespaces and the nine pods with their servers, and waits until every pod reaches
// every other one on every port. Everything goes away when the test ends.
func setupNetpol(t *testing.T) *netpolEnv {
	t.Helper()
	l := needLab(t)
	ctx := context.Background()
	e := &netpolEnv{l: l, netpold: buildNetpold(t)}
	for _, ns := range npNamespaces {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": ns}}}
		if _, err := l.Kube.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	}
	t0 := time.Now()
	for i, ns := range npNamespaces {
		for j, name := range npPodNames {
			node := l.Nodes[(i+j)%len(l.Nodes)]
			p := &npPod{NS: ns, Name: name}
			p.Pod = e.addPod(t, node, ns, ns+"-"+name, map[string]string{"pod": name}, npContainerPorts(), nil)
			p.server = e.startServer(t, p.Pod, p.ID())
			e.pods = append(e.pods, p)
		}
	}
	t.Logf("9 pods made in %s:", time.Since(t0).Round(time.Millisecond))
	for _, p := range e.pods {
		t.Logf("  %s  %-15s on %s", p.ID(), p.IP, p.Node.Name)
	}
	// Every server answers (no policies yet).
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := e.probeAll(ctx)
		if _, n := e.diff(m, allAllowed); n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("without policies not every pod reaches every other one:%s", e.format(m, allAllowed))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return e
}

// addPod makes a lab pod in a suite namespace (Pod object, CNI ADD, status), removed when the test ends.
func (e *netpolEnv) addPod(t *testing.T, node *lab.Node, ns, name string, labels map[string]string, ports []corev1.ContainerPort, onAddress func(*lab.Pod)) *lab.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := e.l.AddPodWith(ctx, node, name, lab.PodOptions{Namespace: ns, Labels: labels, Ports: ports, OnAddress: onAddress})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.l.DeletePod(p); err != nil {
			t.Errorf("delete pod %s/%s: %v", ns, name, err)
		}
	})
	return p
}

// startServer runs netpold in the pod, answering id on every port of npPorts.
func (e *netpolEnv) startServer(t *testing.T, p *lab.Pod, id string) *lab.Proc {
	t.Helper()
	var tcp, udp []string
	for _, port := range npPorts {
		if port.Proto == corev1.ProtocolTCP {
			tcp = append(tcp, strconv.Itoa(port.Port))
		} else {
			udp = append(udp, strconv.Itoa(port.Port))
		}
	}
	proc, err := p.Start("netpold", e.netpold, "-name", id, "-tcp", strings.Join(tcp, ","), "-udp", strings.Join(udp, ","))
	if err != nil {
		t.Fatal(err)
	}
	return proc
}

// labelPod sets (value != "") or removes (value == "") one label of a suite pod.
func (e *netpolEnv) labelPod(t *testing.T, p *npPod, key, value string) {
	t.Helper()
	if _, err := e.l.Kube.CoreV1().Pods(p.NS).Patch(context.Background(), p.PodObjectName(), types.MergePatchType,
		labelPatch(key, value), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// labelNamespace sets (value != "") or removes (value == "") one label of a namespace.
func (e *netpolEnv) labelNamespace(t *testing.T, ns, key, value string) {
	t.Helper()
	if _, err := e.l.Kube.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType,
		labelPatch(key, value), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func labelPatch(key, value string) []byte {
	v := "null"
	if value != "" {
		v = strconv.Quote(value)
	}
	return []byte(`{"metadata":{"labels":{` + strconv.Quote(key) + `:` + v + `}}}`)
}

// resetLabels puts the suite's labels back on the namespaces and pods where a case changed them.
func (e *netpolEnv) resetLabels(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, ns := range npNamespaces {
		obj, err := e.l.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Error(err)
			continue
		}
		want := map[string]string{"ns": ns, corev1.LabelMetadataName: ns}
		if !sameLabels(obj.Labels, want) {
			obj.Labels = want
			if _, err := e.l.Kube.CoreV1().Namespaces().Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
				t.Error(err)
			}
		}
	}
	for _, p := range e.pods {
		obj, err := e.l.Kube.CoreV1().Pods(p.NS).Get(ctx, p.PodObjectName(), metav1.GetOptions{})
		if err != nil {
			t.Error(err)
			continue
		}
		if want := map[string]string{"pod": p.Name}; !sameLabels(obj.Labels, want) {
			obj.Labels = want
			if _, err := e.l.Kube.CoreV1().Pods(p.NS).Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
				t.Error(err)
			}
		}
	}
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// buildNetpold builds e2e/netpold into the test's temporary directory.
func buildNetpold(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "netpold")
	if out, err := exec.Command("go", "build", "-o", path, "./netpold").CombinedOutput(); err != nil {
		t.Fatalf("go build ./e2e/netpold: %v: %s", err, out)
	}
	return path
}

// reachedPod reports whether a probe's error says the packet got to the pod's kernel: a TCP RST or an ICMP port
// unreachable from the pod (the data path drops by default; only --policy-reject answers itself).
func reachedPod(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
