package policy

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"canopy.io/canopy/internal/ipt"
)

// Restorer feeds iptables-restore --noflush and reads iptables-save (an ipt.Host on a node).
type Restorer = ipt.RestoreSaver

// IPSets is the ipset tool: a batch of commands, set names, one set's members, destroying one set.
type IPSets interface {
	// Restore runs `ipset -exist restore` on data (create/add/del/swap/destroy lines).
	Restore(data []byte) error
	// List returns the names of all sets.
	List() ([]string, error)
	// Members returns a set's members as `ipset save` writes them (e.g. "10.0.0.0/8 nomatch").
	Members(name string) ([]string, error)
	// Destroy destroys one set (it fails while an iptables rule uses it).
	Destroy(name string) error
}

// IPTables is the part of go-iptables used for the jumps from the built-in chains and the deny counters.
type IPTables interface {
	ipt.RuleEditor
	ListWithCounters(table, chain string) ([]string, error)
}

// jumps hook the policy chains into the built-in ones, first in line (a denied packet must not be accepted by
// a rule before ours).
var jumps = []ipt.Jump{
	{Table: "filter", Chain: "FORWARD", Rule: jumpRule(ChainForward)},
	{Table: "filter", Chain: "OUTPUT", Rule: jumpRule(ChainOutput)},
}

func jumpRule(target string) []string {
	return []string{"-m", "comment", "--comment", "canopy network policy", "-j", target}
}

// Firewall programs a State into the kernel: ipsets through `ipset restore`, chains through
// `iptables-restore --noflush` of our own chains only, per family (iptables for IPv4, ip6tables for IPv6, one
// after the other). After the first (full) Sync it writes only what differs from the State it applied last:
// new or changed chains, dispatch lines deleted and appended in place, set members added and deleted. An error
// makes the next Sync a full one of both families (a repair).
type Firewall struct {
	mu   sync.Mutex
	sets IPSets
	log  *slog.Logger
	fams []*famTables // IPv4, then IPv6 (when it has tools)

	applied *State   // nil: unknown, the next Sync is full
	orphans []string // sets whose destroy failed, retried on the next Sync
}

// famTables are one family's iptables tools.
type famTables struct {
	f         *family
	r         Restorer
	ipt       IPTables
	maxChains int // chains per restore input (0: no limit)
	started   bool
}

func newFamTables(f *family, r Restorer, it IPTables) *famTables {
	t := &famTables{f: f, r: r, ipt: it}
	if c, ok := r.(interface{ MaxChains() int }); ok {
		t.maxChains = c.MaxChains()
	}
	return t
}

// New returns a Firewall on the given tools (iptables: IPv4; WithIPv6 adds ip6tables).
func New(r Restorer, sets IPSets, it IPTables, log *slog.Logger) *Firewall {
	return &Firewall{sets: sets, log: log, fams: []*famTables{newFamTables(v4, r, it)}}
}

// WithIPv6 gives the Firewall ip6tables tools, so it polices IPv6 pods too (on a node with an IPv6 pod CIDR).
// Call it before Start.
func (f *Firewall) WithIPv6(r Restorer, it IPTables) *Firewall {
	f.fams = append(f.fams[:1], newFamTables(v6, r, it))
	return f
}

// NewHost returns a Firewall on this network namespace's iptables, ip6tables (same flavour) and ipset. Without
// ip6tables it polices IPv4 only, and Start fails on a node with an IPv6 pod CIDR.
func NewHost(h *ipt.Host, log *slog.Logger) *Firewall {
	f := New(h, ExecIPSets{}, h, log)
	if h6, err := ipt.OpenFlavour6(h.Flavour); err == nil {
		f.WithIPv6(h6, h6)
	} else {
		log.Warn("ip6tables unavailable: IPv6 pods cannot be policed", "err", err)
	}
	return f
}

// Start makes sure the fixed sets, the fixed chains and the jumps to them exist, in each family the node has a
// pod CIDR of (always IPv4). Chains left by a previous run keep enforcing until the first Sync; on a node
// without them it writes the fixed chains of Build(nil, nil, o): every local pod address is dropped until a
// Sync says its rules exist (no unprotected window for pods started before the agent's first Sync).
func (f *Firewall) Start(o Options) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Build(nil, nil, o)
	for _, fam := range families {
		if err := f.startFamily(fam, st); err != nil {
			return err
		}
	}
	return nil
}

// tables returns the family's tools, nil if it has none.
func (f *Firewall) tables(fam *family) *famTables {
	for _, t := range f.fams {
		if t.f == fam {
			return t
		}
	}
	return nil
}

// startFamily starts fam if st has its chains (a pod CIDR of the family) and it is not started yet.
func (f *Firewall) startFamily(fam *family, st *State) error {
	if len(st.chains(fam)) == 0 {
		return nil
	}
	t := f.tables(fam)
	if t == nil {
		return fmt.Errorf("policy firewall: this node has an %s pod CIDR but no ip6tables", fam.name)
	}
	if t.started {
		return nil
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "create %s hash:ip family %s\n", fam.ready, fam.inet)
	fmt.Fprintf(&b, "create %s hash:net family %s\n", fam.local, fam.inet)
	names, err := f.sets.List()
	if err != nil {
		return err
	}
	if !slices.Contains(names, fam.local) {
		for _, m := range st.Sets[fam.local].Members {
			fmt.Fprintf(&b, "add %s %s\n", fam.local, m)
		}
	}
	if err := f.sets.Restore(b.Bytes()); err != nil {
		return fmt.Errorf("ipset: %w", err)
	}
	out, err := t.r.Save("filter")
	if err != nil {
		return fmt.Errorf("%s save: %w", fam.name, err)
	}
	have := ipt.SavedChainSet(out)
	var tx ipt.Tx
	for _, c := range append(slices.Clone(staticChains), ChainIngress, ChainEgress) {
		if !have[c] {
			tx.Declare(c)
		}
	}
	// A missing chain gets its content; existing ones are a previous run's and stay until the first Sync.
	for _, c := range staticChains {
		if !have[c] {
			tx.Rules(c, st.chains(fam)[c])
		}
	}
	if !tx.Empty() {
		if err := t.r.Restore("filter", tx.Bytes("filter")); err != nil {
			return err
		}
	}
	if err := ipt.EnsureJumps(t.ipt, jumps...); err != nil {
		return fmt.Errorf("%s: %w", fam.name, err)
	}
	t.started = true
	return nil
}

// Stats says what one Sync wrote (both families).
type Stats struct {
	Full                  bool
	Chains, DeletedChains int // chains written, chains deleted
	DispatchLines         int // dispatch lines added or deleted
	SetOps                int // ipset commands (create, add, del, swap)
}

// Sync programs st (see Firewall). st must not be modified afterwards.
func (f *Firewall) Sync(st *State) (Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	stats, err := f.sync(st)
	if err != nil {
		f.applied = nil
	}
	return stats, err
}

func emptyState() *State {
	return &State{Chains: map[string][]string{}, Chains6: map[string][]string{}, Sets: map[string]*Set{},
		Ready: map[netip.Addr]bool{}, Ingress: map[netip.Addr]string{}, Egress: map[netip.Addr]string{}}
}

func (f *Firewall) sync(st *State) (Stats, error) {
	if !f.tables(v4).started {
		return Stats{}, errors.New("policy firewall: Sync before Start")
	}
	old := f.applied
	full := old == nil
	stats := Stats{Full: full}
	if full {
		old = emptyState()
	}
	var kernelSets []string
	for _, t := range f.fams {
		if len(st.chains(t.f)) == 0 {
			continue // no pod CIDR of this family (any more): what is there stays
		}
		famFull := full || !t.started
		if !t.started {
			if err := f.startFamily(t.f, st); err != nil {
				return stats, err
			}
		}
		o := old
		if famFull {
			o = emptyState()
			if kernelSets == nil {
				var err error
				if kernelSets, err = f.sets.List(); err != nil {
					return stats, err
				}
			}
		}
		if err := f.syncFamily(t, st, o, famFull, kernelSets, &stats); err != nil {
			return stats, err
		}
	}

	// Sets nobody uses go (after both families' chains stopped using them).
	var unused []string
	if full {
		for _, n := range kernelSets {
			if (v4.ownSet(n) || v6.ownSet(n)) && st.Sets[n] == nil {
				unused = append(unused, n)
			}
		}
	} else {
		for n := range old.Sets {
			if st.Sets[n] == nil {
				unused = append(unused, n)
			}
		}
	}
	unused = append(unused, f.orphans...)
	f.orphans = nil
	sort.Strings(unused)
	for _, n := range slices.Compact(unused) {
		if st.Sets[n] != nil {
			continue
		}
		if err := f.sets.Destroy(n); err != nil {
			f.log.Warn("ipset destroy failed; retrying on the next sync", "set", n, "err", err)
			f.orphans = append(f.orphans, n)
		}
	}
	f.applied = st
	return stats, nil
}

// syncFamily writes one family's part of st, against old (empty when full).
func (f *Firewall) syncFamily(t *famTables, st, old *State, full bool, kernelSets []string, stats *Stats) error {
	fam := t.f
	// 1. Sets: create new ones, bring members in line; take addresses that lost their rules out of Ready.
	var b bytes.Buffer
	for _, name := range sortedKeys(st.Sets) {
		s := st.Sets[name]
		if cmp.Or(s.Family, "inet") != fam.inet {
			continue
		}
		o := old.Sets[name]
		switch {
		case full && slices.Contains(kernelSets, name):
			tmp := fam.tmpPrefix + hash16("tmp"+name)
			fmt.Fprintf(&b, "create %s %s family %s\n", tmp, s.Type, fam.inet)
			for _, m := range s.Members {
				fmt.Fprintf(&b, "add %s %s\n", tmp, m)
			}
			fmt.Fprintf(&b, "swap %s %s\ndestroy %s\n", tmp, name, tmp)
			stats.SetOps += len(s.Members) + 3
		case o == nil:
			fmt.Fprintf(&b, "create %s %s family %s\n", name, s.Type, fam.inet)
			for _, m := range s.Members {
				fmt.Fprintf(&b, "add %s %s\n", name, m)
			}
			stats.SetOps += len(s.Members) + 1
		default:
			add, del := diffSorted(o.Members, s.Members)
			for _, m := range del {
				fmt.Fprintf(&b, "del %s %s\n", name, strings.TrimSuffix(m, " nomatch"))
			}
			for _, m := range add {
				fmt.Fprintf(&b, "add %s %s\n", name, m)
			}
			stats.SetOps += len(add) + len(del)
		}
	}
	var readyDel []netip.Addr
	if full {
		cur, err := f.sets.Members(fam.ready)
		if err != nil {
			return err
		}
		for _, m := range cur {
			if a, err := netip.ParseAddr(m); err != nil || !st.Ready[a] {
				readyDel = append(readyDel, a)
			}
		}
	} else {
		for a := range old.Ready {
			if fam.has(a) && !st.Ready[a] {
				readyDel = append(readyDel, a)
			}
		}
	}
	for _, a := range readyDel {
		if a.IsValid() {
			fmt.Fprintf(&b, "del %s %s\n", fam.ready, a)
			stats.SetOps++
		}
	}
	if b.Len() > 0 {
		if err := f.sets.Restore(b.Bytes()); err != nil {
			return fmt.Errorf("ipset: %w", err)
		}
	}

	// 2. Chains: per-policy chains, then per-pod chains, then the fixed and dispatch chains and deletions.
	cur, prev := st.chains(fam), old.chains(fam)
	var saved map[string]bool
	if full {
		out, err := t.r.Save("filter")
		if err != nil {
			return fmt.Errorf("%s save: %w", fam.name, err)
		}
		saved = ipt.SavedChainSet(out)
	}
	var rule, pod, fixed []string
	for _, name := range sortedKeys(cur) {
		if !full && slices.Equal(prev[name], cur[name]) {
			continue
		}
		switch {
		case strings.HasPrefix(name, prefixRules):
			rule = append(rule, name)
		case strings.HasPrefix(name, prefixPodIn), strings.HasPrefix(name, prefixPodOut):
			pod = append(pod, name)
		default:
			fixed = append(fixed, name)
		}
	}
	batch := ipt.NewBatch("filter", t.maxChains)
	for _, name := range append(rule, pod...) {
		tx := batch.Chunk(1)
		tx.Declare(name)
		tx.Rules(name, cur[name])
		stats.Chains++
	}
	last := batch.Last()
	for _, name := range fixed {
		last.Declare(name)
		last.Rules(name, cur[name])
		stats.Chains++
	}
	for _, d := range []struct {
		chain, flag string
		old, cur    map[netip.Addr]string
	}{{ChainIngress, "-d", old.Ingress, st.Ingress}, {ChainEgress, "-s", old.Egress, st.Egress}} {
		if full {
			last.Declare(d.chain)
			for _, a := range sortedAddrs(d.cur) {
				if fam.has(a) {
					last.Rule(d.chain, fmt.Sprintf("%s %s/%d -j %s", d.flag, a, fam.hostBits, d.cur[a]))
					stats.DispatchLines++
				}
			}
			continue
		}
		for _, a := range sortedAddrs(d.old) {
			if c, ok := d.cur[a]; fam.has(a) && (!ok || c != d.old[a]) {
				last.Raw(fmt.Sprintf("-D %s %s %s/%d -j %s\n", d.chain, d.flag, a, fam.hostBits, d.old[a]))
				stats.DispatchLines++
			}
		}
		for _, a := range sortedAddrs(d.cur) {
			if c, ok := d.old[a]; fam.has(a) && (!ok || c != d.cur[a]) {
				last.Rule(d.chain, fmt.Sprintf("%s %s/%d -j %s", d.flag, a, fam.hostBits, d.cur[a]))
				stats.DispatchLines++
			}
		}
	}
	var gone []string
	if full {
		for name := range saved {
			if ours(name) && cur[name] == nil {
				gone = append(gone, name)
			}
		}
	} else {
		for name := range prev {
			if cur[name] == nil {
				gone = append(gone, name)
			}
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		last.Remove(name)
		stats.DeletedChains++
	}
	if _, _, err := batch.Commit(t.r); err != nil {
		return err
	}

	// 3. Addresses whose rules now exist join Ready.
	b.Reset()
	for _, a := range sortedReady(st.Ready) {
		if fam.has(a) && (full || !old.Ready[a]) {
			fmt.Fprintf(&b, "add %s %s\n", fam.ready, a)
			stats.SetOps++
		}
	}
	if b.Len() > 0 {
		if err := f.sets.Restore(b.Bytes()); err != nil {
			return fmt.Errorf("ipset: %w", err)
		}
	}
	return nil
}

// ours says whether a chain is a per-pod or per-policy chain of the data path.
func ours(name string) bool {
	return strings.HasPrefix(name, prefixRules) || strings.HasPrefix(name, prefixPodIn) || strings.HasPrefix(name, prefixPodOut)
}

// Cleanup removes the jumps, every chain (iptables and ip6tables) and every set of the data path (the firewall
// turned off).
func (f *Firewall) Cleanup() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for _, t := range f.fams {
		out, err := t.r.Save("filter")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.f.name, err))
			continue
		}
		have := ipt.SavedChainSet(out)
		// Only jumps to chains that exist: legacy ip6tables cannot even look for a rule whose target is missing.
		var js []ipt.Jump
		for _, j := range jumps {
			if have[j.Rule[len(j.Rule)-1]] {
				js = append(js, j)
			}
		}
		if err := ipt.DeleteJumps(t.ipt, js...); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.f.name, err))
		}
		var tx ipt.Tx
		var names []string
		for name := range have {
			if strings.HasPrefix(name, "CANOPY-POL-") || ours(name) {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			tx.Remove(n)
		}
		if !tx.Empty() {
			if err := t.r.Restore("filter", tx.Bytes("filter")); err != nil {
				errs = append(errs, err)
			}
		}
		t.started = false
	}
	sets, err := f.sets.List()
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range sets {
		if v4.ownSet(n) || v6.ownSet(n) || n == SetReady || n == SetLocal || n == SetReady6 || n == SetLocal6 {
			if err := f.sets.Destroy(n); err != nil {
				errs = append(errs, err)
			}
		}
	}
	f.applied = nil
	return errors.Join(errs...)
}

// Counts are one family's denied packets.
type Counts struct {
	DeniedIngress, DeniedEgress, Unready uint64
}

// Counters are the packets the data path has denied, read from the deny chains' rule counters: both families
// (Counts), and the IPv6 part of them.
type Counters struct {
	Counts
	IPv6 Counts
}

// Counters reads the deny chains' counters (`iptables -S -v` of three small chains per family, not the whole
// table).
func (f *Firewall) Counters() (Counters, error) {
	var c Counters
	for _, t := range f.fams {
		if !t.started {
			continue
		}
		n, err := t.counts()
		if err != nil {
			return c, err
		}
		c.DeniedIngress += n.DeniedIngress
		c.DeniedEgress += n.DeniedEgress
		c.Unready += n.Unready
		if t.f.v6 {
			c.IPv6 = n
		}
	}
	return c, nil
}

func (t *famTables) counts() (Counts, error) {
	var c Counts
	for _, x := range []struct {
		chain string
		n     *uint64
	}{{ChainDenyIn, &c.DeniedIngress}, {ChainDenyOut, &c.DeniedEgress}, {ChainUnready, &c.Unready}} {
		lines, err := t.ipt.ListWithCounters("filter", x.chain)
		if err != nil {
			return c, fmt.Errorf("%s: %w", t.f.name, err)
		}
		for _, l := range lines {
			// "-A CHAIN ... -c <packets> <bytes> -j DROP"
			if !strings.HasPrefix(l, "-A ") || !(strings.Contains(l, " -j DROP") || strings.Contains(l, " -j REJECT")) {
				continue
			}
			if i := strings.LastIndex(l, " -c "); i >= 0 {
				if f := strings.Fields(l[i+4:]); len(f) >= 2 {
					n, _ := strconv.ParseUint(f[0], 10, 64)
					*x.n += n
				}
			}
		}
	}
	return c, nil
}

// Invalidate makes the next Sync a full one (rewrites everything: a repair of drift).
func (f *Firewall) Invalidate() {
	f.mu.Lock()
	f.applied = nil
	f.mu.Unlock()
}

func sortedKeys[V any](m map[string]V) []string {
	r := make([]string, 0, len(m))
	for k := range m {
		r = append(r, k)
	}
	sort.Strings(r)
	return r
}

func sortedAddrs(m map[netip.Addr]string) []netip.Addr {
	r := make([]netip.Addr, 0, len(m))
	for a := range m {
		r = append(r, a)
	}
	slices.SortFunc(r, netip.Addr.Compare)
	return r
}

func sortedReady(m map[netip.Addr]bool) []netip.Addr {
	r := make([]netip.Addr, 0, len(m))
	for a, ok := range m {
		if ok {
			r = append(r, a)
		}
	}
	slices.SortFunc(r, netip.Addr.Compare)
	return r
}

// diffSorted returns what b has and a lacks, and what a has and b lacks (both sorted).
func diffSorted(a, b []string) (add, del []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			del = append(del, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			add = append(add, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return add, del
}

// ExecIPSets runs the ipset binary (in the calling thread's network namespace).
type ExecIPSets struct{}

func (ExecIPSets) run(stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.Command("ipset", args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if stdin != nil {
			msg += lineHint(msg, stdin)
		}
		return out, fmt.Errorf("ipset %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return out, nil
}

// lineHint quotes the input line an ipset error names ("Error in line N: ...").
func lineHint(msg string, data []byte) string {
	_, rest, ok := strings.Cut(msg, "line ")
	if !ok {
		return ""
	}
	num, _, _ := strings.Cut(rest, ":")
	n, err := strconv.Atoi(strings.TrimSpace(num))
	lines := strings.Split(string(data), "\n")
	if err != nil || n < 1 || n > len(lines) {
		return ""
	}
	return fmt.Sprintf(" (line %d: %q)", n, lines[n-1])
}

func (e ExecIPSets) Restore(data []byte) error {
	_, err := e.run(data, "-exist", "restore")
	return err
}

func (e ExecIPSets) List() ([]string, error) {
	out, err := e.run(nil, "list", "-n")
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

func (e ExecIPSets) Members(name string) ([]string, error) {
	out, err := e.run(nil, "save", name)
	if err != nil {
		return nil, err
	}
	var r []string
	for _, l := range strings.Split(string(out), "\n") {
		if m, ok := strings.CutPrefix(l, "add "+name+" "); ok {
			r = append(r, m)
		}
	}
	return r, nil
}

func (e ExecIPSets) Destroy(name string) error {
	_, err := e.run(nil, "destroy", name)
	return err
}
