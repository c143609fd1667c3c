package ipt

import (
	"fmt"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Chains returns the names of table's chains (the built-in ones only where they exist: iptables-nft makes them
// when first used, where iptables-nft-save shows them always). With iptables-nft they are read over a netfilter netlink socket
// in the calling thread's network namespace, the chains only: iptables-nft-save reads and prints every rule
// too, which for a nat table with 10,000 Services' chains (60,000) took 33 s of an agent's restart on a
// loaded 2-core machine, where this dump takes well under a second. Legacy, and a failed dump, use Save.
func (e *Restorer) Chains(table string) (map[string]bool, error) {
	if !e.legacy {
		family := uint8(unix.AF_INET)
		if strings.Contains(e.save, "ip6tables") {
			family = unix.AF_INET6
		}
		if set, err := NFTChains(family, table); err == nil {
			return set, nil
		}
	}
	out, err := e.Save(table)
	if err != nil {
		return nil, err
	}
	return SavedChainSet(out), nil
}

// nfgenmsg is the netfilter netlink header of a request (struct nfgenmsg).
type nfgenmsg struct{ family uint8 }

func (m nfgenmsg) Len() int          { return 4 }
func (m nfgenmsg) Serialize() []byte { return []byte{m.family, unix.NFNETLINK_V0, 0, 0} }

// NFTChains dumps the chains of the nftables table (family unix.AF_INET or AF_INET6, e.g. iptables-nft's
// "nat") over netlink: names only, no rules. A missing table has no chains.
func NFTChains(family uint8, table string) (map[string]bool, error) {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETCHAIN, unix.NLM_F_DUMP)
	req.AddData(nfgenmsg{family: family})
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return nil, fmt.Errorf("nftables chain dump: %w", err)
	}
	set := map[string]bool{}
	for _, m := range msgs {
		if len(m) < 4 {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[4:])
		if err != nil {
			return nil, fmt.Errorf("nftables chain dump: %w", err)
		}
		var tbl, name string
		for _, a := range attrs {
			switch a.Attr.Type &^ unix.NLA_F_NESTED {
			case unix.NFTA_CHAIN_TABLE:
				tbl = strings.TrimRight(string(a.Value), "\x00")
			case unix.NFTA_CHAIN_NAME:
				name = strings.TrimRight(string(a.Value), "\x00")
			}
		}
		if tbl == table && name != "" {
			set[name] = true
		}
	}
	return set, nil
}
