// Package agent assembles Canopy's node agent from one validated configuration: it makes each subsystem (kernel
// routes, the BGP speaker and its controllers, the shared Service model, the service proxy, NetworkPolicy, the
// node's data path setup, the LoadBalancer IP allocator), hands each its own options, and runs them all with the
// same shape: a component's Run(ctx) follows its inputs until ctx ends. It holds no logic of its own.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/bgp"
	"canopy.io/canopy/bgp/bfd"
	"canopy.io/canopy/bgp/nodestatus"
	"canopy.io/canopy/bgp/objects"
	"canopy.io/canopy/internal/config"
	"canopy.io/canopy/internal/controller"
	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/nodesetup"
	"canopy.io/canopy/loadbalancer"
	"canopy.io/canopy/policy"
	"canopy.io/canopy/proxy"
	"canopy.io/canopy/proxy/backends"
	"canopy.io/canopy/routes"
)

// component is what the agent runs: every controller has this shape.
type component interface {
	Run(ctx context.Context)
}

// agent is what Run assembles.
type agent struct {
	cfg *config.Config
	log *slog.Logger
	// gcPercent is the GOGC to restore after the first sync; -2: none (the environment sets GOGC).
	gcPercent int
	kube      kubernetes.Interface
	dyn       dynamic.Interface // the canopy.io objects
	self      *corev1.Node
	factory   informers.SharedInformerFactory
	recorder  record.EventRecorder
	reg       *prometheus.Registry
	ipt       *ipt.Host // this node's iptables, its flavour detected once
	health    *health
	run       []component
	lastly    []func() // at shutdown, in order

	// what /status reads, set as the components are made
	smu       sync.Mutex
	mgr       *bgp.Manager
	bfd       *bgp.BFDLink
	rt        *routes.Manager
	proxyCtrl *proxy.Controller
	polCtrl   *policy.Controller
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	log.Info("canopy starting", "node", cfg.NodeName, "cluster_asn", cfg.ClusterASN, "cluster_cidrs", cfg.ClusterCIDRs, "peers", len(cfg.Peers))
	a := &agent{cfg: cfg, log: log, reg: prometheus.NewRegistry(), health: &health{}}
	// Until the first sync, the garbage collector runs at half the heap's growth instead of all of it:
	// the initial lists decode every object whole and keep a small part of each, and the fewer dead objects
	// lie between the kept ones when a collection runs, the fewer heap pages the kept ones end up spread over.
	// releaseAfterFirstSync restores the setting. A GOGC in the environment is the operator's and is kept.
	a.gcPercent = -2
	if os.Getenv("GOGC") == "" {
		a.gcPercent = debug.SetGCPercent(initialSyncGCPercent)
	}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.reg.MustRegister(buildInfo())
	a.reg.MustRegister(controller.Collectors()...)
	a.reg.MustRegister(model.Collectors()...)
	// Health first: the liveness probe must find the agent alive while it waits for the API or its Node.
	extra := map[string]http.Handler{"/status": a.statusHandler(a.status)}
	if cfg.Pprof {
		extra["/debug/pprof/"] = http.HandlerFunc(pprof.Index) // also serves heap, goroutine, allocs, ...
		extra["/debug/pprof/profile"] = http.HandlerFunc(pprof.Profile)
		extra["/debug/pprof/trace"] = http.HandlerFunc(pprof.Trace)
	}
	if err := a.health.serve(ctx, cfg.MetricsAddr, a.reg, log, extra); err != nil {
		return err
	}
	err := a.connect(ctx)
	if err != nil {
		return err
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	a.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "canopy", Host: cfg.NodeName})
	// Every cached object without what no component reads (managedFields; most of a Node; see model.Transform),
	// and no namespace indexes (model.NewInformerFactory).
	a.factory = model.NewInformerFactory(a.kube)
	// Its informers (Services, EndpointSlices, Nodes, Namespaces, NetworkPolicies: NewInformerFactory makes
	// them) list from now on, while the firewall, the node and the proxy's back end are set up: at 10,000
	// Services the lists take seconds. The components register their handlers later, and each is handed what
	// the cache holds then (their registrations' HasSynced tell when it has been); an informer a component asks
	// for later starts with the second Start below. On an early return, stopInformers stops them.
	infCtx, stopInformers := context.WithCancel(ctx)
	defer stopInformers()
	a.factory.Start(infCtx.Done())
	if a.ipt, err = ipt.Open(); err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	log.Info("iptables", "flavour", a.ipt.Flavour)

	warn := &model.ServiceEvents{Recorder: a.recorder, Nodes: a.factory.Core().V1().Nodes().Lister(), Self: cfg.NodeName,
		Log: log.With("component", "services")}
	// The firewall starts before the CNI config is written: a pod made from then on is dropped until its rules exist.
	hintSocket, err := a.firewall(ctx)
	if err != nil {
		return err
	}
	if err := a.nodeSetup(hintSocket); err != nil {
		return err
	}
	var schedulers []string
	var backend proxy.Backend
	var startBackend func() error
	if cfg.RunServiceProxy {
		if backend, startBackend, err = a.proxyBackend(); err != nil {
			return err
		}
		schedulers = backend.Schedulers()
	} else if err := backends.CleanupAll(a.proxyConfig()); err != nil {
		log.Warn("removing the service proxy's rules (the proxy is off)", "err", err)
	}
	for _, p := range cfg.ExternalIPRanges {
		if p.Bits() == 0 {
			log.Warn("--service-external-ip-range allows every address: any Service may take any ExternalIP that is not a node's, the API server's, or in the pod or service networks", "range", p)
		}
	}
	// The IPv6 side of Services only where the back end serves it (every mode does on a dual-stack node): the
	// VIP announcer reads the same model and must not announce an IPv6 VIP nothing on this node answers.
	tracker := model.NewServiceTracker(a.factory, model.Options{NodeName: cfg.NodeName, Schedulers: schedulers,
		IPv6: cfg.RunServiceProxy && backends.DualStack(a.proxyConfig())}, cfg.Admission(), warn,
		log.With("component", "services"))
	a.add(tracker, tracker.Controller())
	if backend != nil {
		a.proxy(ctx, tracker, backend, startBackend)
	}
	if err := a.bgp(tracker, warn); err != nil {
		return err
	}
	if err := a.overlay(); err != nil {
		return err
	}
	if cfg.RunLoadBalancer {
		if err := a.loadBalancer(); err != nil {
			return err
		}
	}

	a.factory.Start(infCtx.Done())
	var wg sync.WaitGroup
	for _, c := range a.run {
		wg.Go(func() { c.Run(ctx) })
	}
	go a.releaseAfterFirstSync(ctx)
	<-ctx.Done()
	log.Info("shutting down (BGP sessions are left to graceful restart)")
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select { // let the components finish (the allocator releases its Lease, so another node takes over at once)
	case <-done:
	case <-time.After(5 * time.Second):
	}
	for _, f := range a.lastly {
		f()
	}
	a.factory.Shutdown()
	return nil
}

// initialSyncGCPercent is the garbage collector's GOGC until the first sync (see Run). At 5,000 nodes (20,000
// pods, 10,000 Services with 50,000 endpoints; BenchmarkAgentAtScale), GOGC=50 for the whole run left the heap's
// pages in use after the sync at 133 MB instead of 152, for the same 102 MB of live objects, and its restart
// took as long. GOGC=25 until the sync gave 122 MB, but a restart's caches took 11.6 s to sync instead of 6.2.
const initialSyncGCPercent = 50

// releaseAfterFirstSync, once every component has synced, restores the garbage collector's setting and returns
// the memory the initial lists took to the OS. The lists are decoded once and are then mostly garbage; left to
// the runtime's background scavenger, the RSS stays near its peak for minutes. After this the RSS an operator
// sees is close to what the agent keeps. (An agent that never gets ready keeps collecting at GOGC=50.)
func (a *agent) releaseAfterFirstSync(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for a.health.ready() != nil {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	if a.gcPercent != -2 {
		debug.SetGCPercent(a.gcPercent)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	const mib = 1 << 20
	a.log.Info("first sync done: unused memory returned to the OS", "heap_live_mib", after.HeapAlloc/mib,
		"released_mib", (int64(after.HeapReleased)-int64(before.HeapReleased))/mib,
		"heap_peak_mib", before.HeapSys/mib)
}

// status gathers the agent's Status.
func (a *agent) status(ctx context.Context) Status {
	st := Status{Node: a.cfg.NodeName, Time: time.Now(), Health: Health{Live: word(a.health.live()), Ready: word(a.health.ready())}}
	a.smu.Lock()
	mgr, link, rt, pc, pol := a.mgr, a.bfd, a.rt, a.proxyCtrl, a.polCtrl
	a.smu.Unlock()
	if mgr != nil {
		st.BGP = mgr.Status(ctx, bfdStates(link))
	}
	if rt != nil {
		st.Routes.Installed, st.Routes.Stale = rt.Counts()
	}
	if pc != nil {
		st.Proxy = &ProxyStatus{Mode: pc.Backend(), ServicePorts: pc.Ports()}
	}
	if pol != nil {
		s := pol.Summary()
		st.Policy = &s
	}
	return st
}

// add registers a component to run, and its controllers for /healthz and /readyz.
func (a *agent) add(c component, ctrls ...*controller.Controller) {
	a.run = append(a.run, c)
	a.health.add(ctrls...)
}

// connect makes the API client and waits until this node's Node exists, logging clearly while it does not.
func (a *agent) connect(ctx context.Context) error {
	var rc *rest.Config
	var err error
	if a.cfg.Kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", a.cfg.Kubeconfig)
	}
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "canopy/" + a.cfg.NodeName
	// The built-in types travel as protobuf, as kube-proxy's and the kubelet's do: the agent decodes every
	// Node, Service, EndpointSlice, Pod and NetworkPolicy of the cluster at start and each change after, and
	// JSON costs several times the CPU and garbage of protobuf. The dynamic client (Canopy's CRDs, which
	// have no protobuf form) stays on JSON.
	pc := rest.CopyConfig(rc)
	pc.ContentType = kruntime.ContentTypeProtobuf
	pc.AcceptContentTypes = kruntime.ContentTypeProtobuf + "," + kruntime.ContentTypeJSON
	if a.kube, err = kubernetes.NewForConfig(pc); err != nil {
		return err
	}
	if a.dyn, err = dynamic.NewForConfig(rc); err != nil {
		return err
	}
	last := time.Time{}
	for {
		n, err := a.kube.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		if err == nil {
			a.log.Info("found this node", "node", n.Name, "ip", model.NodeIP(n), "pod_cidrs", model.PodCIDRs(n))
			a.self = n
			return nil
		}
		if time.Since(last) > 10*time.Second {
			a.log.Info("waiting for this node's Node object", "node", a.cfg.NodeName, "err", err)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// bgp makes the speaker and what feeds it: kernel routes, the importer, the session tracker and the stale-route
// sweep, the manager, and the node and VIP controllers.
func (a *agent) bgp(tracker *model.ServiceTracker, warn model.Warner) error {
	cfg := a.cfg.BGP()
	log := a.log
	a.reg.MustRegister(bgp.Collectors()...)
	a.reg.MustRegister(routes.Collectors()...)
	for _, p := range cfg.Peers {
		if p.Password != "" {
			if ok, err := bgp.KernelSupportsMD5(); !ok {
				log.Error("peers have TCP MD5 passwords but this kernel cannot sign TCP segments (CONFIG_TCP_MD5SIG): those sessions will not come up", "err", err)
			}
			break
		}
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	a.lastly = append(a.lastly, h.Close)
	rt := routes.NewManager(routes.NewNetlinkTable(h, a.cfg.RouteProtocol, a.cfg.RouteTable), log.With("component", "routes"))
	if err := rt.Start(); err != nil {
		return fmt.Errorf("read kernel routes: %w", err)
	}
	// Until the node controller knows the nodes, nothing is accepted from the pod network (every pod CIDR must
	// be a known node's) and --import-allow is.
	importer := bgp.NewImporter(rt, bgp.NewImportPolicy(bgp.PolicyInput{ClusterCIDRs: cfg.ClusterCIDRs, ImportAllow: cfg.ImportAllow,
		ServiceCIDRs: cfg.ServiceCIDRs}), nil, log.With("component", "importer"))
	sessions := bgp.NewSessions(log.With("component", "bgp"))
	var mgr *bgp.Manager
	sweeper := bgp.NewSweeper(rt, sessions, func() []netip.Addr { return mgr.Peers() }, cfg.StaleTimeout, log.With("component", "routes"))
	self := &corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName, UID: types.UID(a.cfg.NodeName)}
	cfg.Global.OnPrefixLimit = func(peer netip.Addr) {
		a.recorder.Eventf(self, corev1.EventTypeWarning, "BGPPrefixLimit",
			"BGP peer %s sent more prefixes than its limit (--max-prefixes, or maxPrefixes in canopy.io/peers): its session was torn down (other sessions are unaffected)", peer)
	}
	start := func(ctx context.Context, g bgp.GlobalConfig) (bgp.Router, error) {
		return bgp.StartGoBGP(ctx, g, log.With("component", "bgp"))
	}
	mgr = bgp.NewManager(cfg.Global, start, bgp.Watchers(importer, sessions), log.With("component", "bgp"),
		importer.Reset, sessions.Reset, sweeper.Restart)
	a.lastly = append(a.lastly, func() { mgr.Shutdown(false) })
	nodes := bgp.NewNodeController(cfg, a.factory, mgr, importer, a.recorder, log.With("component", "nodes"))
	vips := bgp.NewVIPController(a.cfg.NodeName, a.cfg.VIPs(), a.factory, tracker, mgr, warn, a.recorder, log.With("component", "vips"))
	if a.cfg.BGPObjects {
		a.objects(mgr, nodes, vips, warn)
	}
	resync := controller.New(controller.Config{Name: "routes", Repair: a.cfg.ResyncInterval, Log: log.With("component", "routes"),
		Full: func(context.Context) error { return rt.Resync() }})
	if a.cfg.BFD || a.cfg.BFDNodeMesh {
		ip := model.NodeIP(a.self)
		srv, err := bfd.New(bfd.Config{LocalAddrs: []netip.Addr{ip}, Log: log.With("component", "bfd")})
		if err != nil {
			return fmt.Errorf("BFD on %s: %w", ip, err)
		}
		a.reg.MustRegister(bfd.Collectors()...)
		link := bgp.NewBFDLink(srv, mgr, sessions, cfg.BFDTimers, log.With("component", "bfd"))
		nodes.SetBFD(link)
		a.add(link)
		a.smu.Lock()
		a.bfd = link
		a.smu.Unlock()
	}
	a.smu.Lock()
	a.mgr, a.rt = mgr, rt
	a.smu.Unlock()
	a.add(mgr, mgr.Controller())
	a.add(nodes, nodes.Controller())
	a.add(vips, vips.Controller())
	a.add(sweeper)
	a.add(resync, resync)
	a.health.addCheck("bgp speaker", func() error {
		if _, ok := mgr.Running(); !ok {
			return fmt.Errorf("not running")
		}
		return nil
	})
	return nil
}

func (a *agent) proxyConfig() backends.Config {
	c := a.cfg.Proxy()
	if ip := model.NodeIP(a.self); ip.IsValid() {
		c.NodeIPs = []netip.Addr{ip}
	}
	// A dual-stack node's IPv6 InternalIP too: IPv6 node ports listen there, as IPv4 ones on the IPv4 address (the
	// IPVS back end makes a virtual service per listed address; without it, IPVS would have no IPv6 NodePort).
	if backends.DualStack(c) && a.self != nil {
		for _, na := range a.self.Status.Addresses {
			if ip, err := netip.ParseAddr(na.Address); err == nil && na.Type == corev1.NodeInternalIP && ip.Is6() && !ip.Is4In6() &&
				!slices.Contains(c.NodeIPs, ip) {
				c.NodeIPs = append(c.NodeIPs, ip)
				break
			}
		}
	}
	c.IPT = a.ipt
	c.Log = a.log.With("component", "proxy")
	return c
}

// proxyBackend picks the service proxy's back end; start (reading what an earlier run left: seconds at 10,000
// Services) runs in the proxy's loop, while the informers list.
func (a *agent) proxyBackend() (proxy.Backend, func() error, error) {
	be, start, err := backends.Prepare(a.proxyConfig())
	if err != nil {
		return nil, nil, err
	}
	a.log.Info("service proxy", "backend", be.Name())
	return be, start, nil
}

// proxy runs the service proxy over the Service model, with the health check node ports.
func (a *agent) proxy(ctx context.Context, tracker *model.ServiceTracker, be proxy.Backend, start func() error) {
	a.reg.MustRegister(proxy.Collectors()...)
	hcHost := ""
	if ip := model.NodeIP(a.self); ip.IsValid() {
		hcHost = ip.String()
	}
	hc := proxy.NewHealthChecks(hcHost, a.log.With("component", "proxy-healthcheck"))
	context.AfterFunc(ctx, func() { hc.Close(context.Background()) })
	c := proxy.NewController(tracker, be, hc, a.cfg.ProxyRepair, a.log.With("component", "proxy"))
	c.StartBackendFirst(start)
	a.add(c, c.Controller())
	a.smu.Lock()
	a.proxyCtrl = c
	a.smu.Unlock()
}

// firewall starts the NetworkPolicy controller and the socket the CNI plugin reports new pods on (its path is
// returned, "" if none), or with --run-firewall=false removes what an earlier run programmed.
func (a *agent) firewall(ctx context.Context) (string, error) {
	log := a.log.With("component", "policy")
	fw := policy.NewHost(a.ipt, log)
	if !a.cfg.RunFirewall {
		if err := fw.Cleanup(); err != nil {
			log.Debug("removing network policy chains (firewall off)", "err", err)
		}
		return "", nil
	}
	// Same-node pod traffic crosses the bridge: br_netfilter hands it to iptables (and IPv6 pods' to ip6tables).
	// Written only when not set already (the DaemonSet's init container sets both; the agent's /proc/sys is
	// read-only there).
	for _, brnf := range []string{"/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"} {
		if b, err := os.ReadFile(brnf); err != nil || strings.TrimSpace(string(b)) != "1" {
			if err != nil {
				_ = exec.Command("modprobe", "br_netfilter").Run()
			}
			if err := os.WriteFile(brnf, []byte("1"), 0o644); err != nil {
				log.Error("cannot enable br_netfilter: traffic between pods of this node is not policed", "sysctl", brnf, "err", err)
			}
		}
	}
	ctrl := policy.NewController(a.factory, a.kube, fw, a.cfg.NodeName, a.cfg.Policy(), a.cfg.PolicyRepair, log)
	if err := ctrl.Start(a.self); err != nil {
		return "", fmt.Errorf("network policy firewall: %w", err)
	}
	counters := policy.NewCounterCache(fw.Counters, 15*time.Second)
	a.reg.MustRegister(policy.Collectors(counters.Get)...)
	a.add(counters)
	socket := a.cfg.CNIAgentSocket
	if socket != "" {
		if err := ctrl.ServeHints(ctx, socket, 2500*time.Millisecond, log); err != nil {
			log.Error("CNI hint socket: new pods wait for the kubelet to report their address", "path", socket, "err", err)
			socket = ""
		}
	}
	a.add(ctrl, ctrl.Controller())
	a.smu.Lock()
	a.polCtrl = ctrl
	a.smu.Unlock()
	return socket, nil
}

// nodeSetup prepares the node's data path: forwarding, the CNI plugin and conflist, pod egress masquerade.
func (a *agent) nodeSetup(hintSocket string) error {
	cfg := a.cfg.NodeSetup(hintSocket)
	setup := nodesetup.New(cfg, a.ipt, a.log.With("component", "nodesetup"))
	if cfg.CNIIPv6 { // an IPv6 cluster CIDR: the IPv6 egress masquerade, FORWARD accept and BGP guard
		if h6, err := ipt.OpenFlavour6(a.ipt.Flavour); err == nil {
			setup.WithIPv6(h6)
		} else {
			a.log.Warn("ip6tables unavailable: IPv6 pod egress cannot be masqueraded", "err", err)
		}
	}
	if err := setup.Start(a.factory); err != nil {
		return err
	}
	a.add(setup, setup.Controller())
	return nil
}

// loadBalancer runs the LoadBalancer IP allocator (one node at a time holds its Lease). Deprecated in the agent:
// canopy-controller runs it, and the agents' RBAC no longer grants what it needs.
func (a *agent) loadBalancer() error {
	a.log.Warn("--run-loadbalancer in the node agent is deprecated: run canopy-controller (manifests/controller.yaml); the agent needs services/status and Lease rights that manifests/rbac.yaml no longer grants nodes")
	alloc, err := loadbalancer.New(a.cfg.LoadBalancer(), a.kube, a.factory, a.recorder, a.log.With("component", "loadbalancer"))
	if err != nil {
		return fmt.Errorf("LoadBalancer IP allocator: %w", err)
	}
	a.reg.MustRegister(loadbalancer.Collectors()...)
	a.add(alloc)
	return nil
}

// objects follows the canopy.io BGPPeer and BGPConfiguration objects into the node and VIP controllers, and
// writes this node's BGPNodeStatus.
func (a *agent) objects(mgr *bgp.Manager, nodes *bgp.NodeController, vips *bgp.VIPController, warn model.Warner) {
	log := a.log.With("component", "bgp-objects")
	a.reg.MustRegister(nodestatus.Collectors()...)
	var writer *nodestatus.Writer
	var src *objects.Source
	writer = nodestatus.New(a.dyn, a.cfg.NodeName, func(ctx context.Context) v1alpha1.NodeBGPState {
		a.smu.Lock()
		link := a.bfd
		a.smu.Unlock()
		st := nodestatus.FromStatus(mgr.Status(ctx, bfdStates(link)))
		cond := metav1.Condition{Type: "ConfigConflict", Status: metav1.ConditionFalse, Reason: "NoConflict",
			Message: "flags, annotations and objects agree"}
		if c := slices.Concat(nodes.Conflicts(), src.Conflicts()); len(c) > 0 {
			msg := strings.Join(c, "; ")
			if len(msg) > 1024 {
				msg = msg[:1024]
			}
			cond = metav1.Condition{Type: "ConfigConflict", Status: metav1.ConditionTrue, Reason: "ObjectWins", Message: msg}
		}
		st.Conditions = append(st.Conditions, cond)
		return st
	}, log)
	reporter := func() bool { return true }
	if r, ok := warn.(interface{ Reporter() bool }); ok {
		reporter = r.Reporter
	}
	src = objects.New(objects.Options{Client: a.dyn, Core: a.kube, SecretNamespace: a.cfg.SecretNamespace, FlagHoldTime: a.cfg.HoldTime,
		Recorder: a.recorder, Reporter: reporter, Log: log, Flags: objects.Flags{BGP: a.cfg.BGP(), VIP: a.cfg.VIPs()},
		OnChange: func() {
			vips.SetCluster(src.VIPs())
			writer.SetOptions(src.NodeStatus())
			nodes.Changed()
		}})
	nodes.SetObjects(src)
	vips.AddSynced(src.HasSynced)
	a.add(src)
	a.add(writer)
}
