package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"canopy.io/canopy/internal/controller"
)

// health answers /healthz and /readyz from the components the agent runs, and serves /metrics. It listens
// before the agent waits for anything (its Node, the API server), so a liveness probe never kills an agent that
// is only waiting.
type health struct {
	mu    sync.Mutex
	parts []*controller.Controller
	extra map[string]func() error // readiness conditions that are not controllers
}

func (h *health) add(c ...*controller.Controller) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.parts = append(h.parts, c...)
}

func (h *health) addCheck(name string, ready func() error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.extra == nil {
		h.extra = map[string]func() error{}
	}
	h.extra[name] = ready
}

// live fails only when a controller is wedged (one sync running far too long): restarting the agent would help.
// Failing syncs, a missing Node, an unreachable API server are not: they are retried, and a restart would not
// make them succeed.
func (h *health) live() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for _, c := range h.parts {
		if err := c.Healthy(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ready holds once every component finished its first full sync (and every extra condition holds).
func (h *health) ready() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.parts) == 0 {
		return errors.New("starting: waiting for this node's Node object and the API server")
	}
	var waiting []string
	for _, c := range h.parts {
		if !c.Ready() {
			w := c.Name()
			if err := c.LastError(); err != nil {
				w += " (" + err.Error() + ")"
			}
			waiting = append(waiting, w)
		}
	}
	for name, f := range h.extra {
		if err := f(); err != nil {
			waiting = append(waiting, name+" ("+err.Error()+")")
		}
	}
	if len(waiting) > 0 {
		sort.Strings(waiting)
		return fmt.Errorf("not synced yet: %s", strings.Join(waiting, ", "))
	}
	return nil
}

func answer(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintln(w, err)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// serve listens on addr ("" = not at all) for /metrics, /healthz and /readyz until ctx ends. A listen error is
// returned at once.
func (h *health) serve(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger, extra map[string]http.Handler) error {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { answer(w, h.live()) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { answer(w, h.ready()) })
	for path, hd := range extra {
		mux.Handle(path, hd)
	}
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
