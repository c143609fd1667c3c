// Command dnsd is the lab's cluster DNS: a small authoritative server (github.com/miekg/dns) that answers A
// queries from records given on the command line, over UDP and TCP. The e2e tests run it in a pod behind the
// cluster-DNS ClusterIP, so a pod resolves my-svc.my-ns.svc.cluster.local the way it would in a cluster.
//
//	dnsd -listen :53 -record my-svc.my-ns.svc.cluster.local=10.96.0.20 [-record …]
package main

import (
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"strings"

	"github.com/miekg/dns"
)

type records map[string][]netip.Addr

func (r records) String() string { return fmt.Sprint(map[string][]netip.Addr(r)) }
func (r records) Set(v string) error {
	name, addr, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("%q: want name=ipv4", v)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return fmt.Errorf("%q: not an IPv4 address", addr)
	}
	fq := dns.Fqdn(strings.ToLower(name))
	r[fq] = append(r[fq], a)
	return nil
}

func main() {
	recs := records{}
	listen := flag.String("listen", ":53", "address to serve on (UDP and TCP)")
	flag.Var(recs, "record", "name=ipv4 (repeatable)")
	flag.Parse()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		for _, question := range q.Question {
			addrs, ok := recs[strings.ToLower(question.Name)]
			if !ok {
				m.Rcode = dns.RcodeNameError
				continue
			}
			if question.Qtype != dns.TypeA {
				continue
			}
			for _, a := range addrs {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: a.AsSlice()})
			}
		}
		_ = w.WriteMsg(m)
	})
	errc := make(chan error, 2)
	for _, proto := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: *listen, Net: proto, Handler: handler}
		go func() { errc <- srv.ListenAndServe() }()
	}
	log.Printf("dnsd: serving %d names on %s", len(recs), *listen)
	err := <-errc
	fmt.Fprintln(os.Stderr, "dnsd:", err)
	os.Exit(1)
}
