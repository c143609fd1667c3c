package cleanup

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
)

// NFTTable is the name of the nftables service proxy's table (proxy/nftables.TableName): everything that back
// end writes lives in it and in its shards' tables, NFTTable-<n> (proxy/nftables.ShardTable), in family ip
// and ip6.
const NFTTable = "canopy"

// isNFTTable reports whether name is NFTTable or one of its shards' (NFTTable-<n>).
func isNFTTable(name string) bool {
	if name == NFTTable {
		return true
	}
	n, ok := strings.CutPrefix(name, NFTTable+"-")
	if !ok || n == "" || n[0] == '0' {
		return false
	}
	return strings.Trim(n, "0123456789") == ""
}

// NFT is the part of the nft tool cleanup uses.
type NFT interface {
	// Tables lists "family name" of every table (`nft list tables`).
	Tables() ([]string, error)
	// DeleteTable deletes one table with everything in it.
	DeleteTable(family, name string) error
}

// NFTBinary runs the nft binary in the calling thread's network namespace.
type NFTBinary struct{ Path string }

// Tables implements NFT.
func (n NFTBinary) Tables() ([]string, error) {
	out, err := n.run("list", "tables")
	if err != nil {
		return nil, err
	}
	var tables []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "table" {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	return tables, nil
}

// DeleteTable implements NFT.
func (n NFTBinary) DeleteTable(family, name string) error {
	_, err := n.run("delete", "table", family, name)
	return err
}

func (n NFTBinary) run(args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(n.Path, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// removeNFT deletes every nftables table named NFTTable or NFTTable-<n>, whatever its family (other tables, including the ones
// iptables-nft keeps, are not looked into), then lists again.
func removeNFT(n NFT, dryRun bool, s *Section) {
	tables, err := n.Tables()
	if err != nil {
		s.fail("list tables", err)
		return
	}
	var ours []string
	for _, t := range tables {
		if fam, name, _ := strings.Cut(t, " "); isNFTTable(name) {
			ours = append(ours, fam+" "+name)
		}
	}
	for _, t := range ours {
		item := "table " + t
		if dryRun {
			s.removed(item)
			continue
		}
		fam, name, _ := strings.Cut(t, " ")
		if err := n.DeleteTable(fam, name); err != nil {
			s.fail(item, err)
			continue
		}
		s.removed(item)
	}
}
