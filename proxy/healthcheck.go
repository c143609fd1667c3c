package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"canopy.io/canopy/internal/model"
)

// HealthChecks answers each Local LoadBalancer service's healthCheckNodePort the way kube-proxy does, so the
// load balancer (or the ToR, with BGP) sends traffic only to nodes with a local endpoint: 200 with
// {"service":{"namespace":…,"name":…},"localEndpoints":N,"serviceProxyHealthy":true} when N > 0, else 503.
type HealthChecks struct {
	log  *slog.Logger
	addr string // host part to listen on ("" = all)

	mu      sync.Mutex
	servers map[uint16]*hcServer
}

type hcServer struct {
	srv       *http.Server
	namespace string
	name      string
	local     int
}

// NewHealthChecks returns health check servers that listen on host (e.g. the node IP; "" = every address).
func NewHealthChecks(host string, log *slog.Logger) *HealthChecks {
	return &HealthChecks{log: log, addr: host, servers: map[uint16]*hcServer{}}
}

// Sync makes the servers match the service ports that have a healthCheckNodePort: one server per port, its
// local endpoint count refreshed, servers of ports no longer wanted closed.
func (h *HealthChecks) Sync(desired map[string]*model.ServicePort) {
	want := map[uint16]*model.ServicePort{}
	for _, sp := range desired {
		if sp.HealthCheckNodePort != 0 {
			want[sp.HealthCheckNodePort] = sp
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		if _, ok := want[port]; !ok {
			_ = s.srv.Close()
			delete(h.servers, port)
		}
	}
	for port, sp := range want {
		local := sp.LocalEndpoints(true)
		if s, ok := h.servers[port]; ok {
			s.namespace, s.name, s.local = sp.Namespace, sp.Name, local
			continue
		}
		s := &hcServer{namespace: sp.Namespace, name: sp.Name, local: local}
		if err := h.listen(port, s); err != nil {
			h.log.Error("health check node port", "port", port, "service", sp.Namespace+"/"+sp.Name, "err", err)
			continue
		}
		h.servers[port] = s
	}
}

func (h *HealthChecks) listen(port uint16, s *hcServer) error {
	l, err := net.Listen("tcp", net.JoinHostPort(h.addr, fmt.Sprint(port)))
	if err != nil {
		return err
	}
	s.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		ns, name, local := s.namespace, s.name, s.local
		h.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", fmt.Sprint(local))
		if local == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"service":             map[string]string{"namespace": ns, "name": name},
			"localEndpoints":      local,
			"serviceProxyHealthy": true,
		})
	})}
	go func() {
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("health check server", "port", port, "err", err)
		}
	}()
	return nil
}

// relevant says whether a sync of changed can affect the servers: one of the ports has a health check port,
// or servers run (one may belong to a port that just went).
func (h *HealthChecks) relevant(desired map[string]*model.ServicePort, changed []string) bool {
	h.mu.Lock()
	n := len(h.servers)
	h.mu.Unlock()
	if n > 0 {
		return true
	}
	for _, k := range changed {
		if sp, ok := desired[k]; ok && sp.HealthCheckNodePort != 0 {
			return true
		}
	}
	return false
}

// Close stops every server.
func (h *HealthChecks) Close(context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		_ = s.srv.Close()
		delete(h.servers, port)
	}
}
