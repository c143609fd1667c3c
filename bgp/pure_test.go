package bgp

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func TestParsePeersAnnotation(t *testing.T) {
	got, err := ParsePeersAnnotation(`[{"ip":"10.99.0.250","asn":65001,"password":"s3cret"},{"ip":"10.99.0.251","asn":"1.1","multihopTTL":3}]`)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Password != "s3cret" || got[1].ASN != 65537 || got[1].MultihopTTL != 3 {
		t.Fatalf("got %+v", got)
	}
	yamlForm, err := ParsePeersAnnotation("- ip: 10.99.0.250\n  asn: 65001\n")
	if err != nil || len(yamlForm) != 1 || yamlForm[0].ASN != 65001 {
		t.Fatalf("yaml form: %+v, %v", yamlForm, err)
	}
	// ASNs are integers or strings, never floats: 4-byte ASNs stay exact, and a YAML 1.10 is not AS 65537.
	big, err := ParsePeersAnnotation("- ip: 10.99.0.250\n  asn: 4200000000\n- ip: 10.99.0.251\n  asn: \"1.10\"\n")
	if err != nil || big[0].ASN != 4200000000 || big[1].ASN != 65546 {
		t.Fatalf("4-byte and asdot ASNs: %+v, %v", big, err)
	}
	if p, err := ParsePeersAnnotation("  "); err != nil || p != nil {
		t.Fatalf("empty annotation: %v %v", p, err)
	}
	bad := map[string]string{
		`not yaml: [`:                                           "not a list",
		`{"ip":"10.0.0.1","asn":1}`:                             "not a list",
		`[{"ip":"10.0.0.1","asn":1,"colour":"red"}]`:            "colour",
		`[{"ip":"10.0.0.999","asn":1}]`:                         `canopy.io/peers[0].ip: "10.0.0.999"`,
		`[{"ip":"10.0.0.1"}]`:                                   "[0].asn: missing",
		`[{"ip":"10.0.0.1","asn":0}]`:                           "reserved",
		`[{"ip":"10.0.0.1","asn":"lots"}]`:                      "[0].asn",
		`[{"ip":"10.0.0.1","asn":1},{"ip":"10.0.0.1","asn":2}]`: "[1].ip: 10.0.0.1 listed twice",
		`[{"ip":"127.0.0.1","asn":1}]`:                          "cannot be a BGP peer",
		`[{"ip":"10.0.0.1","asn":1,"multihopTTL":256}]`:         "multihopTTL",
		"- ip: 10.0.0.1\n  asn: 1.10\n":                         "not an integer AS number",
		`[{"ip":"10.0.0.1","asn":-5}]`:                          "not an integer AS number",
	}
	for in, want := range bad {
		if _, err := ParsePeersAnnotation(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePeersAnnotation(%s): error %v, want it to mention %q", in, err, want)
		}
	}
}

func TestParseNodeASN(t *testing.T) {
	if a, err := ParseNodeASN(""); a != 0 || err != nil {
		t.Fatal(a, err)
	}
	if a, err := ParseNodeASN("65010"); a != 65010 || err != nil {
		t.Fatal(a, err)
	}
	if _, err := ParseNodeASN("sixty"); err == nil || !strings.Contains(err.Error(), AnnotationNodeASN) {
		t.Fatal(err)
	}
}

func TestDesiredPeers(t *testing.T) {
	self := NodeInfo{Name: "n1", IP: addr("10.99.0.11")}
	nodes := []NodeInfo{
		self,
		{Name: "n2", IP: addr("10.99.0.12")},
		{Name: "n3", IP: addr("10.99.0.13"), ASN: 65003},
		{Name: "n4"}, // no address yet: skipped
	}
	flagPeers := []PeerConfig{{Address: addr("10.99.0.1"), ASN: 64500, TTLSecurity: true}}
	annPeers := []PeerConfig{{Address: addr("10.99.0.12"), ASN: 65100, Password: "x", MaxPrefixes: 10}} // overrides mesh peer n2
	mesh := MeshOptions{FullMesh: true, Password: "mesh", TTLSecurity: true}
	got, conflicts := DesiredPeers(self, nodes, PeerSources{ClusterASN: 64512, Mesh: mesh, MaxPrefixes: 1000, Flag: flagPeers, Annotation: annPeers})
	want := []PeerSpec{
		{Address: addr("10.99.0.1"), ASN: 64500, Kind: PeerKindExternal, Name: "flag", TTLSecurity: true, MaxPrefixes: 1000},
		{Address: addr("10.99.0.12"), ASN: 65100, Password: "x", Kind: PeerKindExternal, Name: "annotation", MaxPrefixes: 10},
		// higher address: we dial it; node sessions take the mesh's password and GTSM
		{Address: addr("10.99.0.13"), ASN: 65003, Kind: PeerKindNode, Name: "n3", Password: "mesh", TTLSecurity: true, MaxPrefixes: 1000},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("peer %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if len(conflicts) != 1 || conflicts[0].Address != addr("10.99.0.12") || conflicts[0].Winner != "annotation" ||
		!slices.Equal(conflicts[0].Losers, []string{"node mesh (n2)"}) {
		t.Errorf("conflicts = %+v", conflicts)
	}
	// The node with the higher address waits for the lower one to dial.
	if p, _ := DesiredPeers(NodeInfo{Name: "n3", IP: addr("10.99.0.13")}, nodes, PeerSources{ClusterASN: 64512, Mesh: mesh}); len(p) != 2 || !p[0].Passive || !p[1].Passive {
		t.Fatalf("from n3 every mesh peer is lower, so passive: %+v", p)
	}
	noMesh, _ := DesiredPeers(self, nodes, PeerSources{ClusterASN: 64512, Flag: flagPeers})
	if len(noMesh) != 1 || noMesh[0].Address != addr("10.99.0.1") {
		t.Fatalf("without mesh: %+v", noMesh)
	}
	// A peer pointing at ourselves is dropped.
	if p, _ := DesiredPeers(self, nil, PeerSources{ClusterASN: 64512, Mesh: mesh, Flag: []PeerConfig{{Address: self.IP, ASN: 1}}}); len(p) != 0 {
		t.Fatalf("self peer kept: %+v", p)
	}
}

// A BGPPeer wins over the annotation and the flag for the same address, and every loser is named.
func TestDesiredPeersObjectsWin(t *testing.T) {
	self := NodeInfo{Name: "n1", IP: addr("10.99.0.11")}
	tor := addr("10.99.0.1")
	yes := true
	got, conflicts := DesiredPeers(self, nil, PeerSources{ClusterASN: 64512, MaxPrefixes: 100,
		Flag:       []PeerConfig{{Address: tor, ASN: 64500}},
		Annotation: []PeerConfig{{Address: tor, ASN: 64501}},
		Objects: []PeerConfig{{Address: tor, ASN: 64502, Source: "BGPPeer/tor", Port: 1179, BFD: &yes,
			Timers: PeerTimers{Hold: 9 * time.Second, Keepalive: 3 * time.Second}, GR: GRSetting{Set: true},
			BFDTimers: BFDTimers{MinRx: 100 * time.Millisecond}, NoVIPs: true}},
	})
	want := PeerSpec{Address: tor, ASN: 64502, Port: 1179, MaxPrefixes: 100, BFD: true, BFDTimers: BFDTimers{MinRx: 100 * time.Millisecond},
		Timers: PeerTimers{Hold: 9 * time.Second, Keepalive: 3 * time.Second}, GR: GRSetting{Set: true}, NoVIPs: true,
		Kind: PeerKindExternal, Name: "BGPPeer/tor"}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if len(conflicts) != 1 || conflicts[0].Winner != "BGPPeer/tor" || !slices.Equal(conflicts[0].Losers, []string{"annotation", "flag"}) {
		t.Fatalf("conflicts = %+v", conflicts)
	}
	if s := conflicts[0].String(); !strings.Contains(s, "BGPPeer/tor wins") {
		t.Fatal(s)
	}
}

func TestImportPolicy(t *testing.T) {
	p := NewImportPolicy(PolicyInput{
		ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")},
		ImportAllow:  []netip.Prefix{pfx("192.0.2.0/24")},
		ServiceCIDRs: []netip.Prefix{pfx("10.96.0.0/16")},
		Own:          []netip.Prefix{pfx("10.244.1.0/24")},
		NodeIPs:      []netip.Addr{addr("10.99.0.13"), addr("10.99.0.11"), addr("10.244.200.5")},
		Owners:       map[netip.Prefix]netip.Addr{pfx("10.244.2.0/24"): addr("10.99.0.12"), pfx("10.244.3.0/24"): addr("10.99.0.13")},
		Routers:      []netip.Addr{addr("10.99.0.1")},
	})
	cases := map[string]string{
		"10.244.2.0/24":    "",
		"192.0.2.0/25":     "",
		"0.0.0.0/0":        RejectDefault,
		"10.0.0.0/8":       RejectOutside, // covers the cluster CIDR: not inside it
		"10.245.0.0/24":    RejectOutside,
		"198.51.100.0/24":  RejectOutside,
		"10.244.1.0/24":    RejectOwnPodCIDR,
		"10.244.1.128/25":  RejectOwnPodCIDR,
		"10.244.0.0/16":    RejectOwnPodCIDR, // covers ours
		"10.244.200.0/24":  RejectCoversNode,
		"10.244.200.5/32":  RejectCoversNode,
		"10.244.2.0/25":    RejectNotNodeCIDR, // half of node 10.99.0.12's pods
		"10.244.2.7/32":    RejectNotNodeCIDR,
		"10.244.9.0/24":    RejectNotNodeCIDR, // unallocated
		"10.244.200.16/28": RejectNotNodeCIDR,
	}
	for in, want := range cases {
		ok, reason := p.Check(pfx(in))
		if ok != (want == "") || reason != want {
			t.Errorf("Check(%s) = %v %q, want %q", in, ok, reason, want)
		}
	}
	hops := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, addr(a))
		}
		return out
	}
	for _, c := range []struct {
		prefix string
		nhs    []netip.Addr
		want   []netip.Addr
		reason string
	}{
		{"10.244.2.0/24", hops("10.99.0.12"), hops("10.99.0.12"), ""},
		{"10.244.2.0/24", hops("10.99.0.1", "10.99.0.12"), hops("10.99.0.1", "10.99.0.12"), ""}, // a router setting next hop self
		{"10.244.2.0/24", hops("10.99.0.13"), nil, RejectNotOwner},                              // another node's pods via the wrong node
		{"10.244.2.0/24", hops("10.99.0.77", "10.99.0.12"), hops("10.99.0.12"), ""},
		{"192.0.2.0/25", hops("10.99.0.77"), hops("10.99.0.77"), ""},
		{"192.0.2.0/25", hops("127.0.0.1"), nil, RejectBadNextHop},
		{"192.0.2.0/25", hops("169.254.0.1", "0.0.0.0", "224.0.0.5"), nil, RejectBadNextHop},
		{"192.0.2.0/25", hops("10.244.7.7"), nil, RejectBadNextHop}, // inside the pod network
		{"192.0.2.0/25", hops("10.96.0.1"), nil, RejectBadNextHop},  // inside the service network
		{"192.0.2.0/25", hops("fd00::1"), nil, RejectBadNextHop},
	} {
		got, reason := p.NextHops(pfx(c.prefix), c.nhs)
		if !slices.Equal(got, c.want) || reason != c.reason {
			t.Errorf("NextHops(%s, %v) = %v %q, want %v %q", c.prefix, c.nhs, got, reason, c.want, c.reason)
		}
	}
}

func TestParseASN(t *testing.T) {
	for in, want := range map[string]uint32{"64512": 64512, "1.10": 65546, "4200000000": 4200000000} {
		got, err := ParseASN(in)
		if err != nil || got != want {
			t.Errorf("ParseASN(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "4294967296", "0", "65535", "1.", "70000.1"} {
		if _, err := ParseASN(in); err == nil {
			t.Errorf("ParseASN(%q) succeeded", in)
		}
	}
}
