package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Every lab records itself in <StateRoot>/<prefix>/state.json before it creates anything, and rewrites the file
// whenever it adds a namespace or a process. Down removes the file last. So another process (labctl down, or
// the next Up after a test binary was killed) can always find and remove what a lab made.

const stateFile = "state.json"

// record is the state file.
type record struct {
	Prefix     string    `json:"prefix"`
	Created    time.Time `json:"created"`
	OwnerPID   int       `json:"ownerPID"` // the process that ran Up
	OwnerStart uint64    `json:"ownerStart"`
	Keep       bool      `json:"keep"`  // set once Up succeeded with Config.Keep: never removed as stale
	Ready      bool      `json:"ready"` // Up finished
	WorkDir    string    `json:"workDir"`
	// RemoveWorkDir: the lab created WorkDir, so Down may delete it.
	RemoveWorkDir bool         `json:"removeWorkDir"`
	Namespaces    []string     `json:"namespaces"`
	Procs         []procRecord `json:"procs"`

	// What Attach needs to rebuild a *Lab.
	Config          Config       `json:"config"`
	AdminKubeconfig string       `json:"adminKubeconfig,omitempty"`
	Hosts           []hostRecord `json:"hosts,omitempty"` // tor, cp, ext
	Nodes           []nodeRecord `json:"nodes,omitempty"`
	Pods            []podRecord  `json:"pods,omitempty"`
}

type procRecord struct {
	Name    string `json:"name"`
	NS      string `json:"ns"`
	PID     int    `json:"pid"`
	Start   uint64 `json:"start"`
	LogPath string `json:"log"`
}

type hostRecord struct {
	Name string `json:"name"`
	NS   string `json:"ns"`
	IP   string `json:"ip"`
}

type nodeRecord struct {
	hostRecord
	Index      int    `json:"index"`
	PodCIDR    string `json:"podCIDR"`
	LogPath    string `json:"log"`
	Kubeconfig string `json:"kubeconfig"`
	NextPod    int    `json:"nextPod"`
}

type podRecord struct {
	hostRecord
	Node string `json:"node"`
}

func stateDir(root, prefix string) string {
	return filepath.Join(root, strings.TrimSuffix(prefix, "-"))
}

func writeRecord(root string, r *record) error {
	dir := stateDir(root, r.Prefix)
	// 0711: FRR (user frr) reaches its sockets in <dir>/tor; nobody else can list anything.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	for _, d := range []string{root, dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, stateFile))
}

func readRecords(root string) ([]*record, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*record
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, e.Name(), stateFile))
		if err != nil {
			// A directory without a state file: Up died between mkdir and the first write. Nothing was created
			// yet, so a record with only the prefix lets teardown remove the directory.
			out = append(out, &record{Prefix: e.Name() + "-"})
			continue
		}
		r := &record{}
		if err := json.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(root, e.Name(), stateFile), err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// ownerAlive: the process that made the lab still runs.
func (r *record) ownerAlive() bool {
	return r.OwnerPID > 0 && alive(r.OwnerPID, r.OwnerStart)
}

// stale: nobody will tear this lab down (its test process died) and nobody asked to keep it.
func (r *record) stale() bool { return !r.Keep && !r.ownerAlive() }

// teardown removes everything a record names: processes, every process still inside its namespaces, the
// namespaces, the work directory (if the lab made it and keepLogs is false) and the state directory.
func teardown(root string, r *record, keepLogs bool) error {
	// Agents first, politely (their logs then end with a clean shutdown), then everything else hard.
	agents := map[int]uint64{}
	pids := map[int]uint64{}
	for _, p := range r.Procs {
		if strings.HasPrefix(p.Name, "agent-") {
			_ = signalIfSame(p.PID, p.Start, syscall.SIGTERM)
			agents[p.PID] = p.Start
		}
		pids[p.PID] = p.Start
	}
	waitPIDs(agents, 3*time.Second, alive)
	var errs []error
	if err := removeNetns(r.namespacesOnDisk(), pids); err != nil {
		errs = append(errs, err)
	}
	if r.RemoveWorkDir && !keepLogs && r.WorkDir != "" {
		if err := os.RemoveAll(r.WorkDir); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(stateDir(root, r.Prefix)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeNetns SIGKILLs pids and every process inside the namespaces, waits for them, and deletes the namespaces.
func removeNetns(nss []string, pids map[int]uint64) error {
	var errs []error
	for _, ns := range nss {
		got, err := netnsPIDs(ns)
		if err != nil {
			errs = append(errs, err)
		}
		for _, pid := range got {
			pids[pid] = 0 // inside our namespace: ours, whatever it is
		}
	}
	if err := killAndWait(pids, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	// Processes of a lab made by another process (make lab) are now zombies until init reaps them; wait a
	// little so `make lab-down` returns with them gone from ps.
	waitPIDs(pids, 5*time.Second, exists)
	for _, ns := range nss {
		if err := delNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// namespacesOnDisk: the recorded namespaces plus any other namespace carrying the lab's prefix (a pod namespace
// whose record write was lost, say).
func (r *record) namespacesOnDisk() []string {
	seen := map[string]bool{}
	var out []string
	for _, ns := range r.Namespaces {
		if !seen[ns] {
			seen[ns] = true
			out = append(out, ns)
		}
	}
	all, _ := listNetns()
	for _, ns := range all {
		if strings.HasPrefix(ns, r.Prefix) && !seen[ns] {
			seen[ns] = true
			out = append(out, ns)
		}
	}
	return out
}

// generatedPrefix matches the prefixes Up makes up (cnp + 6 characters + "-").
var generatedPrefix = regexp.MustCompile(`^(cnp[a-z0-9]{6}-)`)

// orphanRecords returns a bare record for each generated prefix that has namespaces but no state directory
// (nothing removes a state directory before the namespaces are gone, so such namespaces are leftovers).
func orphanRecords(root string, known []*record) []*record {
	have := map[string]bool{}
	for _, r := range known {
		have[r.Prefix] = true
	}
	all, _ := listNetns()
	var out []*record
	for _, ns := range all {
		m := generatedPrefix.FindStringSubmatch(ns)
		if m == nil || have[m[1]] {
			continue
		}
		if _, err := os.Stat(stateDir(root, m[1])); err == nil {
			continue // a lab being created right now
		}
		have[m[1]] = true
		out = append(out, &record{Prefix: m[1]})
	}
	return out
}

// DownAll removes every lab recorded under stateRoot ("" = DefaultStateRoot), whoever made it and whether or not
// it is still in use, and namespaces left by labs whose state is gone. With keepLogs the work directories stay.
// This is `labctl down` / `make lab-down`.
func DownAll(stateRoot string, keepLogs bool, logf func(string, ...any)) error {
	return sweep(stateRoot, keepLogs, true, logf, func(*record) bool { return true })
}

// CleanStale removes the labs whose creating process has died without tearing them down (a test binary killed
// by -timeout or SIGKILL runs no cleanup) and which are not kept (make lab). Up calls it.
//
// It leaves alone namespaces that no state file under stateRoot names: another lab, made with another state
// root (a test's temporary one) or by a parallel test binary, may own them. Only DownAll sweeps those.
func CleanStale(stateRoot string, logf func(string, ...any)) error {
	return sweep(stateRoot, false, false, logf, (*record).stale)
}

func sweep(root string, keepLogs, orphans bool, logf func(string, ...any), pick func(*record) bool) error {
	if root == "" {
		root = DefaultStateRoot
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	recs, err := readRecords(root)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		if !pick(r) {
			continue
		}
		logf("lab: removing lab %s (created %s by pid %d, keep=%v)", r.Prefix, r.Created.Format(time.RFC3339), r.OwnerPID, r.Keep)
		if err := teardown(root, r, keepLogs); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: %w", r.Prefix, err))
		}
	}
	// Namespaces no state file names may belong to a lab recorded under another root (a test's temporary
	// one, or the default while a test uses its own): only a sweep of the default root takes them.
	if !orphans || filepath.Clean(root) != filepath.Clean(DefaultStateRoot) {
		return errors.Join(errs...)
	}
	for _, r := range orphanRecords(root, recs) {
		logf("lab: removing leftover namespaces %s*", r.Prefix)
		if err := teardown(root, r, keepLogs); err != nil {
			errs = append(errs, fmt.Errorf("leftover %s: %w", r.Prefix, err))
		}
	}
	return errors.Join(errs...)
}

// Status describes one recorded lab (labctl status).
type Status struct {
	Prefix      string
	Created     time.Time
	OwnerPID    int
	OwnerAlive  bool
	Keep, Ready bool
	WorkDir     string
	Namespaces  []string // those that exist
	Procs       []ProcStatus
	Nodes       []string // "node1 10.99.0.11 pods 10.244.1.0/24"
}

// ProcStatus is one recorded process and whether it still runs.
type ProcStatus struct {
	Name, NS, LogPath string
	PID               int
	Alive             bool
}

// List describes the labs recorded under stateRoot ("" = DefaultStateRoot).
func List(stateRoot string) ([]Status, error) {
	if stateRoot == "" {
		stateRoot = DefaultStateRoot
	}
	recs, err := readRecords(stateRoot)
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, r := range recs {
		s := Status{Prefix: r.Prefix, Created: r.Created, OwnerPID: r.OwnerPID, OwnerAlive: r.ownerAlive(),
			Keep: r.Keep, Ready: r.Ready, WorkDir: r.WorkDir}
		for _, ns := range r.namespacesOnDisk() {
			if _, err := os.Stat(netnsPath(ns)); err == nil {
				s.Namespaces = append(s.Namespaces, ns)
			}
		}
		for _, p := range r.Procs {
			s.Procs = append(s.Procs, ProcStatus{Name: p.Name, NS: p.NS, LogPath: p.LogPath, PID: p.PID, Alive: alive(p.PID, p.Start)})
		}
		for _, n := range r.Nodes {
			s.Nodes = append(s.Nodes, fmt.Sprintf("%s %s pods %s", n.Name, n.IP, n.PodCIDR))
		}
		out = append(out, s)
	}
	return out, nil
}
