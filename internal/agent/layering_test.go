package agent

import (
	"os/exec"
	"strings"
	"testing"

	"canopy.io/canopy/internal/testsupport"
)

// The house's floors: BGP and the service proxy stand side by side over the shared model, neither reaching into
// the other; the model and the controller skeleton import no consumer; nothing imports the agent but cmd/.
func TestLayering(t *testing.T) {
	testsupport.Require(t, "go")
	deps := func(pkgs ...string) []string {
		out, err := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...).Output()
		if err != nil {
			t.Fatalf("go list -deps %v: %v", pkgs, err)
		}
		return strings.Fields(string(out))
	}
	for _, c := range []struct {
		pkgs   []string
		forbid []string
	}{
		{[]string{"canopy.io/canopy/bgp/..."}, []string{"canopy.io/canopy/proxy", "canopy.io/canopy/policy", "canopy.io/canopy/internal/config", "canopy.io/canopy/internal/agent"}},
		{[]string{"canopy.io/canopy/proxy/..."}, []string{"canopy.io/canopy/bgp", "canopy.io/canopy/policy", "canopy.io/canopy/internal/config", "canopy.io/canopy/internal/agent"}},
		{[]string{"canopy.io/canopy/policy/..."}, []string{"canopy.io/canopy/bgp", "canopy.io/canopy/proxy", "canopy.io/canopy/internal/config"}},
		{[]string{"canopy.io/canopy/internal/model", "canopy.io/canopy/internal/controller", "canopy.io/canopy/internal/ipt"},
			[]string{"canopy.io/canopy/bgp", "canopy.io/canopy/proxy", "canopy.io/canopy/policy", "canopy.io/canopy/routes"}},
	} {
		for _, d := range deps(c.pkgs...) {
			for _, f := range c.forbid {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("%v depends on %s", c.pkgs, d)
				}
			}
		}
	}
}
