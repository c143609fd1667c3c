package ipt

import (
	"fmt"
	"strings"
	"testing"

	"canopy.io/canopy/internal/testsupport/testns"
)

// TestChainsOverNetlink: in a fresh namespace, the chains of iptables-nft's nat table read over netlink are the
// ones iptables-nft-save shows, besides the built-in chains (also with 2,000 of them, several dump messages), a missing table has none,
// and legacy falls back to save.
func TestChainsOverNetlink(t *testing.T) {
	testns.Require(t, "iptables-nft-restore", "iptables-nft-save")
	ns := testns.New(t, "iptch")
	var in strings.Builder
	in.WriteString("*nat\n")
	for i := range 2000 {
		fmt.Fprintf(&in, ":CANOPY-SVC-%05d - [0:0]\n", i)
	}
	in.WriteString("-A CANOPY-SVC-00001 -j RETURN\nCOMMIT\n")
	r := NewRestorer(NFT)
	err := ns.Do(func() error {
		if got, err := NFTChains(2, "nat"); err != nil || len(got) != 0 {
			return fmt.Errorf("before any rule: %v %v", got, err)
		}
		if err := r.Restore("nat", []byte(in.String())); err != nil {
			return err
		}
		got, err := r.Chains("nat")
		if err != nil {
			return err
		}
		out, err := r.Save("nat")
		if err != nil {
			return err
		}
		want := SavedChainSet(out)
		for _, b := range []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} {
			delete(want, b) // iptables-nft-save shows the built-in chains also where it has not made them yet
			delete(got, b)
		}
		if len(got) != len(want) || len(got) < 2000 {
			return fmt.Errorf("netlink: %d chains, iptables-nft-save: %d", len(got), len(want))
		}
		for c := range want {
			if !got[c] {
				return fmt.Errorf("chain %s missing from the netlink dump", c)
			}
		}
		if f, err := r.Chains("filter"); err != nil || len(f) != 0 {
			return fmt.Errorf("filter (no table): %v %v", f, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
