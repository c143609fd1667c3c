package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of Canopy's custom resources.
const GroupName = "canopy.io"

// SchemeGroupVersion is the group and version of this package's kinds: canopy.io/v1alpha1.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// The resources of this package, for dynamic clients and informers.
var (
	BGPPeersResource          = SchemeGroupVersion.WithResource("bgppeers")
	BGPConfigurationsResource = SchemeGroupVersion.WithResource("bgpconfigurations")
	BGPNodeStatusesResource   = SchemeGroupVersion.WithResource("bgpnodestatuses")
)

// ConfigurationName is the name of the one BGPConfiguration the agents read; the CRD refuses any other name.
const ConfigurationName = "default"

var (
	// SchemeBuilder registers this package's kinds with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds this package's kinds (and their list kinds) to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// Resource returns the group-qualified resource of a resource name of this package (e.g. "bgppeers").
func Resource(resource string) schema.GroupResource {
	return SchemeGroupVersion.WithResource(resource).GroupResource()
}

// Kind returns the group-qualified kind of a kind name of this package (e.g. "BGPPeer").
func Kind(kind string) schema.GroupKind {
	return SchemeGroupVersion.WithKind(kind).GroupKind()
}

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion,
		&BGPPeer{}, &BGPPeerList{},
		&BGPConfiguration{}, &BGPConfigurationList{},
		&BGPNodeStatus{}, &BGPNodeStatusList{},
	)
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
