// Package ipt picks the host's iptables flavour (nft or legacy) the way kube-proxy's iptables-wrapper does, and
// opens go-iptables on it. Every Canopy chain goes through it, so all of them land in the back end the host's
// other components (kubelet, CNI plugins) use.
package ipt

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// Flavour is an iptables back end.
type Flavour string

const (
	NFT    Flavour = "nft"
	Legacy Flavour = "legacy"
)

// Detect counts the rules each back end holds and picks the one in use: the one with more rules, nft on a tie
// (Debian's default). A back end whose save command is missing counts as empty.
func Detect() Flavour {
	count := func(cmd string) int {
		out, err := exec.Command(cmd).Output()
		if err != nil {
			return -1
		}
		return strings.Count(string(out), "\n-A ")
	}
	// Legacy only where it has more rules than nft: with none (the usual case) nft's rules are not counted at
	// all, since iptables-nft-save of a node's tables with 10,000 Services' chains takes seconds (minutes on a
	// loaded machine), and the agent does this before anything else.
	if legacy := count("iptables-legacy-save"); legacy > 0 && legacy > count("iptables-nft-save") {
		return Legacy
	}
	return NFT
}

// New opens go-iptables for IPv4 on flavour's binary (iptables-nft or iptables-legacy), or plain iptables if
// that binary is missing.
func New(f Flavour) (*iptables.IPTables, error) {
	return newFamily("iptables", iptables.ProtocolIPv4, f)
}

func newFamily(tool string, proto iptables.Protocol, f Flavour) (*iptables.IPTables, error) {
	if p, err := exec.LookPath(tool + "-" + string(f)); err == nil {
		return iptables.New(iptables.IPFamily(proto), iptables.Path(p), iptables.Timeout(5))
	}
	return iptables.New(iptables.IPFamily(proto), iptables.Timeout(5))
}

// Restorer runs the flavour's iptables-restore and iptables-save binaries (in the calling thread's
// network namespace).
type Restorer struct {
	restore, save string
	legacy        bool
}

// NewRestorer returns the Restorer for flavour f: iptables-nft-restore/-save or iptables-legacy-restore/-save,
// or plain iptables-restore/-save where those are missing.
func NewRestorer(f Flavour) *Restorer { return newRestorer("iptables", f) }

func newRestorer(tool string, f Flavour) *Restorer {
	bin := func(kind string) string {
		if p, err := exec.LookPath(tool + "-" + string(f) + "-" + kind); err == nil {
			return p
		}
		return tool + "-" + kind
	}
	return &Restorer{restore: bin("restore"), save: bin("save"), legacy: f == Legacy}
}

// MaxChains limits the per-service chains of one restore input for nft: iptables-nft-restore (1.8.9) takes
// time quadratic in the chains of one input (10,000 services x 2 endpoints: 82 s in one input, 1.5 s in
// chunks of 1,000 chains). Legacy rewrites the whole table per input, so it gets one input.
func (e *Restorer) MaxChains() int {
	if e.legacy {
		return 0
	}
	return 1000
}

var errLine = regexp.MustCompile(`line:? (\d+)`)

func (e *Restorer) Restore(table string, data []byte) error {
	args := []string{"--noflush"}
	if e.legacy {
		args = append(args, "-w", "5") // the xtables lock; nft needs none
	}
	cmd := exec.Command(e.restore, args...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(string(out))
	if m := errLine.FindStringSubmatch(msg); m != nil {
		if n, _ := strconv.Atoi(m[1]); n > 0 {
			if lines := strings.Split(string(data), "\n"); n <= len(lines) {
				msg += fmt.Sprintf(" (line %d: %q)", n, lines[n-1])
			}
		}
	}
	return fmt.Errorf("%s (%d bytes for table %s): %w: %s", e.restore, len(data), table, err, msg)
}

func (e *Restorer) Save(table string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(e.save, "-t", table)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %w: %s", e.save, table, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// SaveCounters returns `iptables-save -c -t table` (rules prefixed with [packets:bytes]).
func (e *Restorer) SaveCounters(table string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(e.save, "-c", "-t", table)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -c -t %s: %w: %s", e.save, table, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Host is this network namespace's iptables, its flavour detected once: the flavour's restore and save binaries
// (whole chains, atomically) and go-iptables on the flavour's binary (single rules: the jumps from the built-in
// chains). The agent opens one and hands it to every data path.
type Host struct {
	Flavour Flavour
	*Restorer
	*iptables.IPTables
}

// Open detects the flavour and opens it.
func Open() (*Host, error) { return OpenFlavour(Detect()) }

// OpenFlavour opens flavour f.
func OpenFlavour(f Flavour) (*Host, error) {
	it, err := New(f)
	if err != nil {
		return nil, err
	}
	return &Host{Flavour: f, Restorer: NewRestorer(f), IPTables: it}, nil
}

// OpenFlavour6 opens flavour f's ip6tables (ip6tables-nft or ip6tables-legacy, and their restore and save), or
// plain ip6tables where those are missing: the IPv6 twin of OpenFlavour, for data paths that police both
// families.
func OpenFlavour6(f Flavour) (*Host, error) {
	it, err := newFamily("ip6tables", iptables.ProtocolIPv6, f)
	if err != nil {
		return nil, err
	}
	return &Host{Flavour: f, Restorer: newRestorer("ip6tables", f), IPTables: it}, nil
}
