package nftables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"

	"sigs.k8s.io/knftables"
)

// bigRunOps: transactions of at least this many operations run through nftCmd's own nft process.
const bigRunOps = 2048

// nftCmd is knftables for everything but Run of a large transaction (a bulk load, a restart's rewrite, a
// repair), which it hands to a new nft process itself. knftables writes each transaction into one buffer
// that it keeps, at its largest size, for the next: after a bulk load of 10,000 Services with 50,000
// endpoints that was 32 MB of the agent's heap for its lifetime (a quarter of it). Here the script is a
// string that is garbage once nft has read it.
type nftCmd struct {
	knftables.Interface
	path    string
	bigRuns int // transactions run here (for tests)
}

func newNFTCmd(fam family, table string) (knftables.Interface, error) {
	nft, err := knftables.New(fam.nft, table)
	if err != nil {
		return nil, err
	}
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, err
	}
	return &nftCmd{Interface: nft, path: path}, nil
}

// Run runs tx as knftables does (`nft -f -`, atomic), in its own buffer when tx is large.
func (n *nftCmd) Run(ctx context.Context, tx *knftables.Transaction) error {
	if tx.NumOperations() < bigRunOps {
		return n.Interface.Run(ctx, tx)
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
