package ipt

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// RestoreSaver feeds iptables-restore --noflush and reads iptables-save, for one table at a time (a Restorer on
// a host, a recorder in unit tests).
type RestoreSaver interface {
	// Restore runs `iptables-restore --noflush` on data (which holds "*table ... COMMIT").
	Restore(table string, data []byte) error
	// Save returns `iptables-save -t table`.
	Save(table string) ([]byte, error)
}

// Tx is one iptables-restore input for one table, applied atomically: chains declared (created, or flushed if
// they exist), rules written, existing rules edited, chains deleted. Every Canopy data path (the service proxy,
// NetworkPolicy, pod egress) writes its chains through it.
type Tx struct {
	decl, rules, del bytes.Buffer
	declared         map[string]bool
}

// Declare creates chain, or flushes it if it exists (its rules are then the ones written after).
func (t *Tx) Declare(chain string) {
	if t.declared == nil {
		t.declared = map[string]bool{}
	}
	if !t.declared[chain] {
		t.declared[chain] = true
		t.decl.WriteString(":" + chain + " - [0:0]\n")
	}
}

// Rule appends "-A chain spec".
func (t *Tx) Rule(chain, spec string) { t.rules.WriteString("-A " + chain + " " + spec + "\n") }

// Rules appends every spec to chain.
func (t *Tx) Rules(chain string, specs []string) {
	for _, s := range specs {
		t.Rule(chain, s)
	}
}

// Raw adds pre-formatted lines ("-A ...", "-I CHAIN 1 ...", "-D ..."), each ending in a newline.
func (t *Tx) Raw(lines string) { t.rules.WriteString(lines) }

// RawBuffer is the buffer Raw writes to, for writers that format many lines.
func (t *Tx) RawBuffer() *bytes.Buffer { return &t.rules }

// Remove deletes chain (flushing it first, which drops its references to other chains).
func (t *Tx) Remove(chain string) {
	t.Declare(chain)
	t.del.WriteString("-X " + chain + "\n")
}

// Declared reports whether chain is declared (or removed) in t.
func (t *Tx) Declared(chain string) bool { return t.declared[chain] }

// DeclaredChains returns the chains declared (or removed) in t.
func (t *Tx) DeclaredChains() []string {
	out := make([]string, 0, len(t.declared))
	for c := range t.declared {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// Empty reports whether t changes nothing.
func (t *Tx) Empty() bool { return t.decl.Len() == 0 && t.rules.Len() == 0 && t.del.Len() == 0 }

// Bytes is the iptables-restore input for table.
func (t *Tx) Bytes(table string) []byte {
	var out bytes.Buffer
	out.Grow(t.decl.Len() + t.rules.Len() + t.del.Len() + 32)
	out.WriteString("*" + table + "\n")
	out.Write(t.decl.Bytes())
	out.Write(t.rules.Bytes())
	out.Write(t.del.Bytes())
	out.WriteString("COMMIT\n")
	return out.Bytes()
}

// Batch is one table's change written as one or more Tx. iptables-nft-restore (1.8.9) takes time quadratic in
// the chains of one input (10,000 services × 2 endpoints: 82 s in one input, 1.5 s in chunks of 1,000 chains),
// so the chains of many objects go into chunks of at most Max chains, each its own restore; the last chunk
// (Last) carries what must change together: the shared chains that jump to the others, edits, deletions. A
// change small enough for one chunk is one atomic restore.
type Batch struct {
	Table  string
	Max    int // chains per chunk (0: no limit)
	chunks []*Tx
	n      int // chains in the current chunk
}

// NewBatch returns a Batch for table with chunks of at most max chains (0: one chunk).
func NewBatch(table string, max int) *Batch { return &Batch{Table: table, Max: max, chunks: []*Tx{{}}} }

// Chunk returns the chunk for an object with n chains, starting a new one when the current one would exceed Max.
func (b *Batch) Chunk(n int) *Tx {
	if b.Max > 0 && b.n > 0 && b.n+n > b.Max {
		b.chunks = append(b.chunks, &Tx{})
		b.n = 0
	}
	b.n += n
	return b.chunks[len(b.chunks)-1]
}

// Last is the final chunk.
func (b *Batch) Last() *Tx { return b.chunks[len(b.chunks)-1] }

// Chunks are the Txs in the order Commit writes them.
func (b *Batch) Chunks() []*Tx { return b.chunks }

// Commit restores the chunks in order and returns how many were written (all of them, or those before the one
// that failed) and the bytes written.
func (b *Batch) Commit(r RestoreSaver) (written, size int, err error) {
	for i, c := range b.chunks {
		if c.Empty() {
			continue
		}
		data := c.Bytes(b.Table)
		if err := r.Restore(b.Table, data); err != nil {
			return i, size, err
		}
		size += len(data)
	}
	return len(b.chunks), size, nil
}

// SavedChains returns the chains declared in iptables-save output, in its order.
func SavedChains(out []byte) []string {
	var chains []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, ":") {
			if name, _, ok := strings.Cut(l[1:], " "); ok {
				chains = append(chains, name)
			}
		}
	}
	return chains
}

// SavedChainSet is SavedChains as a set.
func SavedChainSet(out []byte) map[string]bool {
	set := map[string]bool{}
	for _, c := range SavedChains(out) {
		set[c] = true
	}
	return set
}

// RuleEditor is the part of go-iptables that edits single rules of the built-in chains (the jumps).
type RuleEditor interface {
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
}

// Jump is a rule of a built-in chain that sends traffic to one of ours: first in line, or last (Append).
type Jump struct {
	Table, Chain string
	Rule         []string
	Append       bool
}

// EnsureJumps adds each jump that is missing (and leaves those present alone).
func EnsureJumps(e RuleEditor, jumps ...Jump) error {
	for _, j := range jumps {
		ok, err := e.Exists(j.Table, j.Chain, j.Rule...)
		if err != nil {
			return fmt.Errorf("%s %s: %w", j.Table, j.Chain, err)
		}
		if ok {
			continue
		}
		if j.Append {
			err = e.Append(j.Table, j.Chain, j.Rule...)
		} else {
			err = e.Insert(j.Table, j.Chain, 1, j.Rule...)
		}
		if err != nil {
			return fmt.Errorf("jump from %s %s: %w", j.Table, j.Chain, err)
		}
	}
	return nil
}

// DeleteJumps removes the jumps (missing ones are fine, also when their target chain is gone too).
func DeleteJumps(e RuleEditor, jumps ...Jump) error {
	var errs []error
	for _, j := range jumps {
		if err := e.DeleteIfExists(j.Table, j.Chain, j.Rule...); err != nil && !strings.Contains(err.Error(), "does not exist") {
			errs = append(errs, fmt.Errorf("jump from %s %s: %w", j.Table, j.Chain, err))
		}
	}
	return errors.Join(errs...)
}

// ChainLister reads one chain as `iptables -S chain` prints it.
type ChainLister interface {
	List(table, chain string) ([]string, error)
}

// SyncChain makes a small chain of ours hold exactly rules (each a rule spec as written, e.g. {"-s",
// "10.244.1.0/24", "-j", "MASQUERADE"}) in one atomic restore, and only when what the kernel holds differs
// (compared as `iptables -S` prints it, ignoring quoting). It reports whether it wrote.
func SyncChain(l ChainLister, r RestoreSaver, table, chain string, rules [][]string) (bool, error) {
	have, err := l.List(table, chain)
	if err == nil && SameRules(chain, have, rules) {
		return false, nil
	}
	var tx Tx
	tx.Declare(chain)
	for _, rule := range rules {
		tx.Rule(chain, quoteSpec(rule))
	}
	if err := r.Restore(table, tx.Bytes(table)); err != nil {
		return false, fmt.Errorf("%s %s: %w", table, chain, err)
	}
	return true, nil
}

// RemoveChain deletes a chain of ours (if it exists), in one restore. Jumps to it must be gone first.
func RemoveChain(r RestoreSaver, table, chain string) error {
	out, err := r.Save(table)
	if err != nil {
		return err
	}
	if !SavedChainSet(out)[chain] {
		return nil
	}
	var tx Tx
	tx.Remove(chain)
	return r.Restore(table, tx.Bytes(table))
}

// SameRules compares `iptables -S chain` output (first line "-N chain") with the wanted rules, ignoring how
// iptables normalises quoting and spacing.
func SameRules(chain string, have []string, want [][]string) bool {
	var got []string
	for _, l := range have {
		if strings.HasPrefix(l, "-A ") {
			got = append(got, normalize(strings.TrimPrefix(l, "-A "+chain+" ")))
		}
	}
	exp := make([]string, 0, len(want))
	for _, r := range want {
		exp = append(exp, normalize(strings.Join(r, " ")))
	}
	return slices.Equal(got, exp)
}

func normalize(s string) string {
	s = strings.ReplaceAll(s, `"`, "")
	return strings.Join(strings.Fields(s), " ")
}

// quoteSpec joins a rule spec for iptables-restore, quoting the arguments with spaces (comments).
func quoteSpec(rule []string) string {
	parts := make([]string, len(rule))
	for i, a := range rule {
		if strings.ContainsAny(a, " \t\"") || a == "" {
			a = `"` + strings.ReplaceAll(a, `"`, `\"`) + `"`
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}

// Spec joins a rule spec as iptables-restore reads it (arguments with spaces quoted).
func Spec(rule []string) string { return quoteSpec(rule) }
