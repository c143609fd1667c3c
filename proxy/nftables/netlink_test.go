package nftables

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"canopy.io/canopy/internal/model"
	"canopy.io/canopy/internal/testsupport/testns"
)

// netlinkSteps are service port changes of every shape build writes: each step is synced on its own (small
// transactions: the netlink transport writes them).
func netlinkSteps(v6 bool) [][]*model.ServicePort {
	a := func(s4, s6 string) string {
		if v6 {
			return s6
		}
		return s4
	}
	e := func(s4, s6 string, port uint16) model.Endpoint { return ep(a(s4, s6), port) }
	plain := svc("default", "plain", a("10.96.0.10", "fd00:96::10"), 80, e("10.244.1.10", "fd00:244:1::10", 8080), e("10.245.2.10", "fd00:244:2::10", 8080))
	np := svc("default", "np", a("10.96.0.11", "fd00:96::11"), 80, e("10.244.1.10", "fd00:244:1::10", 8080))
	np.NodePort = 30080
	np.ExternalIPs = []netip.Addr{addr(a("203.0.113.10", "2001:db8:e::10"))}
	np.LoadBalancerIPs = []netip.Addr{addr(a("198.51.100.10", "2001:db8:b::10"))}
	local := svc("default", "local", a("10.96.0.12", "fd00:96::12"), 443, e("10.244.1.10", "fd00:244:1::10", 8443), e("10.244.1.11", "fd00:244:1::11", 8443))
	local.NodePort, local.ExternalPolicyLocal = 30443, true
	local.ExternalEndpoints = local.ClusterEndpoints[1:]
	localNone := svc("default", "localnone", a("10.96.0.13", "fd00:96::13"), 443, e("10.244.1.10", "fd00:244:1::10", 8443))
	localNone.NodePort, localNone.ExternalPolicyLocal, localNone.ExternalEndpoints = 30444, true, nil
	sticky := svc("default", "sticky", a("10.96.0.14", "fd00:96::14"), 80, e("10.244.1.10", "fd00:244:1::10", 8080), e("10.244.1.12", "fd00:244:1::12", 8080))
	sticky.AffinityClientIP, sticky.AffinityTimeout = true, 30*time.Second
	udp := svc("kube-system", "dns", a("10.96.0.53", "fd00:96::53"), 53, e("10.244.1.20", "fd00:244:1::20", 5353))
	udp.Key, udp.Protocol = "kube-system/dns:dns/UDP", model.UDP
	sctp := svc("default", "sctp", a("10.96.0.15", "fd00:96::15"), 9999, e("10.244.1.10", "fd00:244:1::10", 9999))
	sctp.Key, sctp.Protocol = "default/sctp:x/SCTP", model.SCTP
	empty := svc("default", "empty", a("10.96.0.16", "fd00:96::16"), 80)
	empty.NodePort = 30090
	var many []model.Endpoint
	for i := range 20 {
		many = append(many, e(fmt.Sprintf("10.244.3.%d", i+1), fmt.Sprintf("fd00:244:3::%x", i+1), 8080))
	}
	big := svc("default", "big", a("10.96.0.17", "fd00:96::17"), 80, many...)

	// Changes: endpoints move, affinity timeout changes (a new set), the node port goes, a service empties.
	plain2 := *plain
	plain2.ClusterEndpoints = []model.Endpoint{plain.ClusterEndpoints[0], e("10.250.0.1", "fd00:250::1", 8080)}
	plain2.ExternalEndpoints = plain2.ClusterEndpoints
	sticky2 := *sticky
	sticky2.AffinityTimeout = time.Minute
	np2 := *np
	np2.NodePort, np2.ExternalIPs = 0, nil
	local2 := *local
	local2.ExternalEndpoints = local.ClusterEndpoints
	empty2 := *empty
	empty2.ClusterEndpoints = []model.Endpoint{e("10.244.1.30", "fd00:244:1::30", 80)}
	empty2.ExternalEndpoints = empty2.ClusterEndpoints
	plainGone := &model.ServicePort{Key: plain.Key} // Port 0: deleted
	// 500 node ports in one sync: 7,500 operations (a paced sync of a bulk load), near the most the netlink
	// transport takes (maxNetlinkOps).
	var manyNP []*model.ServicePort
	for i := range 500 {
		sp := svc("bulk", fmt.Sprintf("s%d", i), a(fmt.Sprintf("10.96.%d.%d", 2+i/250, i%250+1), fmt.Sprintf("fd00:96::2:%x", i+1)), 80,
			e(fmt.Sprintf("10.244.%d.%d", 4+i/250, i%250+1), fmt.Sprintf("fd00:244:4::%x", i+1), 8080), e(fmt.Sprintf("10.245.%d.%d", 5+i/250, i%250+1), fmt.Sprintf("fd00:244:5::%x", i+1), 8080))
		sp.NodePort = uint16(31000 + i)
		manyNP = append(manyNP, sp)
	}
	return [][]*model.ServicePort{
		{plain}, {np}, {local}, {localNone}, {sticky}, {udp}, {sctp}, {empty}, {big},
		{&plain2}, {&sticky2}, {&np2}, {&local2}, {&empty2}, {plainGone}, {np, sticky}, manyNP,
	}
}

// TestNetlinkMatchesNft programs the same changes through the netlink transport and through nft, each in a
// namespace of its own, and compares `nft list table` after every step: the netlink transport writes what nft
// writes (rules, map elements, sets), for both families and the masquerade configurations.
func TestNetlinkMatchesNft(t *testing.T) {
	requireNft(t)
	for _, tc := range []struct {
		name string
		v6   bool
		cfg  Config
	}{
		{"ipv4-cidr14", false, Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/14")}}},
		{"ipv4-cidr16-nodeip", false, Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, NodeIPs: []netip.Addr{addr("10.0.1.1")}}},
		{"ipv4-masqall", false, Config{MasqueradeAll: true}},
		{"ipv6", true, Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:244::/56"), netip.MustParsePrefix("10.244.0.0/16")}}},
		{"ipv6-cidr50", true, Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:244::/50")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nsNL, nsNft := testns.New(t, "nft-nl"), testns.New(t, "nft-cli")
			newP := func(ns *testns.NS, netlink bool) *Proxier {
				var p *Proxier
				if err := ns.Do(func() (err error) {
					if tc.v6 {
						p, err = NewHost6(tc.cfg, nil)
					} else {
						p, err = NewHost(tc.cfg, nil)
					}
					return err
				}); err != nil {
					t.Fatal(err)
				}
				if !netlink {
					p.nl = nil
				}
				p.log = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
				return p
			}
			pNL, pNft := newP(nsNL, true), newP(nsNft, false)
			desired := map[string]*model.ServicePort{}
			sync := func(ns *testns.NS, p *Proxier, keys []string) {
				t.Helper()
				if err := ns.Do(func() error { return p.Sync(desired, keys) }); err != nil {
					t.Fatalf("%s: %v", ns.Name, err)
				}
			}
			fam := "ip"
			if tc.v6 {
				fam = "ip6"
			}
			list := func(ns *testns.NS) string {
				out := ns.MustRun(t, "nft", "list", "table", fam, TableName)
				lines := strings.Split(out, "\n")
				for i := range lines {
					lines[i] = strings.TrimSpace(lines[i])
				}
				slices.Sort(lines) // chain order follows creation order, elements their hash
				return strings.Join(lines, "\n")
			}
			// The first sync is full, with a port of its own: a sync while nothing is applied covers everything
			// applied, so it would be full too.
			seed := svc("default", "seed", "10.96.1.1", 80, ep("10.244.1.1", 80))
			if tc.v6 {
				seed = svc("default", "seed", "fd00:96::1:1", 80, ep("fd00:244:1::1", 80))
			}
			desired[seed.Key] = seed
			sync(nsNL, pNL, []string{seed.Key})
			sync(nsNft, pNft, []string{seed.Key})
			for i, step := range netlinkSteps(tc.v6) {
				var keys []string
				for _, sp := range step {
					if sp.Port == 0 {
						delete(desired, sp.Key)
					} else {
						desired[sp.Key] = sp
					}
					keys = append(keys, sp.Key)
				}
				sync(nsNL, pNL, keys)
				sync(nsNft, pNft, keys)
				if got, want := list(nsNL), list(nsNft); got != want {
					t.Fatalf("step %d (%s): the netlink transport wrote\n%s\n\nnft wrote\n%s", i, keys, got, want)
				}
				// The maps' elements read over netlink (as a restart does) are what nft lists.
				for _, m := range sharedMaps {
					var got, want []string
					if err := nsNL.Do(func() error {
						els, err := pNL.nl.mapElements(m)
						for _, e := range els {
							got = append(got, e.id()+" : "+e.value)
						}
						if err != nil {
							return err
						}
						kels, err := pNL.nft.ListElements(context.Background(), "map", m)
						for _, e := range kels {
							want = append(want, elemPlan{m: m, key: e.Key, value: strings.Join(e.Value, " . ")}.id()+" : "+strings.Join(e.Value, " . "))
						}
						return err
					}); err != nil {
						t.Fatalf("step %d, map %s: %v", i, m, err)
					}
					slices.Sort(got)
					slices.Sort(want)
					if !slices.Equal(got, want) {
						t.Fatalf("step %d, map %s: over netlink\n%s\nnft lists\n%s", i, m, strings.Join(got, "\n"), strings.Join(want, "\n"))
					}
				}
			}
			// The 20-endpoint port has a numgen vmap: nft wrote that transaction; the seed's and every other
			// step's went over netlink (Start wrote the shared objects).
			if n := len(netlinkSteps(tc.v6)); pNL.nl.runs != n {
				t.Errorf("%d transactions over netlink, want %d", pNL.nl.runs, n)
			}
		})
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
