package cleanup

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"canopy.io/canopy/cni/conflist"
)

func TestReportText(t *testing.T) {
	r := &Report{NeverTouched: []string{"sysctls"}}
	s := r.section("routes", "table 254, protocol 186")
	s.removed("10.244.2.0/24 via 10.0.0.2")
	r.section("iptables", "nft")
	r.section("ip6tables", "legacy").Skipped = "ip6tables-legacy-save not found: its chains could not be checked"
	sets := r.section("ipsets", "")
	sets.removed("CANOPY-S-A")
	sets.fail("CANOPY-S-B", errors.New("Set cannot be destroyed: it is in use by a kernel component"))
	r.section("links", "pod network").kept("2 link(s) of the pod network: running pods would lose their network")
	r.Warnings = []string{"something to know"}
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `routes (table 254, protocol 186): removed 1
  - 10.244.2.0/24 via 10.0.0.2
iptables (nft): nothing of ours
ip6tables (legacy): skipped: ip6tables-legacy-save not found: its chains could not be checked
ipsets: removed 1, FAILED 1
  - CANOPY-S-A
  ! CANOPY-S-B: Set cannot be destroyed: it is in use by a kernel component
links (pod network): nothing removed
  kept: 2 link(s) of the pod network: running pods would lose their network
warning: something to know
not touched: sysctls
FAILED: 1 item(s) of Canopy's could not be removed (see "!" above); 2 removed
`
	if b.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", b.String(), want)
	}
	if r.Failures() != 1 || r.Removed() != 2 {
		t.Errorf("failures %d removed %d", r.Failures(), r.Removed())
	}

	r.DryRun = true
	r.Sections[3].Failed = nil
	b.Reset()
	_ = r.WriteText(&b)
	if !strings.HasPrefix(b.String(), "dry run: nothing is changed") || !strings.Contains(b.String(), "routes (table 254, protocol 186): would remove 1") ||
		!strings.HasSuffix(b.String(), "dry run: 2 item(s) would be removed\n") {
		t.Errorf("dry run text:\n%s", b.String())
	}
}

func TestReportJSON(t *testing.T) {
	r := &Report{DryRun: true, NeverTouched: []string{"sysctls"}}
	r.section("files", "").removed("/etc/cni/net.d/10-canopy.conflist")
	r.section("routes", "table 254, protocol 186")
	r.section("ipsets", "").fail("CANOPY-S-B", errors.New("in use"))
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got struct {
		DryRun   bool `json:"dryRun"`
		Sections []struct {
			Kind    string    `json:"kind"`
			Scope   string    `json:"scope"`
			Removed []string  `json:"removed"`
			Failed  []Failure `json:"failed"`
		} `json:"sections"`
		NeverTouched []string `json:"neverTouched"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if !got.DryRun || len(got.Sections) != 3 || got.Sections[0].Removed[0] != "/etc/cni/net.d/10-canopy.conflist" ||
		got.Sections[1].Removed == nil || got.Sections[2].Failed[0] != (Failure{"CANOPY-S-B", "in use"}) || len(got.NeverTouched) != 1 {
		t.Errorf("json:\n%s", b.String())
	}
	// An empty removed list is [] (not null), so a script can iterate it.
	if !strings.Contains(b.String(), `"removed": []`) {
		t.Errorf("empty removed list is not []:\n%s", b.String())
	}
}

type fakeSets struct {
	sets  []string
	inUse map[string]string // set -> who holds it
}

func (f *fakeSets) List() ([]string, error) { return slices.Clone(f.sets), nil }
func (f *fakeSets) Destroy(name string) error {
	if h := f.inUse[name]; h != "" && slices.Contains(f.sets, h) {
		return errors.New("ipset destroy " + name + ": Set cannot be destroyed: it is in use by a kernel component")
	}
	if !slices.Contains(f.sets, name) {
		return errors.New("ipset destroy " + name + ": The set with the given name does not exist")
	}
	f.sets = slices.DeleteFunc(f.sets, func(s string) bool { return s == name })
	return nil
}

func TestRemoveIPSets(t *testing.T) {
	f := &fakeSets{
		sets: []string{"FOREIGN", "CANOPYX", "CANOPY-POL-READY", "CANOPY-A-LIST", "CANOPY-S-B", "CANOPY-S-C", "canopy-s-d"},
		// A list:set of ours holds B (retried after the list is gone); a foreign rule holds C (a failure).
		inUse: map[string]string{"CANOPY-S-B": "CANOPY-A-LIST", "CANOPY-S-C": "FOREIGN"},
	}
	dry := &Section{}
	removeIPSets(f, true, dry)
	if len(f.sets) != 7 || !slices.Equal(dry.Removed, []string{"CANOPY-A-LIST", "CANOPY-POL-READY", "CANOPY-S-B", "CANOPY-S-C"}) {
		t.Fatalf("dry run: %+v, sets %v", dry, f.sets)
	}
	s := &Section{}
	removeIPSets(f, false, s)
	if !slices.Equal(f.sets, []string{"FOREIGN", "CANOPYX", "CANOPY-S-C", "canopy-s-d"}) {
		t.Errorf("sets left %v", f.sets)
	}
	if len(s.Removed) != 3 || len(s.Failed) != 1 || s.Failed[0].Item != "CANOPY-S-C" || !strings.Contains(s.Failed[0].Error, "in use") {
		t.Errorf("report %+v", s)
	}
}

type fakeNFT struct{ tables []string }

func (f *fakeNFT) Tables() ([]string, error) { return slices.Clone(f.tables), nil }
func (f *fakeNFT) DeleteTable(family, name string) error {
	f.tables = slices.DeleteFunc(f.tables, func(t string) bool { return t == family+" "+name })
	return nil
}

func TestRemoveNFT(t *testing.T) {
	// The nftables proxy's shards have tables canopy-1, canopy-2, … next to canopy.
	f := &fakeNFT{tables: []string{"ip filter", "ip canopy", "inet canopy", "inet canopyx", "ip canopy-1", "ip6 canopy-12", "ip canopy-", "ip canopy-01", "ip canopy-x", "ip6 nat"}}
	s := &Section{}
	removeNFT(f, true, s)
	if len(f.tables) != 10 || !slices.Equal(s.Removed, []string{"table ip canopy", "table inet canopy", "table ip canopy-1", "table ip6 canopy-12"}) {
		t.Fatalf("dry run %+v", s)
	}
	s = &Section{}
	removeNFT(f, false, s)
	if !slices.Equal(f.tables, []string{"ip filter", "inet canopyx", "ip canopy-", "ip canopy-01", "ip canopy-x", "ip6 nat"}) || len(s.Removed) != 4 {
		t.Errorf("tables %v, report %+v", f.tables, s)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool { _, err := os.Lstat(path); return err == nil }

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	confDir, binDir, dataDir := filepath.Join(dir, "net.d"), filepath.Join(dir, "bin"), filepath.Join(dir, "data")
	write(t, filepath.Join(confDir, conflist.FileName), `{"cniVersion":"1.1.0","name":"canopy","plugins":[
		{"type":"canopy-cni","podCIDRs":["10.244.1.0/24"],"bridge":"br-pods","dataDir":"`+dataDir+`","agentSocket":"/x/canopy/cni.sock"},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`)
	write(t, filepath.Join(confDir, "."+conflist.FileName+".tmp-123"), "partial")
	write(t, filepath.Join(confDir, "05-other.conflist"), "{}")
	write(t, filepath.Join(binDir, conflist.PluginName), "binary")
	write(t, filepath.Join(binDir, ".canopy-cni.tmp-9"), "partial")
	write(t, filepath.Join(binDir, "bridge"), "someone else's plugin")
	for _, f := range []string{"lock", "10.244.1.10", "last_reserved_ip.v4", ".tmp-10.244.1.11.123"} {
		write(t, filepath.Join(dataDir, f), "x")
	}

	info, ok := readConflist(filepath.Join(confDir, conflist.FileName))
	if !ok || info != (conflistInfo{Bridge: "br-pods", DataDir: dataDir, AgentSocket: "/x/canopy/cni.sock"}) {
		t.Fatalf("conflist info %+v %v", info, ok)
	}

	for _, dry := range []bool{true, false} {
		s := &Section{}
		removeFile(filepath.Join(confDir, conflist.FileName), dry, s)
		removeTemps(confDir, conflist.FileName, dry, s)
		removeFile(filepath.Join(binDir, conflist.PluginName), dry, s)
		removeTemps(binDir, conflist.PluginName, dry, s)
		removeDataDir(dataDir, dry, s)
		if len(s.Removed) != 9 || len(s.Failed) != 0 || len(s.Kept) != 0 {
			t.Fatalf("dry %v: %+v", dry, s)
		}
		if gone := !exists(filepath.Join(confDir, conflist.FileName)); gone != !dry {
			t.Fatalf("dry %v: conflist gone %v", dry, gone)
		}
	}
	for _, p := range []string{dataDir, filepath.Join(binDir, conflist.PluginName), filepath.Join(binDir, ".canopy-cni.tmp-9"),
		filepath.Join(confDir, "."+conflist.FileName+".tmp-123")} {
		if exists(p) {
			t.Errorf("%s left", p)
		}
	}
	for _, p := range []string{filepath.Join(confDir, "05-other.conflist"), filepath.Join(binDir, "bridge")} {
		if !exists(p) {
			t.Errorf("foreign %s removed", p)
		}
	}
	// Twice: nothing to do.
	s := &Section{}
	removeFile(filepath.Join(confDir, conflist.FileName), false, s)
	removeDataDir(dataDir, false, s)
	if len(s.Removed)+len(s.Failed)+len(s.Kept) != 0 {
		t.Errorf("second run: %+v", s)
	}
}

func TestDataDirWithForeignFiles(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	write(t, filepath.Join(dataDir, "lock"), "")
	write(t, filepath.Join(dataDir, "10.244.1.10"), "cid\r\neth0")
	write(t, filepath.Join(dataDir, "notes.txt"), "mine")
	s := &Section{}
	removeDataDir(dataDir, false, s)
	if len(s.Removed) != 2 || len(s.Kept) != 1 || !strings.Contains(s.Kept[0], "notes.txt") || !exists(filepath.Join(dataDir, "notes.txt")) {
		t.Errorf("report %+v", s)
	}
	s = &Section{}
	removeDataDir("relative/dir", false, s)
	removeDataDir("/", false, s)
	if len(s.Failed) != 2 {
		t.Errorf("relative and / must be refused: %+v", s)
	}
}

func TestSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "canopy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "cni.sock")
	// A live agent's socket: not removed, and said so.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &Section{}
	removeSocket(sock, false, s)
	if len(s.Failed) != 1 || !strings.Contains(s.Failed[0].Error, "agent is listening") || !exists(sock) {
		t.Fatalf("live socket: %+v", s)
	}
	// A stale one (the agent was killed): removed, with its directory.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	s = &Section{}
	removeSocket(sock, true, s)
	if !slices.Equal(s.Removed, []string{sock, dir + "/"}) || !exists(sock) {
		t.Fatalf("dry run: %+v", s)
	}
	s = &Section{}
	removeSocket(sock, false, s)
	if !slices.Equal(s.Removed, []string{sock, dir + "/"}) || exists(dir) {
		t.Fatalf("stale socket: %+v", s)
	}
	// Not a socket, or a directory not named canopy: left alone.
	other := filepath.Join(t.TempDir(), "run")
	write(t, filepath.Join(other, "cni.sock"), "a file")
	s = &Section{}
	removeSocket(filepath.Join(other, "cni.sock"), false, s)
	if len(s.Removed) != 0 || len(s.Kept) != 1 || !exists(filepath.Join(other, "cni.sock")) {
		t.Errorf("regular file: %+v", s)
	}
}

func TestValidate(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
	c := Default()
	c.RouteProtocol, c.RouteTable, c.CNIConfDir, c.CNIDataDir = 0, -1, "etc/cni", "/"
	err := c.Validate()
	for _, want := range []string{"--route-protocol", "--route-table", "--cni-conf-dir", "--cni-data-dir"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}
