package loadbalancer

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func mustRanges(t *testing.T, s ...string) []Range {
	t.Helper()
	rs, err := ParseRanges(s)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestParseRanges(t *testing.T) {
	for _, tc := range []struct {
		in      []string
		want    string // ranges joined by ","
		size    uint64
		wantErr string // substring
	}{
		{in: []string{"10.200.0.0/24"}, want: "10.200.0.1-10.200.0.254", size: 254},
		{in: []string{"10.200.0.0/30"}, want: "10.200.0.1-10.200.0.2", size: 2},
		{in: []string{"10.200.0.0/31"}, want: "10.200.0.0-10.200.0.1", size: 2},
		{in: []string{"10.200.0.7/32"}, want: "10.200.0.7", size: 1},
		{in: []string{"10.200.0.0-10.200.0.255"}, want: "10.200.0.0-10.200.0.255", size: 256},
		{in: []string{" 10.200.0.5 - 10.200.0.6 "}, want: "10.200.0.5-10.200.0.6", size: 2},
		{in: []string{"10.200.0.9"}, want: "10.200.0.9", size: 1},
		{in: []string{"10.201.0.0/30, 10.200.0.0-10.200.0.1", "10.202.0.1"}, want: "10.200.0.0-10.200.0.1,10.201.0.1-10.201.0.2,10.202.0.1", size: 5},
		{in: []string{"0.0.0.0/0"}, wantErr: "a range of every address"},
		{in: []string{"", " , "}, want: "", size: 0},
		{in: []string{"10.200.0.0/33"}, wantErr: `"10.200.0.0/33"`},
		{in: []string{"10.200.0.1/24"}, wantErr: "did you mean 10.200.0.0/24"},
		// IPv6: a prefix leaves out its Subnet-Router anycast address (not below /127); a /64 has more addresses
		// than a uint64 counts.
		{in: []string{"fd00:200::/120"}, want: "fd00:200::1-fd00:200::ff", size: 255},
		{in: []string{"fd00:200::/127"}, want: "fd00:200::-fd00:200::1", size: 2},
		{in: []string{"fd00:200::7/128"}, want: "fd00:200::7", size: 1},
		{in: []string{"fd00:200::/64"}, want: "fd00:200::1-fd00:200::ffff:ffff:ffff:ffff", size: math.MaxUint64},
		{in: []string{"fd00:200::/63"}, want: "fd00:200::1-fd00:200:0:1:ffff:ffff:ffff:ffff", size: math.MaxUint64},
		{in: []string{"fd00:200::a - fd00:200::c"}, want: "fd00:200::a-fd00:200::c", size: 3},
		{in: []string{"fd00:200::/120,10.200.0.0/30"}, want: "10.200.0.1-10.200.0.2,fd00:200::1-fd00:200::ff", size: 257},
		{in: []string{"::/0"}, wantErr: "a range of every address"},
		{in: []string{"fd00:200::1/120"}, wantErr: "did you mean fd00:200::/120"},
		{in: []string{"::ffff:10.0.0.0/120"}, wantErr: "IPv4-mapped"},
		{in: []string{"::ffff:10.0.0.1-::ffff:10.0.0.2"}, wantErr: "IPv4-mapped"},
		{in: []string{"fd00:200::/120", "fd00:200::80-fd00:200::1:0"}, wantErr: "overlap"},
		{in: []string{"10.0.0.1-fd00::1"}, wantErr: "different families"},
		{in: []string{"10.0.0.9-10.0.0.1"}, wantErr: "after last address"},
		{in: []string{"10.0.0.1-bogus"}, wantErr: `"10.0.0.1-bogus"`},
		{in: []string{"nope"}, wantErr: `"nope"`},
		{in: []string{"10.0.0.0/24", "10.0.0.100-10.0.1.5"}, wantErr: `"10.0.0.0/24" and "10.0.0.100-10.0.1.5" overlap`},
		{in: []string{"10.0.0.5", "10.0.0.5"}, wantErr: "overlap"},
	} {
		rs, err := ParseRanges(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseRanges(%q) = %v, %v; want error containing %q", tc.in, rs, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseRanges(%q): %v", tc.in, err)
			continue
		}
		p, err := NewPool(rs)
		if err != nil {
			t.Fatal(err)
		}
		if got := rangesString(rs); got != tc.want || p.Size() != tc.size {
			t.Errorf("ParseRanges(%q) = %s (size %d); want %s (size %d)", tc.in, got, p.Size(), tc.want, tc.size)
		}
	}
}

func TestNewPoolRejectsBadRanges(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.5")
	for _, rs := range [][]Range{
		{{First: b, Last: a}},
		{{First: netip.MustParseAddr("10.0.0.1"), Last: netip.MustParseAddr("fd00::2")}},
		{{First: netip.MustParseAddr("::ffff:10.0.0.1"), Last: netip.MustParseAddr("::ffff:10.0.0.2")}},
		{{First: a, Last: b}, {First: b, Last: b}},
		{{}},
	} {
		if _, err := NewPool(rs); err == nil {
			t.Errorf("NewPool(%v) accepted", rs)
		}
	}
}

func TestPoolContains(t *testing.T) {
	p, _ := NewPool(mustRanges(t, "10.0.0.0/30", "10.0.1.10-10.0.1.12", "10.0.2.1"))
	for ip, want := range map[string]bool{
		"10.0.0.0": false, "10.0.0.1": true, "10.0.0.2": true, "10.0.0.3": false,
		"10.0.1.9": false, "10.0.1.10": true, "10.0.1.12": true, "10.0.1.13": false,
		"10.0.2.1": true, "10.0.2.2": false, "9.255.255.255": false, "::ffff:10.0.0.1": false, "fd00::1": false,
	} {
		if got := p.Contains(netip.MustParseAddr(ip)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", ip, got, want)
		}
	}
}

// TestPoolOps runs a script of operations over a pool of 10.0.0.1-10.0.0.2 and 10.0.1.5.
func TestPoolOps(t *testing.T) {
	type op struct {
		do, key, ip string // do: any, assign, release; ip: wanted result address ("" none)
		err         string // wanted error substring
	}
	for _, tc := range []struct {
		name string
		ops  []op
	}{
		{"lowest free, across ranges, then exhausted", []op{
			{do: "any", key: "a", ip: "10.0.0.1"},
			{do: "any", key: "b", ip: "10.0.0.2"},
			{do: "any", key: "c", ip: "10.0.1.5"},
			{do: "any", key: "d", err: "no free address"},
			{do: "any", key: "a", ip: "10.0.0.1"}, // a key keeps its address
		}},
		{"release makes the lowest free address reusable", []op{
			{do: "any", key: "a", ip: "10.0.0.1"},
			{do: "any", key: "b", ip: "10.0.0.2"},
			{do: "release", key: "a", ip: "10.0.0.1"},
			{do: "release", key: "a", ip: ""},
			{do: "any", key: "c", ip: "10.0.0.1"},
			{do: "any", key: "d", ip: "10.0.1.5"},
		}},
		{"specific addresses", []op{
			{do: "assign", key: "a", ip: "10.0.0.2"},
			{do: "assign", key: "a", ip: "10.0.0.2"}, // idempotent
			{do: "assign", key: "b", ip: "10.0.0.2", err: "10.0.0.2 is in use by a"},
			{do: "assign", key: "b", ip: "10.0.0.3", err: "not in the configured"},
			{do: "assign", key: "b", ip: "10.0.0.0", err: "not in the configured"},
			{do: "any", key: "b", ip: "10.0.0.1"}, // skips nothing: 10.0.0.1 is still free
			{do: "any", key: "c", ip: "10.0.1.5"}, // skips 10.0.0.2, taken by assign
		}},
		{"assign moves a key only on success", []op{
			{do: "any", key: "a", ip: "10.0.0.1"},
			{do: "any", key: "b", ip: "10.0.0.2"},
			{do: "assign", key: "a", ip: "10.0.0.2", err: "in use by b"},
			{do: "assign", key: "a", ip: "10.0.1.5"},
			{do: "any", key: "c", ip: "10.0.0.1"}, // a's old address was freed by the move
			{do: "release", key: "a", ip: "10.0.1.5"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPool(mustRanges(t, "10.0.1.5", "10.0.0.0/30"))
			if err != nil {
				t.Fatal(err)
			}
			for i, o := range tc.ops {
				var got netip.Addr
				var ok bool
				switch o.do {
				case "any":
					got, err = p.AllocateAny(o.key)
				case "assign":
					err = p.Assign(o.key, netip.MustParseAddr(o.ip))
					if err == nil {
						got, _ = p.Lookup(o.key)
					}
				case "release":
					got, ok = p.Release(o.key)
					err = nil
					if !ok && got.IsValid() {
						t.Fatalf("op %d: Release returned %s without ok", i, got)
					}
				}
				if o.err != "" {
					if err == nil || !strings.Contains(err.Error(), o.err) {
						t.Fatalf("op %d %+v: err %v, want %q", i, o, err, o.err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("op %d %+v: %v", i, o, err)
				}
				want := ""
				if got.IsValid() {
					want = got.String()
				}
				if want != o.ip {
					t.Fatalf("op %d %+v: got %q", i, o, want)
				}
			}
			// Both maps agree.
			if len(p.byIP) != len(p.byKey) {
				t.Fatalf("byIP %v byKey %v", p.byIP, p.byKey)
			}
			for k, ip := range p.byKey {
				if owner, _ := p.Owner(ip); owner != k {
					t.Fatalf("owner of %s is %q, want %q", ip, owner, k)
				}
			}
		})
	}
}

func TestPoolErrorsAreTyped(t *testing.T) {
	p, _ := NewPool(mustRanges(t, "10.0.0.1"))
	if _, err := p.AllocateAny("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.AllocateAny("b"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v", err)
	}
	var inUse *InUseError
	if err := p.Assign("b", netip.MustParseAddr("10.0.0.1")); !errors.As(err, &inUse) || inUse.Owner != "a" {
		t.Fatalf("got %v", err)
	}
	if err := p.Assign("b", netip.MustParseAddr("10.0.0.2")); !errors.Is(err, ErrNotInPool) {
		t.Fatalf("got %v", err)
	}
}

// TestPoolLargeRange hands out a whole /20 in order and refills holes lowest first, fast.
// An IPv6 pool hands out its addresses in order, one per key, next to an IPv4 one of the same size; a /64
// counts as math.MaxUint64 addresses and is never exhausted.
func TestPoolIPv6(t *testing.T) {
	p, err := NewPool(mustRanges(t, "fd00:200::/126", "fd00:201::5"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != 4 || !p.Contains(netip.MustParseAddr("fd00:200::3")) || p.Contains(netip.MustParseAddr("fd00:200::")) ||
		p.Contains(netip.MustParseAddr("10.0.0.1")) || !p.Contains(netip.MustParseAddr("fd00:201::5")) {
		t.Fatalf("size %d, or Contains wrong", p.Size())
	}
	var got []string
	for _, k := range []string{"a", "b", "c", "d"} {
		ip, err := p.AllocateAny(k)
		if err != nil {
			t.Fatal(k, err)
		}
		got = append(got, ip.String())
	}
	if want := []string{"fd00:200::1", "fd00:200::2", "fd00:200::3", "fd00:201::5"}; !slices.Equal(got, want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	if _, err := p.AllocateAny("e"); !errors.Is(err, ErrExhausted) {
		t.Fatal(err)
	}
	if err := p.Assign("a", netip.MustParseAddr("10.0.0.1")); !errors.Is(err, ErrNotInPool) {
		t.Fatal(err)
	}
	big, _ := NewPool(mustRanges(t, "fd00:300::/64", "fd00:301::/64"))
	if big.Size() != math.MaxUint64 {
		t.Fatalf("size %d", big.Size())
	}
	if ip, err := big.AllocateAny("x"); err != nil || ip != netip.MustParseAddr("fd00:300::1") {
		t.Fatal(ip, err)
	}
}

func TestPoolLargeRange(t *testing.T) {
	p, _ := NewPool(mustRanges(t, "10.8.0.0/20"))
	n := int(p.Size())
	keys := make([]string, n)
	for i := range n {
		keys[i] = "k" + netip.AddrFrom4([4]byte{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}).String()
		if _, err := p.AllocateAny(keys[i]); err != nil {
			t.Fatal(i, err)
		}
	}
	if _, err := p.AllocateAny("extra"); !errors.Is(err, ErrExhausted) {
		t.Fatal(err)
	}
	freed1, _ := p.Release(keys[3000])
	freed2, _ := p.Release(keys[100])
	if ip, _ := p.AllocateAny("x"); ip != freed2 {
		t.Fatalf("got %s want %s", ip, freed2)
	}
	if ip, _ := p.AllocateAny("y"); ip != freed1 {
		t.Fatalf("got %s want %s", ip, freed1)
	}
	if p.InUse() != n {
		t.Fatalf("in use %d want %d", p.InUse(), n)
	}
}

func TestPrefixes(t *testing.T) {
	ranges, err := ParseRanges([]string{"10.200.0.0/30", "10.200.1.5-10.200.1.9"})
	if err != nil {
		t.Fatal(err)
	}
	got := Prefixes(ranges)
	want := []string{"10.200.0.1/32", "10.200.0.2/32", "10.200.1.5/32", "10.200.1.6/31", "10.200.1.8/31"}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("%d: %s, want %s", i, got[i], want[i])
		}
	}
	ranges6, err := ParseRanges([]string{"fd00:200::/64", "fd00:201::5-fd00:201::8"})
	if err != nil {
		t.Fatal(err)
	}
	got6 := Prefixes(ranges6)
	want6 := []string{"fd00:200::1/128", "fd00:200::2/127", "fd00:200::4/126", "fd00:200::8/125"}
	if len(got6) != 64+3 {
		t.Fatalf("%d prefixes for %v: %v", len(got6), ranges6, got6)
	}
	for i := range want6 {
		if got6[i].String() != want6[i] {
			t.Errorf("IPv6 %d: %s, want %s", i, got6[i], want6[i])
		}
	}
	if last := got6[63].String(); last != "fd00:200:0:0:8000::/65" {
		t.Errorf("IPv6 63: %s", last)
	}
	if tail := fmt.Sprint(got6[64:]); tail != "[fd00:201::5/128 fd00:201::6/127 fd00:201::8/128]" {
		t.Errorf("IPv6 tail %s", tail)
	}
	for _, bad := range []string{"10.0.0.9-10.0.0.1", "x-y", "10.0.0.1/33", "0.0.0.0/0", "::/0"} {
		if _, err := ParseRanges([]string{bad}); err == nil {
			t.Errorf("ParseRanges(%q) succeeded", bad)
		}
	}
}
