package lab

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
)

// K8sVersion is the control-plane version hack/build-k8s.sh builds and DefaultK8sBinDir points at.
const K8sVersion = "v1.35.4"

// EtcdVersion is the etcd hack/build-etcd.sh builds and DefaultEtcdBin points at.
const EtcdVersion = "v3.6.16"

// DefaultStateRoot is where labs record themselves (see DownAll).
const DefaultStateRoot = "/run/canopy-lab"

// Config describes a lab. The zero value (plus Nodes) is a working lab without an agent.
type Config struct {
	Nodes int // worker nodes; default 2, at most 200

	// AgentBin is the agent started in every node namespace; "" starts none (StartAgent then fails).
	AgentBin string
	// AgentArgs are appended to the standard command line (see Node.AgentArgs) on every node; PerNodeArgs[i]
	// (i = 1 for node1) after them on node i only.
	AgentArgs []string
	// CNIPlugin is the canopy-cni binary: when set, agents set up CNI in the lab's work dir and AddPod makes
	// pods through the plugin (playing the kubelet and the runtime) instead of wiring them itself.
	CNIPlugin   string
	PerNodeArgs map[int][]string
	// NoDefaultAgentArgs leaves the standard flags out: for stand-ins that are not the agent.
	NoDefaultAgentArgs bool
	// AgentGroups are the Kubernetes groups of the node credentials (user system:canopy:<node>); default
	// system:masters. Give e.g. {"canopy-agents"} and bind a ClusterRole to it to test the agent's RBAC.
	AgentGroups []string

	K8sBinDir string // kube-apiserver, kube-controller-manager, kubectl; default DefaultK8sBinDir()
	EtcdBin   string // default DefaultEtcdBin()
	FRRDir    string // zebra and bgpd; default /usr/lib/frr

	// WorkRoot is where the lab makes its work directory canopy-lab-<prefix> (logs, kubeconfigs, certificates,
	// etcd's data); default $TMPDIR. Down removes the work directory unless Keep or KeepWorkDir.
	WorkRoot string
	// StateRoot holds each lab's state file and FRR's sockets; default DefaultStateRoot.
	StateRoot string
	// Prefix of every namespace name; default "cnp" + 6 random characters + "-". Lowercase letters, digits
	// and '-', at most 16 characters.
	Prefix string
	// Keep leaves the lab up when the process that made it exits (make lab): processes are detached and do not
	// die with it, and only DownAll (labctl down) removes the lab.
	Keep bool

	FabricCIDR       netip.Prefix // the rack's L2 segment; default 10.99.0.0/24 (ToR .1, control plane .2, node i .10+i)
	ExternalCIDR     netip.Prefix // link from the ToR to the external host; default 203.0.113.0/24 (ToR .1, host .10)
	ClusterCIDR      netip.Prefix // pod network; default 10.244.0.0/16
	ServiceCIDR      netip.Prefix // default 10.96.0.0/16
	NodeCIDRMaskSize int          // default 24
	ToRASN           uint32       // default 64500
	// DualStack adds IPv6 to the lab (dualstack.go): FabricCIDR6 on the rack segment (ToR ::1, control plane ::2,
	// node i ::10+i hex, e.g. fd00:99::11), the cluster and service CIDRs in both families (nodeipam gives every
	// Node a pod CIDR of each), both InternalIPs on every Node, IPv6 unicast on the ToR's node sessions, and the
	// agents' --cluster-cidr and --service-cluster-ip-range in both families (so CNI gives pods both too). The
	// IPv4 side is the same as without it. Single rack only.
	DualStack bool `json:",omitempty"`
	// FabricCIDR6 (default fd00:99::/64), ClusterCIDR6 (default fd00:10:244::/56), ServiceCIDR6 (default
	// fd00:10:96::/112) and NodeCIDRMaskSize6 (default 64) are the IPv6 side of DualStack.
	FabricCIDR6       netip.Prefix `json:",omitempty"`
	ClusterCIDR6      netip.Prefix `json:",omitempty"`
	ServiceCIDR6      netip.Prefix `json:",omitempty"`
	NodeCIDRMaskSize6 int          `json:",omitempty"`
	// IPv6Only makes the lab IPv6-only (ipv6only.go): the fabric, the external link, the cluster and the service
	// CIDRs are IPv6 prefixes (defaults fd00:99::/64, 2001:db8:203::/64, fd00:10:244::/56 with a /64 per node,
	// fd00:10:96::/112), every Host.IP is an IPv6 address, the control plane is single-stack IPv6 and the FRR ToR
	// peers with the nodes over IPv6 (IPv6 unicast only). Single rack, FRR ToR, pods through the CNI plugin.
	IPv6Only bool `json:",omitempty"`
	// NodeDefaultRoute gives every node a static default route via the ToR, as a real server would have. Off by
	// default: a node then knows only the fabric subnet, and every other route it has came from the agent.
	NodeDefaultRoute bool

	// Racks > 1 makes the lab a small routed fabric (RFC 7938; see racks.go and docs/lab.md): rack r (1-based)
	// has its own L2 segment (bridge br0 in its ToR's namespace), its own subnet (FabricCIDR moved on by r-1
	// blocks of its size: 10.99.0.0/24, 10.99.1.0/24, …) and its own ToR (AS ToRASN+r-1 unless PerRack says
	// otherwise); every ToR peers eBGP with a spine (FRR, AS SpineASN), and the control plane and the external host
	// hang off the spine. Nodes fill the racks in contiguous blocks (RackConfig.Nodes). 0 or 1: the single-rack lab.
	Racks int `json:",omitempty"`
	// PerRack[r-1] are rack r's settings; missing entries and zero fields take the defaults. A single-rack lab
	// uses PerRack[0] too (its ToR kind, node ASN, …).
	PerRack []RackConfig `json:",omitempty"`
	// SpineASN is the spine's AS number (multi-rack only); default 65500.
	SpineASN uint32 `json:",omitempty"`
	// SpineCIDR is the spine's own segment (multi-rack only): spine .1, control plane .2; default 10.98.0.0/24.
	SpineCIDR netip.Prefix `json:",omitempty"`
	// UplinkCIDR holds a /30 per ToR-spine link (multi-rack only): rack r's spine side .4(r-1)+1, its ToR
	// .4(r-1)+2; default 10.98.1.0/24 (64 racks).
	UplinkCIDR netip.Prefix `json:",omitempty"`
	// NoToRPeerFlags leaves --peer-router-ips, --peer-router-asns and --peer-router-ttl-security out of the
	// standard agent flags: the nodes' peers then come from BGPPeer objects (or annotations) alone.
	NoToRPeerFlags bool `json:",omitempty"`

	// VMNodes are the indexes (1 = node1) of nodes that are qemu VMs instead of namespaces (see vmnode.go): Up
	// gives each its credentials, its Node object and a tap device as its port on the ToR's bridge, but no
	// namespace and no agent; Node.StartVM boots it. Empty: every node is a namespace.
	VMNodes []int `json:",omitempty"`

	// BeforeAgents, if set, runs once the API server answers and the nodes are registered, before any agent
	// starts: what the agents must find at their start (CRDs, RBAC) goes here.
	BeforeAgents func(ctx context.Context, l *Lab) error `json:"-"`

	// Logf receives progress lines (t.Logf, log.Printf); default silent.
	Logf func(format string, args ...any) `json:"-"`
}

var prefixRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,14}-$`)

// withDefaults fills the zero fields and checks the rest.
func (c Config) withDefaults() (Config, error) {
	if c.Nodes == 0 {
		c.Nodes = c.perRackNodes()
	}
	if c.Nodes == 0 {
		c.Nodes = 2
	}
	if c.Nodes < 1 || c.Nodes > 200 {
		return c, fmt.Errorf("lab: Nodes=%d: want 1..200", c.Nodes)
	}
	if c.K8sBinDir == "" {
		c.K8sBinDir = DefaultK8sBinDir()
	}
	// Relative paths would resolve against the working directory of whoever starts a process later.
	for _, p := range []*string{&c.K8sBinDir, &c.AgentBin, &c.WorkRoot, &c.StateRoot} {
		if *p != "" && strings.Contains(*p, "/") && !filepath.IsAbs(*p) {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return c, err
			}
			*p = abs
		}
	}
	if c.EtcdBin == "" {
		c.EtcdBin = DefaultEtcdBin()
	}
	if c.FRRDir == "" {
		c.FRRDir = "/usr/lib/frr"
	}
	if c.StateRoot == "" {
		c.StateRoot = DefaultStateRoot
	}
	if c.Prefix == "" {
		c.Prefix = "cnp" + randString(6) + "-"
	}
	if !strings.HasSuffix(c.Prefix, "-") {
		c.Prefix += "-"
	}
	if !prefixRE.MatchString(c.Prefix) {
		return c, fmt.Errorf("lab: Prefix %q: want lowercase letters, digits and '-', at most 16 characters", c.Prefix)
	}
	if err := c.ipv6OnlyDefaults(); err != nil {
		return c, err
	}
	def := func(p *netip.Prefix, s string) {
		if !p.IsValid() {
			*p = netip.MustParsePrefix(s)
		}
		*p = p.Masked()
	}
	def(&c.FabricCIDR, "10.99.0.0/24")
	def(&c.ExternalCIDR, "203.0.113.0/24")
	def(&c.ClusterCIDR, "10.244.0.0/16")
	def(&c.ServiceCIDR, "10.96.0.0/16")
	if c.NodeCIDRMaskSize == 0 {
		c.NodeCIDRMaskSize = 24
	}
	if c.ToRASN == 0 {
		c.ToRASN = 64500
	}
	if err := c.checkFamilies(); err != nil {
		return c, err
	}
	for _, i := range c.VMNodes {
		if i < 1 || i > c.Nodes {
			return c, fmt.Errorf("lab: VMNodes: no node %d (Nodes=%d)", i, c.Nodes)
		}
	}
	if len(c.AgentGroups) == 0 {
		c.AgentGroups = []string{"system:masters"}
	}
	if err := c.checkRacks(); err != nil {
		return c, err
	}
	if err := c.dualStackDefaults(); err != nil {
		return c, err
	}
	return c, nil
}

// DefaultK8sBinDir is $CANOPY_K8S_BIN if set, else ${CANOPY_CACHE:-/var/cache/canopy}/k8s-<K8sVersion>, where
// hack/build-k8s.sh puts the binaries.
func DefaultK8sBinDir() string { return cached("CANOPY_K8S_BIN", "k8s-"+K8sVersion) }

// DefaultEtcdBin is $CANOPY_ETCD_BIN if set, else ${CANOPY_CACHE:-/var/cache/canopy}/etcd-<EtcdVersion>/etcd,
// where hack/build-etcd.sh puts it (Debian's etcd 3.4 is too old for the API server to stream lists: see there).
func DefaultEtcdBin() string {
	return cached("CANOPY_ETCD_BIN", filepath.Join("etcd-"+EtcdVersion, "etcd"))
}

// cached is $env if set, else rel under ${CANOPY_CACHE:-/var/cache/canopy}.
func cached(env, rel string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	cache := os.Getenv("CANOPY_CACHE")
	if cache == "" {
		cache = "/var/cache/canopy"
	}
	return filepath.Join(cache, rel)
}

// Preflight says why a lab cannot run here (not root, a binary missing), or nil. Tests skip on its error.
func Preflight(cfg Config) error {
	c, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)")
	}
	look := func(what, bin string) {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", what, bin))
		}
	}
	look("iproute2", "ip")
	look("procps", "sysctl")
	look("iputils-ping", "ping")
	look("etcd (hack/build-etcd.sh)", c.EtcdBin)
	look("FRR zebra (hack/install-deps.sh)", filepath.Join(c.FRRDir, "zebra"))
	look("FRR bgpd (hack/install-deps.sh)", filepath.Join(c.FRRDir, "bgpd"))
	look("FRR bfdd (hack/install-deps.sh)", filepath.Join(c.FRRDir, "bfdd"))
	look("FRR vtysh (hack/install-deps.sh)", "vtysh")
	for _, k := range c.torKinds() {
		switch k {
		case ToRBIRD:
			look("BIRD for a BIRD ToR (bird2, hack/install-deps.sh)", "bird")
			look("BIRD's birdc (bird2)", "birdc")
		case ToRGoBGP:
			look("gobgpd for a gobgpd ToR (hack/install-deps.sh)", "gobgpd")
			look("the gobgp CLI (gobgpd)", "gobgp")
			look("BIRD, a gobgpd ToR's FIB helper (bird2)", "bird")
			look("BIRD's birdc (bird2)", "birdc")
		}
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager"} {
		look(b+" (hack/build-k8s.sh)", filepath.Join(c.K8sBinDir, b))
	}
	if c.AgentBin != "" {
		look("the agent", c.AgentBin)
	}
	if c.CNIPlugin != "" {
		look("the CNI plugin (make build)", c.CNIPlugin)
	}
	if _, err := user.Lookup("frr"); err != nil {
		missing = append(missing, "user frr (the frr package)")
	}
	if len(missing) > 0 {
		return errors.New("lab needs: " + strings.Join(missing, ", "))
	}
	return nil
}

const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"

func randString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return string(b)
}

// nthAddr is the address i places after the start of p (of either family; i small for IPv6).
func nthAddr(p netip.Prefix, i int) netip.Addr {
	if p.Addr().Is6() {
		return nthAddr6(p, i)
	}
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
