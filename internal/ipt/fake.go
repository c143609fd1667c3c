package ipt

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory iptables for unit tests: it takes iptables-restore input (declare, -A, -I, -D, -X), prints
// iptables-save and `iptables -S chain`, and edits single rules, as a Host does. Rules are kept as the spec text
// written (no normalisation).
type Fake struct {
	mu       sync.Mutex
	tables   map[string]map[string][]string // table -> chain -> rules
	Restores int                            // restore inputs applied
	Edits    int                            // single-rule edits
}

// NewFake returns a Fake with the built-in chains of the nat and filter tables.
func NewFake() *Fake {
	f := &Fake{tables: map[string]map[string][]string{}}
	for _, c := range []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} {
		f.chains("nat")[c] = nil
	}
	for _, c := range []string{"INPUT", "FORWARD", "OUTPUT"} {
		f.chains("filter")[c] = nil
	}
	return f
}

func (f *Fake) chains(table string) map[string][]string {
	if f.tables[table] == nil {
		f.tables[table] = map[string][]string{}
	}
	return f.tables[table]
}

// Rules returns a chain's rules (nil if it does not exist).
func (f *Fake) Rules(table, chain string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.chains(table)[chain])
}

// HasChain reports whether the chain exists.
func (f *Fake) HasChain(table, chain string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.chains(table)[chain]
	return ok
}

// Restore implements RestoreSaver.
func (f *Fake) Restore(table string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := map[string][]string{}
	for c, r := range f.chains(table) {
		next[c] = slices.Clone(r)
	}
	for i, l := range strings.Split(string(data), "\n") {
		switch {
		case l == "" || l == "COMMIT" || strings.HasPrefix(l, "*"):
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			next[name] = nil
		case strings.HasPrefix(l, "-X "):
			delete(next, strings.TrimPrefix(l, "-X "))
		default:
			op, rest, _ := strings.Cut(l, " ")
			chain, spec, _ := strings.Cut(rest, " ")
			if _, ok := next[chain]; !ok {
				return fmt.Errorf("fake iptables-restore: line %d: chain %s does not exist", i+1, chain)
			}
			switch op {
			case "-A":
				next[chain] = append(next[chain], spec)
			case "-I":
				if n, s, ok := strings.Cut(spec, " "); ok && strings.Trim(n, "0123456789") == "" {
					spec = s
				}
				next[chain] = append([]string{spec}, next[chain]...)
			case "-D":
				j := slices.Index(next[chain], spec)
				if j < 0 {
					return fmt.Errorf("fake iptables-restore: line %d: no rule %q in %s", i+1, spec, chain)
				}
				next[chain] = slices.Delete(next[chain], j, j+1)
			default:
				return fmt.Errorf("fake iptables-restore: line %d: %q", i+1, l)
			}
		}
	}
	f.tables[table] = next
	f.Restores++
	return nil
}

// Save implements RestoreSaver.
func (f *Fake) Save(table string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b bytes.Buffer
	b.WriteString("*" + table + "\n")
	names := make([]string, 0, len(f.chains(table)))
	for c := range f.chains(table) {
		names = append(names, c)
	}
	slices.Sort(names)
	for _, c := range names {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range names {
		for _, r := range f.chains(table)[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, r)
		}
	}
	b.WriteString("COMMIT\n")
	return b.Bytes(), nil
}

// List implements ChainLister.
func (f *Fake) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, ok := f.chains(table)[chain]
	if !ok {
		return nil, fmt.Errorf("fake iptables: no chain %s", chain)
	}
	out := []string{"-N " + chain}
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

func join(rule []string) string { return quoteSpec(rule) }

// Exists implements RuleEditor.
func (f *Fake) Exists(table, chain string, rule ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.chains(table)[chain], join(rule)), nil
}

// Insert implements RuleEditor (at the top, whatever pos).
func (f *Fake) Insert(table, chain string, _ int, rule ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chains(table)[chain] = append([]string{join(rule)}, f.chains(table)[chain]...)
	f.Edits++
	return nil
}

// Append implements RuleEditor.
func (f *Fake) Append(table, chain string, rule ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chains(table)[chain] = append(f.chains(table)[chain], join(rule))
	f.Edits++
	return nil
}

// DeleteIfExists implements RuleEditor.
func (f *Fake) DeleteIfExists(table, chain string, rule ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules := f.chains(table)[chain]
	if j := slices.Index(rules, join(rule)); j >= 0 {
		f.chains(table)[chain] = slices.Delete(rules, j, j+1)
		f.Edits++
	}
	return nil
}
