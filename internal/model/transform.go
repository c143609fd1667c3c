package model

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
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
//   - EndpointSlice: becomes a *Slice, what the Service model reads of it (its Service, address type, usable
//     ports, and each endpoint's first address, node name and conditions; no one writes a slice).
//   - Namespace, NetworkPolicy: every annotation but the canopy.io ones (kubectl's last-applied-configuration
//     is a copy of the whole object; no one writes them).
//   - Service: spec.selector (the EndpointSlice controller's input; no component here reads it, and a status
//     update, the only write made from a cached Service, cannot change the spec). Not its labels or
//     annotations: the LoadBalancer allocator updates a Service's status from a cached copy, and a status
//     update writes the labels and annotations it carries.
//
// What repeats across objects is shared (intern.go): namespace names, node names, label strings, a slice's
// port and node names, a Service's type, policies, IP families and port names and protocols. Cached objects
// are read-only: nothing may write through them.
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
		return NewSlice(o), nil
	case *corev1.Namespace:
		o.Annotations = canopyAnnotations(o.Annotations)
	case *networkingv1.NetworkPolicy:
		o.Namespace = Intern(o.Namespace)
		o.Annotations = canopyAnnotations(o.Annotations)
	case *corev1.Service:
		slimService(o)
	}
	return obj, nil
}

// slimService drops from a Service what no one reads and shares what repeats (see Transform).
func slimService(o *corev1.Service) {
	o.Namespace = Intern(o.Namespace)
	sp := &o.Spec
	sp.Selector = nil
	sp.Type = corev1.ServiceType(Intern(string(sp.Type)))
	sp.SessionAffinity = corev1.ServiceAffinity(Intern(string(sp.SessionAffinity)))
	sp.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicy(Intern(string(sp.ExternalTrafficPolicy)))
	if len(sp.ClusterIPs) > 0 && sp.ClusterIPs[0] == sp.ClusterIP {
		sp.ClusterIPs[0] = sp.ClusterIP // (the API server writes both)
	}
	for i, f := range sp.IPFamilies {
		sp.IPFamilies[i] = corev1.IPFamily(Intern(string(f)))
	}
	for i := range sp.Ports {
		p := &sp.Ports[i]
		p.Name, p.Protocol = Intern(p.Name), corev1.Protocol(Intern(string(p.Protocol)))
		p.TargetPort.StrVal = Intern(p.TargetPort.StrVal)
	}
	if p := sp.IPFamilyPolicy; p != nil {
		sp.IPFamilyPolicy = familyPolicies[*p]
		if sp.IPFamilyPolicy == nil {
			sp.IPFamilyPolicy = p
		}
	}
	if p := sp.InternalTrafficPolicy; p != nil {
		sp.InternalTrafficPolicy = internalPolicies[*p]
		if sp.InternalTrafficPolicy == nil {
			sp.InternalTrafficPolicy = p
		}
	}
}

// Shared values of the Service fields that point to one of a few constants (never written through).
var (
	familyPolicies = func() map[corev1.IPFamilyPolicy]*corev1.IPFamilyPolicy {
		m := map[corev1.IPFamilyPolicy]*corev1.IPFamilyPolicy{}
		for _, v := range []corev1.IPFamilyPolicy{corev1.IPFamilyPolicySingleStack, corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicyRequireDualStack} {
			m[v] = &v
		}
		return m
	}()
	internalPolicies = func() map[corev1.ServiceInternalTrafficPolicy]*corev1.ServiceInternalTrafficPolicy {
		m := map[corev1.ServiceInternalTrafficPolicy]*corev1.ServiceInternalTrafficPolicy{}
		for _, v := range []corev1.ServiceInternalTrafficPolicy{corev1.ServiceInternalTrafficPolicyCluster, corev1.ServiceInternalTrafficPolicyLocal} {
			m[v] = &v
		}
		return m
	}()
)

// canopyAnnotations is a (without what no one reads: every annotation but the canopy.io/ ones, e.g. kubectl's
// last-applied-configuration, a copy of the whole object), nil if none is left.
func canopyAnnotations(a map[string]string) map[string]string {
	var out map[string]string
	for k, v := range a {
		if strings.Contains(k, AnnotationPrefix) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// slimNode is n with only what the agent reads (see Transform).
func slimNode(n *corev1.Node) *corev1.Node {
	out := &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Generation: n.Generation,
		CreationTimestamp: n.CreationTimestamp, DeletionTimestamp: n.DeletionTimestamp, Labels: internStrings(n.Labels),
	}}
	out.Annotations = canopyAnnotations(n.Annotations)
	out.Spec.PodCIDR, out.Spec.PodCIDRs = n.Spec.PodCIDR, n.Spec.PodCIDRs
	out.Status.Addresses = n.Status.Addresses
	return out
}
