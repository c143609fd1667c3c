package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"canopy.io/canopy/internal/model"
)

// Chains every Canopy iptables proxier owns whatever services exist.
const (
	// nat
	ChainServices    = "CANOPY-SERVICES"        // from PREROUTING and OUTPUT: one line per VIP:port
	ChainNodePorts   = "CANOPY-NODEPORTS"       // from the end of CANOPY-SERVICES for local destinations
	ChainMarkMasq    = "CANOPY-MARK-MASQ"       // marks a packet for masquerade
	ChainMasqNonPod  = "CANOPY-MASQ-NONPOD"     // marks unless the source is a pod (only with several cluster CIDRs)
	ChainPostrouting = "CANOPY-POSTROUTING-SVC" // from POSTROUTING: masquerades marked packets
	// filter
	ChainFilter = "CANOPY-SERVICES-FILTER" // from INPUT, FORWARD, OUTPUT for new connections
	ChainReject = "CANOPY-SVC-REJECT"      // rejects (TCP reset, else ICMP port unreachable)

	// Per service port (hash of its key) and per endpoint (hash of key and address).
	prefixSVC = "CANOPY-SVC-"
	prefixEXT = "CANOPY-EXT-"
	prefixSEP = "CANOPY-SEP-"

	// MasqMark is the packet mark bit CANOPY-MARK-MASQ sets and CANOPY-POSTROUTING-SVC masquerades.
	MasqMark = "0x4000"

	// DefaultAffinityTimeout is ClientIP affinity's timeout when the Service gives none (Kubernetes' default).
	DefaultAffinityTimeout = 10800 * time.Second
)

// perServiceChain matches the names of per-service-port and per-endpoint chains (not CANOPY-SVC-REJECT).
var perServiceChain = regexp.MustCompile(`^CANOPY-(SVC|EXT|SEP)-[A-Z2-7]{16}$`)

var natStatic = []string{ChainServices, ChainNodePorts, ChainMarkMasq, ChainMasqNonPod, ChainPostrouting}
var filterStatic = []string{ChainFilter, ChainReject}

// hash16 is kube-proxy's chain-name hash: the first 16 base32 characters of SHA-256.
func hash16(s string) string {
	h := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(h[:])[:16]
}

// SVCChain, EXTChain and SEPChain name a service port's chains.
func SVCChain(key string) string { return prefixSVC + hash16(key) }
func EXTChain(key string) string { return prefixEXT + hash16(key) }
func SEPChain(key string, ip netip.Addr, port uint16) string {
	return prefixSEP + hash16(key+"|"+netip.AddrPortFrom(ip, port).String())
}

// chain is one per-service chain and its rules ("-A NAME ...\n" lines).
type chain struct {
	name  string
	rules string
}

// plan is what one service port contributes: its own chains, its lines in the shared dispatch chains, and
// what conntrack cleanup needs to know.
type plan struct {
	chains    []chain
	services  string // lines of CANOPY-SERVICES
	nodePorts string // lines of CANOPY-NODEPORTS
	filter    string // lines of CANOPY-SERVICES-FILTER
	ct        ctInfo
}

// ctInfo is the part of a service port conntrack cleanup needs: for UDP, flows to its VIPs and node port that
// were NATed to an endpoint that went away must go, or they keep going to it.
type ctInfo struct {
	udp      bool
	vips     []netip.Addr
	port     uint16
	nodePort uint16
	eps      []netip.Addr
}

// usable picks the endpoints that take new connections: the ready ones, or if none is ready the serving and
// terminating ones. Of the family (v6: IPv6, else IPv4) only, duplicates dropped.
func usable(eps []model.Endpoint, v6 bool) []model.Endpoint {
	pick := func(ok func(model.Endpoint) bool) []model.Endpoint {
		var out []model.Endpoint
		for _, e := range eps {
			if !ok(e) || e.IP.Unmap().Is4() == v6 || e.Port == 0 {
				continue
			}
			if slices.ContainsFunc(out, func(o model.Endpoint) bool { return o.IP == e.IP && o.Port == e.Port }) {
				continue
			}
			out = append(out, e)
		}
		return out
	}
	if r := pick(func(e model.Endpoint) bool { return e.Ready }); len(r) > 0 {
		return r
	}
	return pick(func(e model.Endpoint) bool { return e.Serving && e.Terminating })
}

// ofFamily keeps the addresses of the family (v6: IPv6, else IPv4), each once.
func ofFamily(addrs []netip.Addr, v6 bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if a = a.Unmap(); a.Is4() != v6 && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func sameEndpoints(a, b []model.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y model.Endpoint) bool { return x.IP == y.IP && x.Port == y.Port })
}

// comment quotes a rule comment for iptables-restore.
func comment(s string) string {
	return `-m comment --comment "` + strings.NewReplacer(`"`, `'`, "\n", " ", `\`, "/").Replace(s) + `"`
}

// ruleWriter builds "-A CHAIN ..." lines.
type ruleWriter struct{ strings.Builder }

func (w *ruleWriter) add(chain string, parts ...string) {
	w.WriteString("-A ")
	w.WriteString(chain)
	for _, p := range parts {
		if p == "" {
			continue
		}
		w.WriteByte(' ')
		w.WriteString(p)
	}
	w.WriteByte('\n')
}

// host is ip as a host prefix (/32, /128).
func host(ip netip.Addr) string { return netip.PrefixFrom(ip, ip.BitLen()).String() }

// build turns a service port into its plan (nil: nothing to program, e.g. no cluster IP of the family).
func (p *Proxier) build(sp *model.ServicePort) *plan {
	if sp == nil || sp.Port == 0 {
		return nil
	}
	proto := strings.ToLower(string(sp.Protocol))
	switch proto {
	case "tcp", "udp", "sctp":
	default:
		return nil
	}
	cips := ofFamily(sp.ClusterIPs, p.v6)
	if len(cips) == 0 {
		return nil
	}
	extIPs, lbIPs := ofFamily(sp.ExternalIPs, p.v6), ofFamily(sp.LoadBalancerIPs, p.v6)
	clusterEps, extEps := usable(sp.ClusterEndpoints, p.v6), usable(sp.ExternalEndpoints, p.v6)
	hasEps := len(clusterEps) > 0 || len(extEps) > 0
	hasExtDst := sp.NodePort != 0 || len(extIPs) > 0 || len(lbIPs) > 0

	svcChain, extChain := SVCChain(sp.Key), EXTChain(sp.Key)
	port := "-m " + proto + " --dport " + strconv.Itoa(int(sp.Port))
	p4 := "-p " + proto
	pl := &plan{ct: ctInfo{udp: sp.Protocol == model.UDP, port: sp.Port, nodePort: sp.NodePort}}
	pl.ct.vips = append(append(append(pl.ct.vips, cips...), extIPs...), lbIPs...)

	timeout := int(sp.AffinityTimeout / time.Second)
	if timeout <= 0 {
		timeout = int(DefaultAffinityTimeout / time.Second)
	}
	sep := func(e model.Endpoint) string { return SEPChain(sp.Key, e.IP, e.Port) }
	// balance spreads new connections over eps at random, after the ClientIP affinity checks.
	balance := func(w *ruleWriter, from string, eps []model.Endpoint) {
		if sp.AffinityClientIP {
			for _, e := range eps {
				w.add(from, "-m recent --name", sep(e), "--rcheck --seconds", strconv.Itoa(timeout), "--reap -j", sep(e))
			}
		}
		for i, e := range eps {
			if n := len(eps) - i; n > 1 {
				w.add(from, "-m statistic --mode random --probability", fmt.Sprintf("%0.10f", 1.0/float64(n)), "-j", sep(e))
			} else {
				w.add(from, "-j", sep(e))
			}
		}
	}

	// CANOPY-SVC-: traffic to the cluster IPs.
	if len(clusterEps) > 0 {
		var w ruleWriter
		for _, ip := range cips {
			d := "-d " + host(ip)
			c := comment(sp.Key + " cluster IP")
			switch {
			case p.cfg.MasqueradeAll:
				w.add(svcChain, d, p4, c, port, "-j", ChainMarkMasq)
			case len(p.podCIDRs) == 1:
				w.add(svcChain, "! -s", p.podCIDRs[0].String(), d, p4, c, port, "-j", ChainMarkMasq)
			case len(p.podCIDRs) > 1:
				w.add(svcChain, d, p4, c, port, "-j", ChainMasqNonPod)
			}
		}
		balance(&w, svcChain, clusterEps)
		pl.chains = append(pl.chains, chain{svcChain, w.String()})
	}

	// CANOPY-EXT-: node ports, external IPs, load balancer IPs.
	if hasExtDst && hasEps {
		var w ruleWriter
		if !sp.ExternalPolicyLocal {
			w.add(extChain, comment("masquerade traffic for "+sp.Key+" external destinations"), "-j", ChainMarkMasq)
			if len(extEps) > 0 {
				if sameEndpoints(extEps, clusterEps) {
					w.add(extChain, "-j", svcChain)
				} else {
					balance(&w, extChain, extEps)
				}
			}
		} else {
			// Pods and the node itself reach the service through any endpoint (kube-proxy's short cuts);
			// everyone else only through local ones, keeping the client's address.
			if len(clusterEps) > 0 {
				for _, c := range p.podCIDRs {
					w.add(extChain, "-s", c.String(), comment("pod traffic for "+sp.Key+" external destinations"), "-j", svcChain)
				}
				w.add(extChain, comment("masquerade LOCAL traffic for "+sp.Key+" external destinations"), "-m addrtype --src-type LOCAL -j", ChainMarkMasq)
				w.add(extChain, comment("route LOCAL traffic for "+sp.Key+" external destinations"), "-m addrtype --src-type LOCAL -j", svcChain)
			}
			balance(&w, extChain, extEps)
		}
		pl.chains = append(pl.chains, chain{extChain, w.String()})
	}

	// CANOPY-SEP-: one per endpoint, DNAT (and the hairpin mark).
	var seps []model.Endpoint
	for _, e := range append(slices.Clone(clusterEps), extEps...) {
		if !slices.ContainsFunc(seps, func(o model.Endpoint) bool { return o.IP == e.IP && o.Port == e.Port }) {
			seps = append(seps, e)
			pl.ct.eps = append(pl.ct.eps, e.IP)
		}
	}
	for _, e := range seps {
		var w ruleWriter
		name := sep(e)
		recent := ""
		if sp.AffinityClientIP {
			recent = "-m recent --name " + name + " --set"
		}
		w.add(name, "-s", host(e.IP), "-j", ChainMarkMasq)
		w.add(name, p4, recent, "-j DNAT --to-destination", netip.AddrPortFrom(e.IP, e.Port).String())
		pl.chains = append(pl.chains, chain{name, w.String()})
	}

	// Dispatch lines in the shared chains.
	var svc, np, flt ruleWriter
	if hasEps {
		if len(clusterEps) > 0 {
			for _, ip := range cips {
				svc.add(ChainServices, "-d", host(ip), p4, comment(sp.Key+" cluster IP"), port, "-j", svcChain)
			}
		}
		for _, ip := range extIPs {
			svc.add(ChainServices, "-d", host(ip), p4, comment(sp.Key+" external IP"), port, "-j", extChain)
		}
		for _, ip := range lbIPs {
			svc.add(ChainServices, "-d", host(ip), p4, comment(sp.Key+" loadbalancer IP"), port, "-j", extChain)
		}
		if sp.NodePort != 0 {
			np.add(ChainNodePorts, p4, comment(sp.Key), "-m", proto, "--dport", strconv.Itoa(int(sp.NodePort)), "-j", extChain)
		}
	}
	// Filter: reject when there are no endpoints at all, drop when there are none for this kind of traffic
	// (internal/externalTrafficPolicy Local without local endpoints).
	intTarget, intWhy, extTarget, extWhy := "", "", "", ""
	switch {
	case !hasEps:
		intTarget, intWhy, extTarget, extWhy = ChainReject, " has no endpoints", ChainReject, " has no endpoints"
	default:
		if len(clusterEps) == 0 {
			intTarget, intWhy = "DROP", " has no local endpoints"
		}
		if len(extEps) == 0 {
			extTarget, extWhy = "DROP", " has no local endpoints"
		}
	}
	if intTarget != "" {
		for _, ip := range cips {
			flt.add(ChainFilter, "-d", host(ip), p4, comment(sp.Key+intWhy), port, "-j", intTarget)
		}
	}
	if extTarget != "" {
		for _, ip := range append(slices.Clone(extIPs), lbIPs...) {
			flt.add(ChainFilter, "-d", host(ip), p4, comment(sp.Key+extWhy), port, "-j", extTarget)
		}
		if sp.NodePort != 0 {
			for _, dst := range p.nodePortDst {
				flt.add(ChainFilter, dst, p4, comment(sp.Key+extWhy), "-m", proto, "--dport", strconv.Itoa(int(sp.NodePort)), "-j", extTarget)
			}
		}
	}
	pl.services, pl.nodePorts, pl.filter = svc.String(), np.String(), flt.String()
	return pl
}

// nodePortDestinations is the destination match of node port traffic: addresses of the node inside
// NodePortAddresses if given, else the NodeIPs if given, else any local address but loopback.
func nodePortDestinations(cfg Config, v6 bool) []string {
	var out []string
	for _, p := range cfg.NodePortAddresses {
		if p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()); p.Addr().Is4() == v6 {
			continue
		}
		p = p.Masked()
		if p.Bits() == 0 {
			out = append(out, "-m addrtype --dst-type LOCAL")
		} else {
			out = append(out, "-d "+p.String()+" -m addrtype --dst-type LOCAL")
		}
	}
	if len(cfg.NodePortAddresses) > 0 {
		return out // only prefixes of the other family: no node ports of this one
	}
	for _, ip := range ofFamily(cfg.NodeIPs, v6) {
		out = append(out, "-d "+host(ip))
	}
	if len(out) == 0 {
		if v6 {
			out = append(out, "-m addrtype --dst-type LOCAL ! -d ::1/128")
		} else {
			out = append(out, "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8")
		}
	}
	return out
}

// staticNAT writes the content of the shared nat chains that do not depend on services.
func (p *Proxier) staticNAT(w *ruleWriter) {
	w.add(ChainMarkMasq, "-j MARK --or-mark", MasqMark)
	w.add(ChainPostrouting, "-m mark ! --mark", MasqMark+"/"+MasqMark, "-j RETURN")
	// Clear the bit so a packet traversing POSTROUTING again (e.g. through a bridge) is not re-masqueraded.
	w.add(ChainPostrouting, "-j MARK --xor-mark", MasqMark)
	w.add(ChainPostrouting, comment("canopy service traffic requiring SNAT"), "-j MASQUERADE --random-fully")
	if len(p.podCIDRs) > 1 {
		for _, c := range p.podCIDRs {
			w.add(ChainMasqNonPod, "-s", c.String(), "-j RETURN")
		}
		w.add(ChainMasqNonPod, "-j", ChainMarkMasq)
	}
}

func staticFilter(w *ruleWriter, v6 bool) {
	w.add(ChainReject, "-p tcp", comment("service without endpoints"), "-j REJECT --reject-with tcp-reset")
	if v6 {
		w.add(ChainReject, comment("service without endpoints"), "-j REJECT --reject-with icmp6-port-unreachable")
		return
	}
	w.add(ChainReject, comment("service without endpoints"), "-j REJECT --reject-with icmp-port-unreachable")
}
