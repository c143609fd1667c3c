package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"canopy.io/canopy/internal/agent"
)

// runStatus is `canopy status`: what the agent on this node says of itself (read-only): BGP sessions with their
// prefix counts and BFD state, kernel routes, the proxy's mode and service ports, NetworkPolicy, health.
func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("canopy status", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("agent", "127.0.0.1:9469", "the agent's --metrics-addr (host:port)")
	output := fs.StringP("output", "o", "text", "text or json")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the agent")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "canopy status: -o %q: want text or json\n", *output)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	st, err := agent.FetchStatus(ctx, *addr)
	if err != nil {
		fmt.Fprintf(stderr, "canopy status: %v\n", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	} else {
		agent.WriteStatus(stdout, st)
	}
	if st.Health.Live != "ok" {
		return 1
	}
	return 0
}
