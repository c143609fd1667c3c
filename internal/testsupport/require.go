// Package testsupport is what Canopy's tests need of the machine they run on, in one place: Require names what a
// test needs (root, tools on PATH) and skips the test when something is missing, saying what — or fails it under
// CI=true, where every tool must be installed (hack/install-deps.sh) and no test may pass by not running. Its
// subpackages give tests network namespaces of their own (testns) and a VM with a stock kernel (vmtest).
package testsupport

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Root is the requirement "runs as root" (for Require).
const Root = "root"

// InCI reports whether the tests run in CI (CI=true), where a missing tool is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require skips the test, or fails it under CI=true, unless every need is met: Root (the process runs as root)
// or the name of a program that must be on PATH.
func Require(tb testing.TB, needs ...string) {
	tb.Helper()
	var missing []string
	for _, n := range needs {
		if n == Root {
			if os.Geteuid() != 0 {
				missing = append(missing, "root")
			}
			continue
		}
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		Unavailable(tb, "needs %s", strings.Join(missing, ", "))
	}
}

// Unavailable skips the test with the reason, or fails it with the reason under CI=true.
func Unavailable(tb testing.TB, format string, args ...any) {
	tb.Helper()
	why := fmt.Sprintf(format, args...)
	if InCI() {
		tb.Fatalf("%s (CI must run this test)", why)
	}
	tb.Skip(why)
}
