// Package iptables is the iptables back end of Canopy's service proxy: kube-proxy's iptables mode with Canopy's
// own chains (CANOPY-*), written incrementally with `iptables-restore --noflush`.
//
// nat: PREROUTING and OUTPUT jump to CANOPY-SERVICES, one line per VIP:port to the service port's
// CANOPY-SVC-<hash> (cluster IPs) or CANOPY-EXT-<hash> (external and load balancer IPs), ending with a jump
// to CANOPY-NODEPORTS for local destinations (node ports -> CANOPY-EXT-). SVC and EXT chains pick a
// CANOPY-SEP-<hash> per endpoint at random (statistic match; recent match for ClientIP affinity), which DNATs.
// CANOPY-MARK-MASQ marks, CANOPY-POSTROUTING-SVC (from POSTROUTING) masquerades marked packets.
// filter: INPUT, FORWARD and OUTPUT jump (new connections) to CANOPY-SERVICES-FILTER, which rejects (via
// CANOPY-SVC-REJECT) traffic to service ports without endpoints and drops external traffic to Local ports
// without local endpoints.
//
// Sync rewrites only the chains of the service ports it is told changed, plus the shared dispatch chains when
// a line of theirs changed (they are regenerated from memory: one line per VIP:port).
//
// A Proxier programs one IP family: New is IPv4 (iptables), New6 the same rules for IPv6 (ip6tables, /128
// matches, ICMPv6 rejects, IPv6 node addresses and cluster CIDRs); proxy.DualStack runs one of each, each
// synced with its family's view of the service ports.
package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/proxy"
)

// Config is what the proxier needs to know about the node and the cluster.
type Config struct {
	// ClusterCIDRs are the pod networks: traffic to a cluster IP from elsewhere is masqueraded (those of the
	// proxier's family used).
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to cluster IPs, from pods too.
	MasqueradeAll bool
	// NodeIPs are the addresses node ports listen on when NodePortAddresses is empty; with neither, node
	// ports listen on every local address but loopback.
	NodeIPs []netip.Addr
	// NodePortAddresses restricts node ports to the node's addresses inside these prefixes.
	NodePortAddresses []netip.Prefix
}

// Restorer feeds iptables-restore and reads iptables-save (an ipt.Host on a node, a recorder in unit tests).
type Restorer = ipt.RestoreSaver

// IPTables is the part of go-iptables used for the jumps from the built-in chains.
type IPTables = ipt.RuleEditor

// Flow selects conntrack entries: protocol UDP, original destination OrigDst:OrigDstPort (each optional),
// reply source ReplySrc (optional: the endpoint the flow was NATed to).
type Flow struct {
	OrigDst     netip.Addr
	OrigDstPort uint16
	ReplySrc    netip.Addr
}

// Conntrack deletes UDP conntrack entries (nil: no cleanup).
type Conntrack interface {
	DeleteUDP(flows []Flow) error
}

var jumps = []ipt.Jump{
	{Table: "nat", Chain: "PREROUTING", Rule: []string{"-m", "comment", "--comment", "canopy service portals", "-j", ChainServices}},
	{Table: "nat", Chain: "OUTPUT", Rule: []string{"-m", "comment", "--comment", "canopy service portals", "-j", ChainServices}},
	{Table: "nat", Chain: "POSTROUTING", Rule: []string{"-m", "comment", "--comment", "canopy service traffic requiring SNAT", "-j", ChainPostrouting}},
	{Table: "filter", Chain: "INPUT", Rule: []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "canopy service portals", "-j", ChainFilter}},
	{Table: "filter", Chain: "FORWARD", Rule: []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "canopy service portals", "-j", ChainFilter}},
	{Table: "filter", Chain: "OUTPUT", Rule: []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "canopy service portals", "-j", ChainFilter}},
}

// applied is what the kernel holds for one service port: its chains (by the hash of their rules) and its
// plan without the chains' rules.
type applied struct {
	chains map[string]uint64
	plan
}

// Proxier is the iptables Backend.
type Proxier struct {
	cfg         Config
	v6          bool // IPv6 (ip6tables), else IPv4
	podCIDRs    []netip.Prefix
	nodePortDst []string
	r           Restorer
	ipt         IPTables
	ct          Conntrack
	log         *slog.Logger

	mu       sync.Mutex
	started  bool
	synced   bool                // a full sync succeeded since Start
	stale    map[string]bool     // per-service nat chains found at Start or left by a failed sync: the next full sync deletes those no key produces
	applied  map[string]*applied // by service port key
	keys     []string            // keys of applied, sorted: the order of the dispatch chains
	pending  []string            // keys of a failed sync, retried with the next one
	forceTop bool                // rewrite the shared chains with the next sync
}

var _ proxy.Backend = (*Proxier)(nil)

// New returns a proxier writing through r, jumping from the built-in chains through it, and cleaning UDP
// conntrack entries through ct (nil: none).
func New(cfg Config, r Restorer, it IPTables, ct Conntrack, log *slog.Logger) *Proxier {
	return newFamily(cfg, false, r, it, ct, log)
}

// New6 is New for IPv6: r, it and ct act on ip6tables and IPv6 conntrack, and the proxier programs the IPv6
// addresses and endpoints of the service ports it is given (model.ServicePort.ForFamily(true)).
func New6(cfg Config, r Restorer, it IPTables, ct Conntrack, log *slog.Logger) *Proxier {
	return newFamily(cfg, true, r, it, ct, log)
}

func newFamily(cfg Config, v6 bool, r Restorer, it IPTables, ct Conntrack, log *slog.Logger) *Proxier {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &Proxier{cfg: cfg, v6: v6, r: r, ipt: it, ct: ct, log: log, applied: map[string]*applied{}}
	for _, c := range cfg.ClusterCIDRs {
		if c = netip.PrefixFrom(c.Addr().Unmap(), c.Bits()); c.Addr().Is4() != v6 {
			c = c.Masked()
			if !slices.Contains(p.podCIDRs, c) {
				p.podCIDRs = append(p.podCIDRs, c)
			}
		}
	}
	p.nodePortDst = nodePortDestinations(cfg, v6)
	return p
}

// NewHost returns a proxier on the host's iptables flavour (ipt.Detect), using its restore/save binaries,
// go-iptables and netlink conntrack cleanup. It acts on the network namespace of the calling thread.
func NewHost(cfg Config, log *slog.Logger) (*Proxier, error) {
	return NewFlavour(cfg, ipt.Detect(), log)
}

// NewFlavour is NewHost with a given flavour.
func NewFlavour(cfg Config, f ipt.Flavour, log *slog.Logger) (*Proxier, error) {
	h, err := ipt.OpenFlavour(f)
	if err != nil {
		return nil, err
	}
	return NewOn(cfg, h, log), nil
}

// NewOn returns a proxier on an opened host iptables, with netlink conntrack cleanup.
func NewOn(cfg Config, h *ipt.Host, log *slog.Logger) *Proxier {
	return New(cfg, h, h, netlinkConntrack{}, log)
}

// NewOn6 returns the IPv6 proxier on an opened host ip6tables (ipt.OpenFlavour6), with netlink IPv6 conntrack
// cleanup.
func NewOn6(cfg Config, h *ipt.Host, log *slog.Logger) *Proxier {
	return New6(cfg, h, h, netlinkConntrack{v6: true}, log)
}

// NewDualStack returns the dual-stack back end: the IPv4 proxier on h4 and the IPv6 one on h6.
func NewDualStack(cfg Config, h4, h6 *ipt.Host, log *slog.Logger) *proxy.DualStack {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return proxy.NewDualStack(NewOn(cfg, h4, log), NewOn6(cfg, h6, log.With("family", "ipv6")))
}

// Name implements proxy.Backend.
func (p *Proxier) Name() string { return "iptables" }

// Schedulers implements proxy.Backend: endpoints are picked at random (statistic match).
func (p *Proxier) Schedulers() []string { return []string{"random"} }

// PruneStale implements proxy.Backend. The first full Sync already deleted the chains of a previous run that no
// service port produces (the dispatch chains it rewrote no longer jump to them), so there is nothing left.
func (p *Proxier) PruneStale() error { return nil }

// Start reads the chains a previous run left (the first full Sync deletes those no service port produces),
// creates the shared chains that are missing (empty: existing ones keep serving until the first Sync) and
// the jumps to them from the built-in chains. Sync calls it if it was not called.
func (p *Proxier) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.start()
}

func (p *Proxier) start() error {
	if p.started {
		return nil
	}
	stale := map[string]bool{}
	for _, t := range []struct {
		table  string
		static []string
	}{{"nat", []string{ChainServices, ChainNodePorts, ChainMarkMasq, ChainPostrouting}}, {"filter", filterStatic}} {
		have, err := chainSet(p.r, t.table)
		if err != nil {
			return fmt.Errorf("iptables-save %s: %w", t.table, err)
		}
		var tx ipt.Tx
		for _, c := range t.static {
			if !have[c] {
				tx.Declare(c)
			}
		}
		if !tx.Empty() {
			if err := p.r.Restore(t.table, tx.Bytes(t.table)); err != nil {
				return fmt.Errorf("%s: %w", t.table, err)
			}
		}
		if t.table == "nat" {
			for c := range have {
				if perServiceChain.MatchString(c) {
					stale[c] = true
				}
			}
		}
	}
	// Jumps now, while a fresh node's tables are small: with legacy each check reads the whole table.
	if err := ipt.EnsureJumps(p.ipt, jumps...); err != nil {
		return err
	}
	if len(stale) > 0 {
		p.log.Info("found service chains of a previous run", "chains", len(stale))
	}
	p.stale, p.started = stale, true
	return nil
}

func hashRules(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// Sync implements proxy.Backend: it programs desired[key] for every key in changed (deleting keys absent
// from desired). desired is the whole desired state: keys of a failed Sync are retried from it with the
// next call (after an error, call Sync again, with any keys or none).
//
// The first Sync after Start must be a full one (every key): the shared dispatch chains are rebuilt from
// what was synced, and chains left by a previous run that no key produces are deleted then. A Sync whose
// keys cover everything applied so far is full too: it rewrites every chain, even unchanged ones (a repair).
// Otherwise only the chains of the given keys whose rules changed are written, and the dispatch chains get
// their lines deleted (-D) and inserted (-I/-A) in place.
func (p *Proxier) Sync(desired map[string]*model.ServicePort, changed []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.start(); err != nil {
		return err
	}
	keys := slices.Concat(changed, p.pending)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	covered := 0
	for _, k := range keys {
		if _, ok := p.applied[k]; ok {
			covered++
		}
	}
	full := !p.synced || covered == len(p.applied)
	rewriteTop := full || p.forceTop

	// nat is written in chunks of at most maxChains per-service chains (iptables-nft-restore slows down
	// quadratically with the chains of one input): per-service chains first, then the last chunk with the
	// dispatch chains and the deletions. A sync of a few services is one restore, atomic.
	maxChains := 0
	if c, ok := p.r.(interface{ MaxChains() int }); ok {
		maxChains = c.MaxChains()
	}
	nat := ipt.NewBatch("nat", maxChains)
	var filter ipt.Tx
	plans := make(map[string]*plan, len(keys))
	produced := map[string]bool{}
	var removed []string
	var ctFlows []Flow
	if full {
		// CANOPY-SERVICES and CANOPY-NODEPORTS go with the last chunk (emptied here, they would stop all
		// services until it is written).
		first := nat.Chunk(0)
		for _, c := range []string{ChainMarkMasq, ChainPostrouting} {
			first.Declare(c)
		}
		if len(p.podCIDRs) > 1 {
			first.Declare(ChainMasqNonPod)
		}
		var w ruleWriter
		p.staticNAT(&w)
		first.Raw(w.String())
		for _, c := range filterStatic {
			filter.Declare(c)
		}
		w.Reset()
		staticFilter(&w, p.v6)
		filter.Raw(w.String())
	}
	for _, k := range keys {
		pl := p.build(desired[k])
		plans[k] = pl
		old := p.applied[k]
		if pl != nil {
			var write []chain
			for _, c := range pl.chains {
				produced[c.name] = true
				if !full && old != nil {
					if h, ok := old.chains[c.name]; ok && h == hashRules(c.rules) {
						continue // unchanged
					}
				}
				write = append(write, c)
			}
			if len(write) > 0 {
				cur := nat.Chunk(len(write))
				for _, c := range write {
					cur.Declare(c.name)
					cur.Raw(c.rules)
				}
			}
		}
		if old != nil {
			for name := range old.chains {
				if !produced[name] {
					removed = append(removed, name)
				}
			}
		}
		var o applied
		if old != nil {
			o = *old
		}
		n := &plan{}
		if pl != nil {
			n = pl
		}
		// After a restart (first sync) no VIP flow is stale: every service port looks new then.
		ctFlows = append(ctFlows, staleFlows(o.ct, n.ct, !p.synced || (old != nil && len(o.chains) > 0))...)
	}
	if full {
		for name := range p.stale {
			if !produced[name] {
				removed = append(removed, name)
			}
		}
	}

	// The dispatch order: applied keys and the new ones, sorted.
	newKeys := slices.Clone(p.keys)
	for _, k := range keys {
		i, found := slices.BinarySearch(newKeys, k)
		switch {
		case plans[k] == nil && found:
			newKeys = slices.Delete(newKeys, i, i+1)
		case plans[k] != nil && !found:
			newKeys = slices.Insert(newKeys, i, k)
		}
	}
	last := nat.Last()
	if rewriteTop {
		last.Declare(ChainServices)
		last.Declare(ChainNodePorts)
		filter.Declare(ChainFilter)
		var np bytes.Buffer
		for _, k := range newKeys {
			a := plans[k]
			if a == nil {
				a = &p.applied[k].plan
			}
			last.Raw(a.services)
			np.WriteString(a.nodePorts)
			filter.Raw(a.filter)
		}
		var w ruleWriter
		for _, dst := range p.nodePortDst {
			w.add(ChainServices, comment("canopy service nodeports; must be the last rule of this chain"), dst, "-j", ChainNodePorts)
		}
		last.Raw(w.String())
		last.Raw(np.String())
	} else {
		for _, k := range keys {
			var o, n plan
			if a := p.applied[k]; a != nil {
				o = a.plan
			}
			if pl := plans[k]; pl != nil {
				n = *pl
			}
			editLines(last.RawBuffer(), o.services, n.services, "-I "+ChainServices+" 1")
			editLines(last.RawBuffer(), o.nodePorts, n.nodePorts, "")
			editLines(filter.RawBuffer(), o.filter, n.filter, "")
		}
	}
	for _, name := range removed {
		last.Remove(name)
	}

	filterBytes := 0
	fail := func(err error) error {
		p.pending = keys
		p.forceTop = true
		return err
	}
	written, natBytes, err := nat.Commit(p.r)
	if err != nil {
		// Chains of the chunks written so far that nothing records: deleted by the next full sync if no
		// service port produces them then.
		for _, d := range nat.Chunks()[:written] {
			for _, name := range d.DeclaredChains() {
				if perServiceChain.MatchString(name) {
					if p.stale == nil {
						p.stale = map[string]bool{}
					}
					p.stale[name] = true
				}
			}
		}
		return fail(fmt.Errorf("nat: %w", err))
	}
	// nat is in: record it.
	for _, k := range keys {
		pl := plans[k]
		if pl == nil {
			delete(p.applied, k)
			continue
		}
		a := &applied{chains: make(map[string]uint64, len(pl.chains)), plan: *pl}
		for _, c := range pl.chains {
			a.chains[c.name] = hashRules(c.rules)
		}
		a.plan.chains = nil
		p.applied[k] = a
	}
	p.keys = newKeys
	if full {
		p.stale = nil
	}
	if !filter.Empty() {
		data := filter.Bytes("filter")
		filterBytes = len(data)
		if err := p.r.Restore("filter", data); err != nil {
			return fail(fmt.Errorf("filter: %w", err))
		}
	}
	p.pending, p.forceTop = nil, false
	if full {
		p.synced = true
	}
	if p.ct != nil && len(ctFlows) > 0 {
		if err := p.ct.DeleteUDP(ctFlows); err != nil {
			p.log.Warn("deleting stale UDP conntrack entries", "err", err)
		}
	}
	p.log.Debug("iptables synced", "keys", len(keys), "full", full, "nat_restores", len(nat.Chunks()), "nat_bytes", natBytes, "filter_bytes", filterBytes)
	return nil
}

// editLines writes the edits turning a dispatch chain's lines old into cur: -D for lines gone, and for new
// lines -A, or insert (e.g. "-I CHAIN 1") if given.
func editLines(w *bytes.Buffer, old, cur, insert string) {
	if old == cur {
		return
	}
	o, c := strings.SplitAfter(old, "\n"), strings.SplitAfter(cur, "\n")
	for _, l := range o {
		if l != "" && !slices.Contains(c, l) {
			w.WriteString("-D" + l[2:])
		}
	}
	for _, l := range c {
		if l == "" || slices.Contains(o, l) {
			continue
		}
		if insert != "" {
			_, rest, _ := strings.Cut(l[3:], " ") // "-A CHAIN rest"
			w.WriteString(insert + " " + rest)
		} else {
			w.WriteString(l)
		}
	}
}

// staleFlows lists the UDP conntrack entries a change of a service port leaves wrong: flows NATed to an
// endpoint that went away, and (unless skipVIPs) flows to its VIPs recorded while it had no endpoints.
func staleFlows(old, cur ctInfo, skipVIPs bool) []Flow {
	var out []Flow
	if old.udp {
		for _, ep := range old.eps {
			if cur.udp && slices.Contains(cur.eps, ep) {
				continue
			}
			for _, vip := range old.vips {
				out = append(out, Flow{OrigDst: vip, OrigDstPort: old.port, ReplySrc: ep})
			}
			if old.nodePort != 0 {
				out = append(out, Flow{OrigDstPort: old.nodePort, ReplySrc: ep})
			}
		}
	}
	if cur.udp && len(cur.eps) > 0 && !skipVIPs {
		for _, vip := range cur.vips {
			out = append(out, Flow{OrigDst: vip, OrigDstPort: cur.port})
		}
		if cur.nodePort != 0 {
			out = append(out, Flow{OrigDstPort: cur.nodePort})
		}
	}
	return out
}

// Cleanup removes every Canopy service chain and the jumps to them (the proxier turned off or replaced by
// another back end), including chains of previous runs. The proxier may Sync again afterwards (a full one).
func (p *Proxier) Cleanup() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	if p.ipt != nil {
		if err := ipt.DeleteJumps(p.ipt, jumps...); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range []struct {
		table  string
		static []string
	}{{"nat", natStatic}, {"filter", filterStatic}} {
		out, err := p.r.Save(t.table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var tx ipt.Tx
		for _, c := range ipt.SavedChains(out) {
			if perServiceChain.MatchString(c) || slices.Contains(t.static, c) {
				tx.Remove(c)
			}
		}
		if !tx.Empty() {
			if err := p.r.Restore(t.table, tx.Bytes(t.table)); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", t.table, err))
			}
		}
	}
	p.applied, p.keys, p.pending, p.stale = map[string]*applied{}, nil, nil, nil
	p.started, p.synced, p.forceTop = false, false, false
	return errors.Join(errs...)
}

// chainSet is the names of table's chains: from the Restorer's Chains where it has it (ipt.Restorer reads
// iptables-nft's over netlink, without the rules: iptables-nft-save of 60,000 chains took 33 s of a restart at
// 10,000 Services), else from Save.
func chainSet(r Restorer, table string) (map[string]bool, error) {
	if c, ok := r.(interface {
		Chains(table string) (map[string]bool, error)
	}); ok {
		return c.Chains(table)
	}
	out, err := r.Save(table)
	if err != nil {
		return nil, err
	}
	return ipt.SavedChainSet(out), nil
}
