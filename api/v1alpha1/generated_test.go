package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"canopy.io/canopy/internal/testsupport"
)

// TestGeneratedFilesCurrent runs hack/gen-crds.sh into a temporary directory and compares what it writes with
// the committed zz_generated.deepcopy.go and manifests/crds: a change to the types without `hack/gen-crds.sh`
// fails here. The first run builds controller-gen from hack/tools (about two minutes; cached afterwards).
func TestGeneratedFilesCurrent(t *testing.T) {
	testsupport.Require(t, "bash", "go")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "hack/gen-crds.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		// Only a tools module that cannot be downloaded (offline, no module cache) is a reason to skip.
		dl := exec.Command("go", "mod", "download")
		dl.Dir = filepath.Join(root, "hack/tools")
		if b2, err2 := dl.CombinedOutput(); err2 != nil {
			testsupport.Unavailable(t, "hack/tools cannot be downloaded: %v\n%s", err2, b2)
		}
		t.Fatalf("hack/gen-crds.sh: %v\n%s", err, b)
	}

	compare := func(rel string) {
		t.Helper()
		want, err := os.ReadFile(filepath.Join(out, rel))
		if err != nil {
			t.Fatal(err)
		}
		have, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Errorf("%s: %v (run hack/gen-crds.sh and commit the result)", rel, err)
			return
		}
		if !bytes.Equal(have, want) {
			t.Errorf("%s is not what hack/gen-crds.sh makes from api/v1alpha1: run it and commit the result", rel)
		}
	}
	compare("api/v1alpha1/zz_generated.deepcopy.go")
	names := func(dir string) []string {
		m, err := filepath.Glob(filepath.Join(dir, "manifests/crds/*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range m {
			m[i] = filepath.Base(m[i])
		}
		return m
	}
	generated, committed := names(out), names(root)
	if !slices.Equal(generated, committed) {
		t.Errorf("manifests/crds has %v, hack/gen-crds.sh makes %v", committed, generated)
	}
	for _, n := range generated {
		compare(filepath.Join("manifests/crds", n))
	}
}
