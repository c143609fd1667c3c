package nodesetup

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
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
