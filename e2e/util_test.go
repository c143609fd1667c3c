package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"canopy.io/canopy/e2e/lab"
)

// metrics scrapes the agent's /metrics on the node (port 9469, from inside the node's namespace) into
// "name{labels}" → value.
func metrics(ctx context.Context, n *lab.Node) (map[string]float64, error) {
	req, err := newRequest(ctx, "http://127.0.0.1:9469/metrics")
	if err != nil {
		return nil, err
	}
	resp, err := n.HTTPClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s metrics: %w", n.Name, err)
	}
	defer resp.Body.Close()
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// parseUptimes reads `gobgp neighbor -j`: when each Established session came up.
func parseUptimes(out string) (map[netip.Addr]time.Time, error) {
	var peers []struct {
		State struct {
			NeighborAddress string `json:"neighbor_address"`
			SessionState    int    `json:"session_state"`
		} `json:"state"`
		Timers struct {
			State struct {
				Uptime struct {
					Seconds int64 `json:"seconds"`
				} `json:"uptime"`
			} `json:"state"`
		} `json:"timers"`
	}
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		return nil, err
	}
	res := map[netip.Addr]time.Time{}
	for _, p := range peers {
		a, err := netip.ParseAddr(p.State.NeighborAddress)
		if err != nil || p.State.SessionState != 6 {
			continue
		}
		res[a] = time.Unix(p.Timers.State.Uptime.Seconds, 0)
	}
	return res, nil
}

func newRequest(ctx context.Context, url string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
}
