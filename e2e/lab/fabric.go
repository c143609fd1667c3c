package lab

import (
	"context"
	"fmt"
	"regexp"
)

var fabricHostRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// AddFabricHost makes another host on the rack's L2 segment — a route reflector, a second router, a
// benchmark's route injector: namespace <prefix>f-<name>, address .200+i of the fabric, no default route.
// Down removes it with the rest of the lab.
func (l *Lab) AddFabricHost(ctx context.Context, name string) (*Host, error) {
	if !fabricHostRE.MatchString(name) {
		return nil, fmt.Errorf("fabric host name %q: want 1-8 lowercase letters or digits", name)
	}
	l.mu.Lock()
	l.fabricHosts++
	i := l.fabricHosts
	l.mu.Unlock()
	ip := nthAddr(l.cfg.FabricCIDR, 199+i)
	if !l.cfg.FabricCIDR.Contains(ip) {
		return nil, fmt.Errorf("fabric %s has no room for host %d", l.cfg.FabricCIDR, i)
	}
	h := &Host{Name: name, NS: l.Prefix + "f-" + name, IP: ip, lab: l}
	if err := l.addNetns(ctx, h.NS); err != nil {
		return nil, err
	}
	port := fmt.Sprintf("f%d", i)
	if err := ipBatch(ctx, l.ToR.NS,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, h.NS),
		fmt.Sprintf("link set %s master br0 up", port)); err != nil {
		return nil, err
	}
	if err := ipBatch(ctx, h.NS, "link set lo up",
		fmt.Sprintf("addr add %s/%d dev eth0", ip, l.cfg.FabricCIDR.Bits()), "link set eth0 up"); err != nil {
		return nil, err
	}
	return h, nil
}
