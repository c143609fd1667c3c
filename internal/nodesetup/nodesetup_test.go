package nodesetup

import (
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
