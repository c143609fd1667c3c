package cni

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

const goodConf = `{"cniVersion":"1.0.0","name":"canopy","type":"canopy-cni","bridge":"canopy0","mtu":0,
  "podCIDRs":["10.244.1.0/24"],"dataDir":"/var/lib/cni/canopy","hairpin":true}`

func TestParseConfigGood(t *testing.T) {
	c, err := ParseConfig([]byte(goodConf))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{CNIVersion: "1.0.0", Name: "canopy", Bridge: "canopy0", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		DataDir: "/var/lib/cni/canopy", Hairpin: true}
	if c.CNIVersion != want.CNIVersion || c.Name != want.Name || c.Bridge != want.Bridge || c.MTU != 0 || c.DataDir != want.DataDir ||
		!c.Hairpin || len(c.PodCIDRs) != 1 || c.PodCIDRs[0] != want.PodCIDRs[0] || c.PrevResult != nil || c.ValidAttachments != nil {
		t.Errorf("ParseConfig = %+v, want %+v", c, want)
	}
}

func TestParseConfigDefaultsAndExtras(t *testing.T) {
	c, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","podCIDRs":["10.0.0.0/16","10.1.0.0/24"],
		"someoneElsesField":{"x":[1,2]},"overlayOverhead":50,"mtu":9000,"hairpin":false,
		"cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != DefaultBridge || c.DataDir != DefaultDataDir || c.MTU != 9000 || c.OverlayOverhead != 50 || c.Hairpin ||
		len(c.PodCIDRs) != 2 || len(c.ValidAttachments) != 1 || c.ValidAttachments[0].ContainerID != "c1" {
		t.Errorf("got %+v", c)
	}
	// hairpin defaults to true.
	c, err = ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"]}`))
	if err != nil || !c.Hairpin {
		t.Errorf("hairpin default: %+v, %v", c, err)
	}
}

func TestParseConfigPrevResult(t *testing.T) {
	c, err := ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"prevResult":{"cniVersion":"1.0.0",
		"interfaces":[{"name":"eth0","mtu":1400,"sandbox":"/var/run/netns/x"}],"ips":[{"interface":0,"address":"10.0.0.2/24","gateway":"10.0.0.1"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.PrevResult == nil || len(c.PrevResult.IPs) != 1 || c.PrevResult.IPs[0].Address.String() != "10.0.0.2/24" || c.PrevResult.Interfaces[0].Mtu != 1400 {
		t.Errorf("prevResult = %+v", c.PrevResult)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		code       uint
		want       []string // each must appear in the message
	}{
		{"malformed", `{"cniVersion":"1.0.0",`, types.ErrDecodingFailure, []string{"malformed network config JSON", "unexpected end"}},
		{"syntax", "{\"cniVersion\":\"1.0.0\",\n \"name\": canopy}", types.ErrDecodingFailure, []string{"malformed", "line 2"}},
		{"empty", ``, types.ErrDecodingFailure, []string{"empty input"}},
		{"trailing", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"]} {}`, types.ErrDecodingFailure, []string{"trailing"}},
		{"not an object", `[1,2]`, types.ErrInvalidNetworkConfig, []string{"must be an object, not an array"}},
		{"missing podCIDRs", `{"cniVersion":"1.0.0","name":"n"}`, types.ErrInvalidNetworkConfig, []string{"podCIDRs: missing"}},
		{"empty podCIDRs", `{"cniVersion":"1.0.0","name":"n","podCIDRs":[]}`, types.ErrInvalidNetworkConfig, []string{"podCIDRs: missing"}},
		{"podCIDRs a string", `{"cniVersion":"1.0.0","name":"n","podCIDRs":"10.0.0.0/24"}`, types.ErrInvalidNetworkConfig,
			[]string{"podCIDRs: must be a list of strings, not a string"}},
		{"podCIDRs numbers", `{"cniVersion":"1.0.0","name":"n","podCIDRs":[10]}`, types.ErrInvalidNetworkConfig,
			[]string{"podCIDRs", "must be a string, not a number"}},
		{"bad CIDR", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.244.1.0/33"]}`, types.ErrInvalidNetworkConfig,
			[]string{`podCIDRs[0]: "10.244.1.0/33" is not a CIDR`}},
		{"not a CIDR", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24","banana"]}`, types.ErrInvalidNetworkConfig,
			[]string{`podCIDRs[1]: "banana" is not a CIDR`}},
		{"host bits", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.244.1.7/24"]}`, types.ErrInvalidNetworkConfig,
			[]string{"podCIDRs[0]", "host bits", "10.244.1.0/24"}},
		{"too small", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.244.1.0/31"]}`, types.ErrInvalidNetworkConfig,
			[]string{"podCIDRs[0]", "too small"}},
		{"overlap", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.244.0.0/16","10.244.1.0/24"]}`, types.ErrInvalidNetworkConfig,
			[]string{"podCIDRs[1]", "overlaps podCIDRs[0]"}},
		{"two ipv6", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64","fd00:10:244:2::/64"]}`, types.ErrInvalidNetworkConfig,
			[]string{"podCIDRs[2]", "a second IPv6 pod CIDR", "at most one per family"}},
		{"mtu string", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"mtu":"1500"}`, types.ErrInvalidNetworkConfig,
			[]string{"mtu: must be an integer, not a string"}},
		{"mtu fraction", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"mtu":1500.5}`, types.ErrInvalidNetworkConfig,
			[]string{"mtu: must be an integer"}},
		{"mtu range", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"mtu":-1}`, types.ErrInvalidNetworkConfig,
			[]string{"mtu: -1 is out of range"}},
		{"mtu huge", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"mtu":70000}`, types.ErrInvalidNetworkConfig,
			[]string{"mtu: 70000 is out of range"}},
		{"overhead", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"overlayOverhead":-50}`, types.ErrInvalidNetworkConfig,
			[]string{"overlayOverhead: -50 is out of range"}},
		{"hairpin string", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"hairpin":"yes"}`, types.ErrInvalidNetworkConfig,
			[]string{"hairpin: must be true or false, not a string"}},
		{"bridge type", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"bridge":7}`, types.ErrInvalidNetworkConfig,
			[]string{"bridge: must be a string, not a number"}},
		{"bridge long", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"bridge":"a-very-long-bridge-name"}`, types.ErrInvalidNetworkConfig,
			[]string{`bridge: "a-very-long-bridge-name" is not a valid interface name`}},
		{"bridge slash", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"bridge":"br/0"}`, types.ErrInvalidNetworkConfig,
			[]string{`bridge: "br/0"`}},
		{"dataDir relative", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"dataDir":"var/lib"}`, types.ErrInvalidNetworkConfig,
			[]string{`dataDir: "var/lib" must be an absolute path`}},
		{"dataDir type", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"dataDir":["/a"]}`, types.ErrInvalidNetworkConfig,
			[]string{"dataDir: must be a string, not an array"}},
		{"no name", `{"cniVersion":"1.0.0","podCIDRs":["10.0.0.0/24"]}`, types.ErrInvalidNetworkConfig, []string{"name: missing"}},
		{"bad name", `{"cniVersion":"1.0.0","name":"a b","podCIDRs":["10.0.0.0/24"]}`, types.ErrInvalidNetworkConfig, []string{`name: "a b"`}},
		{"no version", `{"name":"n","podCIDRs":["10.0.0.0/24"]}`, types.ErrInvalidNetworkConfig, []string{"cniVersion: missing"}},
		{"old version", `{"cniVersion":"0.3.1","name":"n","podCIDRs":["10.0.0.0/24"]}`, types.ErrInvalidNetworkConfig,
			[]string{`cniVersion: "0.3.1" is not supported`}},
		{"version type", `{"cniVersion":1,"name":"n","podCIDRs":["10.0.0.0/24"]}`, types.ErrInvalidNetworkConfig,
			[]string{"cniVersion: must be a string, not a number"}},
		{"ipam", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig,
			[]string{"ipam: canopy-cni allocates addresses itself", "host-local"}},
		{"prevResult", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"nonsense"}]}}`,
			types.ErrInvalidNetworkConfig, []string{"prevResult"}},
		{"several at once", `{"cniVersion":"1.0.0","name":"n","podCIDRs":["x"],"mtu":5,"dataDir":"rel"}`, types.ErrInvalidNetworkConfig,
			[]string{"podCIDRs[0]", "mtu: 5", "dataDir"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.conf))
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("err = %v (%T), want a *types.Error", err, err)
			}
			if te.Code != tc.code {
				t.Errorf("code = %d, want %d (%s)", te.Code, tc.code, te.Msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(te.Msg, w) {
					t.Errorf("message %q lacks %q", te.Msg, w)
				}
			}
		})
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("0123456789abcdef", "eth0")
	if len(a) != 15 || !strings.HasPrefix(a, "cnp") || !isHostVethName(a) {
		t.Errorf("HostVethName = %q: want cnp + 12 hex digits", a)
	}
	if a != HostVethName("0123456789abcdef", "eth0") {
		t.Error("HostVethName is not stable")
	}
	if a == HostVethName("0123456789abcdef", "eth1") || a == HostVethName("0123456789abcdee", "eth0") {
		t.Error("HostVethName collides for different attachments")
	}
	if isHostVethName("cnpveth0") || isHostVethName("eth0") {
		t.Error("isHostVethName accepts foreign names")
	}
}
