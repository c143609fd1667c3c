package main

import (
	"flag"
	"io"
	"strings"
	"testing"

	"canopy.io/canopy/internal/config"
)

func parse(t *testing.T, args ...string) (*config.Config, error) {
	t.Helper()
	var raw config.Raw
	fs := flag.NewFlagSet("canopy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bindFlags(fs, &raw)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return raw.Validate()
}

func TestFlagsDefaults(t *testing.T) {
	c, err := parse(t, "--node-name=n1", "--cluster-cidr=10.244.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterASN != 64512 || c.BGPPort != 179 || c.GRPCAddr != "127.0.0.1:50051" || !c.NodesFullMesh || c.RouteProtocol != 186 || !c.GracefulRestart {
		t.Fatalf("defaults %+v", c)
	}
}

func TestFlagsRepeatableAndLists(t *testing.T) {
	c, err := parse(t, "--node-name=n1", "--cluster-cidr=10.244.0.0/16", "--cluster-cidr=10.245.0.0/16,10.246.0.0/16",
		"--peer-router-ips=10.99.0.1,10.99.0.2", "--peer-router-asns=64500,64501", "--import-allow=192.0.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ClusterCIDRs) != 3 || len(c.Peers) != 2 || c.Peers[1].ASN != 64501 || len(c.ImportAllow) != 1 {
		t.Fatalf("%+v", c)
	}
}

func TestFlagsAllProblemsAtOnce(t *testing.T) {
	_, err := parse(t, "--node-name=n1", "--cluster-asn=0", "--bgp-port=0", "--log-level=chatty")
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"--cluster-cidr", "--cluster-asn", "--bgp-port", "--log-level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}
