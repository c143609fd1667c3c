package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
)

// Reconciler keeps a Router's peers and originated paths equal to the desired ones, issuing only the calls a
// difference needs: a change to one peer never resets another session.
type Reconciler struct {
	r   Router
	log *slog.Logger

	mu    sync.Mutex
	peers map[netip.Addr]PeerSpec
	paths map[string]map[netip.Prefix]Path // group -> originated paths
}

// Path groups: each controller owns the paths of its group.
const (
	GroupPodCIDRs = "pod-cidrs"
	GroupVIPs     = "service-vips"
)

// NewReconciler returns a Reconciler that starts from an empty Router.
func NewReconciler(r Router, log *slog.Logger) *Reconciler {
	return &Reconciler{r: r, log: log, peers: map[netip.Addr]PeerSpec{}, paths: map[string]map[netip.Prefix]Path{}}
}

// SetPeers makes the sessions equal to desired. A failed call leaves that peer as it was applied, so the next
// call retries it; the errors of all peers are returned together.
func (c *Reconciler) SetPeers(ctx context.Context, desired []PeerSpec) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	want := make(map[netip.Addr]PeerSpec, len(desired))
	for _, p := range desired {
		want[p.Address] = p
	}
	for addr, old := range c.peers {
		if _, ok := want[addr]; ok {
			continue
		}
		if err := c.r.DeletePeer(ctx, addr); err != nil {
			errs = append(errs, fmt.Errorf("delete peer %s: %w", addr, err))
			continue
		}
		delete(c.peers, addr)
		c.log.Info("BGP peer removed", "peer", addr, "asn", old.ASN, "kind", old.Kind, "name", old.Name)
		peerChanges.WithLabelValues("delete").Inc()
	}
	for _, p := range desired {
		old, ok := c.peers[p.Address]
		switch {
		case !ok:
			if err := c.r.AddPeer(ctx, p); err != nil {
				errs = append(errs, fmt.Errorf("add peer %s (AS %d): %w", p.Address, p.ASN, err))
				continue
			}
			c.log.Info("BGP peer added", "peer", p.Address, "asn", p.ASN, "kind", p.Kind, "name", p.Name)
			peerChanges.WithLabelValues("add").Inc()
		case old == p:
			continue
		case old.ASN != p.ASN || old.Password != p.Password || old.MultihopTTL != p.MultihopTTL || old.Port != p.Port || old.Passive != p.Passive:
			// A session's identity changed: GoBGP cannot change these in place, so this one peer is re-created.
			if err := c.r.DeletePeer(ctx, p.Address); err != nil {
				errs = append(errs, fmt.Errorf("re-create peer %s: %w", p.Address, err))
				continue
			}
			delete(c.peers, p.Address)
			if err := c.r.AddPeer(ctx, p); err != nil {
				errs = append(errs, fmt.Errorf("re-create peer %s (AS %d): %w", p.Address, p.ASN, err))
				continue
			}
			c.log.Info("BGP peer re-created", "peer", p.Address, "asn", p.ASN, "old_asn", old.ASN, "kind", p.Kind, "name", p.Name)
			peerChanges.WithLabelValues("recreate").Inc()
		default:
			// Only descriptive fields (kind, name) changed: nothing to tell the router.
		}
		c.peers[p.Address] = p
	}
	configuredPeers.Set(float64(len(c.peers)))
	return errors.Join(errs...)
}

// SetPaths makes the originated paths of group equal to desired. Paths of other groups are left alone.
func (c *Reconciler) SetPaths(ctx context.Context, group string, desired map[netip.Prefix]Path) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	applied := c.paths[group]
	if applied == nil {
		applied = map[netip.Prefix]Path{}
		c.paths[group] = applied
	}
	var errs []error
	for pfx, old := range applied {
		if w, ok := desired[pfx]; ok && w.Equal(old) {
			continue
		}
		if err := c.r.DeletePath(ctx, old); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", pfx, err))
			continue
		}
		delete(applied, pfx)
		c.log.Info("BGP path withdrawn", "prefix", pfx, "next_hop", old.NextHop, "group", group)
	}
	for pfx, p := range desired {
		if old, ok := applied[pfx]; ok && old.Equal(p) {
			continue
		}
		if err := c.r.AddPath(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", pfx, err))
			continue
		}
		applied[pfx] = p
		c.log.Info("BGP path advertised", "prefix", pfx, "next_hop", p.NextHop, "group", group, "communities", p.Communities, "large", p.Large, "prepend", p.Prepend)
	}
	n := 0
	for _, g := range c.paths {
		n += len(g)
	}
	advertisedPaths.Set(float64(n))
	return errors.Join(errs...)
}

// Peers returns the applied peers.
func (c *Reconciler) Peers() []PeerSpec {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]PeerSpec, 0, len(c.peers))
	for _, p := range c.peers {
		out = append(out, p)
	}
	return out
}
