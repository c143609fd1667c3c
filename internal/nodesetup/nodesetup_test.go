package nodesetup

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"canopy.io/canopy/cni/conflist"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

// fakeIPT is an in-memory iptables with the egress package's needs.
type fakeIPT struct {
	chains map[string][]string
	writes int
}

func (f *fakeIPT) key(t, c string) string { return t + "/" + c }
func (f *fakeIPT) ChainExists(t, c string) (bool, error) {
	_, ok := f.chains[f.key(t, c)]
	return ok, nil
}
func (f *fakeIPT) NewChain(t, c string) error { f.chains[f.key(t, c)] = nil; f.writes++; return nil }
func (f *fakeIPT) ClearChain(t, c string) error {
	f.chains[f.key(t, c)] = nil
	f.writes++
	return nil
}
func (f *fakeIPT) DeleteChain(t, c string) error {
	delete(f.chains, f.key(t, c))
	f.writes++
	return nil
}
func (f *fakeIPT) List(t, c string) ([]string, error) {
	out := []string{"-N " + c}
	for _, r := range f.chains[f.key(t, c)] {
		out = append(out, "-A "+c+" "+r)
	}
	return out, nil
}
func (f *fakeIPT) Exists(t, c string, r ...string) (bool, error) {
	for _, x := range f.chains[f.key(t, c)] {
		if x == strings.Join(r, " ") {
			return true, nil
		}
	}
	return false, nil
}
func (f *fakeIPT) Insert(t, c string, _ int, r ...string) error { return f.Append(t, c, r...) }
func (f *fakeIPT) Append(t, c string, r ...string) error {
	f.chains[f.key(t, c)] = append(f.chains[f.key(t, c)], strings.Join(r, " "))
	f.writes++
	return nil
}
func (f *fakeIPT) Delete(t, c string, r ...string) error { f.writes++; return nil }

func TestSetupAppliesOncePerPodCIDR(t *testing.T) {
	dir := t.TempDir()
	sysctl := filepath.Join(dir, "sys")
	_ = os.MkdirAll(filepath.Join(sysctl, "net/ipv4"), 0o755)
	_ = os.WriteFile(filepath.Join(sysctl, "net/ipv4/ip_forward"), []byte("0\n"), 0o644)
	plugin := filepath.Join(dir, "canopy-cni")
	_ = os.WriteFile(plugin, []byte("#!/bin/sh\n"), 0o755)
	ipt := &fakeIPT{chains: map[string][]string{"nat/POSTROUTING": nil}}
	s := New(Config{
		NodeName: "n1", CNIConfDir: filepath.Join(dir, "net.d"), CNIBinDir: filepath.Join(dir, "bin"), CNIPlugin: plugin,
		PodEgress: true, NoMasqTo: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, SysctlRoot: sysctl,
	}, ipt, slog.New(slog.NewTextHandler(io.Discard, nil)))
	factory := informers.NewSharedInformerFactory(fake.NewSimpleClientset(), 0)
	if err := s.Start(context.Background(), factory); err != nil {
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
	if rules := ipt.chains["nat/CANOPY-POSTROUTING"]; len(rules) != 2 || !strings.Contains(rules[1], "-s 10.244.3.0/24") {
		t.Fatalf("egress chain %v", rules)
	}
	writes := ipt.writes
	if err := s.Apply(cidr); err != nil {
		t.Fatal(err)
	}
	if ipt.writes != writes {
		t.Errorf("re-applying the same pod CIDR wrote iptables %d more times", ipt.writes-writes)
	}
	if err := s.Apply([]netip.Prefix{netip.MustParsePrefix("10.244.4.0/24")}); err != nil {
		t.Fatal(err)
	}
	if conf, _ := os.ReadFile(filepath.Join(dir, "net.d", conflist.FileName)); !strings.Contains(string(conf), "10.244.4.0/24") {
		t.Errorf("conflist not rewritten for the new pod CIDR: %s", conf)
	}
}
