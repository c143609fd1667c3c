package cleanup

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Report is what a cleanup did (or, in a dry run, would do), section by section in the order it worked.
type Report struct {
	DryRun   bool       `json:"dryRun"`
	Sections []*Section `json:"sections"`
	// Warnings are things the operator should know that are not failures (e.g. a running agent).
	Warnings []string `json:"warnings,omitempty"`
	// NeverTouched says what cleanup leaves alone by design.
	NeverTouched []string `json:"neverTouched"`
}

// Section is one kind of state (files, routes, one iptables back end, ipsets, IPVS, nftables, links).
type Section struct {
	Kind  string `json:"kind"`            // "files", "routes", "iptables", "ip6tables", "ipsets", "ipvs", "nftables", "links"
	Scope string `json:"scope,omitempty"` // e.g. "nft", "legacy", "table 254, protocol 186"
	// Removed are the items removed (in a dry run: that would be removed).
	Removed []string `json:"removed"`
	// Failed are items of ours that could not be removed (or looked at), with why.
	Failed []Failure `json:"failed,omitempty"`
	// Skipped says why the section was not looked at at all (a tool or kernel feature is missing); nothing of
	// ours can be there or it could not be checked, as the reason says.
	Skipped string `json:"skipped,omitempty"`
	// Kept are items of ours left on purpose, each with the reason.
	Kept []string `json:"kept,omitempty"`
}

// Failure is an item that could not be removed.
type Failure struct {
	Item  string `json:"item"`
	Error string `json:"error"`
}

func (s *Section) removed(item string) { s.Removed = append(s.Removed, item) }

func (s *Section) fail(item string, err error) {
	s.Failed = append(s.Failed, Failure{Item: item, Error: err.Error()})
}

func (s *Section) kept(format string, a ...any) { s.Kept = append(s.Kept, fmt.Sprintf(format, a...)) }

func (r *Report) section(kind, scope string) *Section {
	s := &Section{Kind: kind, Scope: scope, Removed: []string{}}
	r.Sections = append(r.Sections, s)
	return s
}

// Failures counts the items of ours that could not be removed.
func (r *Report) Failures() int {
	n := 0
	for _, s := range r.Sections {
		n += len(s.Failed)
	}
	return n
}

// Removed counts the items removed (or, in a dry run, to be removed).
func (r *Report) Removed() int {
	n := 0
	for _, s := range r.Sections {
		n += len(s.Removed)
	}
	return n
}

// Section returns the first section of kind and scope ("" = any scope), or nil.
func (r *Report) Section(kind, scope string) *Section {
	for _, s := range r.Sections {
		if s.Kind == kind && (scope == "" || s.Scope == scope) {
			return s
		}
	}
	return nil
}

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for a person: per section what was removed, kept, skipped or failed, then the
// warnings, what is never touched, and a last line with the outcome.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	verb := "removed"
	if r.DryRun {
		b.WriteString("dry run: nothing is changed; this is what would be removed\n")
		verb = "would remove"
	}
	for _, s := range r.Sections {
		title := s.Kind
		if s.Scope != "" {
			title += " (" + s.Scope + ")"
		}
		switch {
		case s.Skipped != "":
			fmt.Fprintf(&b, "%s: skipped: %s\n", title, s.Skipped)
		case len(s.Removed) == 0 && len(s.Failed) == 0 && len(s.Kept) > 0:
			fmt.Fprintf(&b, "%s: nothing removed\n", title)
		case len(s.Removed) == 0 && len(s.Failed) == 0:
			fmt.Fprintf(&b, "%s: nothing of ours\n", title)
		default:
			fmt.Fprintf(&b, "%s: %s %d", title, verb, len(s.Removed))
			if len(s.Failed) > 0 {
				fmt.Fprintf(&b, ", FAILED %d", len(s.Failed))
			}
			b.WriteString("\n")
		}
		for _, item := range s.Removed {
			fmt.Fprintf(&b, "  - %s\n", item)
		}
		for _, f := range s.Failed {
			fmt.Fprintf(&b, "  ! %s: %s\n", f.Item, f.Error)
		}
		for _, k := range s.Kept {
			fmt.Fprintf(&b, "  kept: %s\n", k)
		}
	}
	for _, wn := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", wn)
	}
	for _, n := range r.NeverTouched {
		fmt.Fprintf(&b, "not touched: %s\n", n)
	}
	switch n := r.Failures(); {
	case n > 0:
		fmt.Fprintf(&b, "FAILED: %d item(s) of Canopy's could not be removed (see \"!\" above); %d %s\n", n, r.Removed(), verb)
	case r.DryRun:
		fmt.Fprintf(&b, "dry run: %d item(s) would be removed\n", r.Removed())
	default:
		fmt.Fprintf(&b, "done: %d item(s) removed\n", r.Removed())
	}
	_, err := io.WriteString(w, b.String())
	return err
}
