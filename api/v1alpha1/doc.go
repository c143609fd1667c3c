// Package v1alpha1 holds the canopy.io/v1alpha1 API: Canopy's BGP configuration as Kubernetes objects, for users
// who, as with Calico, Cilium or MetalLB, want to `kubectl apply` their peers.
//
//   - BGPPeer (cluster-scoped): an external BGP peer (a ToR, a route reflector) and which nodes peer with it
//     (a label selector, a list of node names, or every node).
//   - BGPConfiguration (cluster-scoped singleton named "default"): the cluster-wide settings the agent's flags
//     also give (cluster ASN, the node mesh, which Service addresses are announced, communities, limits).
//   - BGPNodeStatus (cluster-scoped, named after its node, written by that node's agent through the status
//     subresource): the node's BGP sessions, their state and prefix counts.
//
// The types carry kubebuilder markers; hack/gen-crds.sh runs controller-gen (pinned in hack/tools/go.mod) to
// write zz_generated.deepcopy.go and manifests/crds/*.yaml from them, and a unit test fails when those files are
// not current. The CRDs validate every field on the API server (OpenAPI bounds and CEL rules whose messages name
// the field), so a bad object is refused when it is applied, not found later in an agent's log; the agent still
// checks what it reads, as it does flags and annotations. docs/crds.md describes every field with examples.
//
// The package depends on k8s.io/apimachinery only. An agent reading these objects through a dynamic informer
// converts them with FromUnstructured (or PeerFromUnstructured, ConfigurationFromUnstructured,
// NodeStatusFromUnstructured) and writes a BGPNodeStatus with ToUnstructured.
//
// +kubebuilder:object:generate=true
// +groupName=canopy.io
package v1alpha1
