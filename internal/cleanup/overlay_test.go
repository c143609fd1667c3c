package cleanup

import (
	"strings"
	"testing"

	"canopy.io/canopy/internal/testsupport/testns"
	"canopy.io/canopy/routes/overlay"
)

// canopy cleanup removes the overlay device (and with it its entries and routes) and stray overlay routes; a
// foreign link of the same name, and routes of other protocols, stay.
func TestKernelCleanupOverlay(t *testing.T) {
	testns.Require(t, "bridge")
	node := testns.New(t, "clean-ovl")
	run := func(cmd ...string) string { t.Helper(); return node.MustRun(t, cmd...) }
	run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	run("ip", "addr", "add", "10.50.1.11/24", "dev", "eth0")
	run("ip", "link", "set", "eth0", "up")
	run("ip", "link", "set", "eth1", "up")
	run("ip", "link", "add", overlay.Device, "type", "vxlan", "id", "4096", "dstport", "4789", "local", "10.50.1.11", "nolearning")
	run("ip", "link", "set", overlay.Device, "up")
	run("ip", "neigh", "add", "10.244.3.0", "lladdr", "02:cb:0a:32:02:0d", "dev", overlay.Device, "nud", "permanent")
	run("bridge", "fdb", "add", "02:cb:0a:32:02:0d", "dst", "10.50.2.13", "dev", overlay.Device, "self", "permanent")
	run("ip", "route", "add", "10.244.3.0/24", "via", "10.244.3.0", "dev", overlay.Device, "onlink", "proto", "185", "metric", "1024")
	run("ip", "route", "add", "10.244.4.0/24", "via", "10.50.1.1", "proto", "185", "metric", "1024")    // a stray one
	run("ip", "route", "add", "10.244.9.0/24", "via", "10.50.1.1", "proto", "static", "metric", "1024") // not ours

	c := Config{RouteProtocol: 186}
	dry := c
	dry.DryRun = true
	r := runCleanup(t, node, dry)
	if s := r.Section("overlay", overlay.Device); s == nil || len(s.Removed) != 3 {
		t.Fatalf("dry run: %+v", s)
	}
	if !strings.Contains(run("ip", "link", "show"), overlay.Device) {
		t.Fatal("dry run removed the device")
	}
	r = runCleanup(t, node, c)
	s := r.Section("overlay", overlay.Device)
	// The device (its route goes with it) and the stray route.
	if s == nil || len(s.Removed) != 2 || len(s.Failed) != 0 {
		t.Fatalf("cleanup: %+v", s)
	}
	if out := run("ip", "link", "show"); strings.Contains(out, overlay.Device) {
		t.Errorf("device left:\n%s", out)
	}
	if out := run("ip", "route", "show", "proto", "185"); strings.TrimSpace(out) != "" {
		t.Errorf("overlay routes left: %s", out)
	}
	if out := run("ip", "route", "show", "proto", "static"); !strings.Contains(out, "10.244.9.0/24") {
		t.Errorf("a static route was removed: %s", out)
	}
	// A link of that name that is not VXLAN is not Canopy's.
	run("ip", "link", "add", overlay.Device, "type", "bridge")
	runCleanup(t, node, c)
	if out := run("ip", "link", "show"); !strings.Contains(out, overlay.Device) {
		t.Error("a bridge named canopy.vxlan was removed")
	}
}
