package agent

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Version is the agent's version, set at build time (-ldflags "-X canopy.io/canopy/internal/agent.Version=v0.3.0").
var Version = "dev"

// buildInfo is canopy_build_info{version, revision, go_version} 1: which binary runs where.
func buildInfo() prometheus.Collector {
	revision := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "canopy_build_info", Help: "The running agent's version, source revision and Go version (always 1).",
	}, []string{"version", "revision", "go_version"})
	g.WithLabelValues(Version, revision, runtime.Version()).Set(1)
	return g
}
