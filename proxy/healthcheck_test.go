package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"

	"canopy.io/canopy/internal/model"
)

func freeLocalPort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("cannot listen on loopback: %v", err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func TestHealthChecks(t *testing.T) {
	port := freeLocalPort(t)
	h := NewHealthChecks("127.0.0.1", slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer h.Close(context.Background())
	sp := &model.ServicePort{Key: "ns/lb:http/TCP", Namespace: "ns", Name: "lb", HealthCheckNodePort: port,
		ExternalEndpoints: []model.Endpoint{{Local: true, Ready: true}, {Local: false, Ready: true}}}
	h.Sync(map[string]*model.ServicePort{sp.Key: sp})
	get := func() (int, map[string]any) {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	code, body := get()
	if code != 200 || body["localEndpoints"] != float64(1) || body["service"].(map[string]any)["name"] != "lb" {
		t.Fatalf("%d %v", code, body)
	}
	sp2 := *sp
	sp2.ExternalEndpoints = []model.Endpoint{{Local: false, Ready: true}}
	h.Sync(map[string]*model.ServicePort{sp.Key: &sp2})
	if code, body := get(); code != 503 || body["localEndpoints"] != float64(0) {
		t.Fatalf("without local endpoints: %d %v", code, body)
	}
	h.Sync(map[string]*model.ServicePort{})
	if _, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port)); err == nil {
		t.Fatal("server still answers after its service went")
	}
}
