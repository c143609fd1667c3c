package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	mobyipvs "github.com/moby/ipvs"

	"canopy.io/canopy/internal/ipt"
)

// fakeHandle is an in-memory IPVS that counts calls.
type fakeHandle struct {
	mu    sync.Mutex
	svcs  map[vsKey]*mobyipvs.Service
	dests map[vsKey]map[dKey]*mobyipvs.Destination
	calls map[string]int
	fail  map[string]int // op -> how many of its next calls fail
}

func newFakeHandle() *fakeHandle {
	return &fakeHandle{svcs: map[vsKey]*mobyipvs.Service{}, dests: map[vsKey]map[dKey]*mobyipvs.Destination{}, calls: map[string]int{}, fail: map[string]int{}}
}

func (f *fakeHandle) count(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	if f.fail[op] > 0 {
		f.fail[op]--
		return fmt.Errorf("%s: injected failure", op)
	}
	return nil
}

// writes is the number of calls that change the kernel.
func (f *fakeHandle) writes() int {
	n := 0
	for op, c := range f.calls {
		if !strings.HasPrefix(op, "Get") {
			n += c
		}
	}
	return n
}

func (f *fakeHandle) reset() { f.calls = map[string]int{} }

func fkey(s *mobyipvs.Service) vsKey {
	k, ok := keyOf(s)
	if !ok {
		panic(fmt.Sprintf("bad service %+v", s))
	}
	return k
}

func fdkey(d *mobyipvs.Destination) dKey {
	a, _ := netip.AddrFromSlice(d.Address)
	return dKey{a.Unmap(), d.Port}
}

func (f *fakeHandle) GetServices() ([]*mobyipvs.Service, error) {
	if err := f.count("GetServices"); err != nil {
		return nil, err
	}
	var out []*mobyipvs.Service
	for _, k := range sortedKeys(f.svcs) {
		s := *f.svcs[k]
		out = append(out, &s)
	}
	return out, nil
}

func (f *fakeHandle) GetService(s *mobyipvs.Service) (*mobyipvs.Service, error) {
	if err := f.count("GetService"); err != nil {
		return nil, err
	}
	got, ok := f.svcs[fkey(s)]
	if !ok {
		return nil, fmt.Errorf("no such service")
	}
	c := *got
	return &c, nil
}

func (f *fakeHandle) GetDestinations(s *mobyipvs.Service) ([]*mobyipvs.Destination, error) {
	if err := f.count("GetDestinations"); err != nil {
		return nil, err
	}
	var out []*mobyipvs.Destination
	for _, d := range f.dests[fkey(s)] {
		c := *d
		out = append(out, &c)
	}
	return out, nil
}

func (f *fakeHandle) NewService(s *mobyipvs.Service) error {
	if err := f.count("NewService"); err != nil {
		return err
	}
	k := fkey(s)
	if _, ok := f.svcs[k]; ok {
		return fmt.Errorf("file exists")
	}
	c := *s
	c.Flags |= svcFlagHashed // as the kernel reports it
	f.svcs[k] = &c
	f.dests[k] = map[dKey]*mobyipvs.Destination{}
	return nil
}

func (f *fakeHandle) UpdateService(s *mobyipvs.Service) error {
	if err := f.count("UpdateService"); err != nil {
		return err
	}
	k := fkey(s)
	if _, ok := f.svcs[k]; !ok {
		return fmt.Errorf("no such service")
	}
	c := *s
	c.Flags |= svcFlagHashed
	f.svcs[k] = &c
	return nil
}

func (f *fakeHandle) DelService(s *mobyipvs.Service) error {
	if err := f.count("DelService"); err != nil {
		return err
	}
	k := fkey(s)
	if _, ok := f.svcs[k]; !ok {
		return fmt.Errorf("no such service")
	}
	delete(f.svcs, k)
	delete(f.dests, k)
	return nil
}

func (f *fakeHandle) NewDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	if err := f.count("NewDestination"); err != nil {
		return err
	}
	k := fkey(s)
	ds, ok := f.dests[k]
	if !ok {
		return fmt.Errorf("no such service")
	}
	if _, ok := ds[fdkey(d)]; ok {
		return fmt.Errorf("file exists")
	}
	c := *d
	ds[fdkey(d)] = &c
	return nil
}

func (f *fakeHandle) UpdateDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	if err := f.count("UpdateDestination"); err != nil {
		return err
	}
	ds := f.dests[fkey(s)]
	if _, ok := ds[fdkey(d)]; !ok {
		return fmt.Errorf("no such destination")
	}
	c := *d
	ds[fdkey(d)] = &c
	return nil
}

func (f *fakeHandle) DelDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	if err := f.count("DelDestination"); err != nil {
		return err
	}
	ds := f.dests[fkey(s)]
	if _, ok := ds[fdkey(d)]; !ok {
		return fmt.Errorf("no such destination")
	}
	delete(ds, fdkey(d))
	return nil
}

// weights returns a virtual service's real servers as "ip:port=weight", sorted.
func (f *fakeHandle) weights(k vsKey) []string {
	var out []string
	for dk, d := range f.dests[k] {
		out = append(out, fmt.Sprintf("%v=%d", netip.AddrPortFrom(dk.addr, dk.port), d.Weight))
	}
	slices.Sort(out)
	return out
}

// fakeAddrs is an in-memory dummy interface.
type fakeAddrs struct {
	addrs      map[netip.Addr]bool
	adds, dels int
}

func newFakeAddrs() *fakeAddrs { return &fakeAddrs{addrs: map[netip.Addr]bool{}} }

func (f *fakeAddrs) Ensure() ([]netip.Addr, error) {
	var out []netip.Addr
	for a := range f.addrs {
		out = append(out, a)
	}
	return out, nil
}
func (f *fakeAddrs) Add(a netip.Addr) error { f.adds++; f.addrs[a] = true; return nil }
func (f *fakeAddrs) Del(a netip.Addr) error { f.dels++; delete(f.addrs, a); return nil }

// fakeIPT is the in-memory iptables of the ipt package, counting writes.
type fakeIPT struct{ *ipt.Fake }

func newFakeIPT() *fakeIPT { return &fakeIPT{ipt.NewFake()} }

func (f *fakeIPT) chain(name string) []string { return f.Rules("nat", name) }
func (f *fakeIPT) writes() int                { return f.Restores + f.Edits }
func (f *fakeIPT) resetWrites()               { f.Restores, f.Edits = 0, 0 }

func spec(rs []string) string { return ipt.Spec(rs) }
