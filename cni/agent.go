package cni

import (
	"fmt"
	"os"
	"strings"
	"time"

	"canopy.io/canopy/cni/hint"
)

// AgentWait bounds how long ADD waits for the agent to program a new pod's firewall.
const AgentWait = 3 * time.Second

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

// notifyAgent tells the agent the pod's addresses (every family's, in the result's order) and waits for its
// answer, at most wait. Every failure is only reported on stderr (the runtime logs it): the pod's traffic then
// waits for the agent to learn the address from the API instead.
func notifyAgent(socket, cniArgs string, ips []string, wait time.Duration) bool {
	ns, name := podFromArgs(cniArgs)
	if ns == "" || name == "" || len(ips) == 0 {
		return false
	}
	err := hint.Send(socket, hint.New(ns, name, ips), wait)
	if err != nil {
		fmt.Fprintf(os.Stderr, "canopy-cni: telling the agent at %s about %s/%s (%s): %v\n", socket, ns, name, strings.Join(ips, ", "), err)
		return false
	}
	return true
}
