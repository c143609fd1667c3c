package nodesetup

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"canopy.io/canopy/cni/conflist"
	"canopy.io/canopy/internal/ipt"
)

func TestSetupAppliesOncePerPodCIDR(t *testing.T) {
	dir := t.TempDir()
	sysctl := filepath.Join(dir, "sys")
	_ = os.MkdirAll(filepath.Join(sysctl, "net/ipv4"), 0o755)
	_ = os.WriteFile(filepath.Join(sysctl, "net/ipv4/ip_forward"), []byte("0\n"), 0o644)
	plugin := filepath.Join(dir, "canopy-cni")
	_ = os.WriteFile(plugin, []byte("#!/bin/sh\n"), 0o755)
	fakeIPT := ipt.NewFake()
	s := New(Config{
		NodeName: "n1", CNIConfDir: filepath.Join(dir, "net.d"), CNIBinDir: filepath.Join(dir, "bin"), CNIPlugin: plugin,
		PodEgress: true, NoMasqTo: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, SysctlRoot: sysctl,
	}, fakeIPT, slog.New(slog.NewTextHandler(io.Discard, nil)))
	factory := informers.NewSharedInformerFactory(fake.NewSimpleClientset(), 0)
	if err := s.Start(factory); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(sysctl, "net/ipv4/ip_forward")); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("ip_forward = %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "bin", conflist.PluginName)); err != nil {
		t.Errorf("plugin not installed: %v", err)
	}
	cidr := []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}
	if err := s.Apply(cidr); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(dir, "net.d", conflist.FileName))
	if err != nil || !strings.Contains(string(conf), "10.244.3.0/24") {
		t.Fatalf("conflist %s %v", conf, err)
	}
	if rules := fakeIPT.Rules("nat", "CANOPY-POSTROUTING"); len(rules) != 2 || !strings.Contains(rules[1], "-s 10.244.3.0/24") {
		t.Fatalf("egress chain %v", rules)
	}
	writes := fakeIPT.Restores + fakeIPT.Edits
	if err := s.Apply(cidr); err != nil {
		t.Fatal(err)
	}
	if fakeIPT.Restores+fakeIPT.Edits != writes {
		t.Errorf("re-applying the same pod CIDR wrote iptables %d more times", fakeIPT.Restores+fakeIPT.Edits-writes)
	}
	if err := s.Apply([]netip.Prefix{netip.MustParsePrefix("10.244.4.0/24")}); err != nil {
		t.Fatal(err)
	}
	if conf, _ := os.ReadFile(filepath.Join(dir, "net.d", conflist.FileName)); !strings.Contains(string(conf), "10.244.4.0/24") {
		t.Errorf("conflist not rewritten for the new pod CIDR: %s", conf)
	}
}

func TestConflistFamilies(t *testing.T) {
	dual := []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")}
	v6only := []netip.Prefix{netip.MustParsePrefix("fd00:10:244:3::/64")}
	for _, tc := range []struct {
		name  string
		ipv6  bool
		cidrs []netip.Prefix
		want  string // the podCIDRs written; "" = no conflist
	}{
		{"dual-stack, IPv6 off", false, dual, `["10.244.3.0/24"]`},
		{"dual-stack, IPv6 on", true, dual, `["10.244.3.0/24","fd00:10:244:3::/64"]`},
		{"IPv6-only, IPv6 off", false, v6only, ""},
		{"IPv6-only, IPv6 on", true, v6only, `["fd00:10:244:3::/64"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := New(Config{NodeName: "n1", CNIConfDir: dir, CNIIPv6: tc.ipv6, SysctlRoot: dir},
				nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err := s.Apply(tc.cidrs); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(filepath.Join(dir, conflist.FileName))
			if tc.want == "" {
				if err == nil {
					t.Errorf("conflist written: %s", data)
				}
				return
			}
			var got struct {
				Plugins []struct {
					PodCIDRs []string `json:"podCIDRs"`
				} `json:"plugins"`
			}
			if err != nil || json.Unmarshal(data, &got) != nil || len(got.Plugins) == 0 {
				t.Fatalf("conflist %s, %v", data, err)
			}
			if b, _ := json.Marshal(got.Plugins[0].PodCIDRs); string(b) != tc.want {
				t.Errorf("podCIDRs %s, want %s", b, tc.want)
			}
		})
	}
}

// A dual-stack node writes each family's chains through its own handle: the IPv4 ones through iptables, the
// IPv6 ones (masquerade, FORWARD accept, BGP guard) through ip6tables, each with its family's prefixes only.
func TestSetupDualStackEgress(t *testing.T) {
	dir := t.TempDir()
	_ = os.MkdirAll(filepath.Join(dir, "net/ipv4"), 0o755)
	_ = os.WriteFile(filepath.Join(dir, "net/ipv4/ip_forward"), []byte("1\n"), 0o644)
	cluster := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
	noMasq := append(slices.Clone(cluster), netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/112"))
	cfg := Config{NodeName: "n1", PodEgress: true, NoMasqTo: noMasq, ClusterCIDRs: cluster, SysctlRoot: dir}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f4, f6 := ipt.NewFake(), ipt.NewFake()
	s := New(cfg, f4, quiet).WithIPv6(f6)
	if err := s.Start(informers.NewSharedInformerFactory(fake.NewSimpleClientset(), 0)); err != nil {
		t.Fatal(err)
	}
	dual := []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")}
	if err := s.Apply(dual); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name         string
		f            *ipt.Fake
		table, chain string
		want         string
	}{
		{"IPv4 masquerade", f4, "nat", "CANOPY-POSTROUTING", "-d 10.244.0.0/16 | -d 10.96.0.0/16 | -s 10.244.3.0/24"},
		{"IPv6 masquerade", f6, "nat", "CANOPY-POSTROUTING", "-d fd00:10:244::/56 | -d fd00:10:96::/112 | -s fd00:10:244:3::/64"},
		{"IPv4 FORWARD accept", f4, "filter", "CANOPY-FORWARD-ACCEPT", "-s 10.244.0.0/16 | -d 10.244.0.0/16"},
		{"IPv6 FORWARD accept", f6, "filter", "CANOPY-FORWARD-ACCEPT", "-s fd00:10:244::/56 | -d fd00:10:244::/56"},
		{"IPv4 BGP guard", f4, "filter", "CANOPY-BGP-GUARD", "-s 10.244.0.0/16"},
		{"IPv6 BGP guard", f6, "filter", "CANOPY-BGP-GUARD", "-s fd00:10:244::/56"},
	} {
		var got []string
		for _, r := range tc.f.Rules(tc.table, tc.chain) {
			got = append(got, strings.Join(strings.Fields(r)[:2], " "))
		}
		if strings.Join(got, " | ") != tc.want {
			t.Errorf("%s: %q, want %s", tc.name, tc.f.Rules(tc.table, tc.chain), tc.want)
		}
	}
	if r := f6.Rules("nat", "POSTROUTING"); len(r) != 1 || !strings.Contains(r[0], "-j CANOPY-POSTROUTING") {
		t.Errorf("ip6tables POSTROUTING %q, want the jump", r)
	}

	// Without an ip6tables handle a node with an IPv6 pod CIDR says so (and the IPv4 side is still written).
	g4 := ipt.NewFake()
	if err := New(cfg, g4, quiet).Apply(dual); err == nil || !strings.Contains(err.Error(), "ip6tables") {
		t.Errorf("no ip6tables handle: err %v, want one naming ip6tables", err)
	}
	if len(g4.Rules("nat", "CANOPY-POSTROUTING")) != 3 {
		t.Errorf("IPv4 chain without ip6tables: %q", g4.Rules("nat", "CANOPY-POSTROUTING"))
	}
	// An IPv4-only node writes nothing through ip6tables.
	h6 := ipt.NewFake()
	if err := New(Config{NodeName: "n1", PodEgress: true, NoMasqTo: noMasq, SysctlRoot: dir}, ipt.NewFake(), quiet).WithIPv6(h6).
		Apply(dual[:1]); err != nil {
		t.Fatal(err)
	}
	if h6.Restores+h6.Edits != 0 {
		t.Errorf("an IPv4-only node wrote ip6tables %d times", h6.Restores+h6.Edits)
	}

	// IPv6 pod egress off (--enable-pod-egress-ipv6=false): the IPv6 chain goes, the IPv4 one stays and is
	// still written; nothing new is masqueraded in IPv6.
	no6 := cfg
	no6.NoPodEgress6 = true
	s6 := New(no6, f4, quiet).WithIPv6(f6)
	if err := s6.Start(informers.NewSharedInformerFactory(fake.NewSimpleClientset(), 0)); err != nil {
		t.Fatal(err)
	}
	if err := s6.Apply(dual); err != nil {
		t.Fatal(err)
	}
	if f6.HasChain("nat", "CANOPY-POSTROUTING") || len(f6.Rules("nat", "POSTROUTING")) != 0 {
		t.Errorf("IPv6 pod egress off left the IPv6 masquerade: chain %v, POSTROUTING %q", f6.HasChain("nat", "CANOPY-POSTROUTING"), f6.Rules("nat", "POSTROUTING"))
	}
	if len(f4.Rules("nat", "CANOPY-POSTROUTING")) != 3 {
		t.Errorf("IPv6 pod egress off touched the IPv4 chain: %q", f4.Rules("nat", "CANOPY-POSTROUTING"))
	}
	if len(f6.Rules("filter", "CANOPY-BGP-GUARD")) == 0 {
		t.Errorf("IPv6 pod egress off removed the IPv6 BGP guard")
	}

	// Pod egress off: the chain goes from both families.
	off := cfg
	off.PodEgress = false
	if err := New(off, f4, quiet).WithIPv6(f6).Start(informers.NewSharedInformerFactory(fake.NewSimpleClientset(), 0)); err != nil {
		t.Fatal(err)
	}
	if f4.HasChain("nat", "CANOPY-POSTROUTING") || f6.HasChain("nat", "CANOPY-POSTROUTING") {
		t.Errorf("pod egress off left a masquerade chain: IPv4 %v, IPv6 %v", f4.HasChain("nat", "CANOPY-POSTROUTING"), f6.HasChain("nat", "CANOPY-POSTROUTING"))
	}
}
