package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"canopy.io/canopy/bgp"
	"canopy.io/canopy/policy"
)

// Status is what the agent says of itself on /status (read-only, no secrets) and what `canopy status` prints:
// both ends use this type.
type Status struct {
	Node   string          `json:"node"`
	Time   time.Time       `json:"time"`
	Health Health          `json:"health"`
	BGP    bgp.Status      `json:"bgp"`
	Routes RouteStatus     `json:"routes"`
	Proxy  *ProxyStatus    `json:"proxy,omitempty"`
	Policy *policy.Summary `json:"policy,omitempty"`
}

// Health is /healthz and /readyz in words.
type Health struct {
	Live  string `json:"live"`  // "ok" or why not
	Ready string `json:"ready"` // "ok" or what is not synced yet
}

// RouteStatus counts the kernel routes of ours.
type RouteStatus struct {
	Installed int `json:"installed"`
	Stale     int `json:"stale"` // left by an earlier run, not confirmed yet
}

// ProxyStatus is the service proxy's state.
type ProxyStatus struct {
	Mode         string `json:"mode"`
	ServicePorts int    `json:"servicePorts"`
}

func word(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

// statusHandler answers /status from the agent's components.
func (a *agent) statusHandler(f func(context.Context) Status) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		st := f(ctx)
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	}
}

// FetchStatus asks the agent at addr (host:port of --metrics-addr) for its Status.
func FetchStatus(ctx context.Context, addr string) (*Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the agent at %s: %w (is it running? --metrics-addr)", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("the agent at %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("the agent at %s: %w", addr, err)
	}
	return &st, nil
}

// WriteStatus prints st for people (calicoctl node status / cilium bgp peers style).
func WriteStatus(w io.Writer, st *Status) {
	fmt.Fprintf(w, "Canopy on node %s\n", st.Node)
	fmt.Fprintf(w, "  health: %s; ready: %s\n", st.Health.Live, st.Health.Ready)
	if st.BGP.Running {
		fmt.Fprintf(w, "  BGP speaker: AS %d, router ID %s, %d paths advertised\n", st.BGP.ASN, st.BGP.RouterID, st.BGP.Paths)
	} else {
		fmt.Fprintf(w, "  BGP speaker: not running\n")
	}
	fmt.Fprintf(w, "  kernel routes: %d installed (%d stale, waiting for their peers)\n", st.Routes.Installed, st.Routes.Stale)
	if st.Proxy != nil {
		fmt.Fprintf(w, "  service proxy: %s, %d service ports\n", st.Proxy.Mode, st.Proxy.ServicePorts)
	} else {
		fmt.Fprintf(w, "  service proxy: off\n")
	}
	if st.Policy != nil {
		fmt.Fprintf(w, "  network policy: %d policies, %d pods programmed (%d isolated), %d chains, %d ipsets\n",
			st.Policy.Policies, st.Policy.Pods, st.Policy.Isolated, st.Policy.Chains, st.Policy.Sets)
	} else {
		fmt.Fprintf(w, "  network policy: off\n")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tASN\tKIND\tSTATE\tSINCE\tRECEIVED\tACCEPTED\tADVERTISED\tBFD\tLAST ERROR")
	peers := append([]bgp.PeerStatus(nil), st.BGP.Peers...)
	sort.Slice(peers, func(i, j int) bool { return peers[i].Address.Less(peers[j].Address) })
	for _, p := range peers {
		kind := string(p.Kind)
		if p.Name != "" {
			kind += "/" + p.Name
		}
		since := "-"
		if !p.Since.IsZero() {
			since = st.Time.Sub(p.Since).Round(time.Second).String()
		}
		bfd := p.BFD
		if bfd == "" {
			bfd = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", p.Address, p.ASN, kind, p.State, since,
			p.Received, p.Accepted, p.Advertised, bfd, p.LastError)
	}
	_ = tw.Flush()
}

// bfdStates returns link's session states as a lookup (nil link: none).
func bfdStates(link *bgp.BFDLink) func(netip.Addr) string {
	if link == nil {
		return nil
	}
	states := link.States()
	return func(a netip.Addr) string { return states[a] }
}
