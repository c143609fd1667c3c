package proxy

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"canopy.io/canopy/internal/model"
)

type failingBackend struct {
	recordingBackend
	fail bool
}

func (f *failingBackend) Sync(desired map[string]*model.ServicePort, changed []string) error {
	if f.fail {
		f.mu.Lock()
		f.syncs = append(f.syncs, slices.Clone(changed))
		f.mu.Unlock()
		return errors.New("boom")
	}
	return f.recordingBackend.Sync(desired, changed)
}

func dsPort(key string, v4, v6 string) *model.ServicePort {
	sp := &model.ServicePort{Key: key, Protocol: model.TCP, Port: 80}
	if v4 != "" {
		sp.ClusterIPs = []netip.Addr{netip.MustParseAddr(v4)}
		sp.ClusterEndpoints = []model.Endpoint{{IP: netip.MustParseAddr("10.0.0.1"), Port: 8080, Ready: true}}
	}
	if v6 != "" {
		sp.IPv6 = &model.Family{ClusterIPs: []netip.Addr{netip.MustParseAddr(v6)},
			ClusterEndpoints: []model.Endpoint{{IP: netip.MustParseAddr("fd00::1"), Port: 8080, Ready: true}}}
	}
	return sp
}

// Each family's back end gets its own view: a dual-stack port both, an IPv4-only port only IPv4, an IPv6-only
// port only IPv6 (with the IPv6 addresses and endpoints in the plain fields); a change of IPv4-only ports does
// not call the IPv6 back end; a failed family retries its keys.
func TestDualStackSync(t *testing.T) {
	v4, v6 := &recordingBackend{}, &failingBackend{}
	d := NewDualStack(v4, v6)
	desired := map[string]*model.ServicePort{
		"a": dsPort("a", "10.96.0.1", "fd00:96::1"),
		"b": dsPort("b", "10.96.0.2", ""),
		"c": dsPort("c", "", "fd00:96::3"),
	}
	if err := d.Sync(desired, []string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]*model.ServicePort) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	if got := keys(v4.have); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("IPv4 back end has %v", got)
	}
	if got := keys(v6.have); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("IPv6 back end has %v", got)
	}
	if got := v6.have["c"]; got.ClusterIPs[0] != netip.MustParseAddr("fd00:96::3") || got.ClusterEndpoints[0].IP != netip.MustParseAddr("fd00::1") || got.IPv6 != nil {
		t.Errorf("IPv6 view %+v", got)
	}
	if v4.have["a"] != desired["a"] {
		t.Error("the IPv4 back end does not get the port itself")
	}
	for _, sp := range v4.have {
		for _, e := range sp.ClusterEndpoints {
			if !e.IP.Is4() {
				t.Errorf("IPv6 endpoint %v in the IPv4 back end", e.IP)
			}
		}
	}
	// An IPv4-only change: the IPv6 back end is not called.
	n6 := len(v6.syncs)
	desired["b"] = dsPort("b", "10.96.0.22", "")
	if err := d.Sync(desired, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if len(v6.syncs) != n6 {
		t.Errorf("IPv6 back end called for an IPv4-only change: %v", v6.syncs[n6:])
	}
	// A dual-stack port loses its IPv6 side: the IPv6 back end deletes it.
	desired["a"] = dsPort("a", "10.96.0.1", "")
	if err := d.Sync(desired, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if got := keys(v6.have); !slices.Equal(got, []string{"c"}) {
		t.Errorf("IPv6 back end has %v after a lost its IPv6 side", got)
	}
	// The IPv6 back end fails: its keys come back with the next sync, whatever that names.
	v6.fail = true
	desired["d"] = dsPort("d", "", "fd00:96::4")
	if err := d.Sync(desired, []string{"d"}); err == nil {
		t.Fatal("no error")
	}
	v6.fail = false
	if err := d.Sync(desired, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if got := keys(v6.have); !slices.Equal(got, []string{"c", "d"}) {
		t.Errorf("IPv6 back end has %v after the retry", got)
	}
	// A full sync reaches both, even with nothing of a family.
	n4, n6 := len(v4.syncs), len(v6.syncs)
	if err := d.Sync(map[string]*model.ServicePort{}, nil); err != nil {
		t.Fatal(err)
	}
	if len(v4.syncs) != n4+1 || len(v6.syncs) != n6+1 {
		t.Error("an empty full sync did not reach both back ends")
	}
}
