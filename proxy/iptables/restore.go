package iptables

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"canopy.io/canopy/internal/ipt"
)

// execRestorer runs the flavour's iptables-restore and iptables-save binaries (in the calling thread's
// network namespace).
type execRestorer struct {
	restore, save string
	legacy        bool
}

// NewRestorer returns the Restorer for flavour f: iptables-nft-restore/-save or iptables-legacy-restore/-save,
// or plain iptables-restore/-save where those are missing.
func NewRestorer(f ipt.Flavour) Restorer {
	bin := func(kind string) string {
		if p, err := exec.LookPath("iptables-" + string(f) + "-" + kind); err == nil {
			return p
		}
		return "iptables-" + kind
	}
	return &execRestorer{restore: bin("restore"), save: bin("save"), legacy: f == ipt.Legacy}
}

// MaxChains limits the per-service chains of one restore input for nft: iptables-nft-restore (1.8.9) takes
// time quadratic in the chains of one input (10,000 services x 2 endpoints: 82 s in one input, 1.5 s in
// chunks of 1,000 chains). Legacy rewrites the whole table per input, so it gets one input.
func (e *execRestorer) MaxChains() int {
	if e.legacy {
		return 0
	}
	return 1000
}

var errLine = regexp.MustCompile(`line:? (\d+)`)

func (e *execRestorer) Restore(table string, data []byte) error {
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

func (e *execRestorer) Save(table string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(e.save, "-t", table)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %w: %s", e.save, table, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// netlinkConntrack deletes conntrack entries over netlink in the calling thread's network namespace.
type netlinkConntrack struct{}

func (netlinkConntrack) DeleteUDP(flows []Flow) error {
	filters := make([]netlink.CustomConntrackFilter, 0, len(flows))
	for _, f := range flows {
		cf := &netlink.ConntrackFilter{}
		if err := cf.AddProtocol(unix.IPPROTO_UDP); err != nil {
			return err
		}
		if f.OrigDst.IsValid() {
			if err := cf.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.OrigDst.AsSlice())); err != nil {
				return err
			}
		}
		if f.OrigDstPort != 0 {
			if err := cf.AddPort(netlink.ConntrackOrigDstPort, f.OrigDstPort); err != nil {
				return err
			}
		}
		if f.ReplySrc.IsValid() {
			if err := cf.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.ReplySrc.AsSlice())); err != nil {
				return err
			}
		}
		filters = append(filters, cf)
	}
	if len(filters) == 0 {
		return nil
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(unix.AF_INET), filters...)
	return err
}
