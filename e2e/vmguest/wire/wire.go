// Package wire is the protocol between the lab (e2e/lab, on the host) and vmguest (in a VM lab node): one JSON
// Request line per connection, answered by one JSON Response line (for "dial", the connection then relays the
// bytes). Both ends use these types, so they cannot drift apart.
package wire

// Request asks vmguest to run a command ("exec"), start one in the background ("start") or dial out ("dial").
type Request struct {
	Op        string   `json:"op"`
	NS        string   `json:"ns,omitempty"` // network namespace in the guest ("" = the guest's own)
	Argv      []string `json:"argv,omitempty"`
	Env       []string `json:"env,omitempty"`
	Stdin     string   `json:"stdin,omitempty"`
	TimeoutMS int      `json:"timeoutMs,omitempty"`
	Name      string   `json:"name,omitempty"` // of a background process (its log file)
	Network   string   `json:"network,omitempty"`
	Addr      string   `json:"addr,omitempty"`
}

// Response is vmguest's answer.
type Response struct {
	Out  string `json:"out,omitempty"`
	Code int    `json:"code"`
	Err  string `json:"err,omitempty"`
	PID  int    `json:"pid,omitempty"`
}
