package lab

import (
	"context"
	"fmt"
	"regexp"
)

var fabricHostRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// AddFabricHost makes another host on the rack's L2 segment — a route reflector, a second router, a
// benchmark's route injector: namespace <prefix>f-<name>, address .200+i of the fabric, no default route.
// Down removes it with the rest of the lab. In a multi-rack lab this is rack 1's segment (AddRackHost).
func (l *Lab) AddFabricHost(ctx context.Context, name string) (*Host, error) {
	return l.AddRackHost(ctx, l.Racks[0], name)
}

// AddRackHost makes another host on rack's segment, as AddFabricHost does: .200+i of the rack's subnet (i counts
// the lab's hosts), no default route; in a multi-rack lab it has a node's static routes through the ToR (the
// spine's segment, the external link, the other racks).
func (l *Lab) AddRackHost(ctx context.Context, rack *Rack, name string) (*Host, error) {
	if !fabricHostRE.MatchString(name) {
		return nil, fmt.Errorf("fabric host name %q: want 1-8 lowercase letters or digits", name)
	}
	l.mu.Lock()
	l.fabricHosts++
	i := l.fabricHosts
	l.mu.Unlock()
	ip := nthAddr(rack.Subnet, 199+i)
	if !rack.Subnet.Contains(ip) {
		return nil, fmt.Errorf("fabric %s has no room for host %d", rack.Subnet, i)
	}
	h := &Host{Name: name, NS: l.Prefix + "f-" + name, IP: ip, lab: l}
	if err := l.addNetns(ctx, h.NS); err != nil {
		return nil, err
	}
	port := fmt.Sprintf("f%d", i)
	if err := ipBatch(ctx, rack.segmentNS(),
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, h.NS),
		fmt.Sprintf("link set %s master br0 up", port)); err != nil {
		return nil, err
	}
	cmds := []string{"link set lo up", fmt.Sprintf("addr add %s/%d dev eth0", ip, rack.Subnet.Bits()), "link set eth0 up"}
	if l.cfg.multiRack() {
		for _, p := range l.uplinkRoutes(rack) {
			cmds = append(cmds, fmt.Sprintf("route add %s via %s", p, rack.ToR.IP))
		}
	}
	if err := ipBatch(ctx, h.NS, cmds...); err != nil {
		return nil, err
	}
	return h, nil
}
