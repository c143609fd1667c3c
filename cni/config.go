package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
)

// Defaults of the network config.
const (
	DefaultBridge  = "canopy0"
	DefaultDataDir = "/var/lib/cni/canopy"
	// MinMTU and MaxMTU bound an explicit or computed MTU (IPv4's minimum; the largest a veth takes).
	MinMTU = 68
	// MinIPv6MTU is IPv6's minimum link MTU: the kernel turns IPv6 off on an interface below it.
	MinIPv6MTU = 1280
	MaxMTU     = 65535
	// FallbackMTU is used when auto-detection finds no uplink.
	FallbackMTU = 1500
)

// SupportedVersions are the CNI spec versions the plugin speaks (CHECK needs 0.4.0, GC and STATUS 1.1.0).
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// PluginInfo is what VERSION reports.
func PluginInfo() version.PluginInfo { return version.PluginSupports(SupportedVersions...) }

// NetConf is the network config as it arrives on stdin: the CNI standard fields plus ours. Unknown fields are
// ignored, as CNI requires; known fields with the wrong JSON type are errors.
type NetConf struct {
	types.PluginConf

	// Bridge is the node bridge the pods hang off; default canopy0.
	Bridge string `json:"bridge,omitempty"`
	// MTU of the pod interfaces, their host ends and the bridge; 0 (default) = the uplink's MTU minus OverlayOverhead.
	MTU int `json:"mtu,omitempty"`
	// OverlayOverhead is subtracted from the detected uplink MTU (bytes of encapsulation; 0 today: no overlay).
	OverlayOverhead int `json:"overlayOverhead,omitempty"`
	// PodCIDRs are the node's pod CIDRs (Node.spec.podCIDRs): an IPv4 and/or an IPv6 prefix. A pod gets one
	// address of each family.
	PodCIDRs []string `json:"podCIDRs"`
	// DataDir holds the address allocations; default /var/lib/cni/canopy. It belongs to this one network.
	DataDir string `json:"dataDir,omitempty"`
	// Hairpin lets a pod reach itself through the bridge (a Service VIP that lands on itself); default true.
	Hairpin *bool `json:"hairpin,omitempty"`
	// AgentSocket is the agent's unix socket: after ADD the plugin tells the agent the pod's address and waits
	// (at most AgentWait) until the pod's firewall rules exist, so its traffic flows before the kubelet reports
	// the address. Empty: no such call. It never fails ADD.
	AgentSocket string `json:"agentSocket,omitempty"`

	// LegacyAttachments is the GC attachment list under the key libcni also sends (CNI issue #1101).
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// Config is a checked network config with defaults filled in.
type Config struct {
	CNIVersion      string
	Name            string
	Bridge          string
	MTU             int // 0 = detect
	OverlayOverhead int
	PodCIDRs        []netip.Prefix
	DataDir         string
	Hairpin         bool
	AgentSocket     string

	// PrevResult is the runtime's record of the ADD result (CHECK and DEL); nil if none was sent.
	PrevResult *current.Result
	// ValidAttachments is the GC argument; nil when not sent (then nothing is valid).
	ValidAttachments []types.GCAttachment
}

// ParseConfig decodes and checks a network config. Errors are *types.Error: code 6 (decoding failure) for JSON
// that does not parse, 7 (invalid network config) for values that do not make sense; every problem is listed and
// each names its field.
func ParseConfig(data []byte) (*Config, error) {
	var n NetConf
	dec := json.NewDecoder(bytes.NewReader(data))
	err := dec.Decode(&n)
	var typeErr *json.UnmarshalTypeError
	var problems []string
	switch {
	case err == nil:
		if dec.More() {
			return nil, types.NewError(types.ErrDecodingFailure, "malformed network config: trailing data after the JSON object", "")
		}
	case errors.As(err, &typeErr):
		// Decoding went on past the bad field; report it with the rest.
		typeErr.Field = strings.TrimPrefix(typeErr.Field, "PluginConf.") // the embedded standard fields
		problems = append(problems, typeProblem(typeErr))
	default:
		return nil, types.NewError(types.ErrDecodingFailure, "malformed network config JSON: "+jsonErrorText(err, data), "")
	}

	c := &Config{
		CNIVersion:      n.CNIVersion,
		Name:            n.Name,
		Bridge:          n.Bridge,
		MTU:             n.MTU,
		OverlayOverhead: n.OverlayOverhead,
		DataDir:         n.DataDir,
		AgentSocket:     n.AgentSocket,
		Hairpin:         true,
	}
	if n.Hairpin != nil {
		c.Hairpin = *n.Hairpin
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	c.ValidAttachments = n.ValidAttachments
	if c.ValidAttachments == nil {
		c.ValidAttachments = n.LegacyAttachments
	}

	if typeErr == nil || typeErr.Field != "cniVersion" {
		switch {
		case c.CNIVersion == "":
			problems = append(problems, `cniVersion: missing`)
		case !supported(c.CNIVersion):
			problems = append(problems, fmt.Sprintf("cniVersion: %q is not supported (supported: %s)", c.CNIVersion, strings.Join(SupportedVersions, ", ")))
		}
	}
	if c.Name == "" {
		problems = append(problems, "name: missing")
	} else if e := utils.ValidateNetworkName(c.Name); e != nil {
		problems = append(problems, fmt.Sprintf("name: %q: %s", c.Name, e.Msg))
	}
	if n.IPAM.Type != "" {
		problems = append(problems, fmt.Sprintf("ipam: canopy-cni allocates addresses itself from podCIDRs; remove the ipam section (type %q)", n.IPAM.Type))
	}
	if e := utils.ValidateInterfaceName(c.Bridge); e != nil {
		problems = append(problems, fmt.Sprintf("bridge: %q is not a valid interface name: %s %s", c.Bridge, e.Msg, e.Details))
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
		problems = append(problems, fmt.Sprintf("mtu: %d is out of range (0 = detect from the uplink, else %d..%d)", c.MTU, MinMTU, MaxMTU))
	}
	if c.OverlayOverhead < 0 || c.OverlayOverhead > MaxMTU-MinMTU {
		problems = append(problems, fmt.Sprintf("overlayOverhead: %d is out of range (0..%d bytes)", c.OverlayOverhead, MaxMTU-MinMTU))
	}
	if !filepath.IsAbs(c.DataDir) {
		problems = append(problems, fmt.Sprintf("dataDir: %q must be an absolute path", c.DataDir))
	}
	if typeErr == nil || !strings.HasPrefix(typeErr.Field, "podCIDRs") {
		c.PodCIDRs, problems = parsePodCIDRs(n.PodCIDRs, problems)
	}
	if c.MTU >= MinMTU && c.MTU < MinIPv6MTU && hasIPv6(c.PodCIDRs) {
		problems = append(problems, fmt.Sprintf("mtu: %d is below IPv6's minimum %d, and podCIDRs has an IPv6 CIDR", c.MTU, MinIPv6MTU))
	}

	if n.RawPrevResult != nil && (typeErr == nil || typeErr.Field != "cniVersion") && supported(c.CNIVersion) {
		if err := version.ParsePrevResult(&n.PluginConf); err != nil {
			problems = append(problems, "prevResult: "+err.Error())
		} else if r, err := current.NewResultFromResult(n.PrevResult); err != nil {
			problems = append(problems, "prevResult: "+err.Error())
		} else {
			c.PrevResult = r
		}
	}

	if len(problems) > 0 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network config: "+strings.Join(problems, "; "), "")
	}
	return c, nil
}

// Prefixes a pod CIDR must stay clear of: IPv6 ranges that are not ordinary unicast space a pod can use.
var (
	ipv4MappedRange = netip.MustParsePrefix("::ffff:0:0/96")
	ipv6LinkLocal   = netip.MustParsePrefix("fe80::/10")
	ipv6Multicast   = netip.MustParsePrefix("ff00::/8")
)

// MaxIPv6PrefixBits is the longest IPv6 pod CIDR: the subnet-router anycast (network) address, the gateway and
// at least one pod address must fit.
const MaxIPv6PrefixBits = 126

func parsePodCIDRs(raw []string, problems []string) ([]netip.Prefix, []string) {
	if len(raw) == 0 {
		return nil, append(problems, `podCIDRs: missing (the node's pod CIDRs, e.g. ["10.244.1.0/24"] or ["10.244.1.0/24", "fd00:10:244:1::/64"])`)
	}
	var out []netip.Prefix
	var outIdx []int // the index in raw of each kept CIDR
	firstV6 := -1    // index in raw of the IPv6 CIDR kept
	for i, s := range raw {
		field := fmt.Sprintf("podCIDRs[%d]", i)
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: %q is not a CIDR", field, s))
			continue
		case p.Addr().Is4In6():
			problems = append(problems, fmt.Sprintf("%s: %q is an IPv4-mapped IPv6 prefix; write it as IPv4", field, s))
			continue
		case p.Masked() != p:
			problems = append(problems, fmt.Sprintf("%s: %q has host bits set; the network is %s", field, s, p.Masked()))
			continue
		case p.Addr().Is4() && p.Bits() > 30:
			problems = append(problems, fmt.Sprintf("%s: %q is too small: a pod CIDR needs a network, gateway, broadcast and at least one pod address (/30 at most)", field, s))
			continue
		case p.Addr().Is6() && p.Bits() > MaxIPv6PrefixBits:
			problems = append(problems, fmt.Sprintf("%s: %q is too small: an IPv6 pod CIDR needs its subnet-router anycast (network) address, a gateway and at least one pod address (/%d at most)",
				field, s, MaxIPv6PrefixBits))
			continue
		case p.Addr().Is6() && (p.Overlaps(ipv6LinkLocal) || p.Overlaps(ipv6Multicast) || p.Contains(netip.IPv6Unspecified()) || p.Contains(netip.IPv6Loopback())):
			problems = append(problems, fmt.Sprintf("%s: %q is not unicast space pods can use (it covers link-local, multicast, the unspecified or the loopback address)", field, s))
			continue
		case p.Addr().Is6() && p.Overlaps(ipv4MappedRange):
			problems = append(problems, fmt.Sprintf("%s: %q covers the IPv4-mapped range ::ffff:0:0/96, which pods cannot use", field, s))
			continue
		}
		overlaps := false
		for j, q := range out {
			if q.Overlaps(p) {
				problems = append(problems, fmt.Sprintf("%s: %s overlaps podCIDRs[%d] %s", field, p, outIdx[j], q))
				overlaps = true
			}
		}
		if p.Addr().Is6() && !overlaps {
			// One address per family per pod, from one CIDR: Kubernetes gives a node at most one per family.
			if firstV6 >= 0 {
				problems = append(problems, fmt.Sprintf("%s: %s is a second IPv6 pod CIDR (podCIDRs[%d] is %s): at most one per family",
					field, p, firstV6, raw[firstV6]))
				continue
			}
			firstV6 = i
		}
		out = append(out, p)
		outIdx = append(outIdx, i)
	}
	return out, problems
}

func supported(v string) bool {
	for _, s := range SupportedVersions {
		if s == v {
			return true
		}
	}
	return false
}

// typeProblem words a JSON type mismatch by field: `mtu: must be a number, not a string`.
func typeProblem(e *json.UnmarshalTypeError) string {
	field := e.Field
	if field == "" {
		field = "(top level)"
	}
	return fmt.Sprintf("%s: must be %s, not %s", field, describeType(e.Type), article(e.Value))
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Pointer:
		return describeType(t.Elem())
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list of " + strings.TrimPrefix(strings.TrimPrefix(describeType(t.Elem()), "a "), "an ") + "s"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

func article(jsonKind string) string {
	switch jsonKind {
	case "array", "object":
		return "an " + jsonKind
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	}
	if jsonKind == "number" {
		return "a number"
	}
	if strings.HasPrefix(jsonKind, "number ") {
		return "the " + jsonKind // "number 1.5": a number the field cannot hold
	}
	return jsonKind
}

// jsonErrorText adds the line and column to a syntax error.
func jsonErrorText(err error, data []byte) string {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		off := min(int(se.Offset), len(data))
		line := 1 + bytes.Count(data[:off], []byte("\n"))
		col := off - bytes.LastIndexByte(data[:off], '\n')
		return fmt.Sprintf("%v (line %d, column %d)", se, line, col)
	case errors.Is(err, io.EOF):
		return "empty input"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of input"
	}
	return err.Error()
}
