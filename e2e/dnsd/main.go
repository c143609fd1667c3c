// Command dnsd is the lab's cluster DNS: a small authoritative server (github.com/miekg/dns) that answers A
// queries from records given on the command line, over UDP and TCP. The e2e tests run it in a pod behind the
// cluster-DNS ClusterIP, so a pod resolves my-svc.my-ns.svc.cluster.local the way it would in a cluster.
//
//	dnsd -listen :53 -record my-svc.my-ns.svc.cluster.local=10.96.0.20 [-record …]
//
// As a client (-query) it asks a server from a fixed source port, so successive queries share one UDP flow
// (one conntrack entry) as a long-lived resolver's would, and prints each answer (or error) on a line:
//
//	dnsd -query my-svc.my-ns.svc.cluster.local -server 10.96.0.10:53 -sport 40053 -count 1
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

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
	query := flag.String("query", "", "client mode: the name to resolve")
	server := flag.String("server", "", "client mode: server address")
	sport := flag.Int("sport", 0, "client mode: source port (0 = any)")
	count := flag.Int("count", 1, "client mode: queries to send")
	interval := flag.Duration("interval", 200*time.Millisecond, "client mode: wait between queries")
	flag.Parse()
	if *query != "" {
		os.Exit(client(*query, *server, *sport, *count, *interval))
	}
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

func client(name, server string, sport, count int, interval time.Duration) int {
	failed := 0
	for i := range count {
		if i > 0 {
			time.Sleep(interval)
		}
		d := net.Dialer{Timeout: time.Second}
		if sport != 0 {
			d.LocalAddr = &net.UDPAddr{Port: sport}
			d.Control = func(_, _ string, c syscall.RawConn) error {
				var serr error
				_ = c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
				return serr
			}
		}
		conn, err := d.Dial("udp", server)
		if err != nil {
			fmt.Println("error:", err)
			failed++
			continue
		}
		c := &dns.Conn{Conn: conn}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		_ = c.SetDeadline(time.Now().Add(time.Second))
		err = c.WriteMsg(m)
		var r *dns.Msg
		if err == nil {
			r, err = c.ReadMsg()
		}
		c.Close()
		switch {
		case err != nil:
			fmt.Println("error:", err)
			failed++
		case len(r.Answer) == 0:
			fmt.Println("error: no answer, rcode", dns.RcodeToString[r.Rcode])
			failed++
		default:
			fmt.Println(r.Answer[0].(*dns.A).A)
		}
	}
	if failed > 0 {
		return 1
	}
	return 0
}
