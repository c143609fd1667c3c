// Package hint is the protocol of the CNI hint socket, shared by its two ends: the canopy-cni plugin tells the
// agent a new pod's address right after ADD (one JSON Hint line), and the agent answers one JSON Reply line
// once the pod's firewall exists, or when it stops waiting.
package hint

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// MaxSize bounds a hint line the agent reads (a hostile local process gets no more).
const MaxSize = 4096

// Hint is what the plugin tells the agent.
type Hint struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	IP        string `json:"ip"`
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

// Read reads one Hint line from c (at most MaxSize bytes).
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
