// Command canopy is the Canopy node agent: flags → one validated configuration → the agent's components
// (internal/agent). See README.md for the flags.
//
// Listeners are plain TCP, not Multipath TCP (Go's default since 1.24): an MPTCP socket refuses TCP_MD5SIG, so
// BGP sessions with a password could never be accepted, and it takes no IP_MINTTL (TTL security).
//
//go:debug multipathtcp=0
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"canopy.io/canopy/internal/agent"
	"canopy.io/canopy/internal/config"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "cleanup": // `canopy cleanup [flags]`: see cleanup.go
			os.Exit(runCleanup(os.Args[2:], os.Stdout, os.Stderr))
		case "status": // `canopy status [flags]`: see status.go
			os.Exit(runStatus(os.Args[2:], os.Stdout, os.Stderr))
		case "version", "--version": // the version set at build time (make build: git describe)
			fmt.Println("canopy", agent.Version)
			os.Exit(0)
		}
	}
	var raw config.Raw
	fs := pflag.NewFlagSet("canopy", pflag.ContinueOnError)
	fs.SortFlags = false
	bindFlags(fs, &raw)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "canopy: %v\n", err)
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "canopy: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	cfg, err := raw.Validate()
	if err != nil {
		fmt.Fprintf(os.Stderr, "canopy: invalid configuration:\n%v\n", err)
		os.Exit(2)
	}
	log := newLogger(cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := agent.Run(ctx, cfg, log); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("canopy stopped", "err", err)
		os.Exit(1)
	}
	log.Info("canopy stopped; kernel routes and peers' graceful-restart state are kept for the next start")
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
