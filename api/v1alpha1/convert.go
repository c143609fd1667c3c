package v1alpha1

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
)

// FromUnstructured converts an object of this package's kinds, as a dynamic client or informer returns it, into
// its typed form: a *BGPPeer, *BGPConfiguration or *BGPNodeStatus (or their lists). An object of another group,
// version or kind is an error; fields this version does not know (from a newer CRD) are ignored.
func FromUnstructured(u *unstructured.Unstructured) (runtime.Object, error) {
	if u == nil {
		return nil, fmt.Errorf("no object")
	}
	gvk := u.GroupVersionKind()
	if gvk.GroupVersion() != SchemeGroupVersion {
		return nil, fmt.Errorf("%s %q is %s, not %s", gvk.Kind, u.GetName(), gvk.GroupVersion(), SchemeGroupVersion)
	}
	var obj runtime.Object
	switch gvk.Kind {
	case "BGPPeer":
		obj = &BGPPeer{}
	case "BGPPeerList":
		obj = &BGPPeerList{}
	case "BGPConfiguration":
		obj = &BGPConfiguration{}
	case "BGPConfigurationList":
		obj = &BGPConfigurationList{}
	case "BGPNodeStatus":
		obj = &BGPNodeStatus{}
	case "BGPNodeStatusList":
		obj = &BGPNodeStatusList{}
	default:
		return nil, fmt.Errorf("%q: kind %q is not one of %s", u.GetName(), gvk.Kind, SchemeGroupVersion)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
		return nil, fmt.Errorf("%s %q: %w", gvk.Kind, u.GetName(), err)
	}
	return obj, nil
}

// PeerFromUnstructured converts a BGPPeer from a dynamic informer (see FromUnstructured).
func PeerFromUnstructured(u *unstructured.Unstructured) (*BGPPeer, error) {
	return fromUnstructured[*BGPPeer](u, "BGPPeer")
}

// ConfigurationFromUnstructured converts a BGPConfiguration from a dynamic informer (see FromUnstructured).
func ConfigurationFromUnstructured(u *unstructured.Unstructured) (*BGPConfiguration, error) {
	return fromUnstructured[*BGPConfiguration](u, "BGPConfiguration")
}

// NodeStatusFromUnstructured converts a BGPNodeStatus from a dynamic informer (see FromUnstructured).
func NodeStatusFromUnstructured(u *unstructured.Unstructured) (*BGPNodeStatus, error) {
	return fromUnstructured[*BGPNodeStatus](u, "BGPNodeStatus")
}

func fromUnstructured[T runtime.Object](u *unstructured.Unstructured, kind string) (T, error) {
	var zero T
	if u != nil && u.GetKind() != kind {
		return zero, fmt.Errorf("%q is a %s, not a %s", u.GetName(), u.GetKind(), kind)
	}
	obj, err := FromUnstructured(u)
	if err != nil {
		return zero, err
	}
	return obj.(T), nil
}

// ToUnstructured converts an object of this package's kinds for a dynamic client, with its apiVersion and kind
// set (whether or not obj's TypeMeta is).
func ToUnstructured(obj runtime.Object) (*unstructured.Unstructured, error) {
	var kind string
	switch obj.(type) {
	case *BGPPeer:
		kind = "BGPPeer"
	case *BGPConfiguration:
		kind = "BGPConfiguration"
	case *BGPNodeStatus:
		kind = "BGPNodeStatus"
	default:
		return nil, fmt.Errorf("%T is not a kind of %s", obj, SchemeGroupVersion)
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(SchemeGroupVersion.WithKind(kind))
	return u, nil
}

// SelectsNode reports whether the peer is one of the node's: the node is in nodeNames, or its labels match
// nodeSelector, or neither is given (every node). A selector that does not parse is an error (the CRD cannot
// check every selector syntax), and selects no node.
func (s *BGPPeerSpec) SelectsNode(name string, nodeLabels map[string]string) (bool, error) {
	switch {
	case s.NodeSelector != nil && len(s.NodeNames) > 0:
		return false, fmt.Errorf("nodeSelector and nodeNames are mutually exclusive")
	case len(s.NodeNames) > 0:
		return slices.Contains(s.NodeNames, name), nil
	case s.NodeSelector != nil:
		sel, err := metav1.LabelSelectorAsSelector(s.NodeSelector)
		if err != nil {
			return false, fmt.Errorf("nodeSelector: %w", err)
		}
		return sel.Matches(labels.Set(nodeLabels)), nil
	}
	return true, nil
}

// SetSessions sets the sessions (sorted by address), their counts and the summary, and the time of the update.
func (s *NodeBGPState) SetSessions(sessions []BGPSession, now metav1.Time) {
	s.Sessions = slices.Clone(sessions)
	slices.SortFunc(s.Sessions, func(a, b BGPSession) int {
		x, errX := netip.ParseAddr(a.PeerAddress)
		y, errY := netip.ParseAddr(b.PeerAddress)
		if errX == nil && errY == nil {
			return x.Compare(y)
		}
		return strings.Compare(a.PeerAddress, b.PeerAddress)
	})
	s.Configured = int32(len(s.Sessions))
	s.Established = 0
	for _, x := range s.Sessions {
		if x.State == SessionEstablished {
			s.Established++
		}
	}
	s.Summary = strconv.Itoa(int(s.Established)) + "/" + strconv.Itoa(int(s.Configured))
	s.Updated = &now
}
