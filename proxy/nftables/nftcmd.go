package nftables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"

	"sigs.k8s.io/knftables"
)

// bigRunOps: transactions of at least this many operations run through nftCmd's own nft process.
const bigRunOps = 2048

// nftCmd is knftables for everything but Run of a large transaction (a bulk load, a restart's rewrite, a
// repair), which it hands to a new nft process itself. knftables writes each transaction into one buffer
// that it keeps, at its largest size, for the next: after a bulk load of 10,000 Services with 50,000
// endpoints that was 32 MB of the agent's heap for its lifetime (a quarter of it). Here the script is a
// string that is garbage once nft has read it.
//
// knftables is created on first use: knftables.New runs nft twice to check it, and nft 1.0.6 reads the whole
// ruleset each time (about a second next to 10,000 Services), once per table of Shards; a restart that finds
// its tables current, and small changes, go over netlink and never need nft.
type nftCmd struct {
	fam     family
	table   string
	path    string
	bigRuns int // transactions run here (for tests)

	mu    sync.Mutex
	inner knftables.Interface // nil until the first use (or while knftables.New fails)
}

var _ knftables.Interface = (*nftCmd)(nil)

func newNFTCmd(fam family, table string) (knftables.Interface, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, err
	}
	return &nftCmd{fam: fam, table: table, path: path}, nil
}

// knft returns knftables for the table, creating it on the first call (again after a failure).
func (n *nftCmd) knft() (knftables.Interface, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.inner == nil {
		nft, err := knftables.New(n.fam.nft, n.table)
		if err != nil {
			return nil, err
		}
		n.inner = nft
	}
	return n.inner, nil
}

// NewTransaction implements knftables.Interface. If nft cannot run, the transaction is one Run refuses.
func (n *nftCmd) NewTransaction() *knftables.Transaction {
	nft, err := n.knft()
	if err != nil {
		return knftables.NewFake(n.fam.nft, n.table).NewTransaction()
	}
	return nft.NewTransaction()
}

// Check implements knftables.Interface.
func (n *nftCmd) Check(ctx context.Context, tx *knftables.Transaction) error {
	nft, err := n.knft()
	if err != nil {
		return err
	}
	return nft.Check(ctx, tx)
}

// List implements knftables.Interface.
func (n *nftCmd) List(ctx context.Context, objectType string) ([]string, error) {
	nft, err := n.knft()
	if err != nil {
		return nil, err
	}
	return nft.List(ctx, objectType)
}

// ListRules implements knftables.Interface.
func (n *nftCmd) ListRules(ctx context.Context, chain string) ([]*knftables.Rule, error) {
	nft, err := n.knft()
	if err != nil {
		return nil, err
	}
	return nft.ListRules(ctx, chain)
}

// ListElements implements knftables.Interface.
func (n *nftCmd) ListElements(ctx context.Context, objectType, name string) ([]*knftables.Element, error) {
	nft, err := n.knft()
	if err != nil {
		return nil, err
	}
	return nft.ListElements(ctx, objectType, name)
}

// Run runs tx as knftables does (`nft -f -`, atomic), in its own buffer when tx is large.
func (n *nftCmd) Run(ctx context.Context, tx *knftables.Transaction) error {
	nft, err := n.knft()
	if err != nil {
		return err
	}
	if tx.NumOperations() < bigRunOps {
		return nft.Run(ctx, tx)
	}
	n.bigRuns++
	script := tx.String()
	if i := strings.LastIndex(script, "# ERROR: "); i >= 0 && !strings.Contains(script[i:], "\n") {
		return fmt.Errorf("nftables transaction: %s", script[i+len("# ERROR: "):]) // knftables' tx.err
	}
	cmd := exec.CommandContext(ctx, n.path, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 { // nft repeats its error for each failing line
			msg = msg[:2000] + " [...]"
		}
		return fmt.Errorf("running %q: %w: %s", strings.Join(cmd.Args, " "), err, msg)
	}
	return nil
}
