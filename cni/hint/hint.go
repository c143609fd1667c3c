// Package hint is the protocol of the CNI hint socket, shared by its two ends: the canopy-cni plugin tells the
// agent a new pod's addresses right after ADD (one JSON Hint line), and the agent answers one JSON Reply line
// once the pod's firewall exists, or when it stops waiting.
//
// The line is {"namespace": "…", "name": "…", "ip": "10.244.1.5", "ips": ["10.244.1.5", "fd00:10:244:1::5"]}.
// "ip" is the one address hints carried before dual-stack, and still the pod's IPv4 address when it has one (else
// its first address), so an agent that reads only "ip" (and polices IPv4 only) keeps working; "ips" lists every
// address of the pod, one per family, in the order of the CNI result. A reader takes Addresses(): "ips", or "ip"
// alone from a plugin that predates "ips".
package hint

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"time"
)

// MaxSize bounds a hint line the agent reads (a hostile local process gets no more).
const MaxSize = 4096

// Hint is what the plugin tells the agent.
type Hint struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// IP is the pod's IPv4 address, or its first address when it has no IPv4 one (what agents that predate IPs
	// read).
	IP string `json:"ip"`
	// IPs is every address of the pod (at most one per family), in the CNI result's order; empty from a plugin
	// that predates it, whose hint names IP alone.
	IPs []string `json:"ips,omitempty"`
}

// New returns the hint for a pod with addresses ips (in the CNI result's order): IP is the first IPv4 address,
// else the first address; IPs all of them.
func New(namespace, name string, ips []string) Hint {
	h := Hint{Namespace: namespace, Name: name, IPs: slices.Clone(ips)}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			h.IP = s
			break
		}
	}
	if h.IP == "" && len(ips) > 0 {
		h.IP = ips[0]
	}
	return h
}

// Addresses returns every address the hint names: IPs, or IP alone when IPs is empty.
func (h Hint) Addresses() []string {
	if len(h.IPs) > 0 {
		return slices.Clone(h.IPs)
	}
	if h.IP == "" {
		return nil
	}
	return []string{h.IP}
}

// Reply is the agent's answer.
type Reply struct {
	Programmed bool   `json:"programmed"`
	Error      string `json:"error,omitempty"`
}

// Send tells the agent listening on socket about h and waits at most wait for its answer; it returns nil once
// the agent says the pod is programmed.
func Send(socket string, h Hint, wait time.Duration) error {
	c, err := net.DialTimeout("unix", socket, wait)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	if err := json.NewEncoder(c).Encode(h); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return err
	}
	var r Reply
	if err := json.Unmarshal(line, &r); err != nil {
		return err
	}
	if !r.Programmed {
		return fmt.Errorf("not programmed yet: %s", r.Error)
	}
	return nil
}

// Read reads one Hint line from c (at most MaxSize bytes). A hint whose "ips" does not include its "ip" is refused.
func Read(c io.Reader) (Hint, error) {
	var h Hint
	line, err := bufio.NewReader(io.LimitReader(c, MaxSize)).ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return h, errors.New("no complete hint line")
		}
		return h, err
	}
	if err := json.Unmarshal(line, &h); err != nil {
		return h, fmt.Errorf("bad hint: %w", err)
	}
	if len(h.IPs) > 0 && !slices.Contains(h.IPs, h.IP) {
		return h, fmt.Errorf("bad hint: ip %q is not one of ips %q", h.IP, h.IPs)
	}
	return h, nil
}

// Write writes the Reply line (err == nil and programmed: the pod's rules exist).
func Write(c io.Writer, programmed bool, err error) error {
	r := Reply{Programmed: programmed}
	if err != nil {
		r.Error = err.Error()
	}
	return json.NewEncoder(c).Encode(r)
}
