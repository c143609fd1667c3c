package cleanup

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"canopy.io/canopy/internal/ipt"
)

// ChainPrefix starts the name of every iptables chain and ipset Canopy makes (DESIGN.md, "Names").
const ChainPrefix = "CANOPY-"

// Ours reports whether an iptables chain or an ipset name is Canopy's: it starts with "CANOPY-" (a chain
// called "CANOPYX" or "canopy-x" is someone else's).
func Ours(name string) bool {
	return strings.HasPrefix(name, ChainPrefix) && len(name) > len(ChainPrefix)
}

// Saved is one table of iptables-save output.
type Saved struct {
	Table  string
	Chains []string    // declared (built-in and user chains), in save order
	Rules  []SavedRule // every -A line, in save order
}

// SavedRule is one rule as iptables-save prints it.
type SavedRule struct {
	Chain  string // the chain it is in
	Line   string // the whole line, "-A CHAIN ..."
	Target string // what -j or -g names ("" if neither)
	Goto   bool   // -g rather than -j
}

// ParseSave splits iptables-save output (every table, or one) into its tables. Comments, counters and blank
// lines are ignored.
func ParseSave(out []byte) []Saved {
	var tables []Saved
	var cur *Saved
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimRight(l, "\r")
		switch {
		case strings.HasPrefix(l, "*"):
			tables = append(tables, Saved{Table: strings.TrimSpace(l[1:])})
			cur = &tables[len(tables)-1]
		case cur == nil:
		case l == "COMMIT":
			cur = nil
		case strings.HasPrefix(l, ":"):
			cur.Chains = append(cur.Chains, ipt.SavedChains([]byte(l))...)
		case strings.HasPrefix(l, "-A "):
			if r, ok := parseRule(l); ok {
				cur.Rules = append(cur.Rules, r)
			}
		}
	}
	return tables
}

// freeText are the options whose argument is free text that may look like anything ("-j CANOPY-X" in a
// comment): their argument is never read as an option.
var freeText = map[string]bool{
	"--comment": true, "--log-prefix": true, "--nflog-prefix": true, "--string": true, "--hex-string": true,
	"--u32": true, "--bytecode": true, "--name": true, "--helper": true, "--set-name": true,
}

// parseRule reads the chain and the jump target of an iptables-save rule line. The target is the argument of
// the last -j or -g outside quoted or free-text arguments (iptables-save prints the target after the matches).
func parseRule(line string) (SavedRule, bool) {
	f := Fields(line)
	if len(f) < 2 || f[0] != "-A" {
		return SavedRule{}, false
	}
	r := SavedRule{Chain: f[1], Line: line}
	for i := 2; i < len(f); i++ {
		switch a := f[i]; {
		case freeText[a]:
			i++
		case (a == "-j" || a == "--jump" || a == "-g" || a == "--goto") && i+1 < len(f):
			r.Target, r.Goto = f[i+1], a == "-g" || a == "--goto"
			i++
		}
	}
	return r, true
}

// Fields splits an iptables-save line into arguments as iptables-restore reads them: separated by blanks,
// double-quoted arguments kept whole (with \" and \\ escapes).
func Fields(line string) []string {
	var out []string
	var cur strings.Builder
	in, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			in = true
		case !quoted && (c == ' ' || c == '\t'):
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// TablePlan is what removing Canopy's chains from one table takes.
type TablePlan struct {
	Table  string
	Jumps  []SavedRule // rules of other chains (built-in or foreign) whose -j/-g target is one of ours
	Chains []string    // our chains, in save order
}

// Empty reports whether the table holds nothing of ours.
func (p TablePlan) Empty() bool { return len(p.Jumps) == 0 && len(p.Chains) == 0 }

// Plan finds our chains in a saved table and the jumps to them from chains that are not ours. Every other rule
// stays, including rules that merely mention CANOPY (comments, match arguments) and jumps to look-alike
// chains (CANOPYX).
func Plan(t Saved) TablePlan {
	p := TablePlan{Table: t.Table}
	declared := map[string]bool{}
	for _, c := range t.Chains {
		declared[c] = true
		if Ours(c) {
			p.Chains = append(p.Chains, c)
		}
	}
	for _, r := range t.Rules {
		if !Ours(r.Chain) && Ours(r.Target) && declared[r.Target] {
			p.Jumps = append(p.Jumps, r)
		}
	}
	return p
}

// Tx is the single restore input that removes the plan: our chains flushed (which drops the jumps between
// them and their references to ipsets), the jumps to them deleted, then the chains deleted.
func (p TablePlan) Tx() *ipt.Tx {
	var tx ipt.Tx
	for _, c := range p.Chains {
		tx.Remove(c)
	}
	for _, j := range p.Jumps {
		tx.Raw(deleteLine(j) + "\n")
	}
	return &tx
}

// deleteLine turns a saved "-A CHAIN spec" into "-D CHAIN spec" (the rule is matched by its spec).
func deleteLine(r SavedRule) string { return "-D" + strings.TrimPrefix(r.Line, "-A") }

// describeJump names a jump in a report: "filter: -A FORWARD ... -j CANOPY-X".
func describeJump(table string, r SavedRule) string { return table + ": " + r.Line }

func describeChain(table, chain string) string { return table + ": chain " + chain }

// Tables is one iptables back end (family and flavour): its whole save output, and restore for one table.
type Tables interface {
	// SaveAll returns iptables-save output of every table (no -t: asking for a table a legacy kernel has not
	// instantiated would create it).
	SaveAll() ([]byte, error)
	// Restore runs iptables-restore --noflush on one table's input.
	Restore(table string, data []byte) error
}

// Xtables runs one back end's save and restore binaries, e.g. ip6tables-legacy-save and
// ip6tables-legacy-restore, in the calling thread's network namespace.
type Xtables struct {
	Name          string // "iptables-nft", "ip6tables-legacy", ...
	save, restore string
	legacy        bool
}

// Backends are the four iptables back ends cleanup looks at: IPv4 and IPv6, nft and legacy.
var Backends = []struct {
	Family string // "iptables" or "ip6tables"
	Flavor ipt.Flavour
}{{"iptables", ipt.NFT}, {"iptables", ipt.Legacy}, {"ip6tables", ipt.NFT}, {"ip6tables", ipt.Legacy}}

// NewXtables finds the binaries of family ("iptables" or "ip6tables") and flavour f; an error says which
// binary is missing (that back end cannot be looked at).
func NewXtables(family string, f ipt.Flavour) (*Xtables, error) {
	name := family + "-" + string(f)
	x := &Xtables{Name: name, legacy: f == ipt.Legacy}
	var err error
	if x.save, err = exec.LookPath(name + "-save"); err != nil {
		return nil, fmt.Errorf("%s-save not found", name)
	}
	if x.restore, err = exec.LookPath(name + "-restore"); err != nil {
		return nil, fmt.Errorf("%s-restore not found", name)
	}
	return x, nil
}

// SaveAll implements Tables.
func (x *Xtables) SaveAll() ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(x.save)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", x.save, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Restore implements Tables.
func (x *Xtables) Restore(table string, data []byte) error {
	args := []string{"--noflush"}
	if x.legacy {
		args = append(args, "-w", "5") // the xtables lock; nft needs none
	}
	cmd := exec.Command(x.restore, args...)
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s (table %s): %w: %s", x.restore, table, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeTables removes our chains and the jumps to them from every table of one back end, one restore per
// table; if a table's restore fails it retries item by item (each jump alone, then our chains flushed, then
// each chain alone) so that one bad rule does not keep the rest. The outcome is read back from the kernel.
func removeTables(t Tables, dryRun bool, s *Section) {
	out, err := t.SaveAll()
	if err != nil {
		if strings.Contains(err.Error(), "not supported") {
			// The kernel has no such back end (no nf_tables, no ip6_tables): nothing of ours can be in it.
			s.Skipped = "the kernel does not support it: " + err.Error()
			return
		}
		s.fail("save", err)
		return
	}
	var plans []TablePlan
	for _, tb := range ParseSave(out) {
		if p := Plan(tb); !p.Empty() {
			plans = append(plans, p)
		}
	}
	if dryRun {
		for _, p := range plans {
			s.planned(p)
		}
		return
	}
	if len(plans) == 0 {
		return
	}
	itemErr := map[string]error{}  // item -> why it failed alone
	tableErr := map[string]error{} // table -> why its one restore failed
	for _, p := range plans {
		tx := p.Tx()
		err := t.Restore(p.Table, tx.Bytes(p.Table))
		if err == nil {
			continue
		}
		for _, j := range p.Jumps {
			var one ipt.Tx
			one.Raw(deleteLine(j) + "\n")
			if e := t.Restore(p.Table, one.Bytes(p.Table)); e != nil {
				itemErr[describeJump(p.Table, j)] = e
			}
		}
		var flush ipt.Tx
		for _, c := range p.Chains {
			flush.Declare(c)
		}
		if e := t.Restore(p.Table, flush.Bytes(p.Table)); e != nil {
			err = errors.Join(err, e)
		}
		for _, c := range p.Chains {
			one := fmt.Sprintf("*%s\n-X %s\nCOMMIT\n", p.Table, c)
			if e := t.Restore(p.Table, []byte(one)); e != nil {
				itemErr[describeChain(p.Table, c)] = e
			}
		}
		tableErr[p.Table] = err
	}
	after, err := t.SaveAll()
	if err != nil {
		s.fail("save after removal", err)
		return
	}
	left := map[string]int{}
	for _, tb := range ParseSave(after) {
		p := Plan(tb)
		for _, j := range p.Jumps {
			left[describeJump(tb.Table, j)]++
		}
		for _, c := range p.Chains {
			left[describeChain(tb.Table, c)]++
		}
	}
	for _, p := range plans {
		for _, item := range p.items() {
			if left[item] > 0 {
				left[item]--
				e := itemErr[item]
				if e == nil {
					e = tableErr[p.Table]
				}
				if e == nil {
					e = errors.New("still there after the restore (re-created by a running agent?)")
				}
				s.fail(item, e)
				continue
			}
			s.removed(item)
		}
	}
}

// items are the plan's report lines: jumps first, then chains.
func (p TablePlan) items() []string {
	var out []string
	for _, j := range p.Jumps {
		out = append(out, describeJump(p.Table, j))
	}
	for _, c := range p.Chains {
		out = append(out, describeChain(p.Table, c))
	}
	return out
}

func (s *Section) planned(p TablePlan) {
	for _, item := range p.items() {
		s.removed(item)
	}
}
