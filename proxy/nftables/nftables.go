// Package nftables is the native nftables back end of Canopy's service proxy (--proxy-mode=nftables):
// kube-proxy's nftables mode with Canopy's semantics (those of proxy/iptables, rule for rule), written
// incrementally: one transaction per Sync, touching only the changed service ports — small ones straight over
// netlink (netlink.go: nft 1.0.6 reads every chain of the table before it adds one rule), the shared objects
// and large ones (the bulk load, repairs) through knftables (`nft -f`).
//
// A Proxier owns one table per family, `ip canopy` (New, NewHost) and `ip6 canopy` (New6, NewHost6: the
// same objects with ip6 matches and ipv6_addr keys, for the IPv6 view of each service port; NewDualStack runs
// both), so Cleanup deletes one table and nothing else on the node is touched. The host's back end is
// Shards (shards.go): DefaultShards Proxiers, on tables canopy, canopy-1, …, each with a share of the service
// ports and its own copy of the shared objects, because the kernel re-checks a whole table on every change.
// One table holds:
//
//	chain nat-prerouting  { type nat hook prerouting priority dstnat; jump services }
//	chain nat-output      { type nat hook output priority dstnat; jump services }
//	chain nat-postrouting { type nat hook postrouting priority srcnat; jump masquerading }
//	chain filter-{input,forward,output} { type filter hook … priority filter; ct state new jump endpoints-check }
//	chain services {
//		ip daddr . meta l4proto . th dport vmap @service-ips                      # cluster/external/LB IPs
//		fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
//	}
//	chain endpoints-check { the same two lookups in @no-endpoint-services / @no-endpoint-nodeports }
//	chain reject-chain { meta l4proto tcp reject with tcp reset; reject }
//	chain mark-for-masquerade { meta mark set meta mark or 0x4000 }
//	chain masquerading { meta mark & 0x4000 == 0 return; meta mark set meta mark xor 0x4000; masquerade fully-random }
//
// (node ports listen on the addresses in set nodeport-ips instead when Config.NodeIPs or NodePortAddresses are
// given). A service port 10.96.0.10:80/TCP with node port 30080 and endpoints 10.244.1.10:8080 and
// 10.244.2.10:8080, cluster CIDR 10.244.0.0/16, adds:
//
//	map service-ips       { 10.96.0.10 . tcp . 80 : goto svc-HASH-default/web/http/TCP }
//	map service-nodeports { tcp . 30080 : goto ext-HASH-default/web/http/TCP }
//	chain svc-HASH-default/web/http/TCP {
//		ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
//		numgen random mod 2 == 0 goto sep-HASH1-default/web/http/TCP__10.244.1.10/8080
//		goto sep-HASH2-default/web/http/TCP__10.244.2.10/8080
//	}
//	chain ext-HASH-default/web/http/TCP { jump mark-for-masquerade; goto svc-HASH-default/web/http/TCP }
//	chain sep-HASH1-default/web/http/TCP__10.244.1.10/8080 {
//		ip saddr 10.244.1.10 jump mark-for-masquerade        # hairpin
//		meta l4proto tcp dnat to 10.244.1.10:8080
//	}
//
// Endpoints are picked as the iptables back end picks them (endpoint i of n with probability 1/(n-i) if the
// ones before were not taken), up to 16; above that one `numgen random mod n vmap { 0 : goto sep-…, … }` does
// it in O(1) per packet. Not always the vmap: each is an anonymous set, and the kernel names anonymous sets in
// time linear in the sets of the table: programming 10,000 service ports x 2 endpoints took `nft -f` 23 s with
// a vmap each, 3.3 s with the cascade (measured on this 2-core machine, loaded).
//
// With externalTrafficPolicy Local the ext- chain sends pods (ip saddr in the cluster CIDRs) and the node
// itself (fib saddr type local, masqueraded) to the svc- chain and everyone else, unmasqueraded, only to local
// endpoints; with ClientIP affinity each endpoint has a set aff-HASH-… (timeout T) that its sep- chain
// updates (update @aff { ip saddr }) and the svc-/ext- chains check first (ip saddr @aff goto sep-…). A port
// without endpoints has no chains, only `ip . proto . port : goto reject-chain` in no-endpoint-services (and
// its node port in no-endpoint-nodeports); external traffic to a Local port without local endpoints gets
// `drop` there. The filter chains run after DNAT, so DNATed traffic never meets those verdicts.
//
// Names: per-service-port objects are named prefix + 8 base32 characters of SHA-256 of the key (and
// endpoint) + the key made nft-safe, truncated to 255 characters: deterministic, bounded, recognisable.
//
// State: the back end remembers what it wrote (per chain a hash of its rules, per map element its value, who
// owns what) and writes only differences. Start reads the table an earlier run left (chains, sets, map
// elements: they keep serving), and rewrites the shared chains in one transaction. The first rule of every
// per-service chain carries a comment with the hash of the chain's rules and their number ("canopy h=… n=3"):
// read back in one netlink dump of the table's rules (comments only, well under a second at 10,000 services),
// a chain found there whose comment matches what a key produces now is kept as it is; one without (or with
// another number of rules) is rewritten when a key produces it, and deleted by PruneStale otherwise. So the
// first sync after a restart writes only what changed meanwhile (at 10,000 services it rewrote all 30,000
// chains through nft: 5-7 s, BenchmarkRestart). A full
// Sync after the first (the periodic repair) reads the table's chains, sets and map elements again and
// repairs what is missing, changed or foreign (after PruneStale), without rewriting what is right, and
// rewrites the shared chains. It does not notice rules edited inside a per-service chain that still exists
// (reading every rule back costs nft 1.0.6 about 10 s for 10,000 services). A failed Sync is retried with the
// next one, after reading the table again.
//
// Two service ports may claim the same map key (two Services with the same external IP and port): the port
// that had it keeps it, the other gets it when it is released (nft would refuse the second element and fail
// the whole transaction).
//
// Kernels before 6.2 may refuse to delete a chain in the transaction that removes the last map element
// pointing to it (kube-proxy's comment). If a transaction with deletions fails, it is retried without them:
// the chains stay, flushed and unreferenced, and are deleted with the next Sync or PruneStale.
package nftables

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/knftables"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/proxy"
)

// Config is what the proxier needs to know about the node and the cluster (the iptables back end's Config).
type Config struct {
	// ClusterCIDRs are the pod networks: traffic to a cluster IP from elsewhere is masqueraded (IPv4 used).
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to cluster IPs, from pods too.
	MasqueradeAll bool
	// NodeIPs are the addresses node ports listen on when NodePortAddresses is empty; with neither, node
	// ports listen on every local address but loopback.
	NodeIPs []netip.Addr
	// NodePortAddresses restricts node ports to the node's addresses inside these prefixes.
	NodePortAddresses []netip.Prefix
}

// chainState is what the table holds for one per-service chain, and which key owns it.
type chainState struct {
	hash  uint64 // of its rules; 0: unknown (found in the table)
	owner string // the service port key that produced it in its last successful sync; "": none
}

// applied is what one service port key holds in the table.
type applied struct {
	chains []string
	sets   []string
	elems  []string // ids of the map elements it owns
	wanted []string // ids of elements it wants but another key owns
	ct     ctInfo
}

// Proxier is the nftables Backend.
type Proxier struct {
	cfg      Config
	fam      family
	table    string // TableName, or a shard's table (ShardTable)
	podCIDRs []netip.Prefix
	static   []chainPlan
	nft      knftables.Interface
	nl       *nlTransport // nil: every transaction through nft
	ct       Conntrack
	log      *slog.Logger
	// view, when set (Shards), is what Sync programs of a port: the port without the destinations another
	// table's port holds.
	view func(key string, sp *model.ServicePort) *model.ServicePort

	mu              sync.Mutex
	started         bool
	synced          bool // a full sync succeeded since Start
	pruned          bool // PruneStale ran since Start
	inventoryNeeded bool // read the table before the next sync (a sync failed)
	staticNeeded    bool // the shared objects must be rewritten (found missing or changed)
	staticCurrent   bool // inventory found the shared objects as addStatic writes them (staticHash)
	staticHash      uint64

	// The table as far as we know it.
	chains map[string]chainState // per-service chains (and their owners: one map of 60,000 names, not two)
	sets   map[string]bool       // affinity sets
	elems  map[string]elemPlan   // elements of the shared maps, by id
	// adoptedByTarget lists the unowned elements found in the table by the chain they go to: deleting that
	// chain deletes them too.
	adoptedByTarget map[string][]string

	setOwner   map[string]string   // set -> key
	elemOwner  map[string]string   // element id -> key
	contenders map[string][]string // element id -> keys that want it while another key owns it
	applied    map[string]*applied // by service port key
	pending    []string            // keys of a failed sync, retried with the next one

	deferredChains map[string]bool // flushed and unreferenced, deletion refused by the kernel: retried
	deferredSets   map[string]bool
}

var _ proxy.Backend = (*Proxier)(nil)

// New returns a proxier writing through nft (an Interface for table TableName of family ip; knftables.NewFake in
// tests) and cleaning UDP conntrack entries through ct (nil: none).
func New(cfg Config, nft knftables.Interface, ct Conntrack, log *slog.Logger) *Proxier {
	return newFamily(cfg, ipv4, nft, ct, log)
}

// New6 is New for IPv6: nft is an Interface for table TableName of family ip6, ct cleans IPv6 conntrack
// entries, and the proxier programs the IPv6 addresses and endpoints of the ports it is given
// (model.ServicePort.ForFamily(true)).
func New6(cfg Config, nft knftables.Interface, ct Conntrack, log *slog.Logger) *Proxier {
	return newFamily(cfg, ipv6, nft, ct, log)
}

func newFamily(cfg Config, fam family, nft knftables.Interface, ct Conntrack, log *slog.Logger) *Proxier {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &Proxier{cfg: cfg, fam: fam, table: TableName, nft: nft, ct: ct, log: log}
	for _, c := range cfg.ClusterCIDRs {
		if p.fam.is(c.Addr().Unmap()) {
			c = netip.PrefixFrom(c.Addr().Unmap(), c.Bits()).Masked()
			if !slices.Contains(p.podCIDRs, c) {
				p.podCIDRs = append(p.podCIDRs, c)
			}
		}
	}
	p.static = p.staticChains()
	p.staticHash = p.hashStatic()
	p.reset()
	return p
}

// NewHost returns a proxier on the nftables of the calling thread's network namespace (the nft binary through
// knftables, netlink conntrack cleanup). Every later call must run in that namespace too.
func NewHost(cfg Config, log *slog.Logger) (*Proxier, error) {
	return newHost(cfg, ipv4, TableName, log)
}

// NewHost6 is NewHost for IPv6: table `ip6 canopy`, IPv6 conntrack cleanup.
func NewHost6(cfg Config, log *slog.Logger) (*Proxier, error) {
	return newHost(cfg, ipv6, TableName, log)
}

// newHost is NewHost or NewHost6 on table.
func newHost(cfg Config, fam family, table string, log *slog.Logger) (*Proxier, error) {
	nft, err := newNFTCmd(fam, table)
	if err != nil {
		return nil, err
	}
	p := newFamily(cfg, fam, nft, netlinkConntrack{v6: fam.nft == knftables.IPv6Family}, log)
	p.table = table
	p.nl = newNLTransport(fam, table)
	return p, nil
}

// NewDualStack returns the dual-stack back end on the calling thread's network namespace: NewHost and
// NewHost6 under one proxy.DualStack.
func NewDualStack(cfg Config, log *slog.Logger) (*proxy.DualStack, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p4, err := NewHost(cfg, log)
	if err != nil {
		return nil, err
	}
	p6, err := NewHost6(cfg, log.With("family", "ipv6"))
	if err != nil {
		return nil, err
	}
	return proxy.NewDualStack(p4, p6), nil
}

func (p *Proxier) reset() {
	p.chains, p.sets, p.elems = map[string]chainState{}, map[string]bool{}, map[string]elemPlan{}
	p.adoptedByTarget = map[string][]string{}
	p.setOwner, p.elemOwner = map[string]string{}, map[string]string{}
	p.contenders, p.applied = map[string][]string{}, map[string]*applied{}
	p.deferredChains, p.deferredSets = map[string]bool{}, map[string]bool{}
	p.pending = nil
	p.started, p.synced, p.pruned, p.inventoryNeeded, p.staticNeeded = false, false, false, false, false
}

// Name implements proxy.Backend.
func (p *Proxier) Name() string { return "nftables" }

// Schedulers implements proxy.Backend: endpoints are picked at random (numgen random).
func (p *Proxier) Schedulers() []string { return []string{"random"} }

// hashComment is the comment of a per-service chain's first rule: the hash of the chain's rules and their
// number, so a restarted agent knows what an earlier run wrote into every chain from one netlink dump of the
// table's rules (nlTransport.chainHashes) instead of rewriting them all (30,000 chains at 10,000 services).
func hashComment(h uint64, n int) string { return fmt.Sprintf("canopy h=%016x n=%d", h, n) }

// parseHashComment reads hashComment back.
func parseHashComment(s string) (h uint64, n int, ok bool) {
	if _, err := fmt.Sscanf(s, "canopy h=%016x n=%d", &h, &n); err != nil || h == 0 {
		return 0, 0, false
	}
	return h, n, true
}

func hashRules(rules []string) uint64 {
	h := fnv.New64a()
	for _, r := range rules {
		h.Write([]byte(r))
		h.Write([]byte{'\n'})
	}
	return h.Sum64()
}

// Start reads what an earlier run left in the table (it keeps serving: chains, sets and map elements stay
// until a key claims them or PruneStale deletes them) and writes the table's shared objects in one
// transaction (maps and sets are added, not flushed). Sync calls it if it was not called.
func (p *Proxier) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.start()
}

func (p *Proxier) start() error {
	if p.started {
		return nil
	}
	ctx := context.Background()
	if err := p.inventory(ctx); err != nil {
		return fmt.Errorf("reading table %s: %w", p.table, err)
	}
	// The shared objects are written unless a previous run left them as they would be written now (with a
	// large table, nft reads every chain before it writes them: ~3 s at 10,000 Services).
	if !p.staticCurrent {
		tx := p.nft.NewTransaction()
		p.addStatic(tx)
		if err := p.nft.Run(ctx, tx); err != nil {
			return fmt.Errorf("writing table %s: %w", p.table, err)
		}
	}
	p.staticNeeded, p.inventoryNeeded, p.started = false, false, true
	if len(p.chains) > 0 || len(p.elems) > 0 {
		p.log.Info("found service chains of a previous run", "chains", len(p.chains), "sets", len(p.sets), "elements", len(p.elems))
	}
	return nil
}

// hashedChains are the chains of names whose first rule carries a hashComment: the per-service chains and
// the first base chain (the shared objects' hash, see inventory).
func hashedChains(names []string) []string {
	var out []string
	for _, n := range names {
		if perServiceChain.MatchString(n) || n == baseChains[0].name {
			out = append(out, n)
		}
	}
	return out
}

// inventory reads which per-service chains, affinity sets and map elements the table holds, and whether the
// shared objects are there (names only: listing every rule of a table of 10,000 services takes nft 1.0.6 about
// 10 s). What we knew of a chain still there stays; a chain found anew has unknown rules (rewritten when a key
// produces it).
func (p *Proxier) inventory(ctx context.Context) error {
	var chains, sets, mapNames []string
	var err error
	if p.nl != nil { // names over netlink (no table: all empty, as nft answers)
		chains, sets, mapNames, _, err = p.nl.names()
	} else {
		chains, err = p.nft.List(ctx, "chains")
		if err == nil {
			sets, err = p.nft.List(ctx, "sets")
		}
		if err == nil {
			mapNames, err = p.nft.List(ctx, "maps")
		}
	}
	// nft lists nothing (no error) for a missing table, the fake answers "not found".
	if knftables.IsNotFound(err) || (err == nil && len(chains)+len(sets)+len(mapNames) == 0) {
		p.chains, p.sets, p.elems = map[string]chainState{}, map[string]bool{}, map[string]elemPlan{}
		p.adoptedByTarget = map[string][]string{}
		p.deferredChains, p.deferredSets = map[string]bool{}, map[string]bool{}
		p.staticNeeded = true
		return nil
	}
	if err != nil {
		return err
	}
	staticOK := true
	present := map[string]bool{}
	newChains := map[string]chainState{}
	var written map[string]uint64 // what the chains we do not know hold, from their comments
	for _, name := range chains {
		present[name] = true
		if !perServiceChain.MatchString(name) {
			continue // shared (checked below), or not ours
		}
		st, ok := p.chains[name]
		if !ok && p.nl != nil && written == nil {
			if written, err = p.nl.chainHashes(hashedChains(chains)); err != nil {
				p.log.Warn("nftables: reading the rules' comments (rewriting the chains of an earlier run instead)", "err", err)
				written = map[string]uint64{}
			}
		}
		if !ok {
			st = chainState{hash: written[name]} // 0: unknown rules
		}
		newChains[name] = st
	}
	for _, b := range baseChains {
		staticOK = staticOK && present[b.name]
	}
	for _, c := range p.static {
		staticOK = staticOK && present[c.name]
	}
	newSets := map[string]bool{}
	for _, name := range sets {
		if affinitySet.MatchString(name) {
			newSets[name] = true
		}
	}
	staticOK = staticOK && slices.Contains(sets, SetNodePortIPs)
	newElems := map[string]elemPlan{}
	for _, m := range sharedMaps {
		if !slices.Contains(mapNames, m) {
			staticOK = false
			continue
		}
		var els []elemPlan
		if p.nl != nil {
			els, err = p.nl.mapElements(m)
		} else {
			var kels []*knftables.Element
			kels, err = p.nft.ListElements(ctx, "map", m)
			for _, e := range kels {
				els = append(els, elemPlan{m: m, key: e.Key, value: strings.Join(e.Value, " . ")})
			}
		}
		if err != nil {
			return err
		}
		for _, ep := range els {
			newElems[ep.id()] = ep
		}
	}
	// Whether the shared objects are current: all there, and the comment addStatic puts on the first base
	// chain's rule names the hash of what addStatic writes now (so a changed configuration or an older
	// version's table is rewritten). Other drift in them is the periodic repair's (it rewrites them).
	p.staticCurrent = false
	if staticOK && p.nl != nil {
		if written == nil {
			if written, err = p.nl.chainHashes(hashedChains(chains)); err != nil {
				p.log.Warn("nftables: reading the rules' comments (rewriting the shared chains)", "err", err)
				written = map[string]uint64{}
			}
		}
		p.staticCurrent = written[baseChains[0].name] == p.staticHash
	}
	p.chains, p.sets, p.elems, p.staticNeeded = newChains, newSets, newElems, !staticOK
	p.adoptedByTarget = map[string][]string{}
	for id, e := range newElems {
		if _, owned := p.elemOwner[id]; !owned {
			if target, ok := strings.CutPrefix(e.value, "goto "); ok {
				p.adoptedByTarget[target] = append(p.adoptedByTarget[target], id)
			}
		}
	}
	for name := range p.deferredChains {
		if _, ok := newChains[name]; !ok {
			delete(p.deferredChains, name)
		}
	}
	for name := range p.deferredSets {
		if !newSets[name] {
			delete(p.deferredSets, name)
		}
	}
	return nil
}

// Transaction phases, in the order they are written: objects exist before rules and elements refer to them,
// references are gone before the objects they refer to.
const (
	phAddChain = iota
	phFlush
	phDelElem
	phDelSet
	phAddSet
	phRule
	phAddElem
	phDelChain
	nPhases
)

type verb uint8

const (
	vAdd verb = iota
	vFlush
	vDelete
)

type op struct {
	verb verb
	obj  knftables.Object
}

// changes is one transaction being built and what it does to our picture of the table.
type changes struct {
	ops    [nPhases][]op
	static bool // rewrite the shared objects first

	chainPut map[string]chainState
	chainDel []string
	setPut   []string
	setDel   []string
	elemDel  []string
	elemPut  map[string]elemPlan

	// for the log
	chainsAdded, chainsRewritten int
}

func newChanges() *changes {
	return &changes{chainPut: map[string]chainState{}, elemPut: map[string]elemPlan{}}
}

func (c *changes) add(ph int, v verb, obj knftables.Object) {
	c.ops[ph] = append(c.ops[ph], op{v, obj})
}

// writeChain adds the chain (exists: flushes it) and its rules.
func (c *changes) writeChain(ch chainPlan, exists bool) {
	if exists {
		c.add(phFlush, vFlush, &knftables.Chain{Name: ch.name})
		c.chainsRewritten++
	} else {
		c.add(phAddChain, vAdd, &knftables.Chain{Name: ch.name})
		c.chainsAdded++
	}
	h := hashRules(ch.rules)
	for i, r := range ch.rules {
		rule := &knftables.Rule{Chain: ch.name, Rule: r}
		if i == 0 {
			rule.Comment = knftables.PtrTo(hashComment(h, len(ch.rules)))
		}
		c.add(phRule, vAdd, rule)
	}
	c.chainPut[ch.name] = chainState{hash: h}
}

func (c *changes) deleteChain(name string) {
	c.add(phFlush, vFlush, &knftables.Chain{Name: name})
	c.add(phDelChain, vDelete, &knftables.Chain{Name: name})
	c.chainDel = append(c.chainDel, name)
}

func (c *changes) addSet(s setPlan, fam family) {
	c.add(phAddSet, vAdd, &knftables.Set{Name: s.name, Type: fam.addrType,
		Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag}, Timeout: knftables.PtrTo(s.timeout)})
	c.setPut = append(c.setPut, s.name)
}

func (c *changes) deleteSet(name string) {
	c.add(phDelSet, vDelete, &knftables.Set{Name: name})
	c.setDel = append(c.setDel, name)
}

func (c *changes) deleteElem(e elemPlan) {
	c.add(phDelElem, vDelete, &knftables.Element{Map: e.m, Key: e.key})
	c.elemDel = append(c.elemDel, e.id())
}

func (c *changes) putElem(e elemPlan) {
	c.add(phAddElem, vAdd, &knftables.Element{Map: e.m, Key: e.key, Value: []string{e.value}})
	c.elemPut[e.id()] = e
}

func (c *changes) count() (n int) {
	for _, ops := range c.ops {
		n += len(ops)
	}
	return n
}

func (c *changes) hasDeletions() bool { return len(c.ops[phDelChain])+len(c.ops[phDelSet]) > 0 }

// tx writes the transaction; without deletions of chains and sets if !deletions.
func (c *changes) tx(p *Proxier, deletions bool) *knftables.Transaction {
	tx := p.nft.NewTransaction()
	if c.static {
		p.addStatic(tx)
	}
	for ph, ops := range c.ops {
		if !deletions && (ph == phDelChain || ph == phDelSet) {
			continue
		}
		for _, o := range ops {
			switch o.verb {
			case vAdd:
				tx.Add(o.obj)
			case vFlush:
				tx.Flush(o.obj)
			case vDelete:
				tx.Delete(o.obj)
			}
		}
	}
	return tx
}

// run runs c. If it fails and deletes chains or sets, it is run again without those deletions (kernels before
// 6.2 may still count a reference just removed): deferred is then true.
func (p *Proxier) run(ctx context.Context, c *changes) (deferred bool, err error) {
	if c.count() == 0 && !c.static {
		return false, nil
	}
	err = p.write(ctx, c, true)
	if err == nil || !c.hasDeletions() {
		return false, err
	}
	if err2 := p.write(ctx, c, false); err2 != nil {
		return false, err
	}
	p.log.Info("nftables: deleting chains and sets refused, retried later", "chains", len(c.chainDel), "sets", len(c.setDel), "err", err)
	return true, nil
}

// write runs c as one transaction (without deletions of chains and sets if !deletions): over netlink when the
// proxier has the netlink transport and c is small and compiles (netlink.go), else through nft.
func (p *Proxier) write(ctx context.Context, c *changes, deletions bool) error {
	if p.nl != nil {
		b, err := p.nl.compile(c, deletions)
		if err == nil {
			err = p.nl.run(b)
		}
		if !errors.Is(err, errUnsupported) {
			return err
		}
	}
	return p.nft.Run(ctx, c.tx(p, deletions))
}

// commit records what a successful transaction changed in the table.
func (p *Proxier) commit(c *changes, deferred bool) {
	if c.static {
		p.staticNeeded = false
	}
	for name, st := range c.chainPut {
		st.owner = p.chains[name].owner
		p.chains[name] = st
		delete(p.deferredChains, name)
	}
	for _, name := range c.chainDel {
		if _, put := c.chainPut[name]; put {
			continue
		}
		if deferred {
			p.chains[name] = chainState{hash: hashRules(nil), owner: p.chains[name].owner}
			p.deferredChains[name] = true
		} else {
			delete(p.chains, name)
			delete(p.deferredChains, name)
		}
	}
	for _, name := range c.setPut {
		p.sets[name] = true
		delete(p.deferredSets, name)
	}
	for _, name := range c.setDel {
		if deferred {
			p.deferredSets[name] = true
		} else {
			delete(p.sets, name)
			delete(p.deferredSets, name)
		}
	}
	for _, id := range c.elemDel {
		delete(p.elems, id)
	}
	for id, e := range c.elemPut {
		p.elems[id] = e
	}
}

// deleteDeferred retries the deletions the kernel refused earlier (best effort: failures are retried again).
func (p *Proxier) deleteDeferred(ctx context.Context) {
	if len(p.deferredChains)+len(p.deferredSets) == 0 {
		return
	}
	c := newChanges()
	for _, name := range slices.Sorted(maps.Keys(p.deferredChains)) {
		if p.chains[name].owner != "" {
			delete(p.deferredChains, name) // a key produces it again
			continue
		}
		c.add(phDelChain, vDelete, &knftables.Chain{Name: name})
		c.chainDel = append(c.chainDel, name)
	}
	for _, name := range slices.Sorted(maps.Keys(p.deferredSets)) {
		if _, owned := p.setOwner[name]; owned {
			delete(p.deferredSets, name)
			continue
		}
		c.deleteSet(name)
	}
	if c.count() == 0 {
		return
	}
	if err := p.write(ctx, c, true); err != nil {
		p.log.Debug("nftables: deferred deletions refused again", "chains", len(c.chainDel), "sets", len(c.setDel), "err", err)
		return
	}
	p.commit(c, false)
}

// Sync implements proxy.Backend: it programs desired[key] for every key in changed (deleting keys absent
// from desired), in one transaction that touches only those keys' chains, sets and map elements. desired is
// the whole desired state: keys of a failed Sync are retried from it with the next call.
//
// A Sync whose keys cover everything applied so far is full: after the first one (a repair), it reads the
// table first and rewrites what is missing or changed, and (after PruneStale) deletes what no key claims.
func (p *Proxier) Sync(desired map[string]*model.ServicePort, changed []string) error {
	return p.sync(desired, changed, true)
}

// sync is Sync; with mayBeFull false it is not a full sync even if changed covers every key the proxier
// programs (Shards knows: a table with few keys would otherwise take most changes for full ones, repairs).
func (p *Proxier) sync(desired map[string]*model.ServicePort, changed []string, mayBeFull bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	t0 := time.Now()
	if err := p.start(); err != nil {
		return err
	}
	ctx := context.Background()
	p.deleteDeferred(ctx)

	keys := slices.Concat(changed, p.pending)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	covered := 0
	for _, k := range keys {
		if _, ok := p.applied[k]; ok {
			covered++
		}
	}
	full := mayBeFull && covered == len(p.applied)
	repair := full && p.synced
	fail := func(err error) error {
		p.pending, p.inventoryNeeded = keys, true
		return err
	}
	if repair || p.inventoryNeeded {
		if err := p.inventory(ctx); err != nil {
			return fail(fmt.Errorf("reading table %s: %w", p.table, err))
		}
	}

	plans := make(map[string]*plan, len(keys))
	produces := func(k, id string) bool {
		if pl := plans[k]; pl != nil {
			return slices.ContainsFunc(pl.elems, func(e elemPlan) bool { return e.id() == id })
		}
		return false
	}
	for _, k := range keys {
		plans[k] = p.build(p.viewOf(k, desired[k]))
	}
	// Keys waiting for an element released now join the sync.
	inSync := map[string]bool{}
	for _, k := range keys {
		inSync[k] = true
	}
	for _, k := range slices.Clone(keys) {
		if a := p.applied[k]; a != nil {
			for _, id := range a.elems {
				if produces(k, id) {
					continue
				}
				for _, w := range p.contenders[id] {
					if !inSync[w] {
						inSync[w] = true
						keys = append(keys, w)
						plans[w] = p.build(p.viewOf(w, desired[w]))
					}
				}
			}
		}
	}
	slices.Sort(keys)

	c := newChanges()
	// The repair rewrites the shared chains (about 45 operations; their rules are not read back).
	c.static = p.staticNeeded || repair
	// Ownership of map elements: first release what the keys of this sync no longer produce, then claim in
	// key order (an element another key keeps is only wanted).
	ownerNext := map[string]string{} // overlay of p.elemOwner; "" = released
	owner := func(id string) string {
		if o, ok := ownerNext[id]; ok {
			return o
		}
		return p.elemOwner[id]
	}
	for _, k := range keys {
		if a := p.applied[k]; a != nil {
			for _, id := range a.elems {
				if !produces(k, id) {
					ownerNext[id] = ""
				}
			}
		}
	}
	target := map[string]*elemPlan{} // element id -> what it must be (nil: absent)
	var touched []string
	setTarget := func(id string, e *elemPlan) {
		if _, ok := target[id]; !ok {
			touched = append(touched, id)
		}
		target[id] = e
	}
	next := make(map[string]*applied, len(keys))
	producedChains, producedSets := map[string]bool{}, map[string]bool{}
	var ctFlows []Flow
	for _, k := range keys {
		pl, old := plans[k], p.applied[k]
		na := &applied{}
		if pl != nil {
			if pl.ct.udp { // (only UDP's are read: staleFlows)
				na.ct = pl.ct
			}
			na.chains = make([]string, 0, len(pl.chains)) // (kept for as long as the key is: no append slack)
			for _, ch := range pl.chains {
				producedChains[ch.name] = true
				na.chains = append(na.chains, ch.name)
				st, ok := p.chains[ch.name]
				if !ok || st.hash != hashRules(ch.rules) {
					c.writeChain(ch, ok)
				}
			}
			for _, s := range pl.sets {
				producedSets[s.name] = true
				na.sets = append(na.sets, s.name)
				if !p.sets[s.name] {
					c.addSet(s, p.fam)
				}
			}
			for i := range pl.elems {
				e := &pl.elems[i]
				id := e.id()
				if o := owner(id); o == "" || o == k {
					ownerNext[id] = k
					na.elems = append(na.elems, id)
					setTarget(id, e)
				} else {
					na.wanted = append(na.wanted, id)
					if !slices.Contains(p.contenders[id], k) {
						p.log.Warn("nftables: a destination of this service port is taken by another one", "key", k, "owner", o, "element", id)
					}
				}
			}
		}
		if old != nil {
			for _, name := range old.chains {
				if _, ok := p.chains[name]; ok && !producedChains[name] {
					c.deleteChain(name)
				}
			}
			for _, name := range old.sets {
				if p.sets[name] && !producedSets[name] {
					c.deleteSet(name)
				}
			}
			for _, id := range old.elems {
				if owner(id) == "" {
					setTarget(id, nil)
				}
			}
		}
		var o ctInfo
		if old != nil {
			o = old.ct
		}
		// After a restart (first sync) no VIP flow is stale: every service port looks new then.
		ctFlows = append(ctFlows, staleFlows(o, na.ct, !p.synced || (old != nil && len(o.eps) > 0))...)
		if pl != nil {
			next[k] = na
		} else {
			next[k] = nil
		}
	}
	// Elements of an earlier run that go to a chain deleted now go with it.
	for _, name := range c.chainDel {
		for _, id := range p.adoptedByTarget[name] {
			if e, ok := p.elems[id]; ok && owner(id) == "" && e.value == "goto "+name {
				setTarget(id, nil)
			}
		}
	}
	// A repair after PruneStale deletes what no key claims (left by a failure, or written by someone else).
	if repair && p.pruned {
		p.garbage(c, producedChains, producedSets, owner, setTarget)
	}
	for _, id := range touched {
		t := target[id]
		cur, exists := p.elems[id]
		switch {
		case t == nil && exists:
			c.deleteElem(cur)
		case t == nil:
		case !exists:
			c.putElem(*t)
		case cur.value != t.value:
			c.deleteElem(cur)
			c.putElem(*t)
		}
	}

	deferred, err := p.run(ctx, c)
	if err != nil {
		return fail(err)
	}
	p.commit(c, deferred)
	for id, o := range ownerNext {
		if o == "" {
			delete(p.elemOwner, id)
		} else {
			p.elemOwner[id] = o
		}
	}
	for _, k := range keys {
		old, na := p.applied[k], next[k]
		if old != nil {
			for _, name := range old.chains {
				if st, ok := p.chains[name]; ok && st.owner == k {
					st.owner = ""
					p.chains[name] = st
				}
			}
			for _, name := range old.sets {
				if p.setOwner[name] == k {
					delete(p.setOwner, name)
				}
			}
			for _, id := range old.wanted {
				p.contenders[id] = slices.DeleteFunc(p.contenders[id], func(w string) bool { return w == k })
				if len(p.contenders[id]) == 0 {
					delete(p.contenders, id)
				}
			}
		}
		if na == nil {
			delete(p.applied, k)
			continue
		}
		for _, name := range na.chains {
			if st, ok := p.chains[name]; ok { // (a produced chain is there: written, or found as it must be)
				st.owner = k
				p.chains[name] = st
			}
		}
		for _, name := range na.sets {
			p.setOwner[name] = k
		}
		for _, id := range na.wanted {
			p.contenders[id] = append(p.contenders[id], k)
		}
		p.applied[k] = na
	}
	p.pending, p.inventoryNeeded = nil, false
	if full {
		p.synced = true
	}
	if p.ct != nil && len(ctFlows) > 0 {
		if err := p.ct.DeleteUDP(ctFlows); err != nil {
			p.log.Warn("deleting stale UDP conntrack entries", "err", err)
		}
	}
	p.log.Debug("nftables synced", "keys", len(keys), "full", full, "repair", repair, "operations", c.count(), "static", c.static,
		"chains_added", c.chainsAdded, "chains_rewritten", c.chainsRewritten, "chains_deleted", len(c.chainDel),
		"sets_added", len(c.setPut), "sets_deleted", len(c.setDel), "elements_added", len(c.elemPut), "elements_deleted", len(c.elemDel),
		"deferred", deferred, "took", time.Since(t0))
	return nil
}

// viewOf is what Sync programs of key's port sp (see view).
func (p *Proxier) viewOf(key string, sp *model.ServicePort) *model.ServicePort {
	if p.view == nil || sp == nil {
		return sp
	}
	return p.view(key, sp)
}

// garbage adds to c the deletion of every per-service object no key owns (nor produces in c).
// (Sorted, so the transaction does not depend on map order.)
func (p *Proxier) garbage(c *changes, producedChains, producedSets map[string]bool, owner func(string) string, setTarget func(string, *elemPlan)) {
	for _, id := range slices.Sorted(maps.Keys(p.elems)) {
		if owner(id) == "" {
			setTarget(id, nil)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(p.chains)) {
		if p.chains[name].owner == "" && !producedChains[name] {
			c.deleteChain(name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(p.sets)) {
		if _, owned := p.setOwner[name]; !owned && !producedSets[name] {
			c.deleteSet(name)
		}
	}
}

// PruneStale implements proxy.Backend: it deletes the chains, sets and map elements an earlier run left that
// no synced key claims. It refuses to run before the first full Sync (it would stop every service).
func (p *Proxier) PruneStale() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.synced {
		return errors.New("nftables: PruneStale before the first full Sync")
	}
	c := newChanges()
	var dels []string
	p.garbage(c, nil, nil, func(id string) string { return p.elemOwner[id] }, func(id string, _ *elemPlan) { dels = append(dels, id) })
	for _, id := range dels {
		c.deleteElem(p.elems[id])
	}
	deferred, err := p.run(context.Background(), c)
	if err != nil {
		return err
	}
	p.commit(c, deferred)
	p.adoptedByTarget = map[string][]string{}
	p.pruned = true
	if c.count() > 0 {
		p.log.Info("removed service chains of a previous run", "chains", len(c.chainDel), "sets", len(c.setDel), "elements", len(c.elemDel), "deferred", deferred)
	}
	return nil
}

// Cleanup implements proxy.Backend: it deletes table TableName (everything this back end ever wrote, also by
// earlier runs). The proxier may Start and Sync again afterwards.
func (p *Proxier) Cleanup() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nl != nil {
		// No table, nothing to do: nft 1.0.6 reads the whole ruleset to delete a table (3.7 s with the other
		// family's table of 10,000 services, at every start of a single-stack agent).
		if _, _, _, exists, err := p.nl.names(); err == nil && !exists {
			p.reset()
			return nil
		}
	}
	tx := p.nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	err := p.nft.Run(context.Background(), tx)
	if knftables.IsNotFound(err) {
		err = nil
	}
	p.reset()
	return err
}
