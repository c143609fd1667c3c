package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/model"
)

// fakeTables is tableOps over a list of names.
type fakeTables struct{ names []string }

func (f *fakeTables) tables() ([]string, error) { return slices.Clone(f.names), nil }
func (f *fakeTables) deleteTable(name string) error {
	f.names = slices.DeleteFunc(f.names, func(n string) bool { return n == name })
	return nil
}

func newShardTest(t *testing.T, n int, ops tableOps) (*Shards, []*flaky) {
	t.Helper()
	fakes := make([]*flaky, n)
	ps := make([]*Proxier, n)
	for i := range ps {
		fakes[i] = &flaky{Fake: knftables.NewFake(knftables.IPv4Family, ShardTable(i))}
		ps[i] = New(testCfg, fakes[i], nil, nil)
		ps[i].table = ShardTable(i)
	}
	s := newShards(ipv4, ps, ops, nil)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s, fakes
}

// inShard returns a Service named after prefix whose key lands in shard i of n.
func inShard(t *testing.T, prefix string, i, n int, vip string) *model.ServicePort {
	t.Helper()
	for j := range 1000 {
		sp := svc("default", fmt.Sprintf("%s%d", prefix, j), vip, 80, ep("10.244.1.10", 8080))
		if shardOf(sp.Key, n) == i {
			return sp
		}
	}
	t.Fatalf("no key of %s in shard %d", prefix, i)
	return nil
}

func TestShardNames(t *testing.T) {
	for name, want := range map[string]int{"canopy": 0, "canopy-1": 1, "canopy-17": 17} {
		if i, ok := shardIndex(name); !ok || i != want || ShardTable(want) != name {
			t.Errorf("%s: %d %v", name, i, ok)
		}
	}
	for _, name := range []string{"canopy-", "canopy-0", "canopy-01", "canopy-x", "canopyx", "kube-proxy", "canopy-1a"} {
		if IsShardTable(name) {
			t.Errorf("%s taken for a shard's table", name)
		}
	}
}

// TestShardsSpread: each key is programmed in its own table only, and a change reaches only its table.
func TestShardsSpread(t *testing.T) {
	s, f := newShardTest(t, 4, nil)
	desired := map[string]*model.ServicePort{}
	var keys []string
	for i := range 40 {
		sp := svc("default", fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.0.%d", i+1), 80, ep("10.244.1.10", 8080))
		desired[sp.Key] = sp
		keys = append(keys, sp.Key)
	}
	if err := s.Sync(desired, keys); err != nil {
		t.Fatal(err)
	}
	total := 0
	for i := range f {
		n := len(elements(f[i], MapServiceIPs))
		if n == 0 || n == 40 {
			t.Errorf("table %s has %d of 40 service ports", ShardTable(i), n)
		}
		total += n
	}
	if total != 40 {
		t.Errorf("%d elements in all, want 40", total)
	}
	for _, k := range keys {
		i := shardOf(k, 4)
		if v := elem(f[i], MapServiceIPs, desired[k].ClusterIPs[0].String(), "tcp", "80"); v != "goto "+SVCChain(k) {
			t.Errorf("%s: %q in %s", k, v, ShardTable(i))
		}
	}
	// One changed key: one table's transaction; it is not a full sync for that table (no repair).
	runs := make([]int, len(f))
	for i := range f {
		runs[i] = f[i].runs
	}
	k := keys[7]
	desired[k].ClusterEndpoints = append(desired[k].ClusterEndpoints, ep("10.244.2.10", 8080))
	if err := s.Sync(desired, []string{k}); err != nil {
		t.Fatal(err)
	}
	for i := range f {
		want := runs[i]
		if i == shardOf(k, 4) {
			want++
		}
		if f[i].runs != want {
			t.Errorf("table %s: %d transactions, want %d", ShardTable(i), f[i].runs-runs[i], want-runs[i])
		}
	}
	if err := s.PruneStale(); err != nil {
		t.Fatal(err)
	}
}

// TestShardsSharedDestination is TestSharedDestination across tables: the port that holds an external IP keeps
// it; the other gets it when it is let go, in its own table; no two tables hold one destination.
func TestShardsSharedDestination(t *testing.T) {
	s, f := newShardTest(t, 2, nil)
	a := inShard(t, "a", 0, 2, "10.96.0.20")
	b := inShard(t, "b", 1, 2, "10.96.0.21")
	b.ClusterEndpoints = []model.Endpoint{ep("10.244.2.10", 8080)}
	b.ExternalEndpoints = b.ClusterEndpoints
	a.ExternalIPs = []netip.Addr{addr("203.0.113.5")}
	b.ExternalIPs = a.ExternalIPs
	a.NodePort, b.NodePort = 30080, 30080
	desired := map[string]*model.ServicePort{a.Key: a, b.Key: b}
	if err := s.Sync(desired, []string{a.Key, b.Key}); err != nil {
		t.Fatal(err)
	}
	owner := func() string {
		va, vb := elem(f[0], MapServiceIPs, "203.0.113.5", "tcp", "80"), elem(f[1], MapServiceIPs, "203.0.113.5", "tcp", "80")
		na, nb := elem(f[0], MapServiceNodePorts, "tcp", "30080"), elem(f[1], MapServiceNodePorts, "tcp", "30080")
		switch {
		case va == "goto "+EXTChain(a.Key) && vb == "" && na == va && nb == "":
			return "a"
		case vb == "goto "+EXTChain(b.Key) && va == "" && nb == vb && na == "":
			return "b"
		case va == "" && vb == "" && na == "" && nb == "":
			return ""
		}
		t.Fatalf("external IP: %q in %s, %q in %s; node port: %q, %q", va, ShardTable(0), vb, ShardTable(1), na, nb)
		return ""
	}
	first := "a"
	if b.Key < a.Key {
		first = "b"
	}
	if o := owner(); o != first {
		t.Fatalf("shared destinations went to %q, want %q (first key)", o, first)
	}
	// Each keeps its own cluster IP.
	if elem(f[0], MapServiceIPs, "10.96.0.20", "tcp", "80") == "" || elem(f[1], MapServiceIPs, "10.96.0.21", "tcp", "80") == "" {
		t.Fatal("a cluster IP is missing")
	}
	holder, other := a, b
	if first == "b" {
		holder, other = b, a
	}
	// The holder lets go of both: the other gets them in the same sync, though only the holder changed.
	holder.ExternalIPs, holder.NodePort = nil, 0
	if err := s.Sync(desired, []string{holder.Key}); err != nil {
		t.Fatal(err)
	}
	if o := owner(); o == first || o == "" {
		t.Fatalf("after %s let go, the destinations went to %q", first, o)
	}
	// The first wants them back: the other keeps them. The other goes: the first gets them.
	holder.ExternalIPs, holder.NodePort = other.ExternalIPs, 30080
	if err := s.Sync(desired, []string{holder.Key}); err != nil {
		t.Fatal(err)
	}
	if o := owner(); o == first {
		t.Fatal("the destinations were taken from the port holding them")
	}
	delete(desired, other.Key)
	if err := s.Sync(desired, []string{other.Key}); err != nil {
		t.Fatal(err)
	}
	if o := owner(); o != first {
		t.Fatalf("after the other port went, the destinations went to %q", o)
	}
	if len(s.waiters) != 0 || len(s.denied) != 0 {
		t.Errorf("waiters %v, denied %v left", s.waiters, s.denied)
	}
}

// TestShardsPruneOthers: tables of an earlier run with more shards are deleted by PruneStale (after this run's
// tables have every service port) and by Cleanup; foreign tables are not.
func TestShardsPruneOthers(t *testing.T) {
	ops := &fakeTables{names: []string{"canopy", "canopy-1", "canopy-2", "canopy-3", "filter", "canopy-x"}}
	s, _ := newShardTest(t, 2, ops)
	if err := s.PruneStale(); err == nil {
		t.Fatal("PruneStale before a full sync")
	}
	if !slices.Equal(ops.names, []string{"canopy", "canopy-1", "canopy-2", "canopy-3", "filter", "canopy-x"}) {
		t.Fatalf("tables deleted before the first full sync: %v", ops.names)
	}
	if err := s.Sync(map[string]*model.ServicePort{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.PruneStale(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ops.names, []string{"canopy", "canopy-1", "filter", "canopy-x"}) {
		t.Fatalf("tables after PruneStale: %v", ops.names)
	}
	ops.names = append(ops.names, "canopy-5")
	if err := s.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ops.names, []string{"canopy", "canopy-1", "filter", "canopy-x"}) {
		t.Fatalf("tables after Cleanup: %v", ops.names)
	}
}
