package loadbalancer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
)

// Range is an inclusive range of addresses of one family (IPv4 or IPv6) that may be handed out, First <= Last.
//
// A CIDR given to ParseRanges becomes the range of its usable addresses: for an IPv4 prefix shorter than /31
// the network and broadcast addresses are left out (10.200.0.0/24 serves 10.200.0.1-10.200.0.254), because a
// router or host on that segment may treat them specially; a /31 or /32 serves every address (RFC 3021). An
// IPv6 prefix shorter than /127 leaves out its first address, the Subnet-Router anycast address (RFC 4291
// 2.6.1: fd00:200::/64 serves fd00:200::1-fd00:200::ffff:ffff:ffff:ffff); a /127 or /128 serves every address
// (RFC 6164). An explicit range "a-b" is taken as written.
type Range struct {
	First, Last netip.Addr
}

// String returns the range as "a-b" (or "a" for one address).
func (r Range) String() string {
	if r.First == r.Last {
		return r.First.String()
	}
	return r.First.String() + "-" + r.Last.String()
}

// Contains reports whether ip is in the range (an address of the range's family).
func (r Range) Contains(ip netip.Addr) bool {
	return ip.Is4() == r.First.Is4() && r.First.Compare(ip) <= 0 && ip.Compare(r.Last) <= 0
}

// Size returns the number of addresses in the range, at most math.MaxUint64 (an IPv6 /64 is one more).
func (r Range) Size() uint64 {
	f, l := toU128(r.First), toU128(r.Last)
	hi, lo := l.hi-f.hi, l.lo-f.lo
	if l.lo < f.lo {
		hi--
	}
	if hi != 0 || lo == math.MaxUint64 {
		return math.MaxUint64
	}
	return lo + 1
}

// u128 is an address as a 128-bit number (IPv4 ones as their IPv4-mapped form: only differences within one
// family are meaningful).
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr(is4 bool) netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	a := netip.AddrFrom16(b)
	if is4 {
		return a.Unmap()
	}
	return a
}

// hostMask is the host part of a prefix of bits bits (of an address of bitLen bits) as a u128.
func hostMask(bits, bitLen int) u128 {
	n := bitLen - bits // host bits
	switch {
	case n <= 0:
		return u128{}
	case n >= 128:
		return u128{math.MaxUint64, math.MaxUint64}
	case n >= 64:
		return u128{1<<(n-64) - 1, math.MaxUint64}
	}
	return u128{0, 1<<n - 1}
}

// satAdd adds without overflowing (math.MaxUint64 at most).
func satAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// Prefixes returns the CIDRs that cover exactly the addresses of ranges (what may be announced).
func Prefixes(ranges []Range) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range ranges {
		a := r.First
		for a.IsValid() && a.Compare(r.Last) <= 0 {
			bits := a.BitLen()
			for bits > 0 {
				p := netip.PrefixFrom(a, bits-1).Masked()
				if p.Addr() != a || lastAddr(p).Compare(r.Last) > 0 {
					break
				}
				bits--
			}
			p := netip.PrefixFrom(a, bits)
			out = append(out, p)
			a = lastAddr(p).Next()
		}
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	u, m := toU128(a), hostMask(p.Bits(), a.BitLen())
	return u128{u.hi | m.hi, u.lo | m.lo}.addr(a.Is4())
}

// ParseRanges parses the --loadbalancer-ip-range values: each is a CIDR ("10.200.0.0/24") or an inclusive
// range ("10.200.0.10-10.200.0.20"), of either family ("fd00:200::/64", "fd00:200::10-fd00:200::20"), and one
// value may hold several separated by commas. Errors name the offending item; overlapping items are refused.
// The result is sorted (IPv4 first).
func ParseRanges(s []string) ([]Range, error) {
	type item struct {
		r   Range
		src string
	}
	var items []item
	for _, v := range s {
		for _, raw := range strings.Split(v, ",") {
			src := strings.TrimSpace(raw)
			if src == "" {
				continue
			}
			r, err := parseRange(src)
			if err != nil {
				return nil, fmt.Errorf("load balancer IP range %q: %w", src, err)
			}
			items = append(items, item{r, src})
		}
	}
	slices.SortFunc(items, func(a, b item) int { return a.r.First.Compare(b.r.First) })
	out := make([]Range, 0, len(items))
	for i, it := range items {
		if i > 0 && items[i-1].r.Last.Compare(it.r.First) >= 0 {
			return nil, fmt.Errorf("load balancer IP ranges %q and %q overlap", items[i-1].src, it.src)
		}
		out = append(out, it.r)
	}
	return out, nil
}

func parseRange(s string) (Range, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Range{}, err
		}
		if p.Addr().Is4In6() {
			return Range{}, errors.New("an IPv4-mapped IPv6 prefix: write it as IPv4")
		}
		if p.Masked() != p {
			return Range{}, fmt.Errorf("has host bits set (did you mean %s?)", p.Masked())
		}
		if p.Bits() == 0 {
			return Range{}, errors.New("a range of every address would let any Service take any address (the API server's, a node's): give the addresses set aside for LoadBalancer Services")
		}
		first, last := p.Addr(), lastAddr(p)
		switch {
		case first.Is4() && p.Bits() < 31:
			first, last = first.Next(), last.Prev() // network and broadcast
		case first.Is6() && p.Bits() < 127:
			first = first.Next() // Subnet-Router anycast
		}
		return Range{First: first, Last: last}, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	first, err := netip.ParseAddr(strings.TrimSpace(a))
	if err != nil {
		return Range{}, err
	}
	last := first
	if isRange {
		if last, err = netip.ParseAddr(strings.TrimSpace(b)); err != nil {
			return Range{}, err
		}
	}
	if first.Is4In6() || last.Is4In6() {
		return Range{}, errors.New("an IPv4-mapped IPv6 address: write it as IPv4")
	}
	if first.Is4() != last.Is4() {
		return Range{}, errors.New("first and last address are of different families")
	}
	if first.Compare(last) > 0 {
		return Range{}, fmt.Errorf("first address %s is after last address %s", first, last)
	}
	return Range{First: first, Last: last}, nil
}

// Errors returned by the Pool.
var (
	ErrNotInPool = errors.New("not in the configured load balancer IP ranges")
	ErrExhausted = errors.New("no free address in the load balancer IP ranges")
)

// InUseError says that an address is held by another owner.
type InUseError struct {
	IP    netip.Addr
	Owner string
}

func (e *InUseError) Error() string { return fmt.Sprintf("%s is in use by %s", e.IP, e.Owner) }

// Pool tracks which addresses of a set of ranges are held, and by whom (a key such as "namespace/name").
// Each key holds at most one address and each address has at most one owner. It does no I/O and is not safe
// for concurrent use. Its ranges may be of either family; a dual-stack allocator keeps a Pool per family (a
// Service holds one address of each).
type Pool struct {
	ranges []Range // sorted, disjoint
	size   uint64
	byIP   map[netip.Addr]string
	byKey  map[string]netip.Addr
	// hint is the lowest address that may be free: every pool address below it is in use. It makes
	// AllocateAny cheap when addresses are handed out in order.
	hint netip.Addr
}

// NewPool returns an empty pool over ranges, which must be valid ranges (each of one family, not IPv4-mapped)
// that do not overlap.
func NewPool(ranges []Range) (*Pool, error) {
	rs := slices.Clone(ranges)
	slices.SortFunc(rs, func(a, b Range) int { return a.First.Compare(b.First) })
	p := &Pool{ranges: rs, byIP: map[netip.Addr]string{}, byKey: map[string]netip.Addr{}}
	for i, r := range rs {
		if !r.First.IsValid() || !r.Last.IsValid() || r.First.Is4() != r.Last.Is4() || r.First.Is4In6() || r.Last.Is4In6() || r.First.Compare(r.Last) > 0 {
			return nil, fmt.Errorf("invalid load balancer IP range %s", r)
		}
		if i > 0 && rs[i-1].Last.Compare(r.First) >= 0 {
			return nil, fmt.Errorf("load balancer IP ranges %s and %s overlap", rs[i-1], r)
		}
		p.size = satAdd(p.size, r.Size())
	}
	if len(rs) > 0 {
		p.hint = rs[0].First
	}
	return p, nil
}

// Ranges returns the pool's ranges, sorted.
func (p *Pool) Ranges() []Range { return slices.Clone(p.ranges) }

// Size returns the number of addresses the pool can hand out (at most math.MaxUint64).
func (p *Pool) Size() uint64 { return p.size }

// InUse returns the number of addresses held.
func (p *Pool) InUse() int { return len(p.byIP) }

// Contains reports whether ip is one of the pool's addresses.
func (p *Pool) Contains(ip netip.Addr) bool {
	i, _ := slices.BinarySearchFunc(p.ranges, ip, func(r Range, ip netip.Addr) int {
		if r.Last.Compare(ip) < 0 {
			return -1
		}
		if r.First.Compare(ip) > 0 {
			return 1
		}
		return 0
	})
	return i < len(p.ranges) && p.ranges[i].Contains(ip)
}

// Owner returns the key holding ip.
func (p *Pool) Owner(ip netip.Addr) (string, bool) {
	k, ok := p.byIP[ip]
	return k, ok
}

// Lookup returns the address key holds.
func (p *Pool) Lookup(key string) (netip.Addr, bool) {
	ip, ok := p.byKey[key]
	return ip, ok
}

// Assign gives ip to key. If key already holds another address, that one is released only when ip can be
// taken; on error nothing changes. Errors: ErrNotInPool (wrapped) or *InUseError.
func (p *Pool) Assign(key string, ip netip.Addr) error {
	if !p.Contains(ip) {
		return fmt.Errorf("%s is %w", ip, ErrNotInPool)
	}
	if owner, ok := p.byIP[ip]; ok {
		if owner == key {
			return nil
		}
		return &InUseError{IP: ip, Owner: owner}
	}
	p.Release(key)
	p.take(key, ip)
	return nil
}

// AllocateAny gives key the lowest free address, or returns the one it holds. The error is ErrExhausted.
func (p *Pool) AllocateAny(key string) (netip.Addr, error) {
	if ip, ok := p.byKey[key]; ok {
		return ip, nil
	}
	if uint64(len(p.byIP)) >= p.size {
		return netip.Addr{}, ErrExhausted
	}
	for _, r := range p.ranges {
		if r.Last.Compare(p.hint) < 0 {
			continue
		}
		a := r.First
		if a.Compare(p.hint) < 0 {
			a = p.hint
		}
		for {
			if _, used := p.byIP[a]; !used {
				p.take(key, a)
				p.hint = a.Next()
				return a, nil
			}
			if a == r.Last {
				break
			}
			a = a.Next()
		}
	}
	// Unreachable while the hint invariant holds; kept as a safe answer.
	return netip.Addr{}, ErrExhausted
}

// Release frees the address key holds and returns it.
func (p *Pool) Release(key string) (netip.Addr, bool) {
	ip, ok := p.byKey[key]
	if !ok {
		return netip.Addr{}, false
	}
	delete(p.byKey, key)
	delete(p.byIP, ip)
	if ip.Compare(p.hint) < 0 {
		p.hint = ip
	}
	return ip, true
}

func (p *Pool) take(key string, ip netip.Addr) {
	p.byKey[key] = ip
	p.byIP[ip] = key
}
