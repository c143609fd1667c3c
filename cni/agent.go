package cni

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// AgentWait bounds how long ADD waits for the agent to program a new pod's firewall.
const AgentWait = 3 * time.Second

// AgentHint is what the plugin tells the agent after ADD (one JSON line on AgentSocket); the agent answers
// one JSON line AgentReply once the pod's rules exist, or when it stops waiting.
type AgentHint struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	IP        string `json:"ip"`
}

// AgentReply is the agent's answer.
type AgentReply struct {
	Programmed bool   `json:"programmed"`
	Error      string `json:"error,omitempty"`
}

// podFromArgs returns K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS ("K=V;K=V").
func podFromArgs(args string) (ns, name string) {
	for _, kv := range strings.Split(args, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			ns = v
		case "K8S_POD_NAME":
			name = v
		}
	}
	return ns, name
}

// notifyAgent tells the agent the pod's address and waits for its answer, at most wait. Every failure is only
// reported on stderr (the runtime logs it): the pod's traffic then waits for the agent to learn the address from
// the API instead.
func notifyAgent(socket, cniArgs, ip string, wait time.Duration) bool {
	ns, name := podFromArgs(cniArgs)
	if ns == "" || name == "" {
		return false
	}
	err := func() error {
		c, err := net.DialTimeout("unix", socket, wait)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(wait))
		if err := json.NewEncoder(c).Encode(AgentHint{Namespace: ns, Name: name, IP: ip}); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadBytes('\n')
		if err != nil {
			return err
		}
		var r AgentReply
		if err := json.Unmarshal(line, &r); err != nil {
			return err
		}
		if !r.Programmed {
			return fmt.Errorf("not programmed yet: %s", r.Error)
		}
		return nil
	}()
	if err != nil {
		fmt.Fprintf(os.Stderr, "canopy-cni: telling the agent at %s about %s/%s (%s): %v\n", socket, ns, name, ip, err)
		return false
	}
	return true
}
