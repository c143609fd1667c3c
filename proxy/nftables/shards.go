package nftables

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/netnsx"
	"canopy.io/canopy/proxy"
)

// DefaultShards is how many tables the host back end spreads service ports over (NewHostShards).
//
// Why several tables: on every commit that adds a jump, a goto or a NAT rule (adding a Service does), the
// kernel re-validates every chain its table's base chains reach (nft_table_validate, per table). With 10,000
// service ports in one table that is ~45 ms of each +1, whatever the transaction holds; spread over 4 tables,
// ~10 ms; over 8, ~6 ms (measured with `strace -T` on the commit, this 2-core machine). The price: a new
// connection passes each table's NAT base chains (one map lookup each; established ones skip NAT), and the
// filter chains' `ct state new` test in each table.
const DefaultShards = 4

// ShardTable is the name of shard i's table: TableName for the first, TableName-<i> for the others.
func ShardTable(i int) string {
	if i == 0 {
		return TableName
	}
	return TableName + "-" + strconv.Itoa(i)
}

// shardIndex returns i for a table named ShardTable(i) (any i, also beyond the shards of this run).
func shardIndex(name string) (int, bool) {
	if name == TableName {
		return 0, true
	}
	n, ok := strings.CutPrefix(name, TableName+"-")
	if !ok || n == "" || (len(n) > 1 && n[0] == '0') {
		return 0, false
	}
	i, err := strconv.Atoi(n)
	return i, err == nil && i > 0
}

// IsShardTable reports whether name is a table of this back end (TableName or TableName-<n>), of this run's
// shards or of an earlier run's.
func IsShardTable(name string) bool {
	_, ok := shardIndex(name)
	return ok
}

// shardOf is the shard of a service port key among n.
func shardOf(key string, n int) int {
	if n == 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// tableOps lists and deletes a family's tables (the host's; nil in tests with fakes: no others).
type tableOps interface {
	tables() ([]string, error)
	deleteTable(name string) error
}

// Shards is the nftables back end spread over several tables (ShardTable(0…n-1)): each service port key
// lives in one of them (a hash of the key), programmed by that table's own Proxier, with its own copy of the
// shared objects (base chains, maps, masquerade chains: a NAT base chain that DNATs ends the NAT hook's walk,
// and the masquerade bit is the same in every table). A Sync touches only the tables of the keys it changes.
//
// Destinations (VIP . protocol . port, and node ports) are owned across tables as the Proxier owns them in
// one: the port that holds one keeps it, a port that asks for a taken one gets its other destinations only
// (view) and is synced again, in its own table, when the destination is released. Two tables never both
// claim one destination, so which table's hook runs first never matters.
type Shards struct {
	fam    family
	shards []*Proxier
	ops    tableOps
	log    *slog.Logger

	mu      sync.Mutex
	owner   map[string]string          // destination -> the key holding it
	claims  map[string][]string        // key -> its destinations, held or wanted
	denied  map[string]map[string]bool // key -> destinations another key holds
	waiters map[string][]string        // destination -> keys wanting it
}

var _ proxy.Backend = (*Shards)(nil)

// newShards joins the proxiers (one per table, in shard order) into one back end.
func newShards(fam family, ps []*Proxier, ops tableOps, log *slog.Logger) *Shards {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Shards{fam: fam, shards: ps, ops: ops, log: log}
	s.reset()
	for _, p := range ps {
		p.view = s.view
	}
	return s
}

// NewHostShards returns the back end on n tables (n ≥ 1) of the calling thread's network namespace, IPv4 or
// IPv6: one NewHost per table.
func NewHostShards(cfg Config, v6 bool, n int, log *slog.Logger) (*Shards, error) {
	if n < 1 || n > 64 {
		return nil, fmt.Errorf("nftables: %d tables: want 1 to 64", n)
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	fam := ipv4
	if v6 {
		fam = ipv6
	}
	ps := make([]*Proxier, n)
	for i := range ps {
		l := log
		if n > 1 {
			l = log.With("table", ShardTable(i))
		}
		p, err := newHost(cfg, fam, ShardTable(i), l)
		if err != nil {
			return nil, err
		}
		ps[i] = p
	}
	return newShards(fam, ps, hostTables{newNLTransport(fam, TableName), cfg, fam, log}, log), nil
}

// NewDualStackShards is NewHostShards for both families under one proxy.DualStack.
func NewDualStackShards(cfg Config, n int, log *slog.Logger) (*proxy.DualStack, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p4, err := NewHostShards(cfg, false, n, log)
	if err != nil {
		return nil, err
	}
	p6, err := NewHostShards(cfg, true, n, log.With("family", "ipv6"))
	if err != nil {
		return nil, err
	}
	return proxy.NewDualStack(p4, p6), nil
}

func (s *Shards) reset() {
	s.owner, s.claims, s.denied, s.waiters = map[string]string{}, map[string][]string{}, map[string]map[string]bool{}, map[string][]string{}
}

// Name implements proxy.Backend.
func (s *Shards) Name() string { return "nftables" }

// Schedulers implements proxy.Backend.
func (s *Shards) Schedulers() []string { return s.shards[0].Schedulers() }

// Tables is how many tables the service ports are spread over.
func (s *Shards) Tables() int { return len(s.shards) }

// Start implements proxy.Backend: every table's Start. Tables of an earlier run with more shards keep serving
// until PruneStale.
func (s *Shards) Start() error {
	// Every table's chain names in one dump, not one per table (each would read every table's chains: 60,000
	// names at 10,000 Services with 5 endpoints each).
	if nl := s.shards[0].nl; nl != nil && len(s.shards) > 1 {
		if all, err := nl.chainNames(); err == nil {
			for _, p := range s.shards {
				p.mu.Lock()
				if p.nl != nil && !p.started { // (its start reads them at once)
					p.nl.chainsOf, p.nl.prefetch = all[p.table], true
				}
				p.mu.Unlock()
			}
		}
	}
	// The tables are read at once, each from its own goroutine in this thread's namespace (a test's, when it
	// starts the back end on a locked thread there): with 10,000 Services after a restart, one after the
	// other they took 0.9 s in BenchmarkRestartShards, 0.6 s at once (two cores).
	errs := make([]error, len(s.shards))
	var wg sync.WaitGroup
	for i, p := range s.shards {
		here := netnsx.Here()
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = here(p.Start)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// destinations are the map keys sp claims in this family: "VIP proto port" for its cluster, external and load
// balancer IPs, "nodeport proto port" for its node port (the keys of service-ips and no-endpoint-services, of
// service-nodeports and no-endpoint-nodeports).
func (s *Shards) destinations(sp *model.ServicePort) []string {
	if sp == nil || sp.Port == 0 {
		return nil
	}
	proto := strings.ToLower(string(sp.Protocol))
	port := strconv.Itoa(int(sp.Port))
	var out []string
	for _, ips := range [][]netip.Addr{sp.ClusterIPs, sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, a := range ips {
			if a = a.Unmap(); s.fam.is(a) {
				if d := a.String() + " " + proto + " " + port; !slices.Contains(out, d) {
					out = append(out, d)
				}
			}
		}
	}
	if sp.NodePort != 0 {
		out = append(out, "nodeport "+proto+" "+strconv.Itoa(int(sp.NodePort)))
	}
	return out
}

// view is what key's table programs of sp: sp without the destinations another key holds.
func (s *Shards) view(key string, sp *model.ServicePort) *model.ServicePort {
	den := s.denied[key]
	if len(den) == 0 {
		return sp
	}
	cp := *sp
	proto := strings.ToLower(string(sp.Protocol))
	port := strconv.Itoa(int(sp.Port))
	keep := func(in []netip.Addr) []netip.Addr {
		var out []netip.Addr
		for _, a := range in {
			if !den[a.Unmap().String()+" "+proto+" "+port] {
				out = append(out, a)
			}
		}
		return out
	}
	cp.ClusterIPs, cp.ExternalIPs, cp.LoadBalancerIPs = keep(sp.ClusterIPs), keep(sp.ExternalIPs), keep(sp.LoadBalancerIPs)
	if den["nodeport "+proto+" "+strconv.Itoa(int(sp.NodePort))] {
		cp.NodePort = 0
	}
	return &cp
}

// Sync implements proxy.Backend. Destinations released by the changed keys go to the keys waiting for them
// (which join the sync); then each table syncs its keys, and a table without any is not called, unless the
// sync is full (every table's keys, so each knows it is synced). Every table is synced even when one fails.
func (s *Shards) Sync(desired map[string]*model.ServicePort, changed []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := slices.Clone(changed)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	inDesired := 0
	for _, k := range keys {
		if desired[k] != nil {
			inDesired++
		}
	}
	full := inDesired == len(desired)

	// Release what the changed keys no longer claim.
	next := make(map[string][]string, len(keys))
	woken := map[string]bool{}
	for _, k := range keys {
		d := s.destinations(desired[k])
		next[k] = d
		for _, old := range s.claims[k] {
			if slices.Contains(d, old) {
				continue
			}
			if s.owner[old] == k {
				delete(s.owner, old)
				for _, w := range s.waiters[old] {
					woken[w] = true
				}
			}
			s.unwait(old, k)
		}
	}
	for w := range woken {
		if _, ok := next[w]; !ok {
			next[w] = s.claims[w]
			keys = append(keys, w)
		}
	}
	slices.Sort(keys)
	// Claim, in key order.
	for _, k := range keys {
		var den map[string]bool
		for _, d := range next[k] {
			if o := s.owner[d]; o == "" || o == k {
				s.owner[d] = k
				s.unwait(d, k)
				continue
			}
			if den == nil {
				den = map[string]bool{}
			}
			den[d] = true
			if !slices.Contains(s.waiters[d], k) {
				s.waiters[d] = append(s.waiters[d], k)
				s.log.Warn("nftables: a destination of this service port is taken by another one", "key", k, "owner", s.owner[d], "destination", d)
			}
		}
		if len(next[k]) == 0 {
			delete(s.claims, k)
		} else {
			s.claims[k] = next[k]
		}
		if den == nil {
			delete(s.denied, k)
		} else {
			s.denied[k] = den
		}
	}

	byShard := make([][]string, len(s.shards))
	for _, k := range keys {
		i := shardOf(k, len(s.shards))
		byShard[i] = append(byShard[i], k)
	}
	var errs []error
	for i, p := range s.shards {
		if !full && len(byShard[i]) == 0 {
			continue
		}
		if err := p.sync(desired, byShard[i], full); err != nil {
			errs = append(errs, fmt.Errorf("table %s: %w", p.table, err))
		}
	}
	return errors.Join(errs...)
}

// unwait takes k off the keys waiting for d.
func (s *Shards) unwait(d, k string) {
	w := slices.DeleteFunc(s.waiters[d], func(x string) bool { return x == k })
	if len(w) == 0 {
		delete(s.waiters, d)
	} else {
		s.waiters[d] = w
	}
}

// PruneStale implements proxy.Backend: each table's PruneStale, then the tables an earlier run with more
// shards left (their service ports are in this run's tables by now).
func (s *Shards) PruneStale() error {
	var errs []error
	for _, p := range s.shards {
		errs = append(errs, p.PruneStale())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return s.deleteOthers(len(s.shards))
}

// Cleanup implements proxy.Backend: every table of this back end, also those of an earlier run's shards.
func (s *Shards) Cleanup() error {
	s.mu.Lock()
	s.reset()
	s.mu.Unlock()
	var errs []error
	for _, p := range s.shards {
		errs = append(errs, p.Cleanup())
	}
	errs = append(errs, s.deleteOthers(len(s.shards)))
	return errors.Join(errs...)
}

// deleteOthers deletes the family's tables ShardTable(i) for i ≥ from.
func (s *Shards) deleteOthers(from int) error {
	if s.ops == nil {
		return nil
	}
	names, err := s.ops.tables()
	if err != nil {
		return fmt.Errorf("listing tables: %w", err)
	}
	var errs []error
	for _, n := range names {
		if i, ok := shardIndex(n); ok && i >= from {
			s.log.Info("nftables: deleting the table of an earlier run's shard", "table", n)
			errs = append(errs, s.ops.deleteTable(n))
		}
	}
	return errors.Join(errs...)
}

// hostTables is tableOps on the calling thread's network namespace.
type hostTables struct {
	nl  *nlTransport
	cfg Config
	fam family
	log *slog.Logger
}

func (h hostTables) tables() ([]string, error) {
	msgs, err := h.nl.dump(unix.NFT_MSG_GETTABLE, nil)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range msgs {
		out = append(out, attrString(m, unix.NFTA_TABLE_NAME))
	}
	return out, nil
}

func (h hostTables) deleteTable(name string) error {
	p, err := newHost(h.cfg, h.fam, name, h.log)
	if err != nil {
		return err
	}
	return p.Cleanup()
}
