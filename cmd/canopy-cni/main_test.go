package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The test binary doubles as the plugin: run with CANOPY_CNI_AS_PLUGIN=1 it is main().
func TestMain(m *testing.M) {
	if os.Getenv("CANOPY_CNI_AS_PLUGIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runPlugin(t *testing.T, env []string, stdin string) (stdout, stderr string, exitErr error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append([]string{"CANOPY_CNI_AS_PLUGIN=1", "PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

func TestVersion(t *testing.T) {
	out, _, err := runPlugin(t, []string{"CNI_COMMAND=VERSION"}, "")
	if err != nil {
		t.Fatalf("VERSION: %v", err)
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || strings.Join(v.SupportedVersions, ",") != "0.4.0,1.0.0,1.1.0" {
		t.Errorf("VERSION printed %q (%v)", out, err)
	}
}

func TestAbout(t *testing.T) {
	_, errOut, err := runPlugin(t, nil, "")
	if err != nil || !strings.Contains(errOut, "CNI plugin canopy-cni") || !strings.Contains(errOut, "1.1.0") {
		t.Errorf("no CNI_COMMAND: err %v, stderr %q", err, errOut)
	}
}

// Errors are CNI error objects on stdout with a non-zero exit; bad config fails before touching anything.
func TestErrorObject(t *testing.T) {
	env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=/var/run/netns/nonexistent", "CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}
	for _, tc := range []struct {
		conf  string
		code  uint
		wants string
	}{
		{`{"cniVersion":"1.0.0","name":"canopy","type":"canopy-cni","podCIDRs":["10.244.1.0/24"],"mtu":"9000"}`, 7, "mtu: must be an integer, not a string"},
		{`{"cniVersion":"1.0.0","name":"canopy","type":"canopy-cni"}`, 7, "podCIDRs: missing"},
		{`{"cniVersion":"1.0.0","name":"canopy","type":"canopy-cni","podCIDRs":["10.244.1.0/24"],"dataDir":"relative"}`, 7, "dataDir"},
		{`not json`, 6, "unmarshal"},
	} {
		out, _, err := runPlugin(t, env, tc.conf)
		if err == nil {
			t.Errorf("%s: succeeded", tc.conf)
			continue
		}
		var e struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if jerr := json.Unmarshal([]byte(out), &e); jerr != nil || e.Code != tc.code || !strings.Contains(e.Msg, tc.wants) {
			t.Errorf("%s: printed %q, want code %d mentioning %q", tc.conf, out, tc.code, tc.wants)
		}
	}
	// A missing environment variable.
	out, _, err := runPlugin(t, []string{"CNI_COMMAND=ADD", "CNI_PATH=/x"}, `{"cniVersion":"1.0.0","name":"canopy"}`)
	if err == nil || !strings.Contains(out, "CNI_CONTAINERID") || !strings.Contains(out, `"code": 4`) {
		t.Errorf("missing env: %v %q", err, out)
	}
}
