package model

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Transform is the agent's informer transform (informers.WithTransform): it drops from each object what no
// part of the agent reads, before the object enters a cache. On a 5,000-node cluster the Nodes alone (a
// kubelet's Node carries images, conditions, capacity and node info: several KB) and every object's
// managedFields are most of an agent's heap.
//
//   - every object: metadata.managedFields (nothing reads them; an update made from a cached copy sends none,
//     which the API server takes as "unchanged").
//   - Node: only name, UID, resourceVersion, labels, the canopy.io annotations, spec.podCIDR(s) and
//     status.addresses stay (what NodeIP, NodeAddresses, PodCIDRs, NodeChanged and the BGP, routes, policy and
//     node setup controllers read; no one writes a Node from the cache).
//   - EndpointSlice: each endpoint's targetRef, hints, zone and deprecatedTopology go (the Service model reads
//     addresses, conditions and nodeName).
//
// Objects are transformed in place (the informer hands the transform a fresh object); tombstones and other
// types pass with only their managedFields dropped.
func Transform(obj any) (any, error) {
	if m, ok := obj.(metav1.ObjectMetaAccessor); ok {
		if om := m.GetObjectMeta(); om != nil {
			om.SetManagedFields(nil)
		}
	}
	switch o := obj.(type) {
	case *corev1.Node:
		return slimNode(o), nil
	case *discoveryv1.EndpointSlice:
		for i := range o.Endpoints {
			e := &o.Endpoints[i]
			e.TargetRef, e.Hints, e.Zone, e.DeprecatedTopology = nil, nil, nil, nil
		}
	}
	return obj, nil
}

// slimNode is n with only what the agent reads (see Transform).
func slimNode(n *corev1.Node) *corev1.Node {
	out := &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Generation: n.Generation,
		CreationTimestamp: n.CreationTimestamp, DeletionTimestamp: n.DeletionTimestamp, Labels: n.Labels,
	}}
	for k, v := range n.Annotations {
		if strings.Contains(k, "canopy.io/") {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	out.Spec.PodCIDR, out.Spec.PodCIDRs = n.Spec.PodCIDR, n.Spec.PodCIDRs
	out.Status.Addresses = n.Status.Addresses
	return out
}
