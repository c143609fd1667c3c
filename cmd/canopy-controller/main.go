// Command canopy-controller does Canopy's cluster-wide work apart from the node agents, as MetalLB splits its
// controller from its speakers: today that is the LoadBalancer IP allocator (package loadbalancer), which
// writes status.loadBalancer.ingress of the Services of its class. It runs as a Deployment (manifests/
// controller.yaml) under its own ServiceAccount, so only it — not every node's agent — may write
// services/status and the allocator's Lease (manifests/rbac-controller.yaml). Replicas elect one leader with
// the Lease; on SIGTERM the leader stops allocating, releases the Lease so another replica takes over at once,
// and exits 0.
//
// It serves /metrics, /healthz (alive: answers while the API server is unreachable) and /readyz (the Service
// cache has synced; the body says whether this replica leads) on --metrics-addr.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"canopy.io/canopy/loadbalancer"
)

// shutdownGrace bounds how long a stop waits for the allocator to finish its term and release the Lease (the
// Deployment's terminationGracePeriodSeconds is longer).
const shutdownGrace = 10 * time.Second

func main() {
	var r raw
	fs := pflag.NewFlagSet("canopy-controller", pflag.ContinueOnError)
	fs.SortFlags = false
	bindFlags(fs, &r)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "canopy-controller: %v\n", err)
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "canopy-controller: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	cfg, err := r.validate()
	if err != nil {
		fmt.Fprintf(os.Stderr, "canopy-controller: invalid configuration:\n%v\n", err)
		os.Exit(2)
	}
	log := newLogger(cfg.LogLevel)
	klog.SetSlogLogger(log.With("component", "client-go")) // leader election logs through klog
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("canopy-controller stopped", "err", err)
		os.Exit(1)
	}
	log.Info("canopy-controller stopped")
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// run runs the allocator until ctx ends, then waits for it to release its Lease.
func run(ctx context.Context, cfg *config, log *slog.Logger) error {
	a := cfg.Allocator
	log.Info("canopy-controller starting", "identity", a.Identity, "ranges", a.Ranges, "class", a.Class, "lease", a.LeaseNamespace+"/"+loadbalancer.LeaseName)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(loadbalancer.Collectors()...)
	h := &health{}
	// Health first: the liveness probe must find the controller alive while it waits for the API server.
	if err := h.serve(ctx, cfg.MetricsAddr, reg, log); err != nil {
		return err
	}
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "canopy-controller/" + a.Identity
	rc.QPS, rc.Burst = 20, 50                     // a burst of new Services is one status update each
	rc.ContentType = kruntime.ContentTypeProtobuf // built-in types only, as the agent's typed client
	rc.AcceptContentTypes = kruntime.ContentTypeProtobuf + "," + kruntime.ContentTypeJSON
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "canopy-controller"})

	factory := informers.NewSharedInformerFactory(kube, 0)
	alloc, err := loadbalancer.New(a, kube, factory, recorder, log.With("component", "loadbalancer"))
	if err != nil {
		return err
	}
	synced := factory.Core().V1().Services().Informer().HasSynced
	h.set(alloc, synced)
	factory.Start(ctx.Done())
	defer factory.Shutdown()

	done := make(chan struct{})
	go func() {
		defer close(done)
		alloc.Run(ctx) // returns once ctx ended and the Lease is released
	}()
	select {
	case <-done:
		if ctx.Err() == nil {
			return errors.New("the allocator stopped by itself") // exit 1: the pod restarts
		}
	case <-ctx.Done():
		log.Info("stopping: the leader stops allocating and releases the Lease")
		select {
		case <-done:
		case <-time.After(shutdownGrace):
			return fmt.Errorf("the allocator did not stop within %s (the Lease expires by itself)", shutdownGrace)
		}
	}
	return nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

// health answers /healthz and /readyz and serves /metrics.
type health struct {
	alloc  atomic.Pointer[loadbalancer.Allocator]
	synced atomic.Pointer[func() bool]
}

func (h *health) set(a *loadbalancer.Allocator, synced func() bool) {
	h.synced.Store(&synced)
	h.alloc.Store(a)
}

// live holds while the process serves: an unreachable API server or a lost Lease is retried, and a restart
// would not help (if the allocator's loop ends by itself, the process exits).
func (h *health) live() (string, error) { return "ok", nil }

// ready holds once the Service cache has synced (the API server answered and this ServiceAccount may list
// Services); the body says whether this replica allocates or stands by.
func (h *health) ready() (string, error) {
	s := h.synced.Load()
	a := h.alloc.Load()
	if s == nil || a == nil {
		return "", errors.New("starting")
	}
	if !(*s)() {
		return "", errors.New("waiting for the Service cache to sync (is the API server reachable, and may this ServiceAccount list Services?)")
	}
	if a.Leading() {
		return "ok: leading, allocating LoadBalancer IPs", nil
	}
	return "ok: standing by for the Lease", nil
}

func answer(w http.ResponseWriter, check func() (string, error)) {
	body, err := check()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintln(w, err)
		return
	}
	_, _ = fmt.Fprintln(w, body)
}

// serve listens on addr ("" = not at all) until ctx ends; a listen error is returned at once.
func (h *health) serve(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { answer(w, h.live) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { answer(w, h.ready) })
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "addr", addr, "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	return nil
}
