// Package bfd is Canopy's BFD speaker: it tells, within a fraction of a second, that a BGP peer one hop away has
// stopped forwarding, so the BGP session can be reset at once instead of at the end of the hold time.
package bfd
