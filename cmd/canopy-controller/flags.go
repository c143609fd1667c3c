package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"

	"canopy.io/canopy/loadbalancer"
)

// raw is the command line as given.
type raw struct {
	Kubeconfig     string
	Ranges         []string
	Class          string
	LeaseNamespace string
	Identity       string
	MetricsAddr    string
	LogLevel       string
}

// config is the validated command line.
type config struct {
	Kubeconfig  string
	Allocator   loadbalancer.Config
	MetricsAddr string // "" = no metrics or health endpoint
	LogLevel    string
}

// stringList is a repeatable, comma-separated flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Type() string   { return "strings" }
func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// defaultIdentity is $POD_NAME (the Deployment sets it from the downward API), else the hostname.
func defaultIdentity() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, _ := os.Hostname()
	return h
}

// bindFlags binds the controller's flags to r.
func bindFlags(fs *pflag.FlagSet, r *raw) {
	fs.StringVar(&r.Kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty = in-cluster config (the pod's ServiceAccount)")
	fs.Var((*stringList)(&r.Ranges), "loadbalancer-ip-range", "CIDRs or first-last ranges LoadBalancer IPs are allocated from (repeatable, comma-separated; required)")
	fs.StringVar(&r.Class, "loadbalancer-class", loadbalancer.DefaultClass, "spec.loadBalancerClass served besides Services without a class")
	fs.StringVar(&r.LeaseNamespace, "lease-namespace", "kube-system", "namespace of the leader-election Lease "+loadbalancer.LeaseName)
	fs.StringVar(&r.Identity, "identity", defaultIdentity(), "this replica's leader-election identity: $POD_NAME if set, else the hostname")
	fs.StringVar(&r.MetricsAddr, "metrics-addr", ":9470", "address of /metrics, /healthz and /readyz; empty disables them")
	fs.StringVar(&r.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
}

// validate checks every flag and returns all problems at once, each naming its flag.
func (r raw) validate() (*config, error) {
	var errs []error
	bad := func(flag string, format string, a ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...)))
	}
	c := &config{Kubeconfig: r.Kubeconfig, MetricsAddr: r.MetricsAddr, LogLevel: strings.ToLower(r.LogLevel)}
	if r.Kubeconfig != "" {
		if _, err := os.Stat(r.Kubeconfig); err != nil {
			bad("kubeconfig", "%v", err)
		}
	}
	ranges, err := loadbalancer.ParseRanges(r.Ranges)
	switch {
	case err != nil:
		bad("loadbalancer-ip-range", "%v", err)
	case len(ranges) == 0:
		bad("loadbalancer-ip-range", "empty: the controller needs addresses to hand out")
	}
	if r.Class == "" {
		bad("loadbalancer-class", "empty")
	} else if msgs := validation.IsQualifiedName(r.Class); len(msgs) > 0 {
		bad("loadbalancer-class", "%q is not a valid spec.loadBalancerClass: %s", r.Class, strings.Join(msgs, "; "))
	}
	if r.LeaseNamespace == "" {
		bad("lease-namespace", "empty: the replicas elect their leader with a Lease")
	} else if msgs := validation.IsDNS1123Label(r.LeaseNamespace); len(msgs) > 0 {
		bad("lease-namespace", "%q is not a namespace name: %s", r.LeaseNamespace, strings.Join(msgs, "; "))
	}
	if strings.TrimSpace(r.Identity) == "" {
		bad("identity", "empty, and neither POD_NAME nor the hostname gives one")
	} else if len(r.Identity) > 253 {
		bad("identity", "longer than 253 characters")
	}
	if r.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(r.MetricsAddr); err != nil {
			bad("metrics-addr", "%q: %v", r.MetricsAddr, err)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			bad("metrics-addr", "%q: %q is not a TCP port", r.MetricsAddr, port)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q is not one of debug, info, warn, error", r.LogLevel)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c.Allocator = loadbalancer.Config{Ranges: ranges, Class: r.Class, LeaseNamespace: r.LeaseNamespace, Identity: r.Identity}
	return c, nil
}
