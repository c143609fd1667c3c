package nftables

// The netlink transport: small transactions of per-service objects are written straight to the kernel
// (github.com/google/nftables, one netlink batch, atomic like `nft -f`) instead of through the nft binary.
//
// Why: nft 1.0.6 fetches every chain of the table before it adds a single rule (its cache: a dump of all
// chains, parsed and indexed), so with 10,000 service ports (30,000 chains) one `nft -f` of +1 Service (11
// operations) cost about 0.4 s of CPU, two thirds of it that dump, on this 2-core machine; the fork and exec
// of nft come on top. Over netlink the same batch sends the 11 messages and reads the acknowledgements, and
// what remains is the kernel's own work (see BenchmarkSyncSmall).
//
// Only what the per-service objects use is compiled (the rules build writes, see compileRule); anything else
// (the shared objects, the table, anonymous sets, the numgen vmap of more than maxCascade endpoints) makes
// the whole transaction go through nft, as do transactions of more than maxNetlinkOps operations (the bulk
// load and repairs, where nft's cache fetch is paid once for thousands of operations).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// maxNetlinkOps is the largest transaction the netlink transport writes (larger ones go through nft). The
// proxy's pacing makes each sync under a stream of changes take what came in up to a second (at 10,000
// Services, a bulk load's syncs are hundreds to thousands of operations): each of those through nft cost
// its fetch of the whole table (~0.4 s of CPU), 22 s of a 29 s bulk load to 10,000 Services when this was
// 512. A batch of 8,192 operations is ~2 MB.
const maxNetlinkOps = 8192

// nlBuffer is the socket buffer for a batch and its acknowledgements (set with SO_SNDBUFFORCE, as nft
// does, so the net.core.[wr]mem_max sysctls, 208 KiB by default, do not cap it).
const nlBuffer = 16 << 20

// errUnsupported: the transaction has something the netlink transport does not compile (nft writes it).
var errUnsupported = errors.New("nftables: not compiled for netlink")

// nlTransport writes transactions of per-service objects over netlink in the calling thread's network
// namespace.
type nlTransport struct {
	fam   family
	table *gnft.Table
	setID uint32        // IDs of sets added in a batch (google/nftables' own counter is a global without a lock)
	runs  int           // transactions written (for tests and benchmarks)
	ops   int           // their operations
	took  time.Duration // in the kernel: sending the batch and reading its acknowledgements
	// chainsOf, when set, are the table's chain names read already (Shards.Start reads every table's in one
	// dump): the next names uses them instead of its own dump, once.
	chainsOf []string
	prefetch bool
}

func newNLTransport(fam family, table string) *nlTransport {
	tf := gnft.TableFamilyIPv4
	if fam.nft == knftables.IPv6Family {
		tf = gnft.TableFamilyIPv6
	}
	return &nlTransport{fam: fam, table: &gnft.Table{Name: table, Family: tf}}
}

// nlBatch is one compiled transaction.
type nlBatch struct {
	calls []func(*gnft.Conn) error
}

// compile turns the operations into netlink calls, or returns errUnsupported.
func (t *nlTransport) compile(c *changes, deletions bool) (*nlBatch, error) {
	if c.static || c.count() > maxNetlinkOps {
		return nil, errUnsupported
	}
	b := &nlBatch{}
	for ph, ops := range c.ops {
		if !deletions && (ph == phDelChain || ph == phDelSet) {
			continue
		}
		for _, o := range ops {
			call, err := t.compileOp(o)
			if err != nil {
				return nil, err
			}
			b.calls = append(b.calls, call)
		}
	}
	return b, nil
}

func (t *nlTransport) compileOp(o op) (func(*gnft.Conn) error, error) {
	switch obj := o.obj.(type) {
	case *knftables.Chain:
		if obj.Type != nil || obj.Hook != nil || obj.Priority != nil || obj.Device != nil || obj.Comment != nil || obj.Handle != nil {
			return nil, errUnsupported
		}
		ch := &gnft.Chain{Name: obj.Name, Table: t.table}
		switch o.verb {
		case vAdd:
			return func(cc *gnft.Conn) error { cc.AddChain(ch); return nil }, nil
		case vFlush:
			return func(cc *gnft.Conn) error { cc.FlushChain(ch); return nil }, nil
		case vDelete:
			return func(cc *gnft.Conn) error { cc.DelChain(ch); return nil }, nil
		}
	case *knftables.Rule:
		if o.verb != vAdd || obj.Index != nil || obj.Handle != nil {
			return nil, errUnsupported
		}
		exprs, err := t.compileRule(obj.Rule)
		if err != nil {
			return nil, err
		}
		r := &gnft.Rule{Table: t.table, Chain: &gnft.Chain{Name: obj.Chain, Table: t.table}, Exprs: exprs}
		if obj.Comment != nil { // as nft writes it: a NUL-terminated comment TLV
			r.UserData = userdata.AppendString(nil, userdata.TypeComment, *obj.Comment)
		}
		return func(cc *gnft.Conn) error { cc.AddRule(r); return nil }, nil
	case *knftables.Set:
		s := &gnft.Set{Table: t.table, Name: obj.Name}
		switch o.verb {
		case vAdd:
			if obj.Type != t.fam.addrType || obj.TypeOf != "" || obj.Comment != nil || obj.Size != nil || obj.Policy != nil ||
				obj.AutoMerge != nil || obj.GCInterval != nil || obj.Handle != nil || obj.Timeout == nil || len(obj.Flags) != 2 ||
				!hasFlags(obj.Flags, knftables.DynamicFlag, knftables.TimeoutFlag) {
				return nil, errUnsupported
			}
			s.KeyType, s.KeyByteOrder = gnft.TypeIPAddr, binaryutil.BigEndian
			if t.fam.nft == knftables.IPv6Family {
				s.KeyType = gnft.TypeIP6Addr
			}
			s.Dynamic, s.HasTimeout, s.Timeout = true, true, *obj.Timeout
			t.setID++
			s.ID = t.setID
			return func(cc *gnft.Conn) error { return cc.AddSet(s, nil) }, nil
		case vDelete:
			return func(cc *gnft.Conn) error { cc.DelSet(s); return nil }, nil
		}
	case *knftables.Element:
		if obj.Map == "" || obj.Set != "" || obj.Comment != nil {
			return nil, errUnsupported
		}
		key, err := t.elemKey(obj.Key)
		if err != nil {
			return nil, err
		}
		s := &gnft.Set{Table: t.table, Name: obj.Map, IsMap: true}
		switch o.verb {
		case vAdd:
			if len(obj.Value) != 1 {
				return nil, errUnsupported
			}
			v, err := verdict(strings.Fields(obj.Value[0]))
			if err != nil {
				return nil, err
			}
			el := []gnft.SetElement{{Key: key, VerdictData: v}}
			return func(cc *gnft.Conn) error { return cc.SetAddElements(s, el) }, nil
		case vDelete:
			el := []gnft.SetElement{{Key: key}}
			return func(cc *gnft.Conn) error { return cc.SetDeleteElements(s, el) }, nil
		}
	}
	return nil, errUnsupported
}

func hasFlags(got []knftables.SetFlag, want ...knftables.SetFlag) bool {
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g == w
		}
		if !found {
			return false
		}
	}
	return true
}

// run writes the batch in one netlink transaction (all or nothing).
func (t *nlTransport) run(b *nlBatch) error {
	cc, err := gnft.New(gnft.WithSockOptions(func(c *netlink.Conn) error {
		// Room for a batch of maxNetlinkOps and its acknowledgements and echoes (a batch that does not fit
		// fails with EMSGSIZE and goes through nft).
		return forceBuffers(c, nlBuffer)
	}))
	if err != nil {
		return err
	}
	for _, call := range b.calls {
		if err := call(cc); err != nil {
			return err
		}
	}
	t0 := time.Now()
	err = cc.Flush()
	t.took += time.Since(t0)
	if errors.Is(err, unix.EMSGSIZE) {
		return errUnsupported // nothing was applied
	}
	if err != nil {
		return fmt.Errorf("nftables netlink transaction: %w", err)
	}
	t.runs++
	t.ops += len(b.calls)
	return nil
}

// forceBuffers sets the socket's send and receive buffers to n bytes: with SO_[SND|RCV]BUFFORCE (CAP_NET_ADMIN,
// which the agent has), else as far as the [wr]mem_max sysctls allow.
func forceBuffers(c *netlink.Conn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		if err := c.SetWriteBuffer(n); err != nil {
			return err
		}
		return c.SetReadBuffer(n)
	}
	return nil
}

// elemKey encodes a key of the shared maps: address . protocol . port, or protocol . port (each field in a
// 4-byte-aligned register, as the kernel stores concatenations).
func (t *nlTransport) elemKey(parts []string) ([]byte, error) {
	var key []byte
	switch len(parts) {
	case 3:
		a, err := netip.ParseAddr(parts[0])
		if err != nil || !t.fam.is(a) {
			return nil, errUnsupported
		}
		key = append(key, a.AsSlice()...)
		parts = parts[1:]
	case 2:
	default:
		return nil, errUnsupported
	}
	proto, ok := protoNumber(parts[0])
	port, err := strconv.ParseUint(parts[1], 10, 16)
	if !ok || err != nil {
		return nil, errUnsupported
	}
	key = append(key, proto, 0, 0, 0)
	key = append(key, byte(port>>8), byte(port), 0, 0)
	return key, nil
}

func protoNumber(s string) (byte, bool) {
	switch s {
	case "tcp":
		return unix.IPPROTO_TCP, true
	case "udp":
		return unix.IPPROTO_UDP, true
	case "sctp":
		return unix.IPPROTO_SCTP, true
	}
	return 0, false
}

// verdict parses "goto CHAIN", "jump CHAIN" or "drop".
func verdict(f []string) (*expr.Verdict, error) {
	switch {
	case len(f) == 2 && f[0] == "goto":
		return &expr.Verdict{Kind: expr.VerdictGoto, Chain: f[1]}, nil
	case len(f) == 2 && f[0] == "jump":
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: f[1]}, nil
	case len(f) == 1 && f[0] == "drop":
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	case len(f) == 1 && f[0] == "return":
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	}
	return nil, errUnsupported
}

// hostU32 is a 32-bit register value in host byte order (numgen and fib results).
func hostU32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// compileRule compiles the rules build writes into the expressions nft 1.0.6 generates for them (checked
// against nft in TestNetlinkMatchesNft). Statements:
//
//	ip|ip6 saddr|daddr [!=] ADDR|PREFIX      ip|ip6 saddr @SET      numgen random mod N == K
//	fib saddr type local                     meta l4proto tcp|udp|sctp
//	update @SET { ip|ip6 saddr }             dnat to ADDR:PORT
//	jump|goto CHAIN (last)
func (t *nlTransport) compileRule(rule string) ([]expr.Any, error) {
	f := strings.Fields(rule)
	var out []expr.Any
	ipx := t.fam.ip
	for len(f) > 0 {
		switch {
		case f[0] == ipx && len(f) >= 3 && (f[1] == "saddr" || f[1] == "daddr"):
			off, n := t.addrOffset(f[1])
			f = f[2:]
			if strings.HasPrefix(f[0], "@") {
				out = append(out,
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
					&expr.Lookup{SourceRegister: 1, SetName: f[0][1:]})
				f = f[1:]
				continue
			}
			op := expr.CmpOpEq
			if f[0] == "!=" {
				op, f = expr.CmpOpNeq, f[1:]
			}
			if len(f) == 0 {
				return nil, errUnsupported
			}
			ex, err := t.matchAddr(off, n, op, f[0])
			if err != nil {
				return nil, err
			}
			out = append(out, ex...)
			f = f[1:]
		case len(f) >= 6 && f[0] == "numgen" && f[1] == "random" && f[2] == "mod" && f[4] == "==":
			mod, err1 := strconv.ParseUint(f[3], 10, 32)
			k, err2 := strconv.ParseUint(f[5], 10, 32)
			if err1 != nil || err2 != nil || mod == 0 {
				return nil, errUnsupported
			}
			out = append(out,
				&expr.Numgen{Register: 1, Modulus: uint32(mod), Type: unix.NFT_NG_RANDOM},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: hostU32(uint32(k))})
			f = f[6:]
		case len(f) >= 4 && f[0] == "fib" && f[1] == "saddr" && f[2] == "type" && f[3] == "local":
			out = append(out,
				&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: hostU32(unix.RTN_LOCAL)})
			f = f[4:]
		case len(f) >= 3 && f[0] == "meta" && f[1] == "l4proto":
			p, ok := protoNumber(f[2])
			if !ok {
				return nil, errUnsupported
			}
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}})
			f = f[3:]
		case len(f) == 6 && f[0] == "update" && strings.HasPrefix(f[1], "@") && f[2] == "{" && f[3] == ipx && f[4] == "saddr" && f[5] == "}":
			off, n := t.addrOffset("saddr")
			out = append(out,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
				&expr.Dynset{SrcRegKey: 1, SetName: f[1][1:], Operation: unix.NFT_DYNSET_OP_UPDATE})
			f = nil
		case len(f) == 3 && f[0] == "dnat" && f[1] == "to":
			ap, err := netip.ParseAddrPort(f[2])
			if err != nil || !t.fam.is(ap.Addr()) || ap.Port() == 0 {
				return nil, errUnsupported
			}
			natFam := uint32(unix.NFPROTO_IPV4)
			if t.fam.nft == knftables.IPv6Family {
				natFam = unix.NFPROTO_IPV6
			}
			out = append(out,
				&expr.Immediate{Register: 1, Data: ap.Addr().AsSlice()},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(ap.Port())},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: natFam, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
			f = nil
		case len(f) == 2 && (f[0] == "jump" || f[0] == "goto"):
			v, err := verdict(f)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			f = nil
		default:
			return nil, errUnsupported
		}
	}
	if len(out) == 0 {
		return nil, errUnsupported
	}
	return out, nil
}

// addrOffset is where saddr or daddr is in the network header, and its length.
func (t *nlTransport) addrOffset(which string) (offset, n uint32) {
	if t.fam.nft == knftables.IPv6Family {
		if which == "saddr" {
			return 8, 16
		}
		return 24, 16
	}
	if which == "saddr" {
		return 12, 4
	}
	return 16, 4
}

// matchAddr compares the address at off with an address or a prefix as nft does: a prefix on a byte boundary
// loads only its bytes, any other is masked.
func (t *nlTransport) matchAddr(off, n uint32, op expr.CmpOp, s string) ([]expr.Any, error) {
	if strings.Contains(s, "/") {
		pf, err := netip.ParsePrefix(s)
		if err != nil || !t.fam.is(pf.Addr()) || pf.Bits() == 0 {
			return nil, errUnsupported
		}
		pf = pf.Masked()
		a := pf.Addr().AsSlice()
		if pf.Bits()%8 == 0 {
			nb := uint32(pf.Bits() / 8)
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: nb},
				&expr.Cmp{Op: op, Register: 1, Data: a[:nb]},
			}, nil
		}
		mask := make([]byte, n)
		for i := 0; i < pf.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)},
			&expr.Cmp{Op: op, Register: 1, Data: a},
		}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !t.fam.is(a) {
		return nil, errUnsupported
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Cmp{Op: op, Register: 1, Data: a.AsSlice()},
	}, nil
}

// chainHashes reads the comment of the first rule of each of the given chains (hashComment), parsing nothing
// else: chain name -> hash of its rules, for the chains whose comment parses and whose number of rules is the
// one the comment gives (a chain flushed, cut short or added to by someone else is left out: its rules are
// unknown). One dump per chain, on one socket: the kernel builds each part of a dump of the whole table's
// rules by walking the table from its first rule again, so that dump grows with the square of the table
// (5-9 s at 60,000 chains); a dump filtered by chain finds the chain by its name and walks only its rules.
func (t *nlTransport) chainHashes(chains []string) (map[string]uint64, error) {
	d, err := t.newDumper()
	if err != nil {
		return nil, err
	}
	defer d.close()
	out := make(map[string]uint64, len(chains))
	for _, chain := range chains {
		attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_RULE_TABLE, Data: []byte(t.table.Name + "\x00")},
			{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		})
		if err != nil {
			return nil, err
		}
		msgs, err := d.dump(unix.NFT_MSG_GETRULE, attrs)
		if errors.Is(err, unix.ENOENT) {
			continue // gone meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("dumping the rules of chain %s: %w", chain, err)
		}
		if len(msgs) == 0 {
			continue
		}
		c, ok := userdata.GetString(attrBytes(msgs[0], unix.NFTA_RULE_USERDATA), userdata.TypeComment)
		if !ok {
			continue
		}
		if h, want, ok := parseHashComment(c); ok && want == len(msgs) {
			out[chain] = h
		}
	}
	return out, nil
}

// names lists the chains, the sets and the maps of the table (not the anonymous ones) over netlink, as
// `nft list chains|sets|maps` (each of which cost nft 1.0.6 0.5-1 s at 10,000 services: it reads more than
// names); exists is false when there is no such table.
// chainNames reads the names of the family's chains, by table (one dump: the kernel does not filter chains
// by table).
func (t *nlTransport) chainNames() (map[string][]string, error) {
	msgs, err := t.dump(unix.NFT_MSG_GETCHAIN, nil)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, m := range msgs {
		tb := attrString(m, unix.NFTA_CHAIN_TABLE)
		out[tb] = append(out[tb], attrString(m, unix.NFTA_CHAIN_NAME))
	}
	return out, nil
}

func (t *nlTransport) names() (chains, sets, maps []string, exists bool, err error) {
	tables, err := t.dump(unix.NFT_MSG_GETTABLE, nil)
	if err != nil {
		return nil, nil, nil, false, err
	}
	for _, m := range tables {
		exists = exists || attrString(m, unix.NFTA_TABLE_NAME) == t.table.Name
	}
	if !exists {
		return nil, nil, nil, false, nil
	}
	if t.prefetch {
		chains, t.chainsOf, t.prefetch = t.chainsOf, nil, false
	} else {
		all, err := t.chainNames()
		if err != nil {
			return nil, nil, nil, false, err
		}
		chains = all[t.table.Name]
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_SET_TABLE, Data: []byte(t.table.Name + "\x00")}})
	if err != nil {
		return nil, nil, nil, false, err
	}
	msgs, err := t.dump(unix.NFT_MSG_GETSET, attrs)
	if err != nil {
		return nil, nil, nil, false, err
	}
	for _, m := range msgs {
		if attrString(m, unix.NFTA_SET_TABLE) != t.table.Name {
			continue
		}
		flags := binary.BigEndian.Uint32(append(attrBytes(m, unix.NFTA_SET_FLAGS), 0, 0, 0, 0)[:4])
		switch name := attrString(m, unix.NFTA_SET_NAME); {
		case flags&unix.NFT_SET_ANONYMOUS != 0:
		case flags&unix.NFT_SET_MAP != 0:
			maps = append(maps, name)
		default:
			sets = append(sets, name)
		}
	}
	return chains, sets, maps, true, nil
}

// mapElements lists the elements of one of the shared verdict maps over netlink, as `nft list map` would
// (what knftables' ListElements gives): nft 1.0.6 reads every chain of the table first, 1-2 s for each of
// the four maps at 10,000 services with 50,000 endpoints, at every start.
func (t *nlTransport) mapElements(m string) ([]elemPlan, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(t.table.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(m + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	msgs, err := t.dump(unix.NFT_MSG_GETSETELEM, attrs)
	if err != nil {
		return nil, fmt.Errorf("dumping map %s: %w", m, err)
	}
	var out []elemPlan
	for _, msg := range msgs {
		list := attrBytes(msg, unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		if list == nil {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(list)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() != unix.NFTA_LIST_ELEM {
				continue
			}
			e, err := t.decodeElem(m, ad.Bytes())
			if err != nil {
				return nil, fmt.Errorf("map %s: %w", m, err)
			}
			out = append(out, e)
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// decodeElem reads one element of a shared map (elemKey's key, a verdict).
func (t *nlTransport) decodeElem(m string, b []byte) (elemPlan, error) {
	e := elemPlan{m: m}
	var key []byte
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return e, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_KEY:
			key = nestedAttr(ad.Bytes(), unix.NFTA_DATA_VALUE)
		case unix.NFTA_SET_ELEM_DATA:
			v := nestedAttr(ad.Bytes(), unix.NFTA_DATA_VERDICT)
			code := nestedAttr(v, unix.NFTA_VERDICT_CODE)
			if len(code) != 4 {
				return e, fmt.Errorf("an element without a verdict")
			}
			chain := string(bytes.TrimRight(nestedAttr(v, unix.NFTA_VERDICT_CHAIN), "\x00"))
			switch c := int32(binary.BigEndian.Uint32(code)); c {
			case unix.NFT_GOTO:
				e.value = "goto " + chain
			case unix.NFT_JUMP:
				e.value = "jump " + chain
			case unix.NFT_RETURN:
				e.value = "return"
			case 0: // NF_DROP
				e.value = "drop"
			case 1: // NF_ACCEPT
				e.value = "accept"
			default:
				return e, fmt.Errorf("verdict %d", c)
			}
		}
	}
	if err := ad.Err(); err != nil {
		return e, err
	}
	alen := 4
	if t.fam.nft == knftables.IPv6Family {
		alen = 16
	}
	switch len(key) {
	case alen + 8:
		a, _ := netip.AddrFromSlice(key[:alen])
		e.key = append(e.key, a.String())
		key = key[alen:]
	case 8:
	default:
		return e, fmt.Errorf("a key of %d bytes", len(key))
	}
	var proto string
	switch key[0] {
	case unix.IPPROTO_TCP:
		proto = "tcp"
	case unix.IPPROTO_UDP:
		proto = "udp"
	case unix.IPPROTO_SCTP:
		proto = "sctp"
	default:
		proto = strconv.Itoa(int(key[0]))
	}
	e.key = append(e.key, proto, strconv.Itoa(int(key[4])<<8|int(key[5])))
	return e, nil
}

// nestedAttr is the first attribute typ inside b, nil if none.
func nestedAttr(b []byte, typ uint16) []byte {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil
	}
	for ad.Next() {
		if ad.Type() == typ {
			return ad.Bytes()
		}
	}
	return nil
}

// attrBytes is the first attribute typ of a message payload (after the nfgenmsg header), nil if none.
func attrBytes(m []byte, typ uint16) []byte {
	if len(m) < 4 {
		return nil
	}
	return nestedAttr(m[4:], typ)
}

func attrString(m []byte, typ uint16) string {
	b := attrBytes(m, typ)
	if i := slices.Index(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// dump runs one netlink dump request of nf_tables (msgType, for the transport's family, with attrs) and
// returns the payload (after the netlink header) of each message. Over a raw socket read with 64 KiB
// buffers: the kernel fills each part of a dump up to the reader's largest buffer (at most 32 KiB) and, for
// rules and chains, walks the table from the start for every part, so mdlayher/netlink's page-sized reads
// made a dump of 10,000 services' rules take seconds of kernel time.
func (t *nlTransport) dump(msgType uint16, attrs []byte) ([][]byte, error) {
	d, err := t.newDumper()
	if err != nil {
		return nil, err
	}
	defer d.close()
	return d.dump(msgType, attrs)
}

// dumper is a netfilter netlink socket for dumps, one after the other.
type dumper struct {
	fd  int
	fam byte
	seq uint32
	buf []byte
}

// newDumper opens the socket in the calling thread's network namespace.
func (t *nlTransport) newDumper() (*dumper, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &dumper{fd: fd, fam: byte(t.table.Family), buf: make([]byte, 64<<10)}, nil
}

func (d *dumper) close() { unix.Close(d.fd) }

func (d *dumper) dump(msgType uint16, attrs []byte) ([][]byte, error) {
	d.seq++
	seq := d.seq
	data := append([]byte{d.fam, unix.NFNETLINK_V0, 0, 0}, attrs...)
	req, err := netlink.Message{
		Header: netlink.Header{Length: uint32(unix.NLMSG_HDRLEN + len(data)),
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType),
			Flags: netlink.Request | netlink.Dump, Sequence: seq},
		Data: data,
	}.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if err := unix.Sendto(d.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return nil, syscall.Errno(-errno)
					}
				}
				return out, nil
			}
			out = append(out, slices.Clone(m.Data))
		}
	}
}

// HasTable reports whether a table of this back end (ip canopy or a shard's, ShardTable; ipv6: ip6) exists in
// the calling thread's network namespace, over netlink: a caller can skip Cleanup when there is none without
// starting nft (knftables.New alone runs nft twice, and nft 1.0.6 reads the whole ruleset for them: seconds
// next to a table of 10,000 services).
func HasTable(v6 bool) (bool, error) {
	fam := ipv4
	if v6 {
		fam = ipv6
	}
	names, err := hostTables{nl: newNLTransport(fam, TableName)}.tables()
	return slices.ContainsFunc(names, IsShardTable), err
}
