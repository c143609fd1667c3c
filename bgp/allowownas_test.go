package bgp

import (
	"net/netip"
	"testing"
)

// A BGPPeer's allowOwnAS (allowas-in) reaches the peer's desired session and GoBGP's peer configuration, where
// it lets routes carrying our own AS that often through (nodes sharing an ASN behind a ToR without as-override).
func TestAllowOwnASReachesGoBGP(t *testing.T) {
	tor := netip.MustParseAddr("10.99.1.1")
	peers, _ := DesiredPeers(NodeInfo{Name: "n1", IP: netip.MustParseAddr("10.99.1.13")}, nil,
		PeerSources{ClusterASN: 65002, Objects: []PeerConfig{{Address: tor, ASN: 64501, AllowOwnAS: 1, Source: "BGPPeer/rack2"}}})
	if len(peers) != 1 || peers[0].AllowOwnAS != 1 {
		t.Fatalf("desired peers %+v, want one with AllowOwnAS 1", peers)
	}
	if got := (&GoBGP{}).peer(peers[0]).Conf.AllowOwnAsn; got != 1 {
		t.Fatalf("GoBGP peer AllowOwnAsn %d, want 1", got)
	}
	if got := (&GoBGP{}).peer(PeerSpec{Address: tor, ASN: 64501}).Conf.AllowOwnAsn; got != 0 {
		t.Fatalf("default AllowOwnAsn %d, want 0", got)
	}
}
