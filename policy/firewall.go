package policy

import (
	"bytes"
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
// `iptables-restore --noflush` of our own chains only. After the first (full) Sync it writes only what
// differs from the State it applied last: new or changed chains, dispatch lines deleted and appended in
// place, set members added and deleted. An error makes the next Sync a full one (a repair).
type Firewall struct {
	mu        sync.Mutex
	r         Restorer
	sets      IPSets
	ipt       IPTables
	log       *slog.Logger
	maxChains int // chains per restore input (0: no limit)

	started bool
	applied *State   // nil: unknown, the next Sync is full
	orphans []string // sets whose destroy failed, retried on the next Sync
}

// New returns a Firewall on the given tools.
func New(r Restorer, sets IPSets, it IPTables, log *slog.Logger) *Firewall {
	f := &Firewall{r: r, sets: sets, ipt: it, log: log}
	if c, ok := r.(interface{ MaxChains() int }); ok {
		f.maxChains = c.MaxChains()
	}
	return f
}

// NewHost returns a Firewall on this network namespace's iptables and ipset.
func NewHost(h *ipt.Host, log *slog.Logger) *Firewall { return New(h, ExecIPSets{}, h, log) }

// Start makes sure the fixed sets, the fixed chains and the jumps to them exist. Chains left by a previous
// run keep enforcing until the first Sync; on a node without them it writes the fixed chains of Build(nil,
// nil, o): every local pod address is dropped until a Sync says its rules exist (no unprotected window for
// pods started before the agent's first Sync).
func (f *Firewall) Start(o Options) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.start(o)
}

func (f *Firewall) start(o Options) error {
	if f.started {
		return nil
	}
	st := Build(nil, nil, o)
	var b bytes.Buffer
	fmt.Fprintf(&b, "create %s hash:ip family inet\n", SetReady)
	fmt.Fprintf(&b, "create %s hash:net family inet\n", SetLocal)
	names, err := f.sets.List()
	if err != nil {
		return err
	}
	if !slices.Contains(names, SetLocal) {
		for _, m := range st.Sets[SetLocal].Members {
			fmt.Fprintf(&b, "add %s %s\n", SetLocal, m)
		}
	}
	if err := f.sets.Restore(b.Bytes()); err != nil {
		return fmt.Errorf("ipset: %w", err)
	}
	out, err := f.r.Save("filter")
	if err != nil {
		return fmt.Errorf("iptables-save: %w", err)
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
			tx.Rules(c, st.Chains[c])
		}
	}
	if !tx.Empty() {
		if err := f.r.Restore("filter", tx.Bytes("filter")); err != nil {
			return err
		}
	}
	if err := ipt.EnsureJumps(f.ipt, jumps...); err != nil {
		return err
	}
	f.started = true
	return nil
}

// Stats says what one Sync wrote.
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

func (f *Firewall) sync(st *State) (Stats, error) {
	if !f.started {
		return Stats{}, errors.New("policy firewall: Sync before Start")
	}
	old := f.applied
	full := old == nil
	stats := Stats{Full: full}
	if full {
		old = &State{Chains: map[string][]string{}, Sets: map[string]*Set{}, Ready: map[netip.Addr]bool{},
			Ingress: map[netip.Addr]string{}, Egress: map[netip.Addr]string{}}
	}

	// 1. Sets: create new ones, bring members in line; take addresses that lost their rules out of Ready.
	var b bytes.Buffer
	var kernelSets []string
	if full {
		var err error
		if kernelSets, err = f.sets.List(); err != nil {
			return stats, err
		}
	}
	for _, name := range sortedKeys(st.Sets) {
		s := st.Sets[name]
		o := old.Sets[name]
		switch {
		case full && slices.Contains(kernelSets, name):
			tmp := "CANOPY-T-" + hash16("tmp"+name)
			fmt.Fprintf(&b, "create %s %s family inet\n", tmp, s.Type)
			for _, m := range s.Members {
				fmt.Fprintf(&b, "add %s %s\n", tmp, m)
			}
			fmt.Fprintf(&b, "swap %s %s\ndestroy %s\n", tmp, name, tmp)
			stats.SetOps += len(s.Members) + 3
		case o == nil:
			fmt.Fprintf(&b, "create %s %s family inet\n", name, s.Type)
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
		cur, err := f.sets.Members(SetReady)
		if err != nil {
			return stats, err
		}
		for _, m := range cur {
			if a, err := netip.ParseAddr(m); err != nil || !st.Ready[a] {
				readyDel = append(readyDel, a)
			}
		}
	} else {
		for a := range old.Ready {
			if !st.Ready[a] {
				readyDel = append(readyDel, a)
			}
		}
	}
	for _, a := range readyDel {
		if a.IsValid() {
			fmt.Fprintf(&b, "del %s %s\n", SetReady, a)
			stats.SetOps++
		}
	}
	if b.Len() > 0 {
		if err := f.sets.Restore(b.Bytes()); err != nil {
			return stats, fmt.Errorf("ipset: %w", err)
		}
	}

	// 2. Chains: per-policy chains, then per-pod chains, then the fixed and dispatch chains and deletions.
	var saved map[string]bool
	if full {
		out, err := f.r.Save("filter")
		if err != nil {
			return stats, fmt.Errorf("iptables-save: %w", err)
		}
		saved = ipt.SavedChainSet(out)
	}
	var rule, pod, fixed []string
	for _, name := range sortedKeys(st.Chains) {
		if !full && slices.Equal(old.Chains[name], st.Chains[name]) {
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
	batch := ipt.NewBatch("filter", f.maxChains)
	for _, name := range append(rule, pod...) {
		tx := batch.Chunk(1)
		tx.Declare(name)
		tx.Rules(name, st.Chains[name])
		stats.Chains++
	}
	last := batch.Last()
	for _, name := range fixed {
		last.Declare(name)
		last.Rules(name, st.Chains[name])
		stats.Chains++
	}
	for _, d := range []struct {
		chain, flag string
		old, cur    map[netip.Addr]string
	}{{ChainIngress, "-d", old.Ingress, st.Ingress}, {ChainEgress, "-s", old.Egress, st.Egress}} {
		if full {
			last.Declare(d.chain)
			for _, a := range sortedAddrs(d.cur) {
				last.Rule(d.chain, fmt.Sprintf("%s %s/32 -j %s", d.flag, a, d.cur[a]))
				stats.DispatchLines++
			}
			continue
		}
		for _, a := range sortedAddrs(d.old) {
			if c, ok := d.cur[a]; !ok || c != d.old[a] {
				last.Raw(fmt.Sprintf("-D %s %s %s/32 -j %s\n", d.chain, d.flag, a, d.old[a]))
				stats.DispatchLines++
			}
		}
		for _, a := range sortedAddrs(d.cur) {
			if c, ok := d.old[a]; !ok || c != d.cur[a] {
				last.Rule(d.chain, fmt.Sprintf("%s %s/32 -j %s", d.flag, a, d.cur[a]))
				stats.DispatchLines++
			}
		}
	}
	var gone []string
	if full {
		for name := range saved {
			if ours(name) && st.Chains[name] == nil {
				gone = append(gone, name)
			}
		}
	} else {
		for name := range old.Chains {
			if st.Chains[name] == nil {
				gone = append(gone, name)
			}
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		last.Remove(name)
		stats.DeletedChains++
	}
	if _, _, err := batch.Commit(f.r); err != nil {
		return stats, err
	}

	// 3. Addresses whose rules now exist join Ready; sets nobody uses go.
	b.Reset()
	for _, a := range sortedReady(st.Ready) {
		if full || !old.Ready[a] {
			fmt.Fprintf(&b, "add %s %s\n", SetReady, a)
			stats.SetOps++
		}
	}
	if b.Len() > 0 {
		if err := f.sets.Restore(b.Bytes()); err != nil {
			return stats, fmt.Errorf("ipset: %w", err)
		}
	}
	var unused []string
	if full {
		for _, n := range kernelSets {
			if (strings.HasPrefix(n, prefixSet) || strings.HasPrefix(n, "CANOPY-T-")) && st.Sets[n] == nil {
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

// ours says whether a chain is a per-pod or per-policy chain of the data path.
func ours(name string) bool {
	return strings.HasPrefix(name, prefixRules) || strings.HasPrefix(name, prefixPodIn) || strings.HasPrefix(name, prefixPodOut)
}

// Cleanup removes the jumps, every chain and every set of the data path (the firewall turned off).
func (f *Firewall) Cleanup() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	if err := ipt.DeleteJumps(f.ipt, jumps...); err != nil {
		errs = append(errs, err)
	}
	out, err := f.r.Save("filter")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	var tx ipt.Tx
	var names []string
	for name := range ipt.SavedChainSet(out) {
		if strings.HasPrefix(name, "CANOPY-POL-") || ours(name) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		tx.Remove(n)
	}
	if !tx.Empty() {
		if err := f.r.Restore("filter", tx.Bytes("filter")); err != nil {
			errs = append(errs, err)
		}
	}
	sets, err := f.sets.List()
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range sets {
		if strings.HasPrefix(n, prefixSet) || strings.HasPrefix(n, "CANOPY-T-") || n == SetReady || n == SetLocal {
			if err := f.sets.Destroy(n); err != nil {
				errs = append(errs, err)
			}
		}
	}
	f.started, f.applied = false, nil
	return errors.Join(errs...)
}

// Counters are the packets the data path has denied, read from the deny chains' rule counters.
type Counters struct {
	DeniedIngress, DeniedEgress, Unready uint64
}

// Counters reads the deny chains' counters (`iptables -S -v` of three small chains, not the whole table).
func (f *Firewall) Counters() (Counters, error) {
	var c Counters
	for _, x := range []struct {
		chain string
		n     *uint64
	}{{ChainDenyIn, &c.DeniedIngress}, {ChainDenyOut, &c.DeniedEgress}, {ChainUnready, &c.Unready}} {
		lines, err := f.ipt.ListWithCounters("filter", x.chain)
		if err != nil {
			return c, err
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
