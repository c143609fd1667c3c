package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BGPNodeStatus is one node's BGP state as its agent sees it: every session, its state and prefix counts. It is
// named after the node and written by that node's agent only, through the status subresource, at most once per
// BGPConfiguration spec.nodeStatus.minInterval (and not at all when spec.nodeStatus.enabled is false).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,categories=canopy;bgp
// +kubebuilder:printcolumn:name=Established,type=string,JSONPath=`.status.summary`,description="Established sessions / configured sessions"
// +kubebuilder:printcolumn:name=ASN,type=integer,JSONPath=`.status.asn`,description="The node's AS number"
// +kubebuilder:printcolumn:name=Router-ID,type=string,JSONPath=`.status.routerID`,description="The node's BGP router ID",priority=1
// +kubebuilder:printcolumn:name=Updated,type=date,JSONPath=`.status.updated`,description="When the agent last wrote the status"
// +kubebuilder:printcolumn:name=Age,type=date,JSONPath=`.metadata.creationTimestamp`
type BGPNodeStatus struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata; the name is the node's.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// status is the node's BGP state, written by its agent.
	// +optional
	Status NodeBGPState `json:"status,omitempty"`
}

// NodeBGPState is the BGP state of one node. SetSessions fills the counts and the summary from the sessions.
//
// +kubebuilder:validation:XValidation:rule="(has(self.configured) ? self.configured : 0) == (has(self.sessions) ? self.sessions.size() : 0) && (has(self.established) ? self.established : 0) == (has(self.sessions) ? self.sessions.filter(s, s.state == 'Established').size() : 0)",message="configured and established must count the sessions (all of them, and those Established)",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.summary) || (self.summary.matches('^[0-9]{1,5}/[0-9]{1,5}$') && int(self.summary.split('/')[0]) == (has(self.established) ? self.established : 0) && int(self.summary.split('/')[1]) == (has(self.configured) ? self.configured : 0))",message="summary must be established/configured, e.g. 3/3",fieldPath=".summary",reason=FieldValueInvalid
type NodeBGPState struct {
	// sessions are the node's BGP sessions, one per peer address, sorted by address.
	// +optional
	// +listType=map
	// +listMapKey=peerAddress
	// +kubebuilder:validation:MaxItems=5000
	Sessions []BGPSession `json:"sessions,omitempty"`

	// configured is the number of sessions.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Configured int32 `json:"configured"`

	// established is the number of sessions in state Established.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Established int32 `json:"established"`

	// summary is "established/configured", e.g. "3/3", for kubectl get.
	// +optional
	// +kubebuilder:validation:MaxLength=24
	Summary string `json:"summary,omitempty"`

	// asn is the node's own AS number (--cluster-asn, the BGPConfiguration's, or canopy.io/node-asn).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4294967295
	ASN int64 `json:"asn,omitempty"`

	// routerID is the node's BGP router ID.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	RouterID string `json:"routerID,omitempty"`

	// observedGeneration is the metadata.generation of the BGPConfiguration "default" this state was reached
	// with (0: there is none; the agent runs on its flags).
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// updated is when the agent wrote this status.
	// +optional
	Updated *metav1.Time `json:"updated,omitempty"`

	// conditions are the node's BGP conditions, e.g. type ConfigConflict (a flag or annotation that a
	// BGPPeer or the BGPConfiguration overrides).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// SessionState is a BGP session's state (RFC 4271 §8.2.2).
// +kubebuilder:validation:Enum=Idle;Connect;Active;OpenSent;OpenConfirm;Established
type SessionState string

// The BGP session states.
const (
	SessionIdle        SessionState = "Idle"
	SessionConnect     SessionState = "Connect"
	SessionActive      SessionState = "Active"
	SessionOpenSent    SessionState = "OpenSent"
	SessionOpenConfirm SessionState = "OpenConfirm"
	SessionEstablished SessionState = "Established"
)

// BFDState is a BFD session's state (RFC 5880 §4.1).
// +kubebuilder:validation:Enum=AdminDown;Down;Init;Up
type BFDState string

// The BFD session states.
const (
	BFDAdminDown BFDState = "AdminDown"
	BFDDown      BFDState = "Down"
	BFDInit      BFDState = "Init"
	BFDUp        BFDState = "Up"
)

// Session sources (BGPSession.Source) other than "BGPPeer/<name>" (see PeerSource).
const (
	SourceMesh       = "mesh"       // another node, through the full mesh
	SourceFlag       = "flag"       // --peer-router-ips
	SourceAnnotation = "annotation" // the Node's canopy.io/peers
)

// PeerSource is the BGPSession.Source of a session configured by the BGPPeer named name.
func PeerSource(name string) string { return "BGPPeer/" + name }

// BGPSession is one BGP session of a node.
type BGPSession struct {
	// peerAddress is the peer's address.
	// +required
	// +kubebuilder:validation:MinLength=2
	// +kubebuilder:validation:MaxLength=45
	PeerAddress string `json:"peerAddress"`

	// peerASN is the peer's AS number.
	// +required
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4294967295
	PeerASN int64 `json:"peerASN"`

	// source says what configured the session: "mesh" (another node), "flag" (--peer-router-ips),
	// "annotation" (the Node's canopy.io/peers) or "BGPPeer/<name>".
	// +required
	// +kubebuilder:validation:MaxLength=270
	// +kubebuilder:validation:Pattern=`^(mesh|flag|annotation|BGPPeer/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$`
	Source string `json:"source"`

	// state is the session's BGP state: Idle, Connect, Active, OpenSent, OpenConfirm or Established.
	// +required
	State SessionState `json:"state"`

	// since is when the session entered its state.
	// +optional
	Since *metav1.Time `json:"since,omitempty"`

	// prefixesReceived is the number of prefixes the peer sent that are in the speaker's RIB.
	// +optional
	// +kubebuilder:validation:Minimum=0
	PrefixesReceived int64 `json:"prefixesReceived"`

	// prefixesAccepted is the number of received prefixes the import policy accepted.
	// +optional
	// +kubebuilder:validation:Minimum=0
	PrefixesAccepted int64 `json:"prefixesAccepted"`

	// prefixesAdvertised is the number of prefixes announced to the peer.
	// +optional
	// +kubebuilder:validation:Minimum=0
	PrefixesAdvertised int64 `json:"prefixesAdvertised"`

	// lastError is the last error of the session (a NOTIFICATION sent or received, a refused connection),
	// empty if none.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	LastError string `json:"lastError,omitempty"`

	// bfdState is the state of the BFD session with the peer, when BFD runs: AdminDown, Down, Init or Up.
	// +optional
	BFDState BFDState `json:"bfdState,omitempty"`
}

// BGPNodeStatusList is a list of BGPNodeStatuses.
//
// +kubebuilder:object:root=true
type BGPNodeStatusList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the BGPNodeStatuses.
	Items []BGPNodeStatus `json:"items"`
}
