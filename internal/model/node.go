package model

import (
	"net/netip"
	"reflect"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// NodeIP returns a node's InternalIP (IPv4 first), or its ExternalIP if it has no internal one.
func NodeIP(n *corev1.Node) netip.Addr {
	if n == nil {
		return netip.Addr{}
	}
	var best netip.Addr
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != t {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			if ip.Is4() {
				return ip
			}
			if !best.IsValid() {
				best = ip
			}
		}
		if best.IsValid() {
			return best
		}
	}
	return best
}

// NodeAddresses returns every address of a node's status (InternalIP, ExternalIP), each once.
func NodeAddresses(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && !containsAddr(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

func containsAddr(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// PodCIDRs returns a node's pod CIDRs (spec.podCIDRs, else spec.podCIDR), masked; invalid entries are skipped.
func PodCIDRs(n *corev1.Node) []netip.Prefix {
	if n == nil {
		return nil
	}
	list := n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		list = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// AnnotationPrefix is the prefix of every annotation Canopy reads.
const AnnotationPrefix = "canopy.io/"

// NodeChanged reports whether an update of a Node changed anything a Canopy controller reads: its addresses,
// pod CIDRs, labels, canopy.io/ annotations, or deletion. Status heartbeats, conditions and images do not count,
// so the node status updates of a 5,000-node cluster cost no sync. Every Node event handler filters through it
// (OnNodeChanges).
func NodeChanged(o, n *corev1.Node) bool {
	if o == nil || n == nil {
		return true
	}
	return !reflect.DeepEqual(o.Spec.PodCIDRs, n.Spec.PodCIDRs) || o.Spec.PodCIDR != n.Spec.PodCIDR ||
		!reflect.DeepEqual(o.Status.Addresses, n.Status.Addresses) ||
		!reflect.DeepEqual(o.Labels, n.Labels) ||
		!sameCanopyAnnotations(o.Annotations, n.Annotations) ||
		(o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil)
}

func sameCanopyAnnotations(a, b map[string]string) bool {
	count := func(m map[string]string) int {
		n := 0
		for k := range m {
			if strings.HasPrefix(k, AnnotationPrefix) {
				n++
			}
		}
		return n
	}
	if count(a) != count(b) {
		return false
	}
	for k, v := range a {
		if strings.HasPrefix(k, AnnotationPrefix) {
			if w, ok := b[k]; !ok || w != v {
				return false
			}
		}
	}
	return true
}

// NodeHandler is the Node event handler every controller registers: it calls f for each add, delete and
// relevant update (NodeChanged) of a Node that only accepts (nil: every Node). A deleted Node is passed in its
// last known state, with deleted true.
func NodeHandler(only func(*corev1.Node) bool, f func(n *corev1.Node, deleted bool)) cache.ResourceEventHandler {
	pass := func(n *corev1.Node) bool { return n != nil && (only == nil || only(n)) }
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, _ := obj.(*corev1.Node); pass(n) {
				f(n, false)
			}
		},
		UpdateFunc: func(o, obj any) {
			old, _ := o.(*corev1.Node)
			n, _ := obj.(*corev1.Node)
			if pass(n) && NodeChanged(old, n) {
				f(n, false)
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if n, _ := obj.(*corev1.Node); pass(n) {
				f(n, true)
			}
		},
	}
}

// NamedNode is a NodeHandler filter for one node by name.
func NamedNode(name string) func(*corev1.Node) bool {
	return func(n *corev1.Node) bool { return n.Name == name }
}
