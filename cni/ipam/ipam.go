// Package ipam hands out pod addresses from a node's pod CIDRs and remembers them on disk.
//
// It is pure Go and touches nothing but its directory. The layout follows the host-local IPAM plugin, so an
// operator who knows that one can read this one:
//
//	<dir>/lock                  flock(2)ed for the whole of every Allocate, Release and GC: safe across processes
//	<dir>/10.244.1.5            one file per allocated address, containing "<containerID>\r\n<ifname>"
//	<dir>/fd00:10:244:1::5      the same for an IPv6 address (named in its canonical form)
//	<dir>/last_reserved_ip.v4   the last address handed out per family (.v4, .v6), so allocation rotates through
//	                            the CIDR instead of reusing a just-freed address at once
//
// An attachment (container ID + interface name) holds at most one address per IP family: a dual-stack allocator
// (an IPv4 and an IPv6 CIDR) writes two records for it, and Allocate hands out both or neither. Allocate is
// idempotent: asked again for the same attachment it returns the addresses already recorded. The network address
// (for IPv6 the subnet-router anycast), the gateway (the first address of each CIDR) and, for IPv4, the broadcast
// address are never handed out. The format is the one the IPv4-only plugin wrote: its records stay valid when a
// node gains an IPv6 CIDR (the running pods keep their IPv4 address and hold no IPv6 one). Records whose address
// lies outside the current CIDRs (the node was given another pod CIDR) are ignored by Allocate and removed by
// Release and GC like any other.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Attachment identifies one network attachment of a container, as CNI does: the container ID plus the name of the
// interface inside the container.
type Attachment struct {
	ContainerID string
	IfName      string
}

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// Record is one allocated address as stored on disk.
type Record struct {
	IP netip.Addr
	Attachment
}

// Allocation is an address handed to an attachment.
type Allocation struct {
	// Address is the pod address with the prefix length of its CIDR, e.g. 10.244.1.5/24.
	Address netip.Prefix
	// Gateway is the first address of that CIDR, e.g. 10.244.1.1: the node bridge's address.
	Gateway netip.Addr
	// Existing is true when the address was already recorded for the attachment before this call.
	Existing bool
}

// ErrExhausted is matched (errors.Is) by the error Allocate returns when a CIDR has no free address left.
var ErrExhausted = errors.New("no free address")

// ExhaustedError says which CIDRs are full. Its message reads "no free address in 10.244.1.0/24".
type ExhaustedError struct {
	Prefixes []netip.Prefix
}

func (e *ExhaustedError) Error() string {
	s := make([]string, len(e.Prefixes))
	for i, p := range e.Prefixes {
		s[i] = p.String()
	}
	return "no free address in " + strings.Join(s, ", ")
}

// Is makes errors.Is(err, ErrExhausted) true.
func (e *ExhaustedError) Is(target error) bool { return target == ErrExhausted }

const (
	lockFile           = "lock"
	lastReservedPrefix = "last_reserved_ip."
	tmpPrefix          = ".tmp-"
)

// pool is the set of CIDRs of one IP family; an attachment gets one address from it.
type pool struct {
	family   string // "v4" or "v6"
	prefixes []netip.Prefix
}

func (p *pool) contains(ip netip.Addr) (netip.Prefix, bool) {
	for _, pfx := range p.prefixes {
		if pfx.Contains(ip) {
			return pfx, true
		}
	}
	return netip.Prefix{}, false
}

// Allocator allocates from a fixed set of CIDRs into one directory. It holds no state between calls beyond its
// configuration: every call reads the directory under the lock, so any number of Allocators, in any number of
// processes, may share a directory.
type Allocator struct {
	dir   string
	pools []*pool
}

// New returns an Allocator for cidrs recording into dir (created on first Allocate). Each CIDR must be a network
// address (no host bits), IPv4 no longer than /30 and IPv6 no longer than /126 (room for a pod besides the reserved
// addresses), and the CIDRs must not overlap.
func New(dir string, cidrs []netip.Prefix) (*Allocator, error) {
	if dir == "" {
		return nil, errors.New("ipam: empty data directory")
	}
	if len(cidrs) == 0 {
		return nil, errors.New("ipam: no CIDR to allocate from")
	}
	a := &Allocator{dir: dir}
	byFamily := map[string]*pool{}
	for i, c := range cidrs {
		if !c.IsValid() {
			return nil, fmt.Errorf("ipam: invalid CIDR #%d", i)
		}
		if c.Masked() != c {
			return nil, fmt.Errorf("ipam: CIDR %s has host bits set (the network is %s)", c, c.Masked())
		}
		fam, maxBits := "v4", 30
		if c.Addr().Is6() {
			fam, maxBits = "v6", 126
		}
		if c.Bits() > maxBits {
			return nil, fmt.Errorf("ipam: CIDR %s is too small: no address left for a pod after the network, gateway and broadcast addresses", c)
		}
		for _, other := range cidrs[:i] {
			if other.Overlaps(c) {
				return nil, fmt.Errorf("ipam: CIDRs %s and %s overlap", other, c)
			}
		}
		p := byFamily[fam]
		if p == nil {
			p = &pool{family: fam}
			byFamily[fam] = p
			a.pools = append(a.pools, p)
		}
		p.prefixes = append(p.prefixes, c)
	}
	return a, nil
}

// Dir is the directory the allocator records into.
func (a *Allocator) Dir() string { return a.dir }

// Gateway returns the gateway of a CIDR: its first address (10.244.1.0/24 → 10.244.1.1).
func Gateway(cidr netip.Prefix) netip.Addr { return cidr.Masked().Addr().Next() }

// reserved reports whether ip is the network, gateway or (IPv4) broadcast address of pfx.
func reserved(pfx netip.Prefix, ip netip.Addr) bool {
	network := pfx.Masked().Addr()
	if ip == network || ip == network.Next() {
		return true
	}
	return ip.Is4() && ip == lastAddr(pfx)
}

// lastAddr is the highest address of pfx.
func lastAddr(pfx netip.Prefix) netip.Addr {
	b := pfx.Masked().Addr().AsSlice()
	bits := pfx.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	ip, _ := netip.AddrFromSlice(b)
	return ip
}

// Allocate returns one address per IP family for att, recording new ones. If att already holds an address inside
// the current CIDRs, that address is returned again (Existing set). When a family's CIDRs are full it returns an
// *ExhaustedError (errors.Is(err, ErrExhausted)) and records nothing.
func (a *Allocator) Allocate(att Attachment) ([]Allocation, error) {
	if err := validAttachment(att); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.dir, 0o755); err != nil {
		return nil, fmt.Errorf("ipam: create data directory: %w", err)
	}
	unlock, err := a.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	records, blocked, err := a.scan()
	if err != nil {
		return nil, err
	}
	used := make(map[netip.Addr]bool, len(records)+len(blocked))
	for _, r := range records {
		used[r.IP] = true
	}
	for _, ip := range blocked {
		used[ip] = true
	}

	var out []Allocation
	var written []netip.Addr
	undo := func() {
		for _, ip := range written {
			_ = os.Remove(filepath.Join(a.dir, ip.String()))
		}
	}
	for _, p := range a.pools {
		if al, ok := a.existing(p, records, att); ok {
			out = append(out, al)
			continue
		}
		ip, pfx, ok := a.next(p, used)
		if !ok {
			undo()
			return nil, &ExhaustedError{Prefixes: append([]netip.Prefix(nil), p.prefixes...)}
		}
		if err := a.writeRecord(ip, att); err != nil {
			undo()
			return nil, err
		}
		written = append(written, ip)
		used[ip] = true
		// The marker only steers where the next search starts; losing it costs nothing but rotation.
		_ = writeFileAtomic(a.dir, lastReservedPrefix+p.family, []byte(ip.String()))
		out = append(out, Allocation{Address: netip.PrefixFrom(ip, pfx.Bits()), Gateway: Gateway(pfx)})
	}
	return out, nil
}

// existing finds att's address in p among records, if it has one inside the current CIDRs.
func (a *Allocator) existing(p *pool, records []Record, att Attachment) (Allocation, bool) {
	for _, r := range records {
		if r.Attachment != att {
			continue
		}
		if pfx, ok := p.contains(r.IP); ok && !reserved(pfx, r.IP) {
			return Allocation{Address: netip.PrefixFrom(r.IP, pfx.Bits()), Gateway: Gateway(pfx), Existing: true}, true
		}
	}
	return Allocation{}, false
}

// next finds the first free address of p after the family's last reserved one, wrapping around once.
func (a *Allocator) next(p *pool, used map[netip.Addr]bool) (netip.Addr, netip.Prefix, bool) {
	// Start right after the last reserved address if it is still inside our CIDRs, else at the start of the first.
	idx, start := 0, p.prefixes[0].Addr()
	if b, err := os.ReadFile(filepath.Join(a.dir, lastReservedPrefix+p.family)); err == nil {
		if last, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil {
			for i, pfx := range p.prefixes {
				if pfx.Contains(last) {
					idx, start = i, last.Next()
					if !start.IsValid() || !pfx.Contains(start) {
						idx, start = (i+1)%len(p.prefixes), p.prefixes[(i+1)%len(p.prefixes)].Addr()
					}
					break
				}
			}
		}
	}
	// Walk every address once: from start to the end of its CIDR, then the following CIDRs (wrapping), then the
	// beginning of the starting CIDR up to start. Every address passed over is used or reserved, so the walk ends
	// after at most len(used) + a few steps unless the CIDRs are full.
	for n := 0; n <= len(p.prefixes); n++ {
		i := (idx + n) % len(p.prefixes)
		pfx := p.prefixes[i]
		from, to := pfx.Addr(), lastAddr(pfx)
		switch {
		case n == 0:
			from = start
		case n == len(p.prefixes):
			// Back in the starting CIDR: the part before start.
			if start == pfx.Addr() {
				continue
			}
			to = start.Prev()
		}
		for ip := from; ip.IsValid() && pfx.Contains(ip); ip = ip.Next() {
			if !reserved(pfx, ip) && !used[ip] {
				return ip, pfx, true
			}
			if ip == to {
				break
			}
		}
	}
	return netip.Addr{}, netip.Prefix{}, false
}

// Get returns the records of att, in any CIDR (current or not), sorted by address.
func (a *Allocator) Get(att Attachment) ([]Record, error) {
	all, err := a.List()
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, r := range all {
		if r.Attachment == att {
			out = append(out, r)
		}
	}
	return out, nil
}

// InRange reports whether ip lies inside one of the allocator's CIDRs (and is not reserved there), with the
// allocation it stands for.
func (a *Allocator) InRange(ip netip.Addr) (Allocation, bool) {
	for _, p := range a.pools {
		if pfx, ok := p.contains(ip); ok && !reserved(pfx, ip) {
			return Allocation{Address: netip.PrefixFrom(ip, pfx.Bits()), Gateway: Gateway(pfx), Existing: true}, true
		}
	}
	return Allocation{}, false
}

// List returns every record in the directory, sorted by address. A missing directory has none.
func (a *Allocator) List() ([]Record, error) {
	unlock, err := a.lockIfExists()
	if err != nil || unlock == nil {
		return nil, err
	}
	defer unlock()
	records, _, err := a.scan()
	return records, err
}

// Release removes every record of att (inside the current CIDRs or not) and returns the addresses freed. Releasing
// an attachment that holds nothing, or a missing directory, is not an error.
func (a *Allocator) Release(att Attachment) ([]netip.Addr, error) {
	return a.remove(func(r Record) bool { return r.Attachment == att })
}

// ReleaseAddr removes the record of ip if it belongs to att; it reports whether it did.
func (a *Allocator) ReleaseAddr(att Attachment, ip netip.Addr) (bool, error) {
	freed, err := a.remove(func(r Record) bool { return r.Attachment == att && r.IP == ip })
	return len(freed) > 0, err
}

// GC removes every record whose attachment is not in valid and returns the addresses freed.
func (a *Allocator) GC(valid []Attachment) ([]netip.Addr, error) {
	keep := make(map[Attachment]bool, len(valid))
	for _, v := range valid {
		keep[v] = true
	}
	return a.remove(func(r Record) bool { return !keep[r.Attachment] })
}

func (a *Allocator) remove(match func(Record) bool) ([]netip.Addr, error) {
	unlock, err := a.lockIfExists()
	if err != nil || unlock == nil {
		return nil, err
	}
	defer unlock()
	records, _, err := a.scan()
	if err != nil {
		return nil, err
	}
	var freed []netip.Addr
	var errs []error
	for _, r := range records {
		if !match(r) {
			continue
		}
		if err := os.Remove(filepath.Join(a.dir, r.IP.String())); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("ipam: release %s: %w", r.IP, err))
			continue
		}
		freed = append(freed, r.IP)
	}
	return freed, errors.Join(errs...)
}

// scan reads every address file. Other files (the lock, markers, temporary files, anything unexpected) are
// skipped; entries named by an address that are not regular files (a directory, a symlink) are returned as blocked:
// never handed out, never removed.
func (a *Allocator) scan() (records []Record, blocked []netip.Addr, err error) {
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("ipam: read data directory: %w", err)
	}
	for _, e := range entries {
		ip, err := netip.ParseAddr(e.Name())
		if err != nil || ip.Zone() != "" || ip.String() != e.Name() {
			continue
		}
		if !e.Type().IsRegular() {
			blocked = append(blocked, ip)
			continue
		}
		b, err := os.ReadFile(filepath.Join(a.dir, e.Name()))
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return nil, nil, fmt.Errorf("ipam: read %s: %w", e.Name(), err)
		}
		records = append(records, Record{IP: ip, Attachment: parseRecord(b)})
	}
	sort.Slice(records, func(i, j int) bool { return records[i].IP.Less(records[j].IP) })
	return records, blocked, nil
}

// parseRecord reads "<containerID>\r\n<ifname>" (host-local's format; a bare "\n" and a missing ifname are accepted).
func parseRecord(b []byte) Attachment {
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	id, ifname, _ := strings.Cut(s, "\n")
	return Attachment{ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifname)}
}

func (a *Allocator) writeRecord(ip netip.Addr, att Attachment) error {
	if err := writeFileAtomic(a.dir, ip.String(), []byte(att.ContainerID+"\r\n"+att.IfName)); err != nil {
		return fmt.Errorf("ipam: record %s: %w", ip, err)
	}
	return nil
}

// writeFileAtomic writes name in dir through a temporary file and a rename, so a reader (or a crash) never sees a
// half-written file.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, tmpPrefix+name+".")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// lock takes the directory's exclusive flock; the returned func releases it.
func (a *Allocator) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(a.dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("ipam: open lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ipam: lock %s: %w", f.Name(), err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// lockIfExists locks the directory if it exists; with no directory it returns a nil func and no error.
func (a *Allocator) lockIfExists() (func(), error) {
	if _, err := os.Stat(a.dir); err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("ipam: data directory: %w", err)
	}
	return a.lock()
}

func validAttachment(att Attachment) error {
	if att.ContainerID == "" {
		return errors.New("ipam: empty container ID")
	}
	if att.IfName == "" {
		return errors.New("ipam: empty interface name")
	}
	if strings.ContainsAny(att.ContainerID, "\r\n") || strings.ContainsAny(att.IfName, "\r\n") {
		return errors.New("ipam: container ID and interface name must not contain line breaks")
	}
	return nil
}
