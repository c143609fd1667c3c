package cleanup

import (
	"errors"

	"github.com/vishvananda/netlink"

	"canopy.io/canopy/routes/overlay"
)

// removeOverlay deletes the VXLAN overlay device canopy.vxlan (a link of that name of another type is not ours
// and stays), which takes its neighbour and FDB entries and its routes with it, then any route of the overlay's
// protocol (185) left in table.
func removeOverlay(h *netlink.Handle, table int, dryRun bool, s *Section) {
	has, err := overlay.FindDevice(h, "")
	if err != nil {
		s.fail("look up "+overlay.Device, err)
		return
	}
	if has {
		item := "VXLAN device " + overlay.Device + " (with its neighbour and FDB entries and routes)"
		switch {
		case dryRun:
			s.removed(item)
		default:
			if err := overlay.RemoveDevice(h, ""); err != nil {
				s.fail(item, err)
			} else if still, _ := overlay.FindDevice(h, ""); still {
				s.fail(item, errors.New("still there after deleting it (re-created by a running agent?)"))
			} else {
				s.removed(item)
			}
		}
	}
	removeRoutes(h, overlay.Protocol, table, dryRun, s)
}
