// Package ipt picks the host's iptables flavour (nft or legacy) the way kube-proxy's iptables-wrapper does, and
// opens go-iptables on it. Every Canopy chain goes through it, so all of them land in the back end the host's
// other components (kubelet, CNI plugins) use.
package ipt

import (
	"os/exec"
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
	if legacy, nft := count("iptables-legacy-save"), count("iptables-nft-save"); legacy > nft {
		return Legacy
	}
	return NFT
}

// New opens go-iptables for IPv4 on flavour's binary (iptables-nft or iptables-legacy), or plain iptables if
// that binary is missing.
func New(f Flavour) (*iptables.IPTables, error) {
	bin := "iptables-" + string(f)
	if p, err := exec.LookPath(bin); err == nil {
		return iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Path(p), iptables.Timeout(5))
	}
	return iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5))
}
