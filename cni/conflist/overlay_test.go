package conflist

import (
	"encoding/json"
	"net/netip"
	"testing"
)

func TestRenderOverlayOverhead(t *testing.T) {
	for _, overhead := range []int{0, 50} {
		data, err := Render(Options{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, OverlayOverhead: overhead})
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			Plugins []map[string]any `json:"plugins"`
		}
		if err := json.Unmarshal(data, &c); err != nil {
			t.Fatal(err)
		}
		got, ok := c.Plugins[0]["overlayOverhead"]
		if overhead == 0 && ok || overhead > 0 && got != float64(overhead) {
			t.Errorf("overlayOverhead %d: conflist has %v (%v)\n%s", overhead, got, ok, data)
		}
	}
}
