package agent

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"canopy.io/canopy/routes/overlay"
)

// overlay runs the VXLAN overlay controller (--overlay=vxlan|crosssubnet), or with --overlay=none removes the
// device an earlier run left (its entries and routes go with it).
func (a *agent) overlay() error {
	opts := a.cfg.OverlayOptions()
	opts.Repair = a.cfg.ResyncInterval // drift on the device is repaired as often as the BGP routes'
	log := a.log.With("component", "overlay")
	a.reg.MustRegister(overlay.Collectors()...)
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	a.lastly = append(a.lastly, h.Close)
	if !opts.Mode.On() {
		if had, err := overlay.FindDevice(h, ""); err != nil || had {
			if err := overlay.RemoveDevice(h, ""); err != nil {
				log.Warn("removing the overlay device (--overlay=none)", "device", overlay.Device, "err", err)
			} else {
				log.Info("overlay device removed (--overlay=none)", "device", overlay.Device)
			}
		}
		return nil
	}
	tun := overlay.NewTunnel(h, overlay.TunnelConfig{Table: a.cfg.RouteTable}, log)
	ctrl, err := overlay.NewController(opts, a.factory, tun, a.recorder, log)
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	log.Info("VXLAN overlay", "mode", opts.Mode, "device", overlay.Device, "vni", overlay.DefaultVNI, "port", overlay.DefaultPort)
	a.add(ctrl, ctrl.Controller())
	return nil
}
