// Command vmguest is the guest half of a lab node that is a VM (e2e/lab/vmnode.go): the VM's job runs it as
//
//	vmguest -listen 10.99.0.13:7070 -- /path/to/canopy --kubeconfig=… --node-name=node3 …
//
// It starts the agent (its output goes to this program's stdout, a serial port the host writes to the node's
// agent.log) and answers the lab, which dials it from a lab namespace on the fabric. One request per TCP
// connection, a JSON line:
//
//	{"op":"exec","ns":"<netns>","argv":[…],"env":[…],"stdin":"…","timeoutMs":N}  → {"out":"…","code":N,"err":"…"}
//	{"op":"start","ns":"<netns>","name":"web","argv":[…]}                          → {"pid":N} (runs in the background)
//	{"op":"dial","ns":"<netns>","network":"tcp|udp","addr":"ip:port"}              → {} then the connection's bytes
//
// ns is a network namespace of the guest ("" = the VM's own); exec and start run `ip netns exec <ns> argv`, dial
// makes its socket inside ns. For UDP every chunk the lab writes is sent as one datagram and every datagram
// received is written back. Anyone on the lab fabric can use it: it exists only inside a throwaway VM.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"canopy.io/canopy/e2e/vmguest/wire"

	"github.com/vishvananda/netns"
)

func main() {
	listen := flag.String("listen", "", "address to serve the lab on (the node's fabric address)")
	logDir := flag.String("log-dir", "/run/vmguest", "where background processes write their output (in the guest)")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("vmguest: ")
	if *listen == "" {
		log.Fatal("-listen is required")
	}
	if err := os.MkdirAll(*logDir, 0o755); err != nil {
		log.Fatal(err)
	}
	g := &guest{logDir: *logDir}
	if agent := flag.Args(); len(agent) > 0 {
		cmd := exec.Command(agent[0], agent[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		if err := cmd.Start(); err != nil {
			log.Fatalf("start the agent: %v", err)
		}
		log.Printf("agent started (pid %d)", cmd.Process.Pid)
		go func() { log.Printf("agent exited: %v", cmd.Wait()) }()
	}
	var ln net.Listener
	var err error
	for i := 0; ; i++ { // the address may still be tentative for a moment after boot
		if ln, err = net.Listen("tcp", *listen); err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("serving on %s", *listen)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go g.serve(c)
	}
}

type guest struct {
	logDir string
	mu     sync.Mutex
}

func (g *guest) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return
	}
	var req wire.Request
	if err := json.Unmarshal(line, &req); err != nil {
		reply(c, wire.Response{Code: -1, Err: "bad request: " + err.Error()})
		return
	}
	switch req.Op {
	case "exec":
		reply(c, g.exec(req))
	case "start":
		reply(c, g.start(req))
	case "dial":
		g.dial(c, r, req)
	default:
		reply(c, wire.Response{Code: -1, Err: "unknown op " + req.Op})
	}
}

func reply(c net.Conn, resp wire.Response) {
	b, _ := json.Marshal(resp)
	_, _ = c.Write(append(b, '\n'))
}

func command(ctx context.Context, req wire.Request) (*exec.Cmd, error) {
	argv := req.Argv
	if len(argv) == 0 {
		return nil, errors.New("no command")
	}
	if req.NS != "" {
		argv = append([]string{"ip", "netns", "exec", req.NS}, argv...)
	}
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Env = append(os.Environ(), req.Env...)
	return cmd, nil
}

func (g *guest) exec(req wire.Request) wire.Response {
	timeout := 30 * time.Second
	if req.TimeoutMS > 0 {
		timeout = time.Duration(req.TimeoutMS) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd, err := command(ctx, req)
	if err != nil {
		return wire.Response{Code: -1, Err: err.Error()}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Stdin = strings.NewReader(req.Stdin)
	cmd.WaitDelay = time.Second // a background child holding the output open must not hang the answer
	err = cmd.Run()
	resp := wire.Response{Out: out.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		resp.Code = ee.ExitCode()
		resp.Err = err.Error()
	case err != nil:
		resp.Code = -1
		resp.Err = err.Error()
	}
	return resp
}

func (g *guest) start(req wire.Request) wire.Response {
	cmd, err := command(nil, req)
	if err != nil {
		return wire.Response{Code: -1, Err: err.Error()}
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(req.NS + "-" + req.Name)
	f, err := os.OpenFile(filepath.Join(g.logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return wire.Response{Code: -1, Err: err.Error()}
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return wire.Response{Code: -1, Err: err.Error()}
	}
	go func() { _ = cmd.Wait() }() // reaped; killed with its namespace (ip netns pids) or the VM
	return wire.Response{PID: cmd.Process.Pid}
}

// dialIn makes the connection inside network namespace ns on a locked thread, which goes back to the VM's own
// namespace afterwards (or dies with the goroutine if it cannot).
func dialIn(ns, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if ns == "" {
		return d.Dial(network, addr)
	}
	h, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", ns, err)
	}
	defer h.Close()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{nil, err}
			return
		}
		c, err := d.Dial(network, addr)
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

func (g *guest) dial(c net.Conn, r *bufio.Reader, req wire.Request) {
	conn, err := dialIn(req.NS, req.Network, req.Addr)
	if err != nil {
		reply(c, wire.Response{Code: -1, Err: err.Error()})
		return
	}
	defer conn.Close()
	reply(c, wire.Response{})
	done := make(chan struct{}, 2)
	go func() {
		buf := make([]byte, 64<<10)
		for { // chunk by chunk: for UDP each chunk is a datagram
			n, err := r.Read(buf)
			if n > 0 {
				if _, werr := conn.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(c, conn)
		done <- struct{}{}
	}()
	<-done
	if req.Network != "tcp" {
		return // UDP: the lab closed its side or the VM's socket failed
	}
	<-done
}
