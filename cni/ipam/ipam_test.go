package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The multi-process test re-runs this test binary as a helper that allocates and prints its addresses.
const (
	helperDirEnv   = "CANOPY_IPAM_HELPER_DIR"
	helperCIDREnv  = "CANOPY_IPAM_HELPER_CIDR"
	helperIDEnv    = "CANOPY_IPAM_HELPER_ID"
	helperCountEnv = "CANOPY_IPAM_HELPER_COUNT"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperDirEnv); dir != "" {
		os.Exit(helperAllocate(dir))
	}
	os.Exit(m.Run())
}

func helperAllocate(dir string) int {
	cidr := netip.MustParsePrefix(os.Getenv(helperCIDREnv))
	n, _ := strconv.Atoi(os.Getenv(helperCountEnv))
	a, err := New(dir, []netip.Prefix{cidr})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for i := 0; i < n; i++ {
		als, err := a.Allocate(Attachment{ContainerID: fmt.Sprintf("%s-%d", os.Getenv(helperIDEnv), i), IfName: "eth0"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(als[0].Address.Addr())
	}
	return 0
}

func mustNew(t testing.TB, dir string, cidrs ...string) *Allocator {
	t.Helper()
	var ps []netip.Prefix
	for _, c := range cidrs {
		ps = append(ps, netip.MustParsePrefix(c))
	}
	a, err := New(dir, ps)
	if err != nil {
		t.Fatalf("New(%v): %v", cidrs, err)
	}
	return a
}

func att(id string) Attachment { return Attachment{ContainerID: id, IfName: "eth0"} }

func mustAlloc(t testing.TB, a *Allocator, at Attachment) Allocation {
	t.Helper()
	als, err := a.Allocate(at)
	if err != nil {
		t.Fatalf("Allocate(%v): %v", at, err)
	}
	if len(als) != 1 {
		t.Fatalf("Allocate(%v) = %d allocations, want 1", at, len(als))
	}
	return als[0]
}

func TestAllocateBasics(t *testing.T) {
	dir := t.TempDir()
	a := mustNew(t, dir, "10.244.1.0/24")
	first := mustAlloc(t, a, att("c1"))
	if got, want := first.Address.String(), "10.244.1.2/24"; got != want {
		t.Errorf("first address = %s, want %s", got, want)
	}
	if got, want := first.Gateway.String(), "10.244.1.1"; got != want {
		t.Errorf("gateway = %s, want %s", got, want)
	}
	if first.Existing {
		t.Error("first allocation marked Existing")
	}
	second := mustAlloc(t, a, att("c2"))
	if got, want := second.Address.String(), "10.244.1.3/24"; got != want {
		t.Errorf("second address = %s, want %s", got, want)
	}
	// The record is one file per address, host-local style.
	b, err := os.ReadFile(filepath.Join(dir, "10.244.1.2"))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "c1\r\neth0" {
		t.Errorf("record file = %q, want %q", b, "c1\r\neth0")
	}
	// Another interface of the same container is another attachment.
	other := mustAlloc(t, a, Attachment{ContainerID: "c1", IfName: "net1"})
	if other.Address.Addr() == first.Address.Addr() {
		t.Errorf("c1/net1 got c1/eth0's address %s", other.Address)
	}
}

func TestAllocateIdempotent(t *testing.T) {
	a := mustNew(t, t.TempDir(), "10.244.1.0/24")
	first := mustAlloc(t, a, att("c1"))
	mustAlloc(t, a, att("c2"))
	again := mustAlloc(t, a, att("c1"))
	if again.Address != first.Address || !again.Existing {
		t.Errorf("repeat Allocate = %+v, want %s with Existing", again, first.Address)
	}
	recs, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Errorf("%d records after a repeated Allocate, want 2: %v", len(recs), recs)
	}
}

func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	a := mustNew(t, dir, "10.244.1.0/24")
	c1 := mustAlloc(t, a, att("c1"))
	c2 := mustAlloc(t, a, att("c2"))

	b := mustNew(t, dir, "10.244.1.0/24") // a new process, the same directory
	recs, err := b.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].IP != c1.Address.Addr() || recs[1].IP != c2.Address.Addr() || recs[0].Attachment != att("c1") {
		t.Fatalf("new allocator lists %v, want c1=%s c2=%s", recs, c1.Address, c2.Address)
	}
	if got := mustAlloc(t, b, att("c1")); got.Address != c1.Address || !got.Existing {
		t.Errorf("new allocator gives c1 %+v, want its old %s", got, c1.Address)
	}
	c3 := mustAlloc(t, b, att("c3"))
	if c3.Address.Addr() == c1.Address.Addr() || c3.Address.Addr() == c2.Address.Addr() {
		t.Errorf("new allocator handed out %s, already held", c3.Address)
	}
	if got, want := c3.Address.String(), "10.244.1.4/24"; got != want {
		t.Errorf("c3 = %s, want %s (continuing after the last reserved)", got, want)
	}
}

func TestReleaseAndRotation(t *testing.T) {
	dir := t.TempDir()
	a := mustNew(t, dir, "10.244.1.0/24")
	c1 := mustAlloc(t, a, att("c1"))
	mustAlloc(t, a, att("c2"))
	freed, err := a.Release(att("c1"))
	if err != nil || len(freed) != 1 || freed[0] != c1.Address.Addr() {
		t.Fatalf("Release(c1) = %v, %v; want [%s]", freed, err, c1.Address.Addr())
	}
	if _, err := os.Stat(filepath.Join(dir, c1.Address.Addr().String())); !os.IsNotExist(err) {
		t.Errorf("record file of %s still there after Release: %v", c1.Address.Addr(), err)
	}
	// Idempotent: again, and for somebody unknown.
	for _, at := range []Attachment{att("c1"), att("nobody")} {
		if freed, err := a.Release(at); err != nil || len(freed) != 0 {
			t.Errorf("Release(%v) = %v, %v; want nothing, no error", at, freed, err)
		}
	}
	// Rotation: the freed .2 is not handed out again at once.
	if c3 := mustAlloc(t, a, att("c3")); c3.Address.Addr() == c1.Address.Addr() {
		t.Errorf("c3 got the just-released %s; allocation should rotate", c3.Address)
	}
	// A missing directory releases nothing without error.
	b := mustNew(t, filepath.Join(dir, "missing"), "10.244.1.0/24")
	if freed, err := b.Release(att("c1")); err != nil || freed != nil {
		t.Errorf("Release on a missing dir = %v, %v", freed, err)
	}
	if _, err := os.Stat(b.Dir()); !os.IsNotExist(err) {
		t.Errorf("Release created the data directory: %v", err)
	}
}

func TestReleaseAddr(t *testing.T) {
	a := mustNew(t, t.TempDir(), "10.244.1.0/24")
	c1 := mustAlloc(t, a, att("c1"))
	if ok, err := a.ReleaseAddr(att("c2"), c1.Address.Addr()); ok || err != nil {
		t.Errorf("ReleaseAddr with the wrong owner = %v, %v; want false", ok, err)
	}
	if ok, err := a.ReleaseAddr(att("c1"), c1.Address.Addr()); !ok || err != nil {
		t.Errorf("ReleaseAddr = %v, %v; want true", ok, err)
	}
}

func TestExhaustionAndReserved(t *testing.T) {
	a := mustNew(t, t.TempDir(), "10.0.0.0/29")
	got := map[netip.Addr]bool{}
	for i := 0; i < 5; i++ {
		al := mustAlloc(t, a, att(fmt.Sprintf("c%d", i)))
		if got[al.Address.Addr()] {
			t.Fatalf("%s handed out twice", al.Address)
		}
		got[al.Address.Addr()] = true
	}
	for _, r := range []string{"10.0.0.0", "10.0.0.1", "10.0.0.7"} {
		if got[netip.MustParseAddr(r)] {
			t.Errorf("reserved address %s was handed out", r)
		}
	}
	_, err := a.Allocate(att("one-too-many"))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("6th allocation in a /29: err = %v, want ErrExhausted", err)
	}
	if got, want := err.Error(), "no free address in 10.0.0.0/29"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	if recs, _ := a.Get(att("one-too-many")); len(recs) != 0 {
		t.Errorf("failed allocation left records %v", recs)
	}
	// Freeing one makes room again, and it is that one.
	if _, err := a.Release(att("c2")); err != nil {
		t.Fatal(err)
	}
	if al := mustAlloc(t, a, att("late")); al.Address.String() != "10.0.0.4/29" {
		t.Errorf("after freeing c2 (10.0.0.4) got %s", al.Address)
	}

	// Many rounds of allocate/release through a /30 hand out only its single pod address.
	b := mustNew(t, t.TempDir(), "192.168.7.0/30")
	for i := 0; i < 10; i++ {
		al := mustAlloc(t, b, att(fmt.Sprintf("r%d", i)))
		if al.Address.String() != "192.168.7.2/30" {
			t.Fatalf("round %d: got %s, want 192.168.7.2/30", i, al.Address)
		}
		if _, err := b.Release(att(fmt.Sprintf("r%d", i))); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSeveralCIDRs(t *testing.T) {
	a := mustNew(t, t.TempDir(), "10.0.0.0/30", "10.0.1.0/30")
	x := mustAlloc(t, a, att("x"))
	y := mustAlloc(t, a, att("y"))
	if x.Address.String() != "10.0.0.2/30" || y.Address.String() != "10.0.1.2/30" || y.Gateway.String() != "10.0.1.1" {
		t.Errorf("got %+v and %+v; want 10.0.0.2/30 and 10.0.1.2/30 via 10.0.1.1", x, y)
	}
	_, err := a.Allocate(att("z"))
	if err == nil || err.Error() != "no free address in 10.0.0.0/30, 10.0.1.0/30" {
		t.Errorf("err = %v", err)
	}
}

func TestCIDRChange(t *testing.T) {
	dir := t.TempDir()
	old := mustNew(t, dir, "10.244.1.0/24")
	o := mustAlloc(t, old, att("c1"))
	mustAlloc(t, old, att("c2"))

	a := mustNew(t, dir, "10.244.9.0/24") // the node was given another pod CIDR
	n := mustAlloc(t, a, att("c1"))
	if n.Existing || n.Address.String() != "10.244.9.2/24" {
		t.Errorf("c1 under the new CIDR got %+v; want a fresh 10.244.9.2/24", n)
	}
	if _, ok := a.InRange(o.Address.Addr()); ok {
		t.Errorf("InRange(%s) true under the new CIDR", o.Address.Addr())
	}
	freed, err := a.Release(att("c1"))
	if err != nil || len(freed) != 2 {
		t.Errorf("Release(c1) = %v, %v; want the old and the new address", freed, err)
	}
	freed, err = a.GC(nil)
	if err != nil || len(freed) != 1 || freed[0].String() != "10.244.1.3" {
		t.Errorf("GC(nil) = %v, %v; want c2's old 10.244.1.3", freed, err)
	}
}

func TestGC(t *testing.T) {
	a := mustNew(t, t.TempDir(), "10.244.1.0/24")
	for _, id := range []string{"a", "b", "c", "d"} {
		mustAlloc(t, a, att(id))
	}
	mustAlloc(t, a, Attachment{ContainerID: "a", IfName: "net1"})
	freed, err := a.GC([]Attachment{att("a"), att("c"), att("unknown")})
	if err != nil {
		t.Fatal(err)
	}
	if len(freed) != 3 {
		t.Errorf("GC freed %v, want b, d and a/net1", freed)
	}
	recs, _ := a.List()
	var left []string
	for _, r := range recs {
		left = append(left, r.Attachment.String())
	}
	if strings.Join(left, " ") != "a/eth0 c/eth0" {
		t.Errorf("left after GC: %v", left)
	}
}

func TestStrayFilesIgnored(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"README": "hello", "last_reserved_ip.v4": "garbage", ".tmp-10.244.1.2.123": "x", "10.244.1.3": "old-id", // host-local's old format: no ifname
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "10.244.1.4"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := mustNew(t, dir, "10.244.1.0/24")
	if got := mustAlloc(t, a, att("c1")); got.Address.String() != "10.244.1.2/24" {
		t.Errorf("got %s, want 10.244.1.2/24", got.Address)
	}
	if got := mustAlloc(t, a, att("c2")); got.Address.String() != "10.244.1.5/24" {
		t.Errorf("got %s, want 10.244.1.5/24 (.3 is held by an old record, .4 is in the way)", got.Address)
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		cidrs []string
		want  string
	}{
		{[]string{"10.244.1.5/24"}, "host bits"},
		{[]string{"10.244.1.0/31"}, "too small"},
		{[]string{"10.244.0.0/16", "10.244.1.0/24"}, "overlap"},
		{nil, "no CIDR"},
	} {
		var ps []netip.Prefix
		for _, c := range tc.cidrs {
			ps = append(ps, netip.MustParsePrefix(c))
		}
		if _, err := New("/tmp/x", ps); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%v) = %v, want an error about %q", tc.cidrs, err, tc.want)
		}
	}
	a := mustNew(t, t.TempDir(), "10.0.0.0/24")
	for _, bad := range []Attachment{{"", "eth0"}, {"c", ""}, {"c\n", "eth0"}} {
		if _, err := a.Allocate(bad); err == nil {
			t.Errorf("Allocate(%q) succeeded", bad)
		}
	}
}

func TestIPv6Pool(t *testing.T) {
	// One address per family.
	a := mustNew(t, t.TempDir(), "10.244.1.0/24", "fd00:10:244:1::/64")
	als, err := a.Allocate(att("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(als) != 2 || als[0].Address.String() != "10.244.1.2/24" || als[1].Address.String() != "fd00:10:244:1::2/64" ||
		als[1].Gateway.String() != "fd00:10:244:1::1" {
		t.Errorf("dual-stack allocation = %+v", als)
	}
}

func TestConcurrentGoroutines(t *testing.T) {
	dir := t.TempDir()
	const n = 50
	var wg sync.WaitGroup
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := New(dir, []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}) // one allocator each, like separate plugin runs
			if err != nil {
				errs[i] = err
				return
			}
			als, err := a.Allocate(att(fmt.Sprintf("g%d", i)))
			if err != nil {
				errs[i] = err
				return
			}
			addrs[i] = als[0].Address.Addr()
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Fatalf("goroutines %d and %d both got %s", j, i, addrs[i])
		}
		seen[addrs[i]] = i
	}
	recs, _ := mustNew(t, dir, "10.244.1.0/24").List()
	if len(recs) != n {
		t.Errorf("%d records, want %d", len(recs), n)
	}
}

func TestConcurrentProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the multi-process test in -short mode")
	}
	dir := t.TempDir()
	const procs, each = 8, 12
	cmds := make([]*exec.Cmd, procs)
	outs := make([]strings.Builder, procs)
	for i := range cmds {
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), helperDirEnv+"="+dir, helperCIDREnv+"=10.244.0.0/22",
			helperIDEnv+"="+fmt.Sprintf("p%d", i), helperCountEnv+"="+strconv.Itoa(each))
		c.Stdout = &outs[i]
		c.Stderr = os.Stderr
		cmds[i] = c
	}
	for i, c := range cmds {
		if err := c.Start(); err != nil {
			for _, started := range cmds[:i] {
				_ = started.Process.Kill()
				_ = started.Wait()
			}
			t.Fatalf("start helper %d: %v", i, err)
		}
	}
	seen := map[string]int{}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("helper %d: %v", i, err)
		}
		for _, line := range strings.Fields(outs[i].String()) {
			if j, dup := seen[line]; dup {
				t.Errorf("processes %d and %d both got %s", j, i, line)
			}
			seen[line] = i
		}
	}
	if len(seen) != procs*each {
		t.Errorf("%d distinct addresses, want %d", len(seen), procs*each)
	}
	recs, _ := mustNew(t, dir, "10.244.0.0/22").List()
	if len(recs) != procs*each {
		t.Errorf("%d records on disk, want %d", len(recs), procs*each)
	}
}

// TestUpgradeToDualStack: a directory written by the IPv4-only plugin (files in the exact format it wrote,
// host-local's older one without an ifname too) is read by a dual-stack allocator: every running pod keeps its
// address, new pods get one address per family and never a held one, Release and GC treat the old records like
// any other.
func TestUpgradeToDualStack(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"lock": "", "last_reserved_ip.v4": "10.244.1.4",
		"10.244.1.2": "run-a\r\neth0", "10.244.1.3": "run-b\r\neth0", "10.244.1.4": "run-old-format",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := mustNew(t, dir, "10.244.1.0/24", "fd00:10:244:1::/64")
	recs, err := a.List()
	if err != nil || len(recs) != 3 || recs[0].Attachment != att("run-a") || recs[2].Attachment != (Attachment{ContainerID: "run-old-format"}) {
		t.Fatalf("List = %v, %v", recs, err)
	}
	if got, err := a.Get(att("run-a")); err != nil || len(got) != 1 || got[0].IP.String() != "10.244.1.2" {
		t.Errorf("Get(run-a) = %v, %v", got, err)
	}
	if al, ok := a.InRange(netip.MustParseAddr("10.244.1.2")); !ok || al.Gateway.String() != "10.244.1.1" {
		t.Errorf("InRange(10.244.1.2) = %+v, %v", al, ok)
	}
	als, err := a.Allocate(att("new"))
	if err != nil || len(als) != 2 || als[0].Address.String() != "10.244.1.5/24" || als[1].Address.String() != "fd00:10:244:1::2/64" || als[0].Existing || als[1].Existing {
		t.Fatalf("Allocate(new) = %+v, %v; want 10.244.1.5/24 (after the marker) and fd00:10:244:1::2/64", als, err)
	}
	// IPv6 records are files like the IPv4 ones, named by the canonical address; the marker is per family.
	for name, want := range map[string]string{"fd00:10:244:1::2": "new\r\neth0", "last_reserved_ip.v6": "fd00:10:244:1::2", "last_reserved_ip.v4": "10.244.1.5"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	// The old records are untouched by the new allocations; GC keeps the valid ones, Release frees one pod's all.
	freed, err := a.GC([]Attachment{att("run-a"), att("run-b"), att("new")})
	if err != nil || len(freed) != 1 || freed[0].String() != "10.244.1.4" {
		t.Errorf("GC = %v, %v; want only the old-format record without a valid attachment", freed, err)
	}
	freed, err = a.Release(att("new"))
	if err != nil || len(freed) != 2 {
		t.Errorf("Release(new) = %v, %v; want both families", freed, err)
	}
	freed, err = a.Release(att("run-a"))
	if err != nil || len(freed) != 1 || freed[0].String() != "10.244.1.2" {
		t.Errorf("Release(run-a) = %v, %v", freed, err)
	}
	if recs, _ := a.List(); len(recs) != 1 || recs[0].Attachment != att("run-b") {
		t.Errorf("left: %v", recs)
	}
	// And the other way: the IPv4-only allocator (a downgrade) ignores IPv6 records and never hands them out,
	// and Release still removes them.
	if _, err := a.Allocate(att("dual")); err != nil {
		t.Fatal(err)
	}
	v4 := mustNew(t, dir, "10.244.1.0/24")
	if got := mustAlloc(t, v4, att("dual")); !got.Existing {
		t.Errorf("downgraded allocator: dual's IPv4 address not found: %+v", got)
	}
	if freed, err := v4.Release(att("dual")); err != nil || len(freed) != 2 {
		t.Errorf("downgraded Release(dual) = %v, %v; want its IPv4 and IPv6 records", freed, err)
	}
}

func TestDualStackPerFamily(t *testing.T) {
	dir := t.TempDir()
	// IPv6 first (an IPv6-primary cluster): the allocations follow the CIDRs' order.
	a := mustNew(t, dir, "fd00:10:244:1::/126", "10.244.1.0/24")
	for i, want := range [][2]string{{"fd00:10:244:1::2/126", "10.244.1.2/24"}, {"fd00:10:244:1::3/126", "10.244.1.3/24"}} {
		als, err := a.Allocate(att(fmt.Sprint("c", i)))
		if err != nil || len(als) != 2 || als[0].Address.String() != want[0] || als[1].Address.String() != want[1] {
			t.Fatalf("Allocate #%d = %+v, %v; want %v", i, als, err, want)
		}
		if als[0].Gateway.String() != "fd00:10:244:1::1" || als[1].Gateway.String() != "10.244.1.1" {
			t.Errorf("gateways %s %s", als[0].Gateway, als[1].Gateway)
		}
	}
	// The IPv6 /126 is full (::0 is the subnet-router anycast, ::1 the gateway): the whole allocation fails and
	// no IPv4 record is left for it. An IPv6 pool has no broadcast: its last address (::3) was handed out.
	_, err := a.Allocate(att("full"))
	if !errors.Is(err, ErrExhausted) || err.Error() != "no free address in fd00:10:244:1::/126" {
		t.Errorf("Allocate in a full IPv6 pool = %v", err)
	}
	if recs, _ := a.Get(att("full")); len(recs) != 0 {
		t.Errorf("records of the failed allocation: %v", recs)
	}
	// Idempotent per family; one record per family per attachment.
	als, err := a.Allocate(att("c0"))
	if err != nil || len(als) != 2 || !als[0].Existing || !als[1].Existing {
		t.Errorf("repeat Allocate(c0) = %+v, %v", als, err)
	}
	if recs, _ := a.Get(att("c0")); len(recs) != 2 {
		t.Errorf("records of c0 = %v", recs)
	}
	if _, err := New(dir, []netip.Prefix{netip.MustParsePrefix("fd00::/127")}); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("New(/127) = %v", err)
	}
}
