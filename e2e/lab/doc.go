// Package lab is Canopy's virtual data centre: one rack in network namespaces, with a real Kubernetes control
// plane, an FRR top-of-rack router, worker nodes running the agent, and pods. Nothing is added to the root
// network namespace; everything a lab makes is removed when it goes down, also after a crash (see below).
//
//	l := lab.New(t, lab.Config{Nodes: 3, AgentBin: os.Getenv("CANOPY_BIN")}) // skips if it cannot run here
//	l.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})                  // from the test process
//	l.ToR.WaitEstablished(ctx, l.Nodes[0].IP, l.Nodes[1].IP)
//	p, _ := l.AddPod(ctx, l.Nodes[0], "web")
//	q, _ := l.AddPod(ctx, l.Nodes[1], "client")
//	err := q.Ping(ctx, p.IP)
//
// Topology (defaults; docs/lab.md has the picture): namespace <prefix>tor holds bridge br0 (10.99.0.1/24, the
// rack's L2 segment) and FRR in AS 64500 accepting BGP from the whole /24 (peer group NODES, remote-as external,
// multipath-relax, as-override, timers 3/9, no policy required, no network import-check); <prefix>cp (.2) runs
// etcd, kube-apiserver (:6443) and kube-controller-manager (nodeipam, endpointslice, endpointslicemirroring,
// serviceaccount); <prefix>nN (.10+N) is node N, with a Node object whose pod CIDR nodeipam assigns and the agent;
// <prefix>ext (203.0.113.10) is an external host behind the ToR. Pods (<prefix>nN-<name>) hang off bridge
// canopy0 in their node, which holds the pod CIDR's first address.
//
// With Config.Racks > 1 the lab is a routed fabric instead (racks.go, docs/lab.md): a segment, subnet and ToR per
// rack (FRR, BIRD or gobgpd), the ToRs under an FRR spine that holds the control plane and the external host.
//
// Processes are started with `ip netns exec` (which execs, so the pid is the program's), log to files under
// WorkDir, and are reaped by the lab. Children get SIGKILL if the test process dies (Pdeathsig, forked from
// one locked OS thread), and run in their own process group so ^C reaches only go test. FRR drops privileges,
// which clears Pdeathsig, so a watchdog process (sh) kills whatever still runs in the lab's namespaces and
// deletes them once the test process is gone. Every lab records its namespaces and processes in
// <StateRoot>/<prefix>/state.json before making them: Up removes stale labs (creator dead, not Keep), and
// DownAll (labctl down) removes every lab.
//
// The test process stays in the root namespace. Kube, Host.Dial and Host.HTTPClient create their sockets inside
// a lab namespace (setns on a locked thread, dial, setns back). Commands run through `ip netns exec`.
package lab
