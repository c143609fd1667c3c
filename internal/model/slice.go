package model

import (
	"net/netip"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// Slice is what the Service model keeps of an EndpointSlice: the agent's slice informer caches these in place
// of the API objects (Transform turns one into the other). At 10,000 Services with 5 endpoints each, the
// slimmed API objects, their label maps and the by-Service index took about 20 MB of an agent's heap; these
// take a quarter of it.
//
// It holds only what BuildServicePorts and the control plane's address set read, parsed once:
//   - the Service it belongs to (the kubernetes.io/service-name label; "" for none);
//   - its address type;
//   - its ports, without those a consumer skips (no port number or one out of range, a protocol other than
//     TCP, UDP or SCTP): a port's name "" stands for none, TCP for no protocol, as the API defaults them;
//   - its endpoints' first address (the API: addresses are fungible, consumers may use the first; kube-proxy
//     does), an invalid Addr when that is not an IP address, their node name and their conditions with the
//     API's defaults applied (ready and serving when unset, not terminating when unset).
//
// Values in the cache are shared and read-only.
type Slice struct {
	Namespace, Name string
	Service         string
	AddressType     discoveryv1.AddressType
	Ports           []SlicePort
	Endpoints       []SliceEndpoint
}

// SlicePort is one port of a Slice.
type SlicePort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// SliceEndpoint is one endpoint of a Slice.
type SliceEndpoint struct {
	IP                          netip.Addr
	Node                        string
	Ready, Serving, Terminating bool
}

var (
	_ runtime.Object            = (*Slice)(nil)
	_ metav1.ObjectMetaAccessor = (*Slice)(nil)
)

// GetObjectKind implements runtime.Object.
func (s *Slice) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// GetObjectMeta implements metav1.ObjectMetaAccessor (meta.Accessor: the informer's keys): a new ObjectMeta
// with the slice's namespace and name, made at each call.
func (s *Slice) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name}
}

// DeepCopyObject implements runtime.Object.
func (s *Slice) DeepCopyObject() runtime.Object {
	c := *s
	c.Ports, c.Endpoints = slices.Clone(s.Ports), slices.Clone(s.Endpoints)
	return &c
}

// ServiceKey is the "namespace/name" of the slice's Service ("" when it names none).
func (s *Slice) ServiceKey() string {
	if s.Service == "" {
		return ""
	}
	return s.Namespace + "/" + s.Service
}

// NewSlice is what the model keeps of o (see Slice). Strings that repeat across slices (namespaces, port names,
// node names) are shared.
func NewSlice(o *discoveryv1.EndpointSlice) *Slice {
	s := &Slice{Namespace: Intern(o.Namespace), Name: o.Name, Service: o.Labels[discoveryv1.LabelServiceName],
		AddressType: o.AddressType}
	switch o.AddressType { // (the constants' text, not the decoded copy)
	case discoveryv1.AddressTypeIPv4:
		s.AddressType = discoveryv1.AddressTypeIPv4
	case discoveryv1.AddressTypeIPv6:
		s.AddressType = discoveryv1.AddressTypeIPv6
	}
	for _, p := range o.Ports {
		name := ""
		if p.Name != nil {
			name = Intern(*p.Name)
		}
		proto := TCP
		if p.Protocol != nil {
			var ok bool
			if proto, ok = protocol(*p.Protocol); !ok {
				continue
			}
		}
		if p.Port == nil || port16(*p.Port) == 0 {
			continue
		}
		s.Ports = append(s.Ports, SlicePort{Name: name, Protocol: proto, Port: port16(*p.Port)})
	}
	if len(o.Endpoints) > 0 {
		s.Endpoints = make([]SliceEndpoint, 0, len(o.Endpoints))
	}
	for i := range o.Endpoints {
		e := &o.Endpoints[i]
		if len(e.Addresses) == 0 {
			continue
		}
		se := SliceEndpoint{
			Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
			Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
			Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
		}
		se.IP, _ = parseIP(e.Addresses[0])
		if e.NodeName != nil {
			se.Node = Intern(*e.NodeName)
		}
		s.Endpoints = append(s.Endpoints, se)
	}
	return s
}

// sliceOf is obj as a *Slice: the cached value, or a conversion of an API object (an informer without
// Transform, as in tests), nil for anything else. Tombstones are unwrapped.
func sliceOf(obj any) *Slice {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	switch o := obj.(type) {
	case *Slice:
		return o
	case *discoveryv1.EndpointSlice:
		return NewSlice(o)
	}
	return nil
}
