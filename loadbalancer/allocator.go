// Package loadbalancer gives type LoadBalancer Services an external IP from configured ranges, so a bare-metal
// cluster needs no other load balancer controller. It writes status.loadBalancer.ingress[].ip of the Services
// of its class (spec.loadBalancerClass unset, or equal to Config.Class), only through the status subresource.
// One node allocates at a time: the holder of a coordination.k8s.io Lease.
//
// Dual stack: the ranges may be of both families, and a Service gets one address of each family of its
// spec.ipFamilies that has a range (in that order in the status): a PreferDualStack or RequireDualStack Service
// two when both families have ranges, an IPv6-only Service an IPv6 address. A Service with none of its
// families in the ranges gets none (Warning LoadBalancerIPUnavailable). A RequireDualStack Service of which only
// one family has a range gets that family's address and the same Warning naming the missing family: the
// Service asked for both. Each family is allocated on its own, from its own Pool.
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
	// AnnotationIPs requests addresses: "10.200.0.5", or one per family for a dual-stack Service
	// ("10.200.0.5,fd00:200::5"), as MetalLB's. It takes precedence over spec.loadBalancerIP.
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
	pools, err := newPools(cfg.Ranges)
	if err != nil {
		return nil, fmt.Errorf("load balancer allocator: %w", err)
	}
	var size uint64
	for _, p := range pools {
		size = satAdd(size, p.Size())
	}
	if log == nil {
		log = slog.Default()
	}
	inf := factory.Core().V1().Services()
	a := &Allocator{
		cfg: cfg, size: size, kube: kube, lister: inf.Lister(), synced: inf.Informer().HasSynced,
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

// familyOf is the IP family of an address.
func familyOf(a netip.Addr) corev1.IPFamily {
	if a.Is4() || a.Is4In6() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

// newPools splits ranges by family into a Pool each.
func newPools(ranges []Range) (map[corev1.IPFamily]*Pool, error) {
	by := map[corev1.IPFamily][]Range{}
	for _, r := range ranges {
		by[familyOf(r.First)] = append(by[familyOf(r.First)], r)
	}
	pools := map[corev1.IPFamily]*Pool{}
	for f, rs := range by {
		p, err := NewPool(rs)
		if err != nil {
			return nil, err
		}
		pools[f] = p
	}
	return pools, nil
}

// families returns svc's IP families in its order (IPv4 when none is set yet).
func families(svc *corev1.Service) []corev1.IPFamily {
	if len(svc.Spec.IPFamilies) == 0 {
		return []corev1.IPFamily{corev1.IPv4Protocol}
	}
	return svc.Spec.IPFamilies
}

// RequestedIPs returns the addresses svc asks for, at most one per family: the annotation, else
// spec.loadBalancerIP; none when it asks for none.
func RequestedIPs(svc *corev1.Service) ([]netip.Addr, error) {
	if v := strings.TrimSpace(svc.Annotations[AnnotationIPs]); v != "" {
		var ips []netip.Addr
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("annotation %s: %q is not an IP address", AnnotationIPs, s)
			}
			ip = ip.Unmap()
			if slices.Contains(ips, ip) {
				continue
			}
			if slices.ContainsFunc(ips, func(o netip.Addr) bool { return familyOf(o) == familyOf(ip) }) {
				return nil, fmt.Errorf("annotation %s: %q lists more than one %s address; at most one per family is supported", AnnotationIPs, v, familyOf(ip))
			}
			ips = append(ips, ip)
		}
		return ips, nil
	}
	if v := strings.TrimSpace(svc.Spec.LoadBalancerIP); v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("spec.loadBalancerIP: %q is not an IP address", v)
		}
		return []netip.Addr{ip.Unmap()}, nil
	}
	return nil, nil
}

// requestFor is the address of family f in reqs (from RequestedIPs); the zero Addr when none.
func requestFor(reqs []netip.Addr, f corev1.IPFamily) netip.Addr {
	for _, ip := range reqs {
		if familyOf(ip) == f {
			return ip
		}
	}
	return netip.Addr{}
}

// statusIPs returns the parseable addresses in svc's status.loadBalancer.ingress.
func statusIPs(svc *corev1.Service) []netip.Addr {
	var out []netip.Addr
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if ip, err := netip.ParseAddr(in.IP); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// term is the state of one leadership term, rebuilt from the Services at its start and touched only by its
// single worker.
type term struct {
	a       *Allocator
	pools   map[corev1.IPFamily]*Pool // a Pool per family that has ranges
	queue   workqueue.TypedRateLimitingInterface[string]
	waiting map[string]bool   // Services that want an address that is not free; requeued when one is released
	warned  map[string]string // last warning per Service, so a retry does not repeat it
}

func newTerm(a *Allocator) *term {
	pools, _ := newPools(a.cfg.Ranges) // validated in New
	return &term{
		a: a, pools: pools, waiting: map[string]bool{}, warned: map[string]string{},
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
		if !t.a.ours(svc) {
			continue
		}
		reqs, reqErr := RequestedIPs(svc)
		for _, f := range families(svc) {
			pool := t.pools[f]
			if pool == nil {
				continue
			}
			req := requestFor(reqs, f)
			for _, ip := range statusIPs(svc) {
				if familyOf(ip) != f || (reqErr == nil && req.IsValid() && req != ip) {
					continue // another family's, or the request changed (sync moves the Service)
				}
				if pool.Assign(key(svc), ip) == nil {
					break
				}
			}
		}
	}
	allocatedIPs.Set(float64(t.inUse()))
	t.a.log.Info("rebuilt LoadBalancer IP allocations from Service status", "in_use", t.inUse(), "pool_size", t.a.size)
	return nil
}

// inUse is the number of addresses held, over both families.
func (t *term) inUse() int {
	n := 0
	for _, p := range t.pools {
		n += p.InUse()
	}
	return n
}

func key(svc *corev1.Service) string { return svc.Namespace + "/" + svc.Name }

// released requeues the Services waiting for an address after one was freed.
func (t *term) released() {
	for k := range t.waiting {
		t.queue.Add(k)
	}
}

// release frees what key holds in every family.
func (t *term) release(key string) {
	for _, p := range t.pools {
		if ip, ok := p.Release(key); ok {
			t.a.log.Info("released LoadBalancer IP", "service", key, "ip", ip)
			t.released()
		}
	}
}

// sync brings one Service's allocation and status in line.
func (t *term) sync(ctx context.Context, k string) error {
	defer func() { allocatedIPs.Set(float64(t.inUse())) }()
	ns, name, err := cache.SplitMetaNamespaceKey(k)
	if err != nil {
		return nil
	}
	svc, err := t.a.lister.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		if t.holds(k) {
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
	fams := families(svc)
	served := slices.DeleteFunc(slices.Clone(fams), func(f corev1.IPFamily) bool { return t.pools[f] == nil })
	for f, p := range t.pools { // a family the Service no longer has gives its address back
		if !slices.Contains(served, f) {
			if ip, ok := p.Release(k); ok {
				t.a.log.Info("released LoadBalancer IP", "service", k, "ip", ip, "family", f)
				t.released()
			}
		}
	}
	if len(served) == 0 {
		t.fail(svc, ReasonUnavailable, failUnavailable, "Service %s has no family with a load balancer range (its families %v, the ranges %s)", k, fams, rangesString(t.a.cfg.Ranges))
		return t.writeStatus(ctx, svc, nil)
	}

	// RequireDualStack with a range of one family only: serve it, and say what it misses (each sync keeps the
	// warning, so it is not cleared below until a range of the other family exists).
	partial := svc.Spec.IPFamilyPolicy != nil && *svc.Spec.IPFamilyPolicy == corev1.IPFamilyPolicyRequireDualStack && len(served) < len(fams)
	if partial {
		var missing []corev1.IPFamily
		for _, f := range fams {
			if !slices.Contains(served, f) {
				missing = append(missing, f)
			}
		}
		t.fail(svc, ReasonUnavailable, failUnavailable, "Service %s requires dual stack but no load balancer range is %v (the ranges %s): it gets a %v address only",
			k, missing, rangesString(t.a.cfg.Ranges), served)
	}

	reqs, reqErr := RequestedIPs(svc)
	if reqErr == nil {
		for _, r := range reqs {
			if !slices.Contains(served, familyOf(r)) {
				t.fail(svc, ReasonUnavailable, failUnavailable, "requested load balancer IP %s is not available: %s is %v", r, r, ErrNotInPool)
			}
		}
	}
	var ips []netip.Addr
	ok := true
	for _, f := range served {
		ip := t.syncFamily(svc, f, requestFor(reqs, f), reqErr)
		if ip.IsValid() {
			ips = append(ips, ip)
		} else {
			ok = false
		}
	}
	if reqErr != nil {
		var kept []string
		for _, ip := range ips {
			kept = append(kept, ip.String())
		}
		keep := "no address assigned"
		if len(kept) > 0 {
			keep = "keeping " + strings.Join(kept, ",")
		}
		// A bad request keeps what the Service has (a typo must not take a working address away).
		t.fail(svc, ReasonInvalidRequest, failInvalid, "%v; %s", reqErr, keep)
	} else if ok && !partial {
		delete(t.waiting, k)
		delete(t.warned, k)
	} else if ok {
		delete(t.waiting, k)
	}
	return t.writeStatus(ctx, svc, ips)
}

// holds reports whether key holds an address of some family.
func (t *term) holds(key string) bool {
	for _, p := range t.pools {
		if _, ok := p.Lookup(key); ok {
			return true
		}
	}
	return false
}

// syncFamily brings one family's allocation of svc in line with its request req of that family (reqErr: the
// request does not parse, keep what it has) and returns the address it holds (the zero Addr: none).
func (t *term) syncFamily(svc *corev1.Service, f corev1.IPFamily, req netip.Addr, reqErr error) netip.Addr {
	k, pool := key(svc), t.pools[f]
	cur, has := pool.Lookup(k)
	switch {
	case reqErr != nil:
		return cur
	case req.IsValid():
		if has && cur == req {
			return cur
		}
		if err := pool.Assign(k, req); err != nil {
			if has {
				if ip, ok := pool.Release(k); ok {
					t.a.log.Info("released LoadBalancer IP", "service", k, "ip", ip)
					t.released()
				}
			}
			var inUse *InUseError
			if errors.As(err, &inUse) {
				t.waiting[k] = true
			}
			t.fail(svc, ReasonUnavailable, failUnavailable, "requested load balancer IP %s is not available: %v", req, err)
			return netip.Addr{}
		}
		if has {
			t.a.log.Info("released LoadBalancer IP", "service", k, "ip", cur)
			t.released()
		}
		return req
	case has:
		return cur
	}
	return t.adoptOrAllocate(svc, f)
}

// adoptOrAllocate gives a Service that holds no address of family f the address of f its status shows, when
// that is in the ranges and free, else the lowest free one.
func (t *term) adoptOrAllocate(svc *corev1.Service, f corev1.IPFamily) netip.Addr {
	k, pool := key(svc), t.pools[f]
	for _, ip := range statusIPs(svc) {
		if familyOf(ip) != f {
			continue
		}
		err := pool.Assign(k, ip)
		if err == nil {
			t.a.log.Info("adopted LoadBalancer IP from Service status", "service", k, "ip", ip)
			return ip
		}
		var inUse *InUseError
		if errors.As(err, &inUse) {
			t.warn(svc, ReasonConflict, "status load balancer IP %s is in use by %s; allocating another", ip, inUse.Owner)
		} else {
			t.warn(svc, ReasonOutOfRange, "status load balancer IP %s is outside the configured ranges %s; allocating another", ip, rangesString(pool.Ranges()))
		}
	}
	ip, err := pool.AllocateAny(k)
	if err != nil {
		t.waiting[k] = true
		t.fail(svc, ReasonExhausted, failExhausted, "no free load balancer IP: all %d addresses of %s are in use; waiting for one to be released", pool.Size(), rangesString(pool.Ranges()))
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
	var freed []netip.Addr
	for _, p := range t.pools {
		if ip, had := p.Release(k); had {
			t.a.log.Info("released LoadBalancer IP of a Service no longer served", "service", k, "ip", ip, "type", svc.Spec.Type)
			t.released()
			freed = append(freed, ip)
		}
	}
	delete(t.waiting, k)
	delete(t.warned, k)
	inRanges := func(a netip.Addr) bool { p := t.pools[familyOf(a)]; return p != nil && p.Contains(a) }
	var keep []corev1.LoadBalancerIngress
	var removed []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		a, err := netip.ParseAddr(in.IP)
		if a = a.Unmap(); err == nil && (slices.Contains(freed, a) || (svc.Spec.Type != corev1.ServiceTypeLoadBalancer && inRanges(a))) {
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

// writeStatus makes svc's status.loadBalancer.ingress hold exactly ips, in that order (nothing for none).
func (t *term) writeStatus(ctx context.Context, svc *corev1.Service, ips []netip.Addr) error {
	var want []corev1.LoadBalancerIngress
	vip := corev1.LoadBalancerIPModeVIP
	for _, ip := range ips {
		want = append(want, corev1.LoadBalancerIngress{IP: ip.String(), IPMode: &vip})
	}
	have := svc.Status.LoadBalancer.Ingress
	if slices.EqualFunc(have, want, func(h, w corev1.LoadBalancerIngress) bool { return h.IP == w.IP && h.Hostname == "" }) {
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
	if len(ips) > 0 {
		t.a.log.Info("assigned LoadBalancer IP", "service", key(svc), "ip", addrsString(ips))
		t.event(svc, corev1.EventTypeNormal, ReasonAllocated, "assigned load balancer IP "+addrsString(ips))
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
