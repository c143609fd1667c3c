package cleanup

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"

	"canopy.io/canopy/cni"
)

// hostVeth matches the node-side veth names the CNI plugin makes (cni.HostVethName): "cnp" + 12 hex digits.
var hostVeth = regexp.MustCompile(`^` + cni.HostVethPrefix + `[0-9a-f]{12}$`)

// podLinks are the pod network's links on the node: the bridge (if that name is a bridge) and the pods' host
// veths, veths first.
func podLinks(h *netlink.Handle, bridge string) ([]netlink.Link, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	var veths, br []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		switch {
		case a.Name == bridge && l.Type() == "bridge":
			br = append(br, l)
		case hostVeth.MatchString(a.Name) && l.Type() == "veth":
			veths = append(veths, l)
		}
	}
	slices.SortFunc(veths, func(a, b netlink.Link) int {
		if a.Attrs().Name < b.Attrs().Name {
			return -1
		}
		return 1
	})
	return append(veths, br...), nil
}

func describeLink(l netlink.Link) string {
	if l.Type() == "bridge" {
		return "bridge " + l.Attrs().Name
	}
	return "pod veth " + l.Attrs().Name
}

// removePodLinks deletes the pods' host veths (their pod ends go with them) and the bridge, only when asked
// (remove): otherwise it says what it keeps and why.
func removePodLinks(h *netlink.Handle, bridge string, remove, dryRun bool, s *Section) {
	links, err := podLinks(h, bridge)
	if err != nil {
		s.fail("list links", err)
		return
	}
	if !remove {
		if len(links) > 0 {
			var names []string
			for _, l := range links {
				names = append(names, l.Attrs().Name)
			}
			s.kept("%d link(s) of the pod network (%v): running pods would lose their network; --remove-pod-network removes them", len(links), names)
		}
		return
	}
	for _, l := range links {
		item := describeLink(l)
		if dryRun {
			s.removed(item)
			continue
		}
		if err := h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
			s.fail(item, err)
			continue
		}
		s.removed(item)
	}
}

// podVethCount counts the pods' host veths (pods attached through the plugin).
func podVethCount(h *netlink.Handle) (int, error) {
	links, err := podLinks(h, "\x00") // no bridge matches
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	return len(links), nil
}
