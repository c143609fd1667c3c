package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BGPConfiguration is the cluster's BGP settings, one object named "default". Each field it sets replaces the
// agent flag of the same meaning on every node (the object wins; an agent whose flag says otherwise reports the
// conflict); each field it leaves unset keeps the flag's value. Deleting the object returns every node to its
// flags.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=canopy;bgp
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'default'",message="BGPConfiguration is a singleton: metadata.name must be 'default'",reason=FieldValueInvalid
// +kubebuilder:printcolumn:name=Cluster-ASN,type=integer,JSONPath=`.spec.clusterASN`,description="The nodes' AS number (unset: --cluster-asn)"
// +kubebuilder:printcolumn:name=Mesh,type=boolean,JSONPath=`.spec.nodeMesh.enabled`,description="Whether the nodes peer with each other"
// +kubebuilder:printcolumn:name=Node-Status,type=boolean,JSONPath=`.spec.nodeStatus.enabled`,description="Whether the agents write BGPNodeStatus objects"
// +kubebuilder:printcolumn:name=Age,type=date,JSONPath=`.metadata.creationTimestamp`
type BGPConfiguration struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata; the name must be "default".
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the cluster's BGP settings.
	// +optional
	// +kubebuilder:default={}
	Spec BGPConfigurationSpec `json:"spec,omitempty"`
}

// BGPConfigurationSpec is the cluster-wide BGP settings.
type BGPConfigurationSpec struct {
	// clusterASN is the nodes' AS number, 1..4294967294 without 23456 (AS_TRANS) and 65535; a Node's
	// canopy.io/node-asn annotation still overrides it for that node (eBGP per rack). Unset: --cluster-asn.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4294967294
	// +kubebuilder:validation:XValidation:rule="self != 23456 && self != 65535",message="clusterASN 23456 (AS_TRANS) and 65535 are reserved AS numbers",reason=FieldValueForbidden
	ClusterASN *int64 `json:"clusterASN,omitempty"`

	// nodeMesh is the node-to-node sessions.
	// +optional
	// +kubebuilder:default={}
	NodeMesh *NodeMesh `json:"nodeMesh,omitempty"`

	// advertise says which Service addresses the nodes announce (a Service's canopy.io/advertise annotation
	// may narrow it, never widen it). Each unset field keeps its --advertise-* flag.
	// +optional
	Advertise *ServiceAdvertise `json:"advertise,omitempty"`

	// communities are attached to every Service VIP the nodes announce (the node-wide default that a Node's
	// canopy.io/communities annotation adds to), in the canopy.io/communities syntax, one per item; the
	// BLACKHOLE community is refused.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	Communities []Community `json:"communities,omitempty"`

	// allowedServiceCommunities are the communities a Service's canopy.io/communities annotation may ask for
	// (others get an Event). Unset: --service-communities-allowed.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	AllowedServiceCommunities []Community `json:"allowedServiceCommunities,omitempty"`

	// maxPrefixes is the default limit of prefixes any peer may send, 0..16777216 (0: no limit); a BGPPeer's
	// or canopy.io/peers entry's own maxPrefixes wins. Unset: --max-prefixes.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=16777216
	MaxPrefixes *int64 `json:"maxPrefixes,omitempty"`

	// nodeStatus says whether and how often the agents write their BGPNodeStatus.
	// +optional
	// +kubebuilder:default={}
	NodeStatus *NodeStatusReporting `json:"nodeStatus,omitempty"`
}

// NodeMesh is the settings of the node-to-node (full mesh) sessions.
type NodeMesh struct {
	// enabled makes every node peer with every other node (--nodes-full-mesh). Off when the nodes learn each
	// other's routes through route reflectors or the ToR instead.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// passwordSecretRef names the Secret key holding the TCP MD5 password of every node-to-node session (the
	// same on every node; --node-mesh-password-file). Unset: the flag's, or none.
	// +optional
	PasswordSecretRef *SecretKeyReference `json:"passwordSecretRef,omitempty"`

	// ttlSecurity turns on GTSM (RFC 5082) on the node-to-node sessions: TTL 255 sent, only TTL 255
	// accepted, so a pod (masqueraded to its node's address, one hop further) cannot speak on them
	// (--node-mesh-ttl-security).
	// +optional
	// +kubebuilder:default=true
	TTLSecurity *bool `json:"ttlSecurity,omitempty"`
}

// ServiceAdvertise says which kinds of Service address are announced to the external peers.
type ServiceAdvertise struct {
	// clusterIP announces ClusterIPs as /32s (or /128s). Unset: --advertise-cluster-ip.
	// +optional
	ClusterIP *bool `json:"clusterIP,omitempty"`

	// externalIP announces ExternalIPs inside --service-external-ip-range. Unset: --advertise-external-ip.
	// +optional
	ExternalIP *bool `json:"externalIP,omitempty"`

	// loadBalancerIP announces LoadBalancer ingress IPs inside --loadbalancer-ip-range. Unset:
	// --advertise-loadbalancer-ip.
	// +optional
	LoadBalancerIP *bool `json:"loadBalancerIP,omitempty"`

	// serviceCIDR announces the service CIDR aggregate instead of /32 ClusterIPs. Unset:
	// --advertise-service-cidr.
	// +optional
	ServiceCIDR *bool `json:"serviceCIDR,omitempty"`
}

// NodeStatusReporting says whether and how often the agents write their BGPNodeStatus.
type NodeStatusReporting struct {
	// enabled makes each agent write the BGPNodeStatus named after its node. Switch it off in very large
	// clusters, where N agents writing on every session change cost the API server more than they are worth.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// minInterval is the least time between two writes of one node's BGPNodeStatus, 1s..1h: changes in
	// between are written together.
	// +optional
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule=`self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$')`,message="minInterval must be a duration such as 5s",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('1h'))`,message="minInterval must be from 1s to 1h",reason=FieldValueInvalid
	MinInterval *metav1.Duration `json:"minInterval,omitempty"`
}

// BGPConfigurationList is a list of BGPConfigurations (at most the one named "default").
//
// +kubebuilder:object:root=true
type BGPConfigurationList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the BGPConfigurations.
	Items []BGPConfiguration `json:"items"`
}
