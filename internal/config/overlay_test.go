package config

import (
	"strings"
	"testing"

	"canopy.io/canopy/routes/overlay"
)

func TestOverlayFlag(t *testing.T) {
	for in, want := range map[string]overlay.Mode{"": overlay.ModeNone, "none": overlay.ModeNone, "vxlan": overlay.ModeVXLAN,
		"CrossSubnet": overlay.ModeCrossSubnet} {
		r := validRaw()
		r.Overlay = in
		c, err := r.Validate()
		if err != nil {
			t.Fatalf("--overlay=%q: %v", in, err)
		}
		if c.Overlay != want || c.OverlayOptions().Mode != want || c.OverlayOptions().NodeName != "n1" {
			t.Errorf("--overlay=%q: %q", in, c.Overlay)
		}
		overhead := c.NodeSetup("").CNIOverlayOverhead
		if (want == overlay.ModeNone && overhead != 0) || (want != overlay.ModeNone && overhead != 50) {
			t.Errorf("--overlay=%q: CNI overlayOverhead %d", in, overhead)
		}
	}
	// An IPv6-only cluster tunnels over IPv6: 20 bytes more per packet; a dual-stack one over IPv4.
	for cidrs, want := range map[string]int{"fd00:10:244::/56": overlay.Overhead6, "10.244.0.0/16,fd00:10:244::/56": overlay.Overhead} {
		r := validRaw()
		r.Overlay, r.ClusterCIDRs = "vxlan", strings.Split(cidrs, ",")
		c, err := r.Validate()
		if err != nil {
			t.Fatalf("--cluster-cidr=%s: %v", cidrs, err)
		}
		if got := c.NodeSetup("").CNIOverlayOverhead; got != want {
			t.Errorf("--cluster-cidr=%s: CNI overlayOverhead %d, want %d", cidrs, got, want)
		}
	}
	r := validRaw()
	r.Overlay = "ipip"
	if _, err := r.Validate(); err == nil || !strings.Contains(err.Error(), "--overlay") {
		t.Errorf("--overlay=ipip: %v", err)
	}
	r = validRaw()
	r.Overlay, r.RouteProtocol = "vxlan", overlay.Protocol
	if _, err := r.Validate(); err == nil || !strings.Contains(err.Error(), "--route-protocol") {
		t.Errorf("--route-protocol=185 with the overlay: %v", err)
	}
}
