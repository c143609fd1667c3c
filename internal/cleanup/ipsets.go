package cleanup

import (
	"slices"
	"strings"
)

// IPSets is the part of the ipset tool cleanup uses (policy.ExecIPSets on a node).
type IPSets interface {
	// List returns the names of all sets.
	List() ([]string, error)
	// Destroy destroys one set (it fails while a rule or another set uses it).
	Destroy(name string) error
}

// removeIPSets destroys every set whose name is ours. It runs after the iptables rules that use them are gone;
// a set another set (list:set) holds is retried once its holder is destroyed. What is left is a failure, with
// ipset's reason (e.g. a foreign rule still uses it).
func removeIPSets(ip IPSets, dryRun bool, s *Section) {
	names, err := ip.List()
	if err != nil {
		s.fail("list", err)
		return
	}
	var ours []string
	for _, n := range names {
		if Ours(n) {
			ours = append(ours, n)
		}
	}
	slices.Sort(ours)
	if dryRun {
		for _, n := range ours {
			s.removed(n)
		}
		return
	}
	last := map[string]error{}
	pending := ours
	for len(pending) > 0 {
		var next []string
		for _, n := range pending {
			if err := ip.Destroy(n); err != nil && !strings.Contains(err.Error(), "does not exist") {
				last[n] = err
				next = append(next, n)
				continue
			}
			delete(last, n)
			s.removed(n)
		}
		if len(next) == len(pending) {
			break // no progress
		}
		pending = next
	}
	for _, n := range pending {
		if err := last[n]; err != nil {
			s.fail(n, err)
		}
	}
}
