package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/pflag"
)

// update rewrites the generated section of docs/configuration.md: go test ./cmd/canopy-controller -run Docs -update
var update = flag.Bool("update", false, "rewrite docs/configuration.md's generated flag reference of canopy-controller")

const configDoc = "../../docs/configuration.md"

// dynamicDefaults are the flags whose default depends on where the controller runs; the reference says what the
// default is instead of what it was on the machine that rendered it.
var dynamicDefaults = map[string]string{
	"identity": "`$POD_NAME`, else the hostname",
}

// TestDocs fails when docs/configuration.md's reference of canopy-controller's flags is not what its flag set
// says, and rewrites it with -update. (cmd/canopy's TestDocs keeps the agent's section; the helpers below are
// the same in both packages.)
func TestDocs(t *testing.T) {
	checkGenerated(t, configDoc, "canopy-controller", renderControllerFlags(t))
}

// renderControllerFlags is the generated section: the flags of bindFlags, the FlagSet main uses.
func renderControllerFlags(t *testing.T) string {
	t.Helper()
	env := envVars(t)
	bind := func(value string) *pflag.FlagSet {
		setEnv(t, env, value)
		var r raw
		fs := pflag.NewFlagSet("canopy-controller", pflag.ContinueOnError)
		fs.SortFlags = false
		bindFlags(fs, &r)
		return fs
	}
	a, b := bind("docs-env-a"), bind("docs-env-b")
	checkDynamicDefaults(t, a, b, dynamicDefaults)
	var w strings.Builder
	w.WriteString("### `canopy-controller` (the LoadBalancer IP allocator, `kube-system/canopy-controller` Deployment)\n\n")
	w.WriteString("`canopy-controller [flags]`; lists are repeatable or comma-separated.\n\n")
	writeFlagTable(&w, bind(""), dynamicDefaults)
	return w.String()
}

// checkDynamicDefaults fails when a flag's default differs between two bindings made under different
// environments (or holds this machine's hostname or this binary's folder) and dynamic does not say what it is.
// (Entries of dynamic for flags that do not exist are harmless and not reported.)
func checkDynamicDefaults(t *testing.T, a, b *pflag.FlagSet, dynamic map[string]string) {
	t.Helper()
	host, _ := os.Hostname()
	exe, _ := os.Executable()
	a.VisitAll(func(f *pflag.Flag) {
		other := b.Lookup(f.Name)
		local := f.DefValue != other.DefValue || (host != "" && strings.Contains(f.DefValue, host)) ||
			(exe != "" && strings.Contains(f.DefValue, filepath.Dir(exe)))
		if _, ok := dynamic[f.Name]; local && !ok {
			t.Errorf("--%s: its default %q depends on the environment: add it to dynamicDefaults", f.Name, f.DefValue)
		}
	})
}

// envVars are the environment variables the package's code reads (os.Getenv("…") in its non-test files): a
// flag default may depend on any of them.
func envVars(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var out []string
	re := regexp.MustCompile(`os\.(?:Getenv|LookupEnv)\("([^"]+)"\)`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			if !seen[m[1]] {
				seen[m[1]] = true
				out = append(out, m[1])
			}
		}
	}
	return out
}

// setEnv sets every variable of vars to value for the rest of the test.
func setEnv(t *testing.T, vars []string, value string) {
	for _, v := range vars {
		t.Setenv(v, value)
	}
}

// writeFlagTable writes fs's flags, in the order they are bound, as a markdown table.
func writeFlagTable(w *strings.Builder, fs *pflag.FlagSet, dynamic map[string]string) {
	w.WriteString("| flag | type | default | what it does |\n|---|---|---|---|\n")
	fs.VisitAll(func(f *pflag.Flag) {
		def := "`" + f.DefValue + "`"
		switch {
		case dynamic[f.Name] != "":
			def = dynamic[f.Name]
		case f.DefValue == "" || f.DefValue == "[]":
			def = "none"
		}
		name := "`--" + f.Name + "`"
		if f.Shorthand != "" {
			name = "`-" + f.Shorthand + "`, " + name
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", name, f.Value.Type(), def, strings.ReplaceAll(f.Usage, "|", `\|`))
	})
}

// checkGenerated compares the section of path between the markers of name with want; with -update it writes
// want there instead. The file is locked while it is read and written: the two cmd packages' tests share it and
// `go test ./cmd/...` runs them at once.
func checkGenerated(t *testing.T, path, name, want string) {
	t.Helper()
	begin := fmt.Sprintf("<!-- BEGIN GENERATED %s flags: go test ./cmd/%s -run Docs -update -->\n", name, name)
	end := fmt.Sprintf("<!-- END GENERATED %s flags -->", name)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		t.Fatalf("%s has no section between %q and %q", path, strings.TrimSpace(begin), end)
	}
	got := doc[i+len(begin) : j]
	if got == want {
		return
	}
	if !*update {
		t.Errorf("%s: the %s flag reference is stale (%s); run go test ./cmd/%s -run Docs -update", path, name, firstDiff(got, want), name)
		return
	}
	doc = doc[:i+len(begin)] + want + doc[j:]
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(doc); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: rewrote the %s flag reference", path, name)
}

// firstDiff names the first line where got and want differ.
func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return fmt.Sprintf("line %d: doc has %q, the flags say %q", i+1, a, b)
		}
	}
	return "same lines"
}
