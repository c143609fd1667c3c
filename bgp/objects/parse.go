package objects

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/bgp"
	"canopy.io/canopy/bgp/services"
)

// maxPasswordLen is the longest TCP MD5 key the kernel takes (TCP_MD5SIG_MAXKEYLEN).
const maxPasswordLen = 80

// peer is one checked BGPPeer.
type peer struct {
	name     string
	created  time.Time
	selector labels.Selector // nil with names, or for every node
	names    map[string]bool
	cfg      bgp.PeerConfig
	secret   *v1alpha1.SecretKeyReference
}

func (p *peer) selects(node string, nodeLabels map[string]string) bool {
	switch {
	case p.names != nil:
		return p.names[node]
	case p.selector != nil:
		return p.selector.Matches(labels.Set(nodeLabels))
	}
	return true
}

// settings is the checked BGPConfiguration.
type settings struct {
	generation   int64
	cluster      bgp.ClusterSettings
	vips         bgp.ClusterVIPSettings
	meshSecret   *v1alpha1.SecretKeyReference
	statusOn     bool
	statusPeriod time.Duration
}

// secretLookup returns the password a reference names (the Source checks the namespace and reads the Secret).
type secretLookup func(ref *v1alpha1.SecretKeyReference) (string, error)

// whole returns d as whole seconds, or an error naming field.
func whole(field string, d *metav1.Duration, min, max time.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	v := d.Duration
	if v%time.Second != 0 || v < min || v > max {
		return 0, fmt.Errorf("%s: %s is not a whole number of seconds in %s..%s", field, v, min, max)
	}
	return v, nil
}

func between(field string, d *metav1.Duration, min, max time.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if d.Duration < min || d.Duration > max {
		return 0, fmt.Errorf("%s: %s is outside %s..%s", field, d.Duration, min, max)
	}
	return d.Duration, nil
}

// parsePeer checks one BGPPeer as the API server's rules do (an older API server, or an object stored before a
// rule existed, must not get past the agent) and reads its password. flagHold is --hold-time, which a
// keepalive given alone must fit in.
func parsePeer(obj *v1alpha1.BGPPeer, lookup secretLookup, flagHold time.Duration) (*peer, error) {
	s := obj.Spec
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	p := &peer{name: obj.Name, created: obj.CreationTimestamp.Time, secret: s.PasswordSecretRef}
	p.cfg.Source = v1alpha1.PeerSource(obj.Name)

	addr, err := netip.ParseAddr(strings.TrimSpace(s.PeerAddress))
	switch {
	case err != nil:
		bad("spec.peerAddress: %q is not an IP address", s.PeerAddress)
	case addr.Zone() != "" || addr.IsUnspecified() || addr.IsLoopback() || addr.IsMulticast():
		bad("spec.peerAddress: %s cannot be a BGP peer", addr)
	default:
		p.cfg.Address = addr.Unmap()
	}
	if asn, err := bgp.ParseASN(strconv.FormatInt(s.PeerASN, 10)); err != nil {
		bad("spec.peerASN: %v", err)
	} else {
		p.cfg.ASN = asn
	}
	switch {
	case s.NodeSelector != nil && len(s.NodeNames) > 0:
		bad("spec: nodeSelector and nodeNames are mutually exclusive: use one selector style, not both")
	case len(s.NodeNames) > 0:
		p.names = map[string]bool{}
		for _, n := range s.NodeNames {
			p.names[n] = true
		}
	case s.NodeSelector != nil:
		sel, err := metav1.LabelSelectorAsSelector(s.NodeSelector)
		if err != nil {
			bad("spec.nodeSelector: %v", err)
		}
		p.selector = sel
	}
	if s.MultihopTTL != nil {
		if *s.MultihopTTL < 1 || *s.MultihopTTL > 255 {
			bad("spec.multihopTTL: %d is outside 1..255", *s.MultihopTTL)
		} else {
			p.cfg.MultihopTTL = uint8(*s.MultihopTTL)
		}
	}
	if s.TTLSecurity != nil && *s.TTLSecurity {
		if p.cfg.MultihopTTL > 1 {
			bad("spec.ttlSecurity is for directly connected peers, not with multihopTTL %d", p.cfg.MultihopTTL)
		}
		p.cfg.TTLSecurity = true
	}
	if s.HoldTime != nil && s.HoldTime.Duration == 0 {
		bad("spec.holdTime: 0 (no hold timer) is not supported by Canopy's speaker; give 3s..65535s or leave it out")
	} else if v, err := whole("spec.holdTime", s.HoldTime, 3*time.Second, 65535*time.Second); err != nil {
		errs = append(errs, err)
	} else {
		p.cfg.Timers.Hold = v
	}
	if v, err := whole("spec.keepaliveTime", s.KeepaliveTime, time.Second, 21845*time.Second); err != nil {
		errs = append(errs, err)
	} else {
		p.cfg.Timers.Keepalive = v
	}
	hold := p.cfg.Timers.Hold
	if hold == 0 {
		hold = flagHold
	}
	switch {
	case p.cfg.Timers.Keepalive > 0 && hold > 0 && 3*p.cfg.Timers.Keepalive > hold:
		bad("spec.keepaliveTime: %s is more than a third of the hold time %s", p.cfg.Timers.Keepalive, hold)
	case p.cfg.Timers.Keepalive == 0 && p.cfg.Timers.Hold > 0:
		p.cfg.Timers.Keepalive = (p.cfg.Timers.Hold / 3).Truncate(time.Second)
	}
	if v, err := whole("spec.connectRetryTime", s.ConnectRetryTime, time.Second, 65535*time.Second); err != nil {
		errs = append(errs, err)
	} else {
		p.cfg.Timers.ConnectRetry = v
	}
	if gr := s.GracefulRestart; gr != nil {
		p.cfg.GR = bgp.GRSetting{Set: true, Enabled: gr.Enabled}
		if v, err := whole("spec.gracefulRestart.restartTime", gr.RestartTime, time.Second, 4095*time.Second); err != nil {
			errs = append(errs, err)
		} else {
			p.cfg.GR.RestartTime = v
		}
	}
	if b := s.BFD; b != nil {
		on := b.Enabled
		p.cfg.BFD = &on
		if v, err := between("spec.bfd.minRx", b.MinRx, 10*time.Millisecond, time.Hour); err != nil {
			errs = append(errs, err)
		} else {
			p.cfg.BFDTimers.MinRx = v
		}
		if v, err := between("spec.bfd.minTx", b.MinTx, 10*time.Millisecond, time.Hour); err != nil {
			errs = append(errs, err)
		} else {
			p.cfg.BFDTimers.MinTx = v
		}
		if b.Multiplier != nil {
			if *b.Multiplier < 1 || *b.Multiplier > 255 {
				bad("spec.bfd.multiplier: %d is outside 1..255", *b.Multiplier)
			} else {
				p.cfg.BFDTimers.Multiplier = uint8(*b.Multiplier)
			}
		}
		if on && p.cfg.MultihopTTL > 1 {
			bad("spec.bfd: single-hop BFD (RFC 5881) is for directly connected peers, not with multihopTTL %d", p.cfg.MultihopTTL)
		}
	}
	if s.MaxPrefixes != nil {
		if *s.MaxPrefixes < 1 || *s.MaxPrefixes > 1<<24 {
			bad("spec.maxPrefixes: %d is outside 1..%d", *s.MaxPrefixes, 1<<24)
		} else {
			p.cfg.MaxPrefixes = uint32(*s.MaxPrefixes)
		}
	}
	if s.AllowOwnAS != 0 {
		if s.AllowOwnAS < 0 || s.AllowOwnAS > 10 {
			bad("spec.allowOwnAS: %d is outside 0..10", s.AllowOwnAS)
		} else {
			p.cfg.AllowOwnAS = uint8(s.AllowOwnAS)
		}
	}
	if s.Port != 0 {
		if s.Port < 1 || s.Port > 65535 {
			bad("spec.port: %d is outside 1..65535", s.Port)
		} else if s.Port != 179 {
			p.cfg.Port = uint16(s.Port)
		}
	}
	if a := s.Advertise; a != nil {
		p.cfg.NoPodCIDRs = a.PodCIDRs != nil && !*a.PodCIDRs
		p.cfg.NoVIPs = a.ServiceVIPs != nil && !*a.ServiceVIPs
		if len(a.Communities) > 0 {
			bad("spec.advertise.communities: per-peer communities are not supported by this version of Canopy; set communities for every peer in BGPConfiguration spec.communities, or per Service with canopy.io/communities")
		}
	}
	if s.PasswordSecretRef != nil && len(errs) == 0 {
		pw, err := lookup(s.PasswordSecretRef)
		if err != nil {
			bad("spec.passwordSecretRef: %v", err)
		}
		p.cfg.Password = pw
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// parseCommunities reads a list of communities (BGPConfiguration spec.communities and
// allowedServiceCommunities) with the Service annotation's syntax.
func parseCommunities(field string, list []v1alpha1.Community) (services.Communities, error) {
	parts := make([]string, len(list))
	for i, c := range list {
		parts[i] = string(c)
	}
	c, err := services.ParseCommunities(strings.Join(parts, ","))
	if err != nil {
		return c, fmt.Errorf("%s: %v", field, err)
	}
	return c, nil
}

// parseConfiguration checks the BGPConfiguration "default".
func parseConfiguration(obj *v1alpha1.BGPConfiguration, lookup secretLookup) (*settings, error) {
	s := obj.Spec
	var errs []error
	out := &settings{generation: obj.Generation, statusOn: true, statusPeriod: 5 * time.Second}
	if s.ClusterASN != nil {
		asn, err := bgp.ParseASN(strconv.FormatInt(*s.ClusterASN, 10))
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.clusterASN: %v", err))
		}
		out.cluster.ClusterASN = &asn
	}
	if m := s.NodeMesh; m != nil {
		out.cluster.FullMesh = m.Enabled
		out.cluster.MeshTTLSecurity = m.TTLSecurity
		if m.PasswordSecretRef != nil {
			out.meshSecret = m.PasswordSecretRef
			pw, err := lookup(m.PasswordSecretRef)
			if err != nil {
				errs = append(errs, fmt.Errorf("spec.nodeMesh.passwordSecretRef: %v", err))
			}
			out.cluster.MeshPassword = &pw
		}
	}
	if a := s.Advertise; a != nil {
		out.vips.AdvertiseClusterIP, out.vips.AdvertiseExternalIP = a.ClusterIP, a.ExternalIP
		out.vips.AdvertiseLoadBalancerIP, out.vips.AdvertiseServiceCIDR = a.LoadBalancerIP, a.ServiceCIDR
	}
	if c, err := parseCommunities("spec.communities", s.Communities); err != nil {
		errs = append(errs, err)
	} else {
		out.vips.Communities = c
	}
	if s.AllowedServiceCommunities != nil {
		if c, err := parseCommunities("spec.allowedServiceCommunities", s.AllowedServiceCommunities); err != nil {
			errs = append(errs, err)
		} else {
			out.vips.AllowedCommunities = &c
		}
	}
	if s.MaxPrefixes != nil {
		if *s.MaxPrefixes < 0 || *s.MaxPrefixes > 1<<24 {
			errs = append(errs, fmt.Errorf("spec.maxPrefixes: %d is outside 0..%d", *s.MaxPrefixes, 1<<24))
		} else {
			v := uint32(*s.MaxPrefixes)
			out.cluster.MaxPrefixes = &v
		}
	}
	if ns := s.NodeStatus; ns != nil {
		if ns.Enabled != nil {
			out.statusOn = *ns.Enabled
		}
		if ns.MinInterval != nil {
			if ns.MinInterval.Duration < time.Second || ns.MinInterval.Duration > time.Hour {
				errs = append(errs, fmt.Errorf("spec.nodeStatus.minInterval: %s is outside 1s..1h", ns.MinInterval.Duration))
			} else {
				out.statusPeriod = ns.MinInterval.Duration
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
