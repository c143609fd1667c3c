package services

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Well-known standard communities (RFC 1997, RFC 7999).
const (
	CommunityNoExport          uint32 = 0xFFFFFF01
	CommunityNoAdvertise       uint32 = 0xFFFFFF02
	CommunityNoExportSubconfed uint32 = 0xFFFFFF03
	// CommunityBlackhole (65535:666) asks the receiving router to drop traffic to the prefix. ParseCommunities
	// refuses it in every spelling: an annotation must not be able to turn a VIP (which other Services may share)
	// into a black hole at the ToR; remote-triggered blackholing is a router-side decision.
	CommunityBlackhole uint32 = 0xFFFF029A
)

// MaxPrepend is the largest accepted canopy.io/as-path-prepend.
const MaxPrepend = 10

var wellKnownCommunities = map[string]uint32{
	"no-export":           CommunityNoExport,
	"no-advertise":        CommunityNoAdvertise,
	"no-export-subconfed": CommunityNoExportSubconfed,
}

// Communities are BGP communities to attach to an advertisement: standard (RFC 1997) ones as 32-bit values
// (AA<<16 | NN) and large (RFC 8092) ones as {global administrator, local data 1, local data 2}. Both lists are
// sorted and deduplicated, and nil when empty, as ParseCommunities, Union and Merge return them.
type Communities struct {
	Standard []uint32
	Large    [][3]uint32
}

// IsZero reports whether c holds no community.
func (c Communities) IsZero() bool { return len(c.Standard) == 0 && len(c.Large) == 0 }

// String formats c in the syntax ParseCommunities reads: well-known names, "AA:NN", "large:A:B:C",
// comma-separated.
func (c Communities) String() string {
	parts := make([]string, 0, len(c.Standard)+len(c.Large))
	for _, v := range c.Standard {
		parts = append(parts, formatStandard(v))
	}
	for _, l := range c.Large {
		parts = append(parts, fmt.Sprintf("large:%d:%d:%d", l[0], l[1], l[2]))
	}
	return strings.Join(parts, ",")
}

func formatStandard(v uint32) string {
	for name, w := range wellKnownCommunities {
		if v == w {
			return name
		}
	}
	return fmt.Sprintf("%d:%d", v>>16, v&0xFFFF)
}

// Union returns the communities in a or b, sorted and deduplicated; it never aliases a or b.
func Union(a, b Communities) Communities {
	return normalize(Communities{
		Standard: append(slices.Clone(a.Standard), b.Standard...),
		Large:    append(slices.Clone(a.Large), b.Large...),
	})
}

// Intersect returns the communities in both a and b (normalized).
func Intersect(a, b Communities) Communities {
	var out Communities
	for _, v := range a.Standard {
		if slices.Contains(b.Standard, v) {
			out.Standard = append(out.Standard, v)
		}
	}
	for _, v := range a.Large {
		if slices.Contains(b.Large, v) {
			out.Large = append(out.Large, v)
		}
	}
	return normalize(out)
}

// Split returns the communities of c that are in allowed, and the others.
func Split(c, allowed Communities) (in, out Communities) {
	for _, v := range c.Standard {
		if slices.Contains(allowed.Standard, v) {
			in.Standard = append(in.Standard, v)
		} else {
			out.Standard = append(out.Standard, v)
		}
	}
	for _, v := range c.Large {
		if slices.Contains(allowed.Large, v) {
			in.Large = append(in.Large, v)
		} else {
			out.Large = append(out.Large, v)
		}
	}
	return normalize(in), normalize(out)
}

// normalize sorts and deduplicates c in place, making empty lists nil.
func normalize(c Communities) Communities {
	slices.Sort(c.Standard)
	c.Standard = slices.Clip(slices.Compact(c.Standard))
	slices.SortFunc(c.Large, compareLarge)
	c.Large = slices.Clip(slices.Compact(c.Large))
	if len(c.Standard) == 0 {
		c.Standard = nil
	}
	if len(c.Large) == 0 {
		c.Large = nil
	}
	return c
}

func compareLarge(a, b [3]uint32) int {
	for i := range a {
		if c := cmp.Compare(a[i], b[i]); c != 0 {
			return c
		}
	}
	return 0
}

// ParseCommunities parses a canopy.io/communities value: a comma-separated list (spaces around items and
// empty items are ignored; "" is no community) of
//   - "AA:NN", each part 0..65535: a standard community;
//   - a decimal 0..4294967295: a standard community as one 32-bit number;
//   - no-export, no-advertise, no-export-subconfed (any case): the RFC 1997 well-known communities;
//   - "large:A:B:C" or "A:B:C", each part 0..4294967295: a large community.
//
// The BLACKHOLE community (RFC 7999: "blackhole", 65535:666, 4294902426) is refused, see CommunityBlackhole.
// On error no community is returned, and the error names every bad item.
func ParseCommunities(s string) (Communities, error) {
	var c Communities
	var errs []error
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if err := c.parseItem(item); err != nil {
			errs = append(errs, fmt.Errorf("community %q: %v", item, err))
		}
	}
	if len(errs) > 0 {
		return Communities{}, joinErrs(errs)
	}
	return normalize(c), nil
}

// joinErrs joins errors on one line ("; "): the message becomes a Kubernetes Event.
func joinErrs(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}

func (c *Communities) parseItem(item string) error {
	lower := strings.ToLower(item)
	if v, ok := wellKnownCommunities[lower]; ok {
		c.Standard = append(c.Standard, v)
		return nil
	}
	if lower == "blackhole" {
		return errBlackhole
	}
	large := false
	if rest, ok := strings.CutPrefix(lower, "large:"); ok {
		lower, large = rest, true
	}
	parts := strings.Split(lower, ":")
	switch {
	case len(parts) == 3:
		var l [3]uint32
		for i, p := range parts {
			v, err := parseNumber(p, 32)
			if err != nil {
				return err
			}
			l[i] = uint32(v)
		}
		c.Large = append(c.Large, l)
		return nil
	case large:
		return fmt.Errorf("a large community has three parts (large:A:B:C), not %d", len(parts))
	case len(parts) == 2:
		hi, err := parseNumber(parts[0], 16)
		if err != nil {
			return err
		}
		lo, err := parseNumber(parts[1], 16)
		if err != nil {
			return err
		}
		return c.addStandard(uint32(hi<<16 | lo))
	case len(parts) == 1:
		if !isDigits(parts[0]) {
			return errors.New("not AA:NN, a 32-bit number, large:A:B:C or one of no-export, no-advertise, no-export-subconfed")
		}
		v, err := parseNumber(parts[0], 32)
		if err != nil {
			return err
		}
		return c.addStandard(uint32(v))
	}
	return fmt.Errorf("%d colon-separated parts: want AA:NN (standard) or large:A:B:C (large)", len(parts))
}

var errBlackhole = errors.New("the BLACKHOLE community (RFC 7999) is refused: it would make the routers drop the VIP's traffic")

func (c *Communities) addStandard(v uint32) error {
	if v == CommunityBlackhole {
		return errBlackhole
	}
	c.Standard = append(c.Standard, v)
	return nil
}

// parseNumber parses an unsigned decimal of at most bits bits, with errors naming the part.
func parseNumber(s string, bits int) (uint64, error) {
	max := uint64(1)<<bits - 1
	if !isDigits(s) {
		return 0, fmt.Errorf("%q is not a number from 0 to %d", s, max)
	}
	v, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		return 0, fmt.Errorf("%s is outside 0..%d", s, max)
	}
	return v, nil
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// ParsePrepend parses a canopy.io/as-path-prepend value: how many extra times to prepend our AS number,
// 0..MaxPrepend. "" (after trimming spaces) is 0.
func ParsePrepend(s string) (uint8, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if !isDigits(s) {
		return 0, fmt.Errorf("%q is not a whole number from 0 to %d", s, MaxPrepend)
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n > MaxPrepend {
		return 0, fmt.Errorf("%s is too many prepends (at most %d)", s, MaxPrepend)
	}
	return uint8(n), nil
}
