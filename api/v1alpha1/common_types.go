package v1alpha1

// SecretKeyReference names one key of a Secret: where a TCP MD5 password is kept. The password itself is never
// part of a canopy.io object, so whoever may read BGPPeers (or Nodes) does not learn it; the agent needs the
// right to get that one Secret.
type SecretKeyReference struct {
	// Namespace of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace"`
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
	// Key of the Secret's data that holds the password (its whole value, without a trailing newline).
	// +optional
	// +kubebuilder:default=password
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// Community is one BGP community in the syntax of the canopy.io/communities annotation, one item per list entry:
// "AA:NN" (a standard community, each part 0..65535), "large:A:B:C" (a large community, RFC 8092, each part
// 0..4294967295; "A:B:C" also reads as one), a standard community as one 32-bit number, or one of the well-known
// names no-export, no-advertise and no-export-subconfed (any case). The BLACKHOLE community (RFC 7999:
// "blackhole", 65535:666, 4294902426) is refused in every spelling: blackholing is the routers' decision.
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=40
// +kubebuilder:validation:XValidation:rule=`self.matches('^(?i)(no-export|no-advertise|no-export-subconfed|blackhole|[0-9]{1,10}|[0-9]{1,5}:[0-9]{1,5}|(large:)?[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10})$')`,messageExpression=`'community "' + self + '" is not AA:NN, large:A:B:C, a 32-bit number, no-export, no-advertise or no-export-subconfed'`,reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule=`!self.matches('^(?i)(large:)?[0-9]{1,10}(:[0-9]{1,10}){0,2}$') || (self.matches('^[0-9]+:[0-9]+$') ? self.split(':').all(p, int(p) <= 65535) : (self.lowerAscii().startsWith('large:') ? self.substring(6) : self).split(':').all(p, int(p) <= 4294967295))`,messageExpression=`'community "' + self + '" has a number out of range: the parts of AA:NN are 0..65535, those of large:A:B:C and a plain number 0..4294967295'`,reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule=`!(self.lowerAscii() == 'blackhole' || (self.matches('^[0-9]{1,10}$') && int(self) == 4294902426) || (self.matches('^[0-9]{1,5}:[0-9]{1,5}$') && int(self.split(':')[0]) == 65535 && int(self.split(':')[1]) == 666))`,message="the BLACKHOLE community (65535:666, RFC 7999) is refused: it would make the routers drop the traffic",reason=FieldValueForbidden
type Community string
