package proxy

import (
	"errors"
	"slices"

	"canopy.io/canopy/internal/model"
)

// DualStack is a Backend made of one single-family back end per IP family (the iptables and nftables back ends
// program one family each: iptables and ip6tables, the ip and ip6 tables). Each gets the desired state of its
// own family (model.ServicePort.ForFamily): a port without a cluster IP of a family is absent from that
// family's back end, and endpoints of one family never reach the other's rules.
type DualStack struct {
	V4, V6 Backend

	// keys passed to a family's back end in a Sync that failed: passed again (with their view) next time,
	// so the back end's own retry of those keys reads them from desired.
	pending [2][]string
	// has are the keys each family's back end programs (it had a view for them in its last Sync of them).
	has [2]map[string]bool
}

var _ Backend = (*DualStack)(nil)

// NewDualStack returns the dual-stack Backend of v4 and v6.
func NewDualStack(v4, v6 Backend) *DualStack {
	return &DualStack{V4: v4, V6: v6, has: [2]map[string]bool{{}, {}}}
}

// Name is the IPv4 back end's name (both are of one mode).
func (d *DualStack) Name() string { return d.V4.Name() }

// Schedulers are those both back ends support.
func (d *DualStack) Schedulers() []string {
	var out []string
	six := d.V6.Schedulers()
	for _, s := range d.V4.Schedulers() {
		if slices.Contains(six, s) {
			out = append(out, s)
		}
	}
	return out
}

// Start starts both.
func (d *DualStack) Start() error { return errors.Join(d.V4.Start(), d.V6.Start()) }

// PruneStale prunes both.
func (d *DualStack) PruneStale() error { return errors.Join(d.V4.PruneStale(), d.V6.PruneStale()) }

// Cleanup cleans both.
func (d *DualStack) Cleanup() error {
	d.pending, d.has = [2][]string{}, [2]map[string]bool{{}, {}}
	return errors.Join(d.V4.Cleanup(), d.V6.Cleanup())
}

// Sync syncs each family's view of the changed keys. A full sync (changed covers every desired key) reaches
// both back ends; otherwise a family's back end gets only the changed keys it has or gets a view for (and
// the keys of its last failed Sync), and is not called when there are none: a change of IPv4-only Services
// costs the IPv6 back end nothing. Both families are synced even when the first fails.
func (d *DualStack) Sync(desired map[string]*model.ServicePort, changed []string) error {
	inDesired := 0
	for _, k := range changed {
		if desired[k] != nil {
			inDesired++
		}
	}
	full := inDesired == len(desired)
	var errs []error
	for i, be := range []Backend{d.V4, d.V6} {
		v6 := i == 1
		view := make(map[string]*model.ServicePort)
		var keys []string
		for _, k := range changed {
			sp := desired[k].ForFamily(v6)
			if sp != nil {
				view[k] = sp
			}
			if full || sp != nil || d.has[i][k] {
				keys = append(keys, k)
			}
		}
		for _, k := range d.pending[i] {
			if _, ok := view[k]; !ok && !slices.Contains(keys, k) {
				if sp := desired[k].ForFamily(v6); sp != nil {
					view[k] = sp
				}
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 && !full {
			continue
		}
		slices.Sort(keys)
		if err := be.Sync(view, keys); err != nil {
			d.pending[i] = keys
			errs = append(errs, err)
			continue
		}
		d.pending[i] = nil
		for _, k := range keys {
			if view[k] != nil {
				d.has[i][k] = true
			} else {
				delete(d.has[i], k)
			}
		}
	}
	return errors.Join(errs...)
}

// IPv4Only hands be only the IPv4 view of each port (model.ServicePort.ForFamily(false)): ports without an IPv4
// cluster IP are absent, IPv6 sides ignored. For a back end that programs one family while the model builds
// both (model.Options.IPv6): the IPVS back end until it reads ServicePort.IPv6.
func IPv4Only(be Backend) Backend { return NewDualStack(be, noBackend{be}) }

// noBackend programs nothing (the family IPv4Only leaves out); it reports its partner's schedulers.
type noBackend struct{ partner Backend }

func (n noBackend) Name() string                                     { return n.partner.Name() }
func (noBackend) Start() error                                       { return nil }
func (noBackend) Sync(map[string]*model.ServicePort, []string) error { return nil }
func (noBackend) PruneStale() error                                  { return nil }
func (noBackend) Cleanup() error                                     { return nil }
func (n noBackend) Schedulers() []string                             { return n.partner.Schedulers() }
