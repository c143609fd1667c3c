package conflist

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestRenderAndWrite(t *testing.T) {
	data, err := Render(Options{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, Portmap: true})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "canopy" || len(got.Plugins) != 2 || got.Plugins[0]["type"] != PluginName || got.Plugins[1]["type"] != "portmap" {
		t.Fatalf("%s", data)
	}
	if _, err := Render(Options{}); err == nil {
		t.Fatal("rendered a conflist without a pod CIDR")
	}
	dir := t.TempDir()
	if changed, err := Write(dir, FileName, data, 0o644); err != nil || !changed {
		t.Fatalf("first write: %v %v", changed, err)
	}
	if changed, err := Write(dir, FileName, data, 0o644); err != nil || changed {
		t.Fatalf("second write of the same content: %v %v", changed, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
	src := filepath.Join(t.TempDir(), "plugin")
	_ = os.WriteFile(src, []byte("#!/bin/sh\n"), 0o755)
	bin := t.TempDir()
	if changed, err := InstallPlugin(src, bin); err != nil || !changed {
		t.Fatal(changed, err)
	}
	if st, err := os.Stat(filepath.Join(bin, PluginName)); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed plugin: %v %v", st, err)
	}
}
