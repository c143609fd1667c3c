package routes

import (
	"encoding/binary"
	"net/netip"
)

// routeMap holds the Manager's entries by destination in compact, pointer-free keys (a netip.Prefix is 32 bytes
// and holds a pointer): IPv4 prefixes as one uint64, IPv6 prefixes as 24 bytes. With 16-byte entries a slot is
// 24 bytes for IPv4 (instead of 56), and the garbage collector never scans either map. Keys are canonical
// (masked) prefixes, as the Manager uses them.
type routeMap struct {
	v4 map[uint64]entry
	v6 map[key6]entry
}

type key6 struct {
	hi, lo uint64
	bits   uint8
}

func newRouteMap() routeMap {
	return routeMap{v4: make(map[uint64]entry), v6: make(map[key6]entry)}
}

func key4(p netip.Prefix) uint64 {
	a := p.Addr().As4()
	return uint64(a[0])<<40 | uint64(a[1])<<32 | uint64(a[2])<<24 | uint64(a[3])<<16 | uint64(uint8(p.Bits()))
}

func prefix4(k uint64) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(k >> 40), byte(k >> 32), byte(k >> 24), byte(k >> 16)}), int(uint8(k)))
}

func keyOf6(p netip.Prefix) key6 {
	a := p.Addr().As16()
	return key6{hi: binary.BigEndian.Uint64(a[0:8]), lo: binary.BigEndian.Uint64(a[8:16]), bits: uint8(p.Bits())}
}

func (k key6) prefix() netip.Prefix {
	var a [16]byte
	binary.BigEndian.PutUint64(a[0:8], k.hi)
	binary.BigEndian.PutUint64(a[8:16], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(a), int(k.bits))
}

func (rm *routeMap) get(p netip.Prefix) (entry, bool) {
	if p.Addr().Is4() {
		e, ok := rm.v4[key4(p)]
		return e, ok
	}
	e, ok := rm.v6[keyOf6(p)]
	return e, ok
}

func (rm *routeMap) set(p netip.Prefix, e entry) {
	if p.Addr().Is4() {
		rm.v4[key4(p)] = e
		return
	}
	rm.v6[keyOf6(p)] = e
}

func (rm *routeMap) del(p netip.Prefix) {
	if p.Addr().Is4() {
		delete(rm.v4, key4(p))
		return
	}
	delete(rm.v6, keyOf6(p))
}

func (rm *routeMap) len() int { return len(rm.v4) + len(rm.v6) }

// all yields every destination and its entry, as a range over the maps does: entries may be set (existing keys)
// or deleted meanwhile.
func (rm *routeMap) all(yield func(netip.Prefix, entry) bool) {
	for k, e := range rm.v4 {
		if !yield(prefix4(k), e) {
			return
		}
	}
	for k, e := range rm.v6 {
		if !yield(k.prefix(), e) {
			return
		}
	}
}
