// Command dnsd is the lab's cluster DNS: a small authoritative server (github.com/miekg/dns) that answers A
// and AAAA queries from records given on the command line (an IPv4 address is an A record, an IPv6 one an AAAA
// record), over UDP and TCP, on both families. The e2e tests run it in a pod behind the cluster-DNS ClusterIP,
// so a pod resolves my-svc.my-ns.svc.cluster.local the way it would in a cluster.
//
//	dnsd -listen :53 -record my-svc.my-ns.svc.cluster.local=10.96.0.20 [-record name=fd00:96::20 …]
//
// As a client (-query) it asks a server from a fixed source port, so successive queries share one UDP flow
// (one conntrack entry) as a long-lived resolver's would, and prints each answer (or error) on a line:
//
//	dnsd -query my-svc.my-ns.svc.cluster.local -server 10.96.0.10:53 -sport 40053 -count 1
//	dnsd -query my-svc.my-ns.svc.cluster.local -type AAAA -server [fd00:96::a]:53
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
		return fmt.Errorf("%q: want name=address", v)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || a.Zone() != "" {
		return fmt.Errorf("%q: not an IP address", addr)
	}
	a = a.Unmap()
	fq := dns.Fqdn(strings.ToLower(name))
	r[fq] = append(r[fq], a)
	return nil
}

func main() {
	recs := records{}
	listen := flag.String("listen", ":53", "address to serve on (UDP and TCP)")
	flag.Var(recs, "record", "name=address (repeatable): an A record for an IPv4 address, AAAA for IPv6")
	query := flag.String("query", "", "client mode: the name to resolve")
	qtype := flag.String("type", "A", "client mode: the record type to ask for, A or AAAA")
	server := flag.String("server", "", "client mode: server address")
	sport := flag.Int("sport", 0, "client mode: source port (0 = any)")
	count := flag.Int("count", 1, "client mode: queries to send")
	interval := flag.Duration("interval", 200*time.Millisecond, "client mode: wait between queries")
	flag.Parse()
	if *query != "" {
		t, ok := map[string]uint16{"A": dns.TypeA, "AAAA": dns.TypeAAAA}[strings.ToUpper(*qtype)]
		if !ok {
			fmt.Fprintf(os.Stderr, "dnsd: -type %q: want A or AAAA\n", *qtype)
			os.Exit(2)
		}
		os.Exit(client(*query, t, *server, *sport, *count, *interval))
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
			for _, a := range addrs {
				hdr := dns.RR_Header{Name: question.Name, Rrtype: question.Qtype, Class: dns.ClassINET, Ttl: 5}
				switch {
				case question.Qtype == dns.TypeA && a.Is4():
					m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
				case question.Qtype == dns.TypeAAAA && a.Is6():
					m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
				}
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

func client(name string, qtype uint16, server string, sport, count int, interval time.Duration) int {
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
		m.SetQuestion(dns.Fqdn(name), qtype)
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
			switch rr := r.Answer[0].(type) {
			case *dns.A:
				fmt.Println(rr.A)
			case *dns.AAAA:
				fmt.Println(rr.AAAA)
			default:
				fmt.Println("error: unexpected answer", rr)
				failed++
			}
		}
	}
	if failed > 0 {
		return 1
	}
	return 0
}
