package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func validRaw() Raw {
	return Raw{
		NodeName: "n1", ClusterASN: 64512, BGPPort: 179, NodesFullMesh: true,
		ClusterCIDRs: []string{"10.244.0.0/16"}, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
		ConnectRetry: 2 * time.Second, GRRestartTime: 120 * time.Second, RouteProtocol: 186, RouteTable: 254,
		StaleTimeout: time.Minute, LogLevel: "info", ProxyMode: "iptables",
	}
}

func TestValidateGood(t *testing.T) {
	r := validRaw()
	r.PeerIPs = []string{"10.99.0.1", "10.99.0.254"}
	r.PeerASNs = []string{"64500"}
	r.ImportAllow = []string{"192.0.2.0/24,198.51.100.0/24"}
	c, err := r.Validate()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Peers) != 2 || c.Peers[1].ASN != 64500 || len(c.ImportAllow) != 2 || c.ClusterASN != 64512 {
		t.Fatalf("unexpected config %+v", c)
	}
}

func TestValidateErrorsNameTheFlag(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Raw)
		want string
	}{
		{"no cluster cidr", func(r *Raw) { r.ClusterCIDRs = nil }, "--cluster-cidr"},
		{"bad cidr", func(r *Raw) { r.ClusterCIDRs = []string{"10.244.0.0/33"} }, `"10.244.0.0/33" is not a CIDR`},
		{"host bits", func(r *Raw) { r.ClusterCIDRs = []string{"10.244.1.1/16"} }, "host bits"},
		{"default allowed", func(r *Raw) { r.ImportAllow = []string{"0.0.0.0/0"} }, "default route"},
		{"asn zero", func(r *Raw) { r.ClusterASN = 0 }, "--cluster-asn"},
		{"asn trans", func(r *Raw) { r.ClusterASN = 23456 }, "reserved"},
		{"router id v6", func(r *Raw) { r.RouterID = "fd00::1" }, "--router-id"},
		{"port", func(r *Raw) { r.BGPPort = 70000 }, "--bgp-port"},
		{"peer ip", func(r *Raw) { r.PeerIPs = []string{"10.0.0.300"}; r.PeerASNs = []string{"1"} }, "--peer-router-ips"},
		{"asn count", func(r *Raw) {
			r.PeerIPs = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}
			r.PeerASNs = []string{"1", "2"}
		}, "2 values for 3"},
		{"asn without ip", func(r *Raw) { r.PeerASNs = []string{"1"} }, "without --peer-router-ips"},
		{"dup peer", func(r *Raw) { r.PeerIPs = []string{"10.0.0.1", "10.0.0.1"}; r.PeerASNs = []string{"1"} }, "given twice"},
		{"hold", func(r *Raw) { r.HoldTime = time.Second }, "--hold-time"},
		{"keepalive", func(r *Raw) { r.Keepalive = 5 * time.Second }, "--keepalive-interval"},
		{"proto", func(r *Raw) { r.RouteProtocol = 2 }, "--route-protocol"},
		{"table", func(r *Raw) { r.RouteTable = 255 }, "--route-table"},
		{"level", func(r *Raw) { r.LogLevel = "loud" }, "--log-level"},
		{"ttl", func(r *Raw) { r.PeerIPs = []string{"10.0.0.1"}; r.PeerASNs = []string{"1"}; r.PeerTTL = 300 }, "multihop-ttl"},
		{"passwords file", func(r *Raw) {
			r.PeerIPs = []string{"10.0.0.1"}
			r.PeerASNs = []string{"1"}
			r.PeerPasswords = "/nonexistent"
		}, "passwords-file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := validRaw()
			tc.mod(&r)
			_, err := r.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestPasswordsFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(f, []byte("one\ntwo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := validRaw()
	r.PeerIPs, r.PeerASNs, r.PeerPasswords = []string{"10.0.0.1", "10.0.0.2"}, []string{"65000", "65001"}, f
	c, err := r.Validate()
	if err != nil {
		t.Fatal(err)
	}
	if c.Peers[0].Password != "one" || c.Peers[1].Password != "two" || c.Peers[1].ASN != 65001 {
		t.Fatalf("peers %+v", c.Peers)
	}
	r.PeerIPs = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}
	r.PeerASNs = []string{"65000"}
	if _, err := r.Validate(); err == nil || !strings.Contains(err.Error(), "2 lines for 3 peers") {
		t.Fatalf("want a line-count error, got %v", err)
	}
}
