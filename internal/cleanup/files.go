package cleanup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"canopy.io/canopy/cni/conflist"
)

// conflistInfo is what the conflist the agent wrote says about the pod network (empty fields: not said).
type conflistInfo struct {
	Bridge, DataDir, AgentSocket string
}

// readConflist reads our plugin's entry of the conflist at path; ok is false if there is none.
func readConflist(path string) (conflistInfo, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return conflistInfo{}, false
	}
	var c struct {
		Plugins []struct {
			Type        string `json:"type"`
			Bridge      string `json:"bridge"`
			DataDir     string `json:"dataDir"`
			AgentSocket string `json:"agentSocket"`
		} `json:"plugins"`
	}
	if json.Unmarshal(b, &c) != nil {
		return conflistInfo{}, false
	}
	for _, p := range c.Plugins {
		if p.Type == conflist.PluginName {
			return conflistInfo{Bridge: p.Bridge, DataDir: p.DataDir, AgentSocket: p.AgentSocket}, true
		}
	}
	return conflistInfo{}, false
}

// removeFile removes one file of ours if it is there.
func removeFile(path string, dryRun bool, s *Section) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		s.fail(path, err)
		return
	}
	if fi.IsDir() {
		s.kept("%s is a directory, not a file Canopy writes: left alone", path)
		return
	}
	if dryRun {
		s.removed(path)
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.fail(path, err)
		return
	}
	s.removed(path)
}

// removeTemps removes the temporary files an interrupted atomic write of name (conflist.Write) left in dir:
// "."+name+".tmp-*".
func removeTemps(dir, name string, dryRun bool, s *Section) {
	matches, _ := filepath.Glob(filepath.Join(dir, "."+name+".tmp-*"))
	for _, m := range matches {
		removeFile(m, dryRun, s)
	}
}

// ipamFile reports whether a file name in the plugin's data directory is one the plugin writes (cni/ipam: the
// lock, one file per allocated address, the last reserved address per family, temporary files; the plugin's
// STATUS probe file).
func ipamFile(name string) bool {
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	return name == "lock" || strings.HasPrefix(name, "last_reserved_ip.") || strings.HasPrefix(name, ".tmp-") ||
		strings.HasPrefix(name, ".status-")
}

// removeDataDir removes the plugin's files from dir, then dir itself if nothing else is in it. Files the plugin
// does not write are left, and so is the directory then.
func removeDataDir(dir string, dryRun bool, s *Section) {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) == "/" {
		s.fail(dir, errors.New("the CNI data directory must be an absolute path other than /"))
		return
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		s.fail(dir, err)
		return
	}
	var foreign []string
	for _, e := range entries {
		if !e.Type().IsRegular() || !ipamFile(e.Name()) {
			foreign = append(foreign, e.Name())
			continue
		}
		removeFile(filepath.Join(dir, e.Name()), dryRun, s)
	}
	if len(foreign) > 0 {
		s.kept("directory %s: it holds files the plugin does not write (%s)", dir, strings.Join(foreign, ", "))
		return
	}
	if !dryRun {
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.fail(dir+"/", err)
			return
		}
	}
	s.removed(dir + "/")
}

// agentListening reports whether a process accepts connections on the unix socket at path (a running agent).
func agentListening(path string) bool {
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// agentMetrics reports whether a Canopy agent answers on addr's /metrics (a running agent). It dials and
// talks on the calling goroutine, so it stays in the calling thread's network namespace.
func agentMetrics(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
		return false
	}
	b, _ := io.ReadAll(io.LimitReader(c, 4<<20))
	return bytes.Contains(b, []byte("\ncanopy_"))
}

// removeSocket removes the agent's CNI hint socket a stopped (or killed) agent left, and its directory if that
// is Canopy's own ("canopy", e.g. /run/canopy) and empty. A socket an agent still listens on is not removed.
func removeSocket(path string, dryRun bool, s *Section) {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		s.fail(path, err)
		return
	case fi.Mode()&fs.ModeSocket == 0:
		s.kept("%s is not a socket: left alone", path)
		return
	case agentListening(path):
		s.fail(path, errors.New("an agent is listening on it: stop the agent (delete the DaemonSet) first, or it re-creates what cleanup removes"))
		return
	case dryRun:
		s.removed(path)
	default:
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.fail(path, err)
			return
		}
		s.removed(path)
	}
	dir := filepath.Dir(path)
	if filepath.Base(dir) != "canopy" {
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return // not there (fine), or not readable: nothing to say about a directory we only remove when empty
	}
	rest := slices.DeleteFunc(entries, func(e fs.DirEntry) bool { return dryRun && e.Name() == filepath.Base(path) })
	if len(rest) > 0 {
		return
	}
	if !dryRun {
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.fail(dir+"/", fmt.Errorf("remove the empty directory: %w", err))
			return
		}
	}
	s.removed(dir + "/")
}
