package hint

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		ips    []string
		wantIP string
	}{
		{[]string{"10.244.1.5"}, "10.244.1.5"},
		{[]string{"10.244.1.5", "fd00::5"}, "10.244.1.5"},
		{[]string{"fd00::5", "10.244.1.5"}, "10.244.1.5"}, // IPv6-primary: ip stays the IPv4 address
		{[]string{"fd00::5"}, "fd00::5"},
	} {
		h := New("ns", "pod", tc.ips)
		if h.IP != tc.wantIP || !reflect.DeepEqual(h.IPs, tc.ips) || !reflect.DeepEqual(h.Addresses(), tc.ips) {
			t.Errorf("New(%v) = %+v, want ip %s", tc.ips, h, tc.wantIP)
		}
	}
}

// TestWireCompatibility: a line from an older plugin (no "ips") reads as its one address; a new line read by an
// older agent (a struct without IPs, as policy's reader was) gives it the IPv4 address.
func TestWireCompatibility(t *testing.T) {
	h, err := Read(strings.NewReader(`{"namespace":"ns","name":"pod","ip":"10.244.1.5"}` + "\n"))
	if err != nil || !reflect.DeepEqual(h.Addresses(), []string{"10.244.1.5"}) {
		t.Errorf("old line: %+v, %v", h, err)
	}
	b, err := json.Marshal(New("ns", "pod", []string{"fd00::5", "10.244.1.5"}))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"namespace":"ns","name":"pod","ip":"10.244.1.5","ips":["fd00::5","10.244.1.5"]}`; string(b) != want {
		t.Errorf("wire = %s, want %s", b, want)
	}
	var old struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		IP        string `json:"ip"`
	}
	if err := json.Unmarshal(b, &old); err != nil || old.IP != "10.244.1.5" {
		t.Errorf("an older reader gets %+v, %v", old, err)
	}
	// ip must be one of ips.
	if _, err := Read(strings.NewReader(`{"namespace":"ns","name":"pod","ip":"10.244.1.9","ips":["10.244.1.5"]}` + "\n")); err == nil ||
		!strings.Contains(err.Error(), "not one of ips") {
		t.Errorf("inconsistent hint: %v", err)
	}
	if h := (Hint{}); h.Addresses() != nil {
		t.Errorf("empty hint addresses = %v", h.Addresses())
	}
}
