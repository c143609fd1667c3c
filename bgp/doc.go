// Package bgp is Canopy's embedded BGP speaker: it runs a GoBGP server as a library, keeps its peers (the node
// full mesh, the ToR and other external routers) in line with the desired set, advertises the node's prefixes,
// and feeds the best paths it learns, filtered by the import policy, to a route sink (the kernel route manager).
//
// The pure parts (peer computation, annotation parsing, import decisions) take plain values and are where most
// tests live; the GoBGP server sits behind the small Router interface so the reconcilers can be tested with a fake.
package bgp
