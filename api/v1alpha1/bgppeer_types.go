package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BGPPeer is an external BGP peer — a top-of-rack router, a route reflector — and the nodes that peer with it:
// those its nodeSelector selects, those its nodeNames list, or (neither given) every node. It is what the
// --peer-router-* flags and a Node's canopy.io/peers annotation also say; where a BGPPeer and a flag or
// annotation name the same address for a node, the BGPPeer wins and the agent reports the conflict.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=canopy;bgp
// +kubebuilder:printcolumn:name=Address,type=string,JSONPath=`.spec.peerAddress`,description="The peer's address"
// +kubebuilder:printcolumn:name=ASN,type=integer,JSONPath=`.spec.peerASN`,description="The peer's AS number"
// +kubebuilder:printcolumn:name=Selector,type=string,JSONPath=`.spec.nodeSelector`,description="The nodes' label selector (neither a selector nor names: every node)"
// +kubebuilder:printcolumn:name=Nodes,type=string,JSONPath=`.spec.nodeNames`,description="The nodes' names (neither a selector nor names: every node)"
// +kubebuilder:printcolumn:name=Age,type=date,JSONPath=`.metadata.creationTimestamp`
type BGPPeer struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata; the name is free (e.g. the router's name).
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec says who the peer is, which nodes peer with it, and how.
	// +required
	Spec BGPPeerSpec `json:"spec"`
}

// BGPPeerSpec is one external BGP peer. Unset optional fields take the agent's flag values (--hold-time,
// --graceful-restart, --bfd, --max-prefixes, ...), so a BGPPeer says only what differs.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.nodeSelector) && has(self.nodeNames))",message="nodeSelector and nodeNames are mutually exclusive: use one selector style, not both (neither selects every node)",fieldPath=".nodeNames",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!(has(self.ttlSecurity) && self.ttlSecurity && has(self.multihopTTL) && self.multihopTTL > 1)",message="ttlSecurity is for directly connected peers: it cannot be combined with multihopTTL > 1",fieldPath=".ttlSecurity",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule=`!has(self.holdTime) || !has(self.keepaliveTime) || !self.holdTime.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || !self.keepaliveTime.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || duration(self.holdTime) == duration('0s') || duration(self.keepaliveTime).getMilliseconds() * 3 <= duration(self.holdTime).getMilliseconds()`,message="keepaliveTime must be at most a third of holdTime",fieldPath=".keepaliveTime",reason=FieldValueInvalid
type BGPPeerSpec struct {
	// peerAddress is the peer's IPv4 or IPv6 address (no prefix length, no zone); not an unspecified,
	// loopback or multicast address. One address is one peer: when two BGPPeers select the same node with
	// the same address, the agent keeps the older one and reports the other.
	// +required
	// +kubebuilder:validation:MinLength=2
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="peerAddress must be an IPv4 or IPv6 address",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || !(ip(self).isUnspecified() || ip(self).isLoopback() || cidr('224.0.0.0/4').containsIP(self) || cidr('ff00::/8').containsIP(self))",message="peerAddress cannot be an unspecified, loopback or multicast address",reason=FieldValueForbidden
	PeerAddress string `json:"peerAddress"`

	// peerASN is the peer's AS number, 1..4294967294 (4-byte ASNs in plain notation: asdot 1.10 is 65546);
	// 23456 (AS_TRANS) and 65535 are reserved, as for --peer-router-asns.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4294967294
	// +kubebuilder:validation:XValidation:rule="self != 23456 && self != 65535",message="peerASN 23456 (AS_TRANS) and 65535 are reserved AS numbers",reason=FieldValueForbidden
	PeerASN int64 `json:"peerASN"`

	// nodeSelector selects, by their labels, the nodes that peer with this router (e.g. the rack's nodes for
	// its ToR). Not together with nodeNames; neither selects every node, and so does an empty selector ({}).
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",message="nodeSelector.matchExpressions: the operator must be In, NotIn, Exists or DoesNotExist",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, (e.operator in ['In', 'NotIn']) == (has(e.values) && e.values.size() > 0))",message="nodeSelector.matchExpressions: In and NotIn need values, Exists and DoesNotExist take none",reason=FieldValueInvalid
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// nodeNames lists the nodes that peer with this router. Not together with nodeSelector; leave both out
	// for every node.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	NodeNames []string `json:"nodeNames,omitempty"`

	// passwordSecretRef names the Secret key holding the session's TCP MD5 password (RFC 2385). The password
	// itself never appears in a BGPPeer. Unset: no password.
	// +optional
	PasswordSecretRef *SecretKeyReference `json:"passwordSecretRef,omitempty"`

	// multihopTTL is the TTL of eBGP packets to a peer that is not directly connected, 1..255 (1: directly
	// connected). Unset: --peer-router-multihop-ttl.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	MultihopTTL *int32 `json:"multihopTTL,omitempty"`

	// ttlSecurity turns on GTSM (RFC 5082): TTL 255 is sent and only TTL 255 accepted, so nothing more than
	// one hop away can speak on the session. For directly connected peers only (not with multihopTTL > 1);
	// configure the router too (FRR: neighbor X ttl-security hops 1). Unset: --peer-router-ttl-security.
	// +optional
	TTLSecurity *bool `json:"ttlSecurity,omitempty"`

	// holdTime is the BGP hold time offered: 0 (no hold timer: no keepalives, the session never times out)
	// or 3s..65535s, whole seconds. Unset: --hold-time.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule=`self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$')`,message="holdTime must be a duration such as 90s or 1m30s",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || duration(self) == duration('0s') || (duration(self) >= duration('3s') && duration(self) <= duration('65535s') && duration(self).getMilliseconds() % 1000 == 0)`,message="holdTime must be 0 or whole seconds from 3s to 65535s",reason=FieldValueInvalid
	HoldTime *metav1.Duration `json:"holdTime,omitempty"`

	// keepaliveTime is the interval between keepalives, 1s..21845s in whole seconds, and at most a third of
	// holdTime (when both are set; else checked by the agent against its --hold-time). Unset:
	// --keepalive-interval.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule=`self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$')`,message="keepaliveTime must be a duration such as 30s",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('21845s') && duration(self).getMilliseconds() % 1000 == 0)`,message="keepaliveTime must be whole seconds from 1s to 21845s",reason=FieldValueInvalid
	KeepaliveTime *metav1.Duration `json:"keepaliveTime,omitempty"`

	// connectRetryTime is the wait between connection attempts, 1s..65535s in whole seconds. Unset:
	// --connect-retry.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule=`self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$')`,message="connectRetryTime must be a duration such as 5s",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('65535s') && duration(self).getMilliseconds() % 1000 == 0)`,message="connectRetryTime must be whole seconds from 1s to 65535s",reason=FieldValueInvalid
	ConnectRetryTime *metav1.Duration `json:"connectRetryTime,omitempty"`

	// gracefulRestart says whether the peer keeps this node's routes while its agent restarts (RFC 4724).
	// Unset: --graceful-restart and --graceful-restart-time.
	// +optional
	GracefulRestart *GracefulRestart `json:"gracefulRestart,omitempty"`

	// bfd runs BFD (RFC 5880/5881) with the peer: when BFD declares it down, the BGP session is reset at once
	// instead of after the hold time. Unset: --bfd and the --bfd-* timers.
	// +optional
	BFD *BFD `json:"bfd,omitempty"`

	// maxPrefixes is the most prefixes the peer may send, 1..16777216; past it the session is torn down
	// (Event BGPPrefixLimit on the Node). Unset: --max-prefixes (which may be 0, no limit).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16777216
	MaxPrefixes *int64 `json:"maxPrefixes,omitempty"`

	// allowOwnAS is how many times the node's own AS number may appear in the AS path of a route from this
	// peer before the route is refused as a loop (allowas-in), 0..10. Nodes of one rack that share an ASN behind
	// a ToR that does not replace it (FRR's as-override; BIRD has none) need 1 to learn each other's routes
	// through the ToR. Unset: 0.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	AllowOwnAS int32 `json:"allowOwnAS,omitempty"`

	// advertise says what the nodes announce to this peer. Defaults to the pod CIDRs and the Service VIPs
	// (as the --advertise-* flags allow), without extra communities.
	// +optional
	// +kubebuilder:default={}
	Advertise *PeerAdvertise `json:"advertise,omitempty"`

	// port is the peer's BGP port, 1..65535.
	// +optional
	// +kubebuilder:default=179
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
}

// GracefulRestart is the graceful restart capability (RFC 4724) offered to a peer.
type GracefulRestart struct {
	// enabled offers graceful restart to the peer.
	// +required
	Enabled bool `json:"enabled"`

	// restartTime is how long the peer keeps the routes while the agent restarts, 1s..4095s in whole
	// seconds. Unset: --graceful-restart-time.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule=`self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$')`,message="restartTime must be a duration such as 120s",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('4095s') && duration(self).getMilliseconds() % 1000 == 0)`,message="restartTime must be whole seconds from 1s to 4095s",reason=FieldValueInvalid
	RestartTime *metav1.Duration `json:"restartTime,omitempty"`
}

// BFD is Bidirectional Forwarding Detection with a peer (async mode, single hop; see bgp/bfd).
type BFD struct {
	// enabled runs a BFD session with the peer.
	// +required
	Enabled bool `json:"enabled"`

	// minRx is the receive interval offered (RequiredMinRxInterval), 10ms..1h. Unset: --bfd-min-rx.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule=`self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$')`,message="minRx must be a duration such as 300ms",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('10ms') && duration(self) <= duration('1h'))`,message="minRx must be from 10ms to 1h",reason=FieldValueInvalid
	MinRx *metav1.Duration `json:"minRx,omitempty"`

	// minTx is the transmit interval offered (DesiredMinTxInterval), 10ms..1h. Unset: --bfd-min-tx.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule=`self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$')`,message="minTx must be a duration such as 300ms",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('10ms') && duration(self) <= duration('1h'))`,message="minTx must be from 10ms to 1h",reason=FieldValueInvalid
	MinTx *metav1.Duration `json:"minTx,omitempty"`

	// multiplier is the detection multiplier, 1..255: the peer is down after this many intervals without a
	// packet. Unset: --bfd-multiplier.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	Multiplier *int32 `json:"multiplier,omitempty"`
}

// PeerAdvertise is what the nodes announce to one peer.
type PeerAdvertise struct {
	// podCIDRs announces each node's pod CIDRs to the peer.
	// +optional
	// +kubebuilder:default=true
	PodCIDRs *bool `json:"podCIDRs,omitempty"`

	// serviceVIPs announces the Service addresses the --advertise-* flags (or the BGPConfiguration) allow.
	// +optional
	// +kubebuilder:default=true
	ServiceVIPs *bool `json:"serviceVIPs,omitempty"`

	// communities are attached to every route announced to this peer, in the canopy.io/communities syntax,
	// one per item: "AA:NN", "large:A:B:C", no-export, no-advertise, no-export-subconfed. The BLACKHOLE
	// community (65535:666) is refused.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	Communities []Community `json:"communities,omitempty"`
}

// BGPPeerList is a list of BGPPeers.
//
// +kubebuilder:object:root=true
type BGPPeerList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the BGPPeers.
	Items []BGPPeer `json:"items"`
}
