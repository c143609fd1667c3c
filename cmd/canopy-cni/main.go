// Command canopy-cni is Canopy's CNI plugin: the node bridge, a veth pair per pod, addresses from the node's pod
// CIDR. The container runtime runs it in the node's network namespace with the CNI_* environment and the network
// config on stdin; everything it does lives in package cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"canopy.io/canopy/cni"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	p := &cni.Plugin{}
	skel.PluginMainFuncs(p.Funcs(), cni.PluginInfo(), "CNI plugin canopy-cni "+version)
}
