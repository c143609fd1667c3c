// Package loadbalancer gives type LoadBalancer Services an external IP from configured ranges, so a bare-metal
// cluster needs no other load balancer controller. It writes status.loadBalancer.ingress[].ip of the Services
// of its class (spec.loadBalancerClass unset, or equal to Config.Class), only through the status subresource.
// One node allocates at a time: the holder of a coordination.k8s.io Lease.
package loadbalancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// Names the allocator uses in the cluster.
const (
	// DefaultClass is the spec.loadBalancerClass served besides the default (unset) class.
	DefaultClass = "canopy.io/loadbalancer"
	// AnnotationIPs requests an address: "10.200.0.5". A comma list is accepted as MetalLB's is, but as
	// only IPv4 is served it may hold one address. It takes precedence over spec.loadBalancerIP.
	AnnotationIPs = "canopy.io/loadbalancer-ips"
	// LeaseName is the coordination.k8s.io/v1 Lease that elects the allocating node.
	LeaseName = "canopy-loadbalancer"
)

// Event reasons, recorded on the Service.
const (
	ReasonAllocated      = "LoadBalancerIPAllocated"      // Normal: the Service got an address
	ReasonReleased       = "LoadBalancerIPReleased"       // Normal: the address was taken off a Service no longer served
	ReasonUnavailable    = "LoadBalancerIPUnavailable"    // Warning: the requested address is out of range or in use
	ReasonInvalidRequest = "InvalidLoadBalancerIPRequest" // Warning: the annotation or spec.loadBalancerIP does not parse
	ReasonExhausted      = "LoadBalancerIPExhausted"      // Warning: no free address; retried when one is freed
	ReasonOutOfRange     = "LoadBalancerIPOutOfRange"     // Warning: the status address is outside the ranges; re-allocated
	ReasonConflict       = "LoadBalancerIPConflict"       // Warning: the status address is another Service's; re-allocated
)

// Default leader election timings.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Config configures an Allocator.
type Config struct {
	Ranges         []Range // from ParseRanges; at least one
	Class          string  // the loadBalancerClass served besides the default one; DefaultClass if empty
	LeaseNamespace string  // namespace of the Lease, e.g. "kube-system"
	Identity       string  // this node's name, the Lease holder identity

	// Leader election timings; zero means the Default values. Tests shorten them.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Allocator assigns LoadBalancer IPs while its node holds the Lease.
type Allocator struct {
	cfg      Config
	size     uint64
	kube     kubernetes.Interface
	lister   corelisters.ServiceLister
	synced   cache.InformerSynced
	recorder record.EventRecorder
	log      *slog.Logger

	mu    sync.Mutex
	queue workqueue.TypedRateLimitingInterface[string] // the current term's queue; nil when not leading

	isLeader atomic.Bool

	termMu   sync.Mutex
	termDone chan struct{} // closed when the last started term has stopped
}

// New validates cfg and registers a Service event handler on factory (start the factory after New).
// recorder may be nil; log is used as given (the caller adds its component attribute).
func New(cfg Config, kube kubernetes.Interface, factory informers.SharedInformerFactory, recorder record.EventRecorder, log *slog.Logger) (*Allocator, error) {
	if cfg.Class == "" {
		cfg.Class = DefaultClass
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.RenewDeadline == 0 {
		cfg.RenewDeadline = DefaultRenewDeadline
	}
	if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = DefaultRetryPeriod
	}
	if len(cfg.Ranges) == 0 {
		return nil, errors.New("load balancer allocator: no IP range configured (--loadbalancer-ip-range)")
	}
	if cfg.LeaseNamespace == "" || cfg.Identity == "" {
		return nil, errors.New("load balancer allocator: lease namespace and identity (node name) are required")
	}
	pool, err := NewPool(cfg.Ranges)
	if err != nil {
		return nil, fmt.Errorf("load balancer allocator: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	inf := factory.Core().V1().Services()
	a := &Allocator{
		cfg: cfg, size: pool.Size(), kube: kube, lister: inf.Lister(), synced: inf.Informer().HasSynced,
		recorder: recorder, log: log,
	}
	// Validate the election settings now rather than at Run.
	if _, err := leaderelection.NewLeaderElector(a.electionConfig(context.Background())); err != nil {
		return nil, fmt.Errorf("load balancer allocator: leader election: %w", err)
	}
	_, err = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: a.enqueue,
		UpdateFunc: func(o, n any) {
			os, ok1 := o.(*corev1.Service)
			ns, ok2 := n.(*corev1.Service)
			if !ok1 || !ok2 || relevantChange(os, ns) {
				a.enqueue(n)
			}
		},
		DeleteFunc: a.enqueue,
	})
	if err != nil {
		return nil, fmt.Errorf("load balancer allocator: %w", err)
	}
	return a, nil
}

// relevantChange ignores what the allocator does not read (labels, endpoints-driven churn, other spec fields).
func relevantChange(o, n *corev1.Service) bool {
	return o.Spec.Type != n.Spec.Type || !reflect.DeepEqual(o.Spec.LoadBalancerClass, n.Spec.LoadBalancerClass) ||
		o.Spec.LoadBalancerIP != n.Spec.LoadBalancerIP || o.Annotations[AnnotationIPs] != n.Annotations[AnnotationIPs] ||
		!slices.Equal(o.Spec.IPFamilies, n.Spec.IPFamilies) ||
		!reflect.DeepEqual(o.Status.LoadBalancer.Ingress, n.Status.LoadBalancer.Ingress)
}

func (a *Allocator) enqueue(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.queue != nil {
		a.queue.Add(key)
	}
}

func (a *Allocator) setQueue(q workqueue.TypedRateLimitingInterface[string]) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.queue = q
}

// Leading reports whether this node currently holds the Lease and allocates.
func (a *Allocator) Leading() bool { return a.isLeader.Load() }

func (a *Allocator) electionConfig(ctx context.Context) leaderelection.LeaderElectionConfig {
	var lockRecorder resourcelock.EventRecorder
	if a.recorder != nil {
		lockRecorder = a.recorder
	}
	return leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: a.cfg.LeaseNamespace},
			Client:     a.kube.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: a.cfg.Identity, EventRecorder: lockRecorder},
		},
		LeaseDuration:   a.cfg.LeaseDuration,
		RenewDeadline:   a.cfg.RenewDeadline,
		RetryPeriod:     a.cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) { a.lead(ctx, lctx) },
			OnStoppedLeading: func() {},
			OnNewLeader: func(id string) {
				if id != a.cfg.Identity {
					a.log.Info("load balancer IPs are allocated by another node", "leader", id)
				}
			},
		},
	}
}

// Run campaigns for the Lease until ctx ends; while it holds the Lease it allocates. Losing the Lease stops
// allocating and Run campaigns again; it never exits the process. When ctx ends, allocation stops first and
// the Lease is then released, so another node takes over at once.
func (a *Allocator) Run(ctx context.Context) {
	poolSize.Set(float64(a.size))
	electCtx, stopElect := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElect()
	stop := context.AfterFunc(ctx, func() {
		a.waitTerm()
		stopElect()
	})
	defer stop()
	for {
		le, err := leaderelection.NewLeaderElector(a.electionConfig(ctx))
		if err != nil { // validated in New
			a.log.Error("leader election", "err", err)
			return
		}
		le.Run(electCtx)
		a.waitTerm()
		if ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(a.cfg.RetryPeriod):
		}
	}
}

func (a *Allocator) waitTerm() {
	a.termMu.Lock()
	ch := a.termDone
	a.termMu.Unlock()
	if ch != nil {
		<-ch
	}
}

// lead runs one leadership term: it ends when the Lease is lost (lctx) or Run's ctx (parent) ends.
func (a *Allocator) lead(parent, lctx context.Context) {
	done := make(chan struct{})
	a.termMu.Lock()
	prev := a.termDone
	a.termDone = done
	a.termMu.Unlock()
	defer close(done)
	if prev != nil {
		<-prev // terms never overlap
	}
	ctx, cancel := context.WithCancel(lctx)
	defer cancel()
	defer context.AfterFunc(parent, cancel)()
	if ctx.Err() != nil {
		return
	}

	a.isLeader.Store(true)
	leading.Set(1)
	a.log.Info("holding the load balancer lease: allocating LoadBalancer IPs", "identity", a.cfg.Identity, "ranges", a.cfg.Ranges)
	defer func() {
		a.isLeader.Store(false)
		leading.Set(0)
		allocatedIPs.Set(0)
		a.log.Info("stopped allocating LoadBalancer IPs", "identity", a.cfg.Identity)
	}()
	if !cache.WaitForCacheSync(ctx.Done(), a.synced) {
		return
	}
	t := newTerm(a)
	for {
		err := t.rebuild(ctx)
		if err == nil {
			break
		}
		a.log.Error("listing Services to rebuild the allocations failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	a.setQueue(t.queue)
	defer a.setQueue(nil)
	go func() {
		<-ctx.Done()
		t.queue.ShutDown()
	}()
	svcs, _ := a.lister.List(labels.Everything())
	for _, s := range svcs {
		t.queue.Add(s.Namespace + "/" + s.Name)
	}
	for {
		key, quit := t.queue.Get()
		if quit {
			return
		}
		if err := t.sync(ctx, key); err != nil && ctx.Err() == nil {
			a.log.Error("LoadBalancer IP sync failed; retrying", "service", key, "err", err)
			t.queue.AddRateLimited(key)
		} else {
			t.queue.Forget(key)
		}
		t.queue.Done(key)
	}
}

// ours reports whether the allocator serves svc.
func (a *Allocator) ours(svc *corev1.Service) bool {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return false
	}
	c := svc.Spec.LoadBalancerClass
	return c == nil || *c == a.cfg.Class
}

// wantsIPv4 reports whether svc has the IPv4 family (or none set yet).
func wantsIPv4(svc *corev1.Service) bool {
	return len(svc.Spec.IPFamilies) == 0 || slices.Contains(svc.Spec.IPFamilies, corev1.IPv4Protocol)
}

// RequestedIP returns the address svc asks for: the annotation, else spec.loadBalancerIP; the zero Addr when
// it asks for none.
func RequestedIP(svc *corev1.Service) (netip.Addr, error) {
	if v := strings.TrimSpace(svc.Annotations[AnnotationIPs]); v != "" {
		var ips []netip.Addr
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return netip.Addr{}, fmt.Errorf("annotation %s: %q is not an IP address", AnnotationIPs, s)
			}
			if !slices.Contains(ips, ip) {
				ips = append(ips, ip)
			}
		}
		switch len(ips) {
		case 0:
			return netip.Addr{}, nil
		case 1:
			return ips[0], nil
		}
		return netip.Addr{}, fmt.Errorf("annotation %s: %q lists %d addresses; only one (IPv4) is supported", AnnotationIPs, v, len(ips))
	}
	if v := strings.TrimSpace(svc.Spec.LoadBalancerIP); v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("spec.loadBalancerIP: %q is not an IP address", v)
		}
		return ip, nil
	}
	return netip.Addr{}, nil
}

// statusIPs returns the parseable addresses in svc's status.loadBalancer.ingress.
func statusIPs(svc *corev1.Service) []netip.Addr {
	var out []netip.Addr
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if ip, err := netip.ParseAddr(in.IP); err == nil {
			out = append(out, ip)
		}
	}
	return out
}

// term is the state of one leadership term, rebuilt from the Services at its start and touched only by its
// single worker.
type term struct {
	a       *Allocator
	pool    *Pool
	queue   workqueue.TypedRateLimitingInterface[string]
	waiting map[string]bool   // Services that want an address that is not free; requeued when one is released
	warned  map[string]string // last warning per Service, so a retry does not repeat it
}

func newTerm(a *Allocator) *term {
	pool, _ := NewPool(a.cfg.Ranges) // validated in New
	return &term{
		a: a, pool: pool, waiting: map[string]bool{}, warned: map[string]string{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "lballoc"}),
	}
}

// rebuild claims the addresses the served Services already show in their status, from a fresh List (not the
// cache, which may not yet show the previous leader's last writes). When two Services show the same address
// the older keeps it; the other is re-allocated by sync.
func (t *term) rebuild(ctx context.Context) error {
	list, err := t.a.kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	items := list.Items
	slices.SortFunc(items, func(x, y corev1.Service) int {
		if c := x.CreationTimestamp.Compare(y.CreationTimestamp.Time); c != 0 {
			return c
		}
		if c := strings.Compare(x.Namespace, y.Namespace); c != 0 {
			return c
		}
		return strings.Compare(x.Name, y.Name)
	})
	for i := range items {
		svc := &items[i]
		if !t.a.ours(svc) || !wantsIPv4(svc) {
			continue
		}
		req, reqErr := RequestedIP(svc)
		for _, ip := range statusIPs(svc) {
			if reqErr == nil && req.IsValid() && req != ip {
				continue // the request changed; sync moves the Service
			}
			if t.pool.Assign(key(svc), ip) == nil {
				break
			}
		}
	}
	allocatedIPs.Set(float64(t.pool.InUse()))
	t.a.log.Info("rebuilt LoadBalancer IP allocations from Service status", "in_use", t.pool.InUse(), "pool_size", t.pool.Size())
	return nil
}

func key(svc *corev1.Service) string { return svc.Namespace + "/" + svc.Name }

// released requeues the Services waiting for an address after one was freed.
func (t *term) released() {
	for k := range t.waiting {
		t.queue.Add(k)
	}
}

func (t *term) release(key string) {
	if ip, ok := t.pool.Release(key); ok {
		t.a.log.Info("released LoadBalancer IP", "service", key, "ip", ip)
		t.released()
	}
}

// sync brings one Service's allocation and status in line.
func (t *term) sync(ctx context.Context, k string) error {
	defer func() { allocatedIPs.Set(float64(t.pool.InUse())) }()
	ns, name, err := cache.SplitMetaNamespaceKey(k)
	if err != nil {
		return nil
	}
	svc, err := t.a.lister.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		if _, held := t.pool.Lookup(k); held {
			// The cache may lag a Service just created: ask the API server before freeing its address.
			svc, err = t.a.kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		}
	}
	if apierrors.IsNotFound(err) {
		t.release(k)
		delete(t.waiting, k)
		delete(t.warned, k)
		return nil
	}
	if err != nil {
		return err
	}
	if !t.a.ours(svc) {
		return t.disown(ctx, svc)
	}
	if !wantsIPv4(svc) {
		t.release(k)
		t.fail(svc, ReasonUnavailable, failUnavailable, "Service %s has no IPv4 family and only IPv4 load balancer ranges are configured", k)
		return t.writeStatus(ctx, svc, netip.Addr{})
	}

	req, reqErr := RequestedIP(svc)
	cur, has := t.pool.Lookup(k)
	var ip netip.Addr
	switch {
	case reqErr != nil:
		// A bad request keeps what the Service has (a typo must not take a working address away).
		t.fail(svc, ReasonInvalidRequest, failInvalid, "%v; %s", reqErr, keeping(cur, has))
		ip = cur
	case req.IsValid():
		if has && cur == req {
			ip = cur
			break
		}
		if err := t.pool.Assign(k, req); err != nil {
			if has {
				t.release(k)
			}
			var inUse *InUseError
			if errors.As(err, &inUse) {
				t.waiting[k] = true
			}
			t.fail(svc, ReasonUnavailable, failUnavailable, "requested load balancer IP %s is not available: %v", req, err)
			break
		}
		if has {
			t.a.log.Info("released LoadBalancer IP", "service", k, "ip", cur)
			t.released()
		}
		ip = req
	case has:
		ip = cur
	default:
		ip = t.adoptOrAllocate(svc)
	}
	if ip.IsValid() {
		delete(t.waiting, k)
		delete(t.warned, k)
	}
	return t.writeStatus(ctx, svc, ip)
}

func keeping(cur netip.Addr, has bool) string {
	if has {
		return "keeping " + cur.String()
	}
	return "no address assigned"
}

// adoptOrAllocate gives a Service that holds nothing the address its status shows, when that is in the
// ranges and free, else the lowest free one.
func (t *term) adoptOrAllocate(svc *corev1.Service) netip.Addr {
	k := key(svc)
	for _, ip := range statusIPs(svc) {
		err := t.pool.Assign(k, ip)
		if err == nil {
			t.a.log.Info("adopted LoadBalancer IP from Service status", "service", k, "ip", ip)
			return ip
		}
		var inUse *InUseError
		if errors.As(err, &inUse) {
			t.warn(svc, ReasonConflict, "status load balancer IP %s is in use by %s; allocating another", ip, inUse.Owner)
		} else {
			t.warn(svc, ReasonOutOfRange, "status load balancer IP %s is outside the configured ranges %s; allocating another", ip, rangesString(t.pool.Ranges()))
		}
	}
	ip, err := t.pool.AllocateAny(k)
	if err != nil {
		t.waiting[k] = true
		t.fail(svc, ReasonExhausted, failExhausted, "no free load balancer IP: all %d addresses of %s are in use; waiting for one to be released", t.pool.Size(), rangesString(t.pool.Ranges()))
		return netip.Addr{}
	}
	return ip
}

func rangesString(rs []Range) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

// disown frees the address of a Service the allocator no longer serves (other type or class) and takes it
// off the status. A Service that is not of type LoadBalancer also loses status addresses from the ranges that
// this term did not know about (it changed type while no node was leading); a LoadBalancer of another class
// keeps everything but the address this term gave it, as its own controller owns its status.
func (t *term) disown(ctx context.Context, svc *corev1.Service) error {
	k := key(svc)
	ip, had := t.pool.Release(k)
	if had {
		t.a.log.Info("released LoadBalancer IP of a Service no longer served", "service", k, "ip", ip, "type", svc.Spec.Type)
		t.released()
	}
	delete(t.waiting, k)
	delete(t.warned, k)
	var keep []corev1.LoadBalancerIngress
	var removed []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		a, err := netip.ParseAddr(in.IP)
		if err == nil && ((had && a == ip) || (svc.Spec.Type != corev1.ServiceTypeLoadBalancer && t.pool.Contains(a))) {
			removed = append(removed, in.IP)
			continue
		}
		keep = append(keep, in)
	}
	if len(removed) == 0 {
		return nil
	}
	cp := svc.DeepCopy()
	cp.Status.LoadBalancer.Ingress = keep
	if _, err := t.a.kube.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	t.event(svc, corev1.EventTypeNormal, ReasonReleased, fmt.Sprintf("released load balancer IP %s: the Service is no longer served by %s", strings.Join(removed, ","), t.a.cfg.Class))
	return nil
}

// writeStatus makes svc's status.loadBalancer.ingress hold exactly ip (nothing for the zero Addr).
func (t *term) writeStatus(ctx context.Context, svc *corev1.Service, ip netip.Addr) error {
	var want []corev1.LoadBalancerIngress
	if ip.IsValid() {
		vip := corev1.LoadBalancerIPModeVIP
		want = []corev1.LoadBalancerIngress{{IP: ip.String(), IPMode: &vip}}
	}
	have := svc.Status.LoadBalancer.Ingress
	if len(have) == len(want) && (len(want) == 0 || (have[0].IP == want[0].IP && have[0].Hostname == "")) {
		return nil
	}
	old := statusIPs(svc)
	cp := svc.DeepCopy()
	cp.Status.LoadBalancer.Ingress = want
	if _, err := t.a.kube.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			t.release(key(svc))
			return nil
		}
		return err
	}
	if ip.IsValid() {
		t.a.log.Info("assigned LoadBalancer IP", "service", key(svc), "ip", ip)
		t.event(svc, corev1.EventTypeNormal, ReasonAllocated, "assigned load balancer IP "+ip.String())
	} else if len(old) > 0 {
		t.event(svc, corev1.EventTypeNormal, ReasonReleased, "cleared load balancer IP "+addrsString(old))
	}
	return nil
}

func addrsString(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}

// fail counts a failed allocation and warns (once per distinct message).
func (t *term) fail(svc *corev1.Service, reason, metricReason, format string, args ...any) {
	allocationFailures.WithLabelValues(metricReason).Inc()
	t.warn(svc, reason, format, args...)
}

func (t *term) warn(svc *corev1.Service, reason, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	k := key(svc)
	if t.warned[k] == reason+"\x00"+msg {
		return
	}
	t.warned[k] = reason + "\x00" + msg
	t.a.log.Warn(msg, "service", k, "reason", reason)
	t.event(svc, corev1.EventTypeWarning, reason, msg)
}

func (t *term) event(svc *corev1.Service, typ, reason, msg string) {
	if t.a.recorder != nil {
		t.a.recorder.Event(svc, typ, reason, msg)
	}
}
