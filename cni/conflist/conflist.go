// Package conflist writes the node's CNI network configuration list for canopy-cni (and installs the plugin
// binary), so that a DaemonSet needs no init container beyond the agent itself.
package conflist

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
)

// FileName is the conflist the agent writes in --cni-conf-dir.
const FileName = "10-canopy.conflist"

// PluginName is the plugin binary's name.
const PluginName = "canopy-cni"

// Options are what the conflist depends on.
type Options struct {
	PodCIDRs []netip.Prefix
	Bridge   string // "" = canopy0
	MTU      int    // 0 = the plugin detects it
	DataDir  string // "" = the plugin's default
	Portmap  bool   // chain the standard portmap plugin
	// AgentSocket is the agent's unix socket the plugin reports new pods' addresses to ("" = none).
	AgentSocket string
	// OverlayOverhead is the plugin's overlayOverhead: bytes taken off the detected uplink MTU (the VXLAN overlay's 50).
	OverlayOverhead int
}

// Render returns the conflist's JSON.
func Render(o Options) ([]byte, error) {
	if len(o.PodCIDRs) == 0 {
		return nil, fmt.Errorf("no pod CIDR")
	}
	var cidrs []string
	for _, p := range o.PodCIDRs {
		cidrs = append(cidrs, p.String())
	}
	main := map[string]any{"type": PluginName, "podCIDRs": cidrs}
	if o.Bridge != "" {
		main["bridge"] = o.Bridge
	}
	if o.MTU > 0 {
		main["mtu"] = o.MTU
	}
	if o.OverlayOverhead > 0 {
		main["overlayOverhead"] = o.OverlayOverhead
	}
	if o.DataDir != "" {
		main["dataDir"] = o.DataDir
	}
	if o.AgentSocket != "" {
		main["agentSocket"] = o.AgentSocket
	}
	plugins := []any{main}
	if o.Portmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true})
	}
	return json.MarshalIndent(map[string]any{"cniVersion": "1.1.0", "name": "canopy", "plugins": plugins}, "", "  ")
}

// Write puts data in dir/name atomically (temp file + rename) and reports whether the content changed.
func Write(dir, name string, data []byte, mode os.FileMode) (bool, error) {
	path := filepath.Join(dir, name)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), path)
}

// InstallPlugin copies the plugin binary src into binDir (atomically, only when it differs).
func InstallPlugin(src, binDir string) (bool, error) {
	f, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return false, err
	}
	return Write(binDir, PluginName, data, 0o755)
}
