package conflist

import (
	"encoding/json"
	"net/netip"
	"testing"

	"canopy.io/canopy/cni"
)

// TestRenderDualStackParses: the conflist for a dual-stack node is one the plugin accepts (libcni hands the plugin
// its entry with the list's cniVersion and name), with both pod CIDRs in the node's order.
func TestRenderDualStackParses(t *testing.T) {
	cidrs := []netip.Prefix{netip.MustParsePrefix("fd00:10:244:3::/64"), netip.MustParsePrefix("10.244.3.0/24")}
	data, err := Render(Options{PodCIDRs: cidrs})
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	entry := list.Plugins[0]
	entry["cniVersion"], entry["name"] = list.CNIVersion, list.Name
	b, _ := json.Marshal(entry)
	c, err := cni.ParseConfig(b)
	if err != nil {
		t.Fatalf("the plugin refuses the rendered entry %s: %v", b, err)
	}
	if len(c.PodCIDRs) != 2 || c.PodCIDRs[0] != cidrs[0] || c.PodCIDRs[1] != cidrs[1] {
		t.Errorf("podCIDRs = %v, want %v", c.PodCIDRs, cidrs)
	}
}
