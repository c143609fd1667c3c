// Command netpold is the server of the NetworkPolicy e2e suite (e2e/netpol_test.go): run in a lab pod, it
// answers on the given TCP and UDP ports with its name, one line, like upstream's agnhost serve-hostname in the
// netpol suite. A TCP client connects and reads the line; a UDP client sends any datagram and gets the line back.
// Every connection and datagram it receives is logged with the peer's address, so a test can tell which
// clients reached it (also those whose answer never made it back).
//
//	netpold -name x/a -tcp 80,81 -udp 80,81
//
// -check-sctp reports whether the kernel can make SCTP sockets (exit 0 yes, 3 no) and exits.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func ports(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("port %q: want 1-65535", f)
		}
		out = append(out, p)
	}
	return out, nil
}

func main() {
	name := flag.String("name", "", "what to answer (the pod's name, e.g. x/a)")
	tcp := flag.String("tcp", "", "TCP ports, comma-separated")
	udp := flag.String("udp", "", "UDP ports, comma-separated")
	checkSCTP := flag.Bool("check-sctp", false, "report whether the kernel supports SCTP sockets and exit")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	if *checkSCTP {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
		if err != nil {
			fmt.Println("sctp: socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP):", err)
			if errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.ESOCKTNOSUPPORT) {
				os.Exit(3)
			}
			os.Exit(1)
		}
		syscall.Close(fd)
		fmt.Println("sctp: supported")
		return
	}
	tcps, err := ports(*tcp)
	if err != nil {
		log.Fatal(err)
	}
	udps, err := ports(*udp)
	if err != nil {
		log.Fatal(err)
	}
	if *name == "" || len(tcps)+len(udps) == 0 {
		log.Fatal("netpold: need -name and at least one port")
	}
	answer := []byte(*name + "\n")
	errc := make(chan error, len(tcps)+len(udps))
	for _, p := range tcps {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				log.Printf("tcp/%d from %s", p, c.RemoteAddr())
				go func() {
					_, _ = c.Write(answer)
					_ = c.Close()
				}()
			}
		}()
	}
	for _, p := range udps {
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					errc <- err
					return
				}
				log.Printf("udp/%d from %s", p, from)
				_, _ = pc.WriteTo(answer, from)
			}
		}()
	}
	log.Printf("netpold %s: serving tcp %v udp %v", *name, tcps, udps)
	log.Fatal(<-errc)
}
