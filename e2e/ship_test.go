package e2e

// The shipping tests: what a user installs (the image, the kustomize tree, the dashboard) and reads (the ToR
// recipes, the troubleshooting Events) is what the code and the lab do.
//
//	TestShipDockerfile      (no lab) the Dockerfile builds every binary the manifests run, from cmd/, installs
//	                        a pinned package for every program the Go code executes, and .dockerignore keeps
//	                        what the build needs
//	TestShipKustomize       every overlay renders, differs from the base only by its flags, and passes a
//	                        server-side dry run on the lab's kube-apiserver
//	TestShipToRRecipes      docs/tor-recipes.md: the FRR block is the lab ToR's; BIRD runs the BIRD block and
//	                        learns every node's pod CIDR from that node
//	TestShipDashboard       manifests/dashboard.json is valid and uses only series a lab agent and
//	                        canopy-controller export; the Events of docs/troubleshooting.md are the ones the
//	                        agent writes
//	TestShipDocLinks        (no lab) the relative links and anchors of docs/*.md and README.md resolve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"canopy.io/canopy/e2e/lab"
)

// ---------------------------------------------------------------------------------------------------------
// The image

// binaryPackage is the Debian package that provides each program the binaries run (or the init container).
var binaryPackage = func(name string) string {
	switch {
	case strings.HasPrefix(name, "iptables"), strings.HasPrefix(name, "ip6tables"):
		return "iptables"
	}
	return map[string]string{"ipset": "ipset", "nft": "nftables", "modprobe": "kmod", "conntrack": "conntrack",
		"ip": "iproute2", "sh": "base"}[name]
}

// dynamicExecs are the functions (package.Func or package.Type.Method) that run a program whose name is not a
// string literal at the call, with every program they may run. A new such call fails the test until it is
// listed here, and its programs then need a package in the image.
var dynamicExecs = map[string][]string{
	// internal/ipt: the host's flavour's iptables-<flavour>-save (Detect), ip[6]tables-<flavour> (newFamily), and
	// ip[6]tables-<flavour>-restore/-save, or plain ip[6]tables-restore/-save where those are missing.
	"canopy.io/canopy/internal/ipt.Detect":      {"iptables-legacy-save", "iptables-nft-save"},
	"canopy.io/canopy/internal/ipt.newFamily":   {"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"},
	"canopy.io/canopy/internal/ipt.newRestorer": {"iptables-nft-restore", "iptables-nft-save", "iptables-legacy-restore", "iptables-legacy-save", "ip6tables-nft-restore", "ip6tables-nft-save", "ip6tables-legacy-restore", "ip6tables-legacy-save"},
	"canopy.io/canopy/internal/ipt.Restorer.Restore": {"iptables-nft-restore", "iptables-legacy-restore", "iptables-restore",
		"ip6tables-nft-restore", "ip6tables-legacy-restore", "ip6tables-restore"},
	"canopy.io/canopy/internal/ipt.Restorer.Save": {"iptables-nft-save", "iptables-legacy-save", "iptables-save",
		"ip6tables-nft-save", "ip6tables-legacy-save", "ip6tables-save"},
	"canopy.io/canopy/internal/ipt.Restorer.SaveCounters": {"iptables-nft-save", "iptables-legacy-save", "iptables-save",
		"ip6tables-nft-save", "ip6tables-legacy-save", "ip6tables-save"},
	// proxy/ipvs: modprobe ip_vs, found with LookPath.
	"canopy.io/canopy/proxy/ipvs.available": {"modprobe"},
	// proxy/nftables: large transactions through nft, found with LookPath (as knftables finds it).
	"canopy.io/canopy/proxy/nftables.nftCmd.Run": {"nft"},
	// canopy cleanup: both families, both flavours, and nft.
	"canopy.io/canopy/internal/cleanup.NewXtables":      {"iptables-nft-save", "iptables-nft-restore", "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-nft-save", "ip6tables-nft-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore"},
	"canopy.io/canopy/internal/cleanup.Xtables.SaveAll": {"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"},
	"canopy.io/canopy/internal/cleanup.Xtables.Restore": {"iptables-nft-restore", "iptables-legacy-restore", "ip6tables-nft-restore", "ip6tables-legacy-restore"},
	"canopy.io/canopy/internal/cleanup.NFTBinary.run":   {"nft"},
	// go-iptables: the binary internal/ipt names (iptables-nft, iptables-legacy), else iptables or ip6tables.
	"github.com/coreos/go-iptables/iptables.New":                      {"iptables", "ip6tables", "iptables-nft", "iptables-legacy"},
	"github.com/coreos/go-iptables/iptables.getIptablesVersionString": {"iptables", "ip6tables", "iptables-nft", "iptables-legacy"},
	// knftables (the nftables proxy): nft.
	"sigs.k8s.io/knftables.realExec.LookPath":         {"nft"},
	"sigs.k8s.io/knftables.newInternal":               {"nft"},
	"sigs.k8s.io/knftables.realNFTables.Run":          {"nft"},
	"sigs.k8s.io/knftables.realNFTables.Check":        {"nft"},
	"sigs.k8s.io/knftables.realNFTables.List":         {"nft"},
	"sigs.k8s.io/knftables.realNFTables.ListRules":    {"nft"},
	"sigs.k8s.io/knftables.realNFTables.ListElements": {"nft"},
	// Programs named by configuration the binaries never have: a kubeconfig's exec credential plugin (the
	// in-cluster config has none), gnostic's OpenAPI extension handlers (none registered).
	"k8s.io/client-go/plugin/pkg/client/auth/exec.Authenticator.refreshCredsLocked":            nil,
	"k8s.io/client-go/plugin/pkg/client/auth/exec.Authenticator.checkAllowlistLocked":          nil,
	"k8s.io/client-go/plugin/pkg/client/auth/exec.Authenticator.resolveAllowListEntriesLocked": nil,
	"github.com/google/gnostic-models/compiler.ExtensionHandler.handle":                        nil,
}

// dockerfile is what the tests read from the Dockerfile.
type dockerfile struct {
	stages     []dockerStage
	entrypoint []string
}

type dockerStage struct {
	from, name string
	lines      []string // instructions, continuation lines joined, comments dropped
}

func readDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var df dockerfile
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		fields := strings.Fields(line)
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			st := dockerStage{from: fields[1]}
			if len(fields) == 4 && strings.EqualFold(fields[2], "AS") {
				st.name = fields[3]
			}
			df.stages = append(df.stages, st)
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimSpace(line[len(fields[0]):])), &df.entrypoint); err != nil {
				t.Errorf("ENTRYPOINT is not in exec form: %v", err)
			}
		}
		if n := len(df.stages); n > 0 {
			df.stages[n-1].lines = append(df.stages[n-1].lines, line)
		}
	}
	for _, raw := range strings.Split(string(b), "\n") {
		l := strings.TrimSpace(raw)
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasSuffix(l, `\`) {
			cur.WriteString(strings.TrimSuffix(l, `\`) + " ")
			continue
		}
		cur.WriteString(l)
		flush()
	}
	flush()
	return df
}

// TestShipDockerfile checks the Dockerfile against the code and the manifests; it needs no lab (it runs under
// -short). With dpkg and apt-cache (a Debian 12 machine) it also checks the package of each program and that
// every pinned version is still in Debian's archive.
func TestShipDockerfile(t *testing.T) {
	df := readDockerfile(t, "../Dockerfile")
	if len(df.stages) != 2 {
		t.Fatalf("want a build stage and a runtime stage, got %d stages", len(df.stages))
	}
	build, runtime := df.stages[0], df.stages[1]
	for _, st := range df.stages {
		_, tag, ok := strings.Cut(st.from, ":")
		if !ok || tag == "latest" || !regexp.MustCompile(`\d+\.\d+`).MatchString(tag) {
			t.Errorf("FROM %s: pin the image by version", st.from)
		}
	}
	// The Go of the build stage is go.mod's.
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^go (\S+)`).FindSubmatch(gomod); m == nil || !strings.HasPrefix(build.from, "golang:"+string(m[1])+"-") {
		t.Errorf("build stage FROM %s: want golang:<go.mod's go version>-…", build.from)
	}

	// Every cmd/ package is built (static, trimmed, with the version) and copied to /usr/local/bin.
	cmds := mainPackages(t)
	buildRun := strings.Join(build.lines, "\n")
	if !strings.Contains(buildRun, "CGO_ENABLED=0") {
		t.Error("build stage: CGO_ENABLED=0 missing (the runtime image must not need the build's libc)")
	}
	installed := map[string]string{} // path in the image → binary built
	for _, c := range cmds {
		re := regexp.MustCompile(`go build -trimpath -ldflags "-s -w -X canopy\.io/canopy/internal/agent\.Version=\$\{VERSION\}" -o (\S+) \./cmd/` + regexp.QuoteMeta(c) + `(\s|$)`)
		m := re.FindStringSubmatch(buildRun)
		if m == nil {
			t.Errorf("cmd/%s is not built with go build -trimpath -ldflags \"-s -w -X …agent.Version=${VERSION}\" -o … ./cmd/%s", c, c)
			continue
		}
		found := false
		for _, l := range runtime.lines {
			f := strings.Fields(l)
			if len(f) == 4 && f[0] == "COPY" && f[1] == "--from="+build.name && f[2] == m[1] {
				installed[f[3]] = c
				found = true
			}
		}
		if !found {
			t.Errorf("%s (cmd/%s) is not copied into the runtime stage", m[1], c)
		}
	}
	if b, err := os.ReadFile("../internal/agent/buildinfo.go"); err != nil || !bytes.Contains(b, []byte("var Version = ")) {
		t.Errorf("-X canopy.io/canopy/internal/agent.Version: no var Version in internal/agent/buildinfo.go (%v)", err)
	}
	if len(df.entrypoint) != 1 || installed[df.entrypoint[0]] != "canopy" {
		t.Errorf("ENTRYPOINT %q: want the agent's path alone (the DaemonSet gives only args)", df.entrypoint)
	}

	// The packages of the runtime stage, each pinned.
	pkgs := map[string]string{}
	for _, l := range runtime.lines {
		if !strings.Contains(l, "apt-get install") {
			continue
		}
		for _, f := range strings.Fields(l[strings.Index(l, "apt-get install"):])[2:] {
			if f == "&&" {
				break
			}
			if strings.HasPrefix(f, "-") {
				continue
			}
			name, version, ok := strings.Cut(f, "=")
			if !ok || version == "" {
				t.Errorf("package %s is not pinned (name=version)", f)
			}
			pkgs[name] = version
		}
	}
	if len(pkgs) == 0 {
		t.Fatal("no apt-get install in the runtime stage")
	}
	need := func(bin, why string) {
		p := binaryPackage(bin)
		switch {
		case p == "":
			t.Errorf("%s (%s): which Debian package provides it? add it to binaryPackage", bin, why)
		case p == "base":
		case pkgs[p] == "":
			t.Errorf("%s (%s) needs package %s, which the Dockerfile does not install", bin, why, p)
		}
	}

	// Every program the three binaries may execute.
	progs := execedPrograms(t)
	for prog, where := range progs {
		need(prog, "run by "+where)
	}
	t.Logf("programs the binaries run: %v", sortedKeys(progs))

	// The manifests: every container runs this image, and a binary it has.
	for _, f := range []string{"../manifests/daemonset.yaml", "../manifests/controller.yaml"} {
		spec := podSpecOf(t, f)
		for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
			what := fmt.Sprintf("%s: container %s", filepath.Base(f), c.Name)
			if !strings.HasPrefix(c.Image, "canopy:") {
				t.Errorf("%s: image %s is not the image of this Dockerfile (canopy:<tag>)", what, c.Image)
			}
			argv := c.Command
			if len(argv) == 0 {
				argv = df.entrypoint
			}
			if len(argv) == 0 {
				t.Errorf("%s: no command and no ENTRYPOINT", what)
				continue
			}
			if filepath.IsAbs(argv[0]) {
				if installed[argv[0]] == "" {
					t.Errorf("%s runs %s, which the Dockerfile does not install (it installs %v)", what, argv[0], sortedKeys(installed))
				}
			} else {
				need(argv[0], what)
			}
			// A shell script: the programs it runs.
			if argv[0] == "sh" || argv[0] == "/bin/sh" {
				for _, w := range scriptCommands(strings.Join(append(argv[1:], c.Args...), "\n")) {
					need(w, what+" script")
				}
			}
			if c.Name == "canopy" {
				// The agent installs canopy-cni from next to itself (default --cni-plugin) into --cni-bin-dir.
				if !slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--cni-bin-dir=") }) {
					t.Errorf("%s: no --cni-bin-dir, so canopy-cni is never installed on the node", what)
				}
				if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--cni-plugin=") }) {
					t.Errorf("%s: --cni-plugin set; check it is where the Dockerfile puts canopy-cni", what)
				}
				if plugin := filepath.Join(filepath.Dir(argv[0]), "canopy-cni"); installed[plugin] != "canopy-cni" {
					t.Errorf("%s: the default --cni-plugin %s is not in the image", what, plugin)
				}
			}
		}
	}

	// On a Debian machine: the package of each program agrees with binaryPackage, and each pin still exists.
	if _, err := exec.LookPath("dpkg"); err == nil {
		checked := 0
		defer func() {
			t.Logf("dpkg -S agrees on the package of %d of the %d programs (the others are not installed here)", checked, len(progs))
		}()
		for prog := range progs {
			path, err := exec.LookPath(prog)
			if err != nil {
				continue
			}
			if real, err := filepath.EvalSymlinks(path); err == nil {
				path = real
			}
			var owner string
			for _, p := range []string{path, strings.TrimPrefix(path, "/usr")} {
				if out, err := exec.Command("dpkg", "-S", p).Output(); err == nil {
					owner, _, _ = strings.Cut(strings.TrimSpace(string(out)), ":")
					break
				}
			}
			if owner != "" {
				checked++
			}
			if owner != "" && owner != binaryPackage(prog) {
				t.Errorf("%s (%s) comes from package %s here, binaryPackage says %s", prog, path, owner, binaryPackage(prog))
			}
		}
	}
	if osRelease, err := os.ReadFile("/etc/os-release"); err == nil && bytes.Contains(osRelease, []byte("VERSION_CODENAME=bookworm")) &&
		strings.HasPrefix(runtime.from, "debian:12") {
		if _, err := exec.LookPath("apt-cache"); err == nil {
			for p, v := range pkgs {
				out, err := exec.Command("apt-cache", "policy", p).Output()
				if err != nil {
					continue
				}
				if !aptHasVersion(string(out), v) {
					t.Errorf("%s=%s: not in this machine's bookworm archive (apt-cache policy %s); the image build would fail on the pin", p, v, p)
				}
			}
		}
	}

	checkDockerignore(t)
}

// scriptCommands returns the programs a shell script runs: the first word of each command, without comments,
// variable assignments, shell keywords and builtins.
func scriptCommands(script string) []string {
	skip := map[string]bool{"set": true, "echo": true, "if": true, "then": true, "else": true, "elif": true, "fi": true,
		"for": true, "while": true, "do": true, "done": true, "in": true, "exit": true, "true": true, "false": true,
		"[": true, "test": true, "cd": true, "export": true, "-c": true, "sh": true, "case": true, "esac": true}
	var out []string
	for _, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		for _, seg := range regexp.MustCompile(`&&|\|\||[;|]`).Split(line, -1) {
			f := strings.Fields(seg)
			for len(f) > 0 && (f[0] == "then" || f[0] == "do" || f[0] == "else" || f[0] == "if" || f[0] == "!") {
				f = f[1:]
			}
			if len(f) == 0 || strings.Contains(f[0], "=") || skip[f[0]] || f[0] == "for" {
				continue
			}
			out = append(out, f[0])
		}
	}
	return out
}

// mainPackages lists cmd/*: the directories holding package main.
func mainPackages(t *testing.T) []string {
	t.Helper()
	dirs, err := os.ReadDir("../cmd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		pkgs, err := parser.ParseDir(token.NewFileSet(), filepath.Join("../cmd", d.Name()), func(fi os.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.PackageClauseOnly)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := pkgs["main"]; ok {
			out = append(out, d.Name())
		}
	}
	if len(out) == 0 {
		t.Fatal("no package main under cmd/")
	}
	return out
}

// goPackage is what go list says of one package the binaries link.
type goPackage struct {
	ImportPath, Dir, Module string
	GoFiles, EmbedFiles     []string
	Standard                bool
}

var binaryPackagesCache []goPackage

// binaryPackages lists every package linked into cmd/... (go list -deps).
func binaryPackages(t *testing.T) []goPackage {
	t.Helper()
	if binaryPackagesCache != nil {
		return binaryPackagesCache
	}
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Dir,Module,GoFiles,EmbedFiles,Standard", "./cmd/...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list -deps ./cmd/...: %v: %s", err, ee.Stderr)
		}
		t.Skipf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct {
			goPackage
			Module *struct{ Path string }
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if p.Module != nil {
			p.goPackage.Module = p.Module.Path
		}
		pkgs = append(pkgs, p.goPackage)
	}
	binaryPackagesCache = pkgs
	return pkgs
}

// execedPrograms finds every os/exec call (Command, CommandContext, LookPath) in the packages the binaries
// link: a string literal names its program; any other argument must be in dynamicExecs. It returns program →
// where it is run.
func execedPrograms(t *testing.T) map[string]string {
	t.Helper()
	progs := map[string]string{}
	seen := map[string]bool{}
	for _, p := range binaryPackages(t) {
		if p.Standard {
			continue
		}
		for _, f := range p.GoFiles {
			path := filepath.Join(p.Dir, f)
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(src, []byte(`"os/exec"`)) {
				continue
			}
			fset := token.NewFileSet()
			file, err := parser.ParseFile(fset, path, src, 0)
			if err != nil {
				t.Fatal(err)
			}
			execName := ""
			for _, imp := range file.Imports {
				if imp.Path.Value == `"os/exec"` {
					execName = "exec"
					if imp.Name != nil {
						execName = imp.Name.Name
					}
				}
			}
			if execName == "" {
				continue
			}
			for _, decl := range file.Decls {
				fn, ok := decl.(*ast.FuncDecl)
				if !ok || fn.Body == nil {
					continue
				}
				key := p.ImportPath + "." + funcName(fn)
				ast.Inspect(fn.Body, func(n ast.Node) bool {
					call, ok := n.(*ast.CallExpr)
					if !ok {
						return true
					}
					sel, ok := call.Fun.(*ast.SelectorExpr)
					if !ok {
						return true
					}
					if id, ok := sel.X.(*ast.Ident); !ok || id.Name != execName {
						return true
					}
					arg := 0
					switch sel.Sel.Name {
					case "Command", "LookPath":
					case "CommandContext":
						arg = 1
					default:
						return true
					}
					if len(call.Args) <= arg {
						return true
					}
					where := fmt.Sprintf("%s (%s:%d)", key, filepath.Base(path), fset.Position(call.Pos()).Line)
					if lit, ok := call.Args[arg].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						if name, err := strconv.Unquote(lit.Value); err == nil {
							progs[name] = where
						}
						return true
					}
					list, ok := dynamicExecs[key]
					if !ok {
						t.Errorf("%s runs a program named at run time: add %q to dynamicExecs with every program it may run", where, key)
						return true
					}
					seen[key] = true
					for _, prog := range list {
						progs[prog] = where
					}
					return true
				})
			}
		}
	}
	for key := range dynamicExecs {
		if !seen[key] {
			t.Errorf("dynamicExecs lists %s, which runs no program any more: remove it", key)
		}
	}
	return progs
}

// funcName is Func, or Type.Method for a method.
func funcName(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name
	}
	typ := fn.Recv.List[0].Type
	if s, ok := typ.(*ast.StarExpr); ok {
		typ = s.X
	}
	if ix, ok := typ.(*ast.IndexExpr); ok {
		typ = ix.X
	}
	if id, ok := typ.(*ast.Ident); ok {
		return id.Name + "." + fn.Name.Name
	}
	return fn.Name.Name
}

// aptHasVersion says whether `apt-cache policy` lists version v in its version table.
func aptHasVersion(policy, v string) bool {
	_, table, ok := strings.Cut(policy, "Version table:")
	if !ok {
		return false
	}
	for _, l := range strings.Split(table, "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(l), "***"))
		if len(f) >= 2 && f[0] == v {
			return true
		}
	}
	return false
}

// checkDockerignore: .dockerignore excludes none of the files the image build needs (go.mod, go.sum and the
// sources of the module's packages the binaries link).
func checkDockerignore(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf(".dockerignore %q: exceptions are not understood by this check; extend dockerignored", l)
		}
		patterns = append(patterns, l)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	needed := []string{"go.mod", "go.sum"}
	for _, p := range binaryPackages(t) {
		if p.Module != "canopy.io/canopy" {
			continue
		}
		for _, f := range append(append([]string{}, p.GoFiles...), p.EmbedFiles...) {
			rel, err := filepath.Rel(root, filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			needed = append(needed, rel)
		}
	}
	for _, f := range needed {
		for _, p := range patterns {
			if dockerignored(p, f) {
				t.Errorf(".dockerignore %q leaves out %s, which the image build needs", p, f)
			}
		}
	}
	for _, f := range []string{"e2e/ship_test.go", "bin/canopy", "README.md", "internal/agent/agent_test.go"} {
		if !slices.ContainsFunc(patterns, func(p string) bool { return dockerignored(p, f) }) {
			t.Errorf(".dockerignore sends %s to the build context", f)
		}
	}
}

// dockerignored matches a path against one .dockerignore pattern: a path or folder prefix, a glob, or
// **/<glob> on the base name at any depth.
func dockerignored(pattern, path string) bool {
	pattern = strings.TrimPrefix(strings.TrimSuffix(pattern, "/"), "/")
	if rest, ok := strings.CutPrefix(pattern, "**/"); ok {
		for p := path; p != "." && p != "/"; p = filepath.Dir(p) {
			if ok, _ := filepath.Match(rest, filepath.Base(p)); ok {
				return true
			}
		}
		return false
	}
	if path == pattern || strings.HasPrefix(path, pattern+"/") {
		return true
	}
	ok, _ := filepath.Match(pattern, path)
	return ok
}

// podSpecOf reads the pod template of the DaemonSet or Deployment in a manifest.
func podSpecOf(t *testing.T, path string) corev1.PodSpec {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range splitYAML(b) {
		var meta struct{ Kind string }
		_ = yaml.Unmarshal(doc, &meta)
		switch meta.Kind {
		case "DaemonSet":
			var ds appsv1.DaemonSet
			if err := yaml.Unmarshal(doc, &ds); err != nil {
				t.Fatal(err)
			}
			return ds.Spec.Template.Spec
		case "Deployment":
			var d appsv1.Deployment
			if err := yaml.Unmarshal(doc, &d); err != nil {
				t.Fatal(err)
			}
			return d.Spec.Template.Spec
		}
	}
	t.Fatalf("%s: no DaemonSet or Deployment", path)
	return corev1.PodSpec{}
}

func splitYAML(b []byte) [][]byte {
	var out [][]byte
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(doc) != "" {
			out = append(out, []byte(doc))
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---------------------------------------------------------------------------------------------------------
// kustomize

// overlays are deploy/overlays/*, each with the agent flags it adds to the base's DaemonSet.
var overlays = map[string][]string{
	"full":        nil,
	"routes-only": {"--run-service-proxy=false", "--run-firewall=false"},
	"no-policy":   {"--run-firewall=false"},
}

func kubectlBin(t *testing.T) string {
	t.Helper()
	k := filepath.Join(lab.DefaultK8sBinDir(), "kubectl")
	if _, err := os.Stat(k); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kubectl (hack/build-k8s.sh): %v", err)
		}
		t.Skipf("no kubectl (hack/build-k8s.sh): %v", err)
	}
	return k
}

// kustomize renders a kustomization with kubectl's built-in kustomize into its objects.
func kustomize(t *testing.T, dir string) (string, []map[string]any) {
	t.Helper()
	out, err := exec.Command(kubectlBin(t), "kustomize", dir).Output()
	if err != nil {
		var stderr []byte
		if e, ok := err.(*exec.ExitError); ok {
			stderr = e.Stderr
		}
		t.Fatalf("kubectl kustomize %s: %v: %s", dir, err, stderr)
	}
	var objs []map[string]any
	for _, doc := range splitYAML(out) {
		var o map[string]any
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("kubectl kustomize %s: %v", dir, err)
		}
		objs = append(objs, o)
	}
	return string(out), objs
}

func objKey(o map[string]any) string {
	md, _ := o["metadata"].(map[string]any)
	return fmt.Sprintf("%v/%v %v/%v", o["apiVersion"], o["kind"], md["namespace"], md["name"])
}

// agentArgs returns the args of the canopy container of the DaemonSet among objs, and objs without them.
func agentArgs(t *testing.T, objs []map[string]any) ([]string, map[string]any) {
	t.Helper()
	rest := map[string]any{}
	var args []string
	for _, o := range objs {
		o = deepCopyJSON(t, o)
		if o["kind"] == "DaemonSet" {
			md := o["metadata"].(map[string]any)
			if md["name"] == "canopy" {
				spec := o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
				for _, c := range spec["containers"].([]any) {
					c := c.(map[string]any)
					if c["name"] == "canopy" {
						for _, a := range c["args"].([]any) {
							args = append(args, a.(string))
						}
						delete(c, "args")
					}
				}
			}
		}
		rest[objKey(o)] = o
	}
	if args == nil {
		t.Fatal("no DaemonSet canopy with a container canopy and args")
	}
	return args, rest
}

func deepCopyJSON(t *testing.T, o map[string]any) map[string]any {
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	_ = json.Unmarshal(b, &c)
	return c
}

// TestShipKustomize renders deploy/base and every overlay: the base holds every object of manifests/ (and
// manifests/crds/), each overlay is the base plus exactly its agent flags, and (with the lab) each passes a
// server-side dry run with strict field validation on the lab's kube-apiserver.
func TestShipKustomize(t *testing.T) {
	_, base := kustomize(t, "../deploy/base")
	// Every object of the plain manifests is in the base, and nothing else.
	want := map[string]bool{}
	files, _ := filepath.Glob("../manifests/*.yaml")
	crds, _ := filepath.Glob("../manifests/crds/*.yaml")
	for _, f := range append(files, crds...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range splitYAML(b) {
			var o map[string]any
			if err := yaml.Unmarshal(doc, &o); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o != nil {
				want[objKey(o)] = true
			}
		}
	}
	got := map[string]bool{}
	for _, o := range base {
		got[objKey(o)] = true
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("deploy/base renders %v,\nmanifests/ hold %v: list every manifest in manifests/kustomization.yml", sortedKeys(got), sortedKeys(want))
	}
	baseArgs, baseRest := agentArgs(t, base)

	rendered := map[string]string{}
	for _, name := range sortedKeys(overlays) {
		out, objs := kustomize(t, "../deploy/overlays/"+name)
		rendered[name] = out
		args, rest := agentArgs(t, objs)
		if wantArgs := append(slices.Clone(baseArgs), overlays[name]...); !slices.Equal(args, wantArgs) {
			t.Errorf("overlay %s: agent args %q, want the base's plus %q", name, args, overlays[name])
		}
		if !reflect.DeepEqual(rest, baseRest) {
			for k := range rest {
				if !reflect.DeepEqual(rest[k], baseRest[k]) {
					t.Errorf("overlay %s changes %s beyond the agent's args", name, k)
				}
			}
			if len(rest) != len(baseRest) {
				t.Errorf("overlay %s has %d objects, the base %d", name, len(rest), len(baseRest))
			}
		}
	}

	// The example overlay of docs/install.md, on top of deploy/overlays/full: the image and the flags it sets.
	example := installExample(t)
	dir := filepath.Join(t.TempDir(), "my-cluster")
	full, err := filepath.Abs("../deploy/overlays/full")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(example, "../canopy/deploy/overlays/full") {
		t.Fatal("docs/install.md's example overlay does not build on ../canopy/deploy/overlays/full")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(dir, full) // kustomize takes no absolute path
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(strings.ReplaceAll(example, "../canopy/deploy/overlays/full", rel)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, objs := kustomize(t, dir)
	rendered["docs/install.md example"] = out
	var ex struct {
		Images  []struct{ NewName, NewTag string } `json:"images"`
		Patches []struct {
			Target struct{ Kind, Name string }
			Patch  string
		} `json:"patches"`
	}
	if err := yaml.Unmarshal([]byte(example), &ex); err != nil {
		t.Fatal(err)
	}
	if len(ex.Images) != 1 {
		t.Fatalf("docs/install.md example: want one image, got %+v", ex.Images)
	}
	image := ex.Images[0].NewName + ":" + ex.Images[0].NewTag
	wantArgs := map[string][]string{}
	for _, p := range ex.Patches {
		var ops []struct {
			Op, Path string
			Value    []string
		}
		if err := yaml.Unmarshal([]byte(p.Patch), &ops); err != nil || len(ops) != 1 || ops[0].Op != "replace" {
			t.Fatalf("docs/install.md example: patch of %s: %v %+v", p.Target.Name, err, ops)
		}
		wantArgs[p.Target.Kind+"/"+p.Target.Name] = ops[0].Value
	}
	flagsDoc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		kind, _ := o["kind"].(string)
		if kind != "DaemonSet" && kind != "Deployment" {
			continue
		}
		name := o["metadata"].(map[string]any)["name"].(string)
		spec := o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		for _, list := range []string{"initContainers", "containers"} {
			cs, _ := spec[list].([]any)
			for i, c := range cs {
				c := c.(map[string]any)
				if c["image"] != image {
					t.Errorf("docs/install.md example: %s/%s container %s runs %v, want %s", kind, name, c["name"], c["image"], image)
				}
				if list != "containers" || i != 0 {
					continue
				}
				var args []string
				for _, a := range c["args"].([]any) {
					args = append(args, a.(string))
				}
				if want := wantArgs[kind+"/"+name]; !slices.Equal(args, want) {
					t.Errorf("docs/install.md example: %s/%s args %q, want %q", kind, name, args, want)
				}
				// Every flag is one the binary has (docs/configuration.md's generated reference).
				for _, a := range args {
					flag, _, _ := strings.Cut(a, "=")
					if !bytes.Contains(flagsDoc, []byte("| `"+flag+"` |")) {
						t.Errorf("docs/install.md example: %s/%s: %s is not a flag of docs/configuration.md", kind, name, flag)
					}
				}
			}
		}
	}
	for _, name := range sortedKeys(overlays) {
		for _, a := range overlays[name] {
			flag, _, _ := strings.Cut(a, "=")
			if !bytes.Contains(flagsDoc, []byte("| `"+flag+"` |")) {
				t.Errorf("overlay %s: %s is not a flag of docs/configuration.md", name, flag)
			}
		}
	}

	t.Run("ServerDryRun", func(t *testing.T) {
		l := needLab(t)
		ctx := context.Background()
		for _, name := range sortedKeys(rendered) {
			f := filepath.Join(t.TempDir(), strings.NewReplacer("/", "-", " ", "-").Replace(name)+".yaml")
			if err := os.WriteFile(f, []byte(rendered[name]), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := l.Kubectl(ctx, "apply", "--server-side", "--dry-run=server", "--force-conflicts",
				"--field-manager=canopy-e2e-ship", "--validate=strict", "-f", f)
			if err != nil {
				t.Errorf("overlay %s: kubectl apply --server-side --dry-run=server: %v", name, err)
				continue
			}
			n := strings.Count(out, "serverside-applied (server dry run)")
			if n != len(baseRest) {
				t.Errorf("overlay %s: %d of %d objects applied (dry run):\n%s", name, n, len(baseRest), out)
			}
		}
		// Nothing was stored.
		if out, err := l.Kubectl(ctx, "get", "daemonset", "-n", "kube-system", "canopy", "--ignore-not-found", "-o", "name"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("the dry run stored the DaemonSet: %q %v", out, err)
		}
	})
}

// ---------------------------------------------------------------------------------------------------------
// ToR recipes

// recipe returns the fenced block between <!-- BEGIN RECIPE name and <!-- END RECIPE name --> in
// docs/tor-recipes.md.
func recipe(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../docs/tor-recipes.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i := strings.Index(doc, "<!-- BEGIN RECIPE "+name+" ")
	j := strings.Index(doc, "<!-- END RECIPE "+name+" -->")
	if i < 0 || j < i {
		t.Fatalf("docs/tor-recipes.md: no recipe %s between markers", name)
	}
	block := doc[i:j]
	k := strings.Index(block, "```")
	if k < 0 {
		t.Fatalf("recipe %s: no fenced block", name)
	}
	block = block[k:]
	block = block[strings.Index(block, "\n")+1:]
	end := strings.LastIndex(block, "```")
	if end < 0 {
		t.Fatalf("recipe %s: fenced block not closed", name)
	}
	return block[:end]
}

// frrBlock returns the normalised lines of the block that starts with a line beginning with start (at column 0)
// and ends with the first "exit" at column 0: spaces trimmed and collapsed, comments and blank lines dropped.
func frrBlock(conf, start string) []string {
	var out []string
	in := false
	for _, l := range strings.Split(conf, "\n") {
		if !in && strings.HasPrefix(l, start) {
			in = true
		}
		if !in {
			continue
		}
		n := strings.Join(strings.Fields(l), " ")
		if n != "" && !strings.HasPrefix(n, "!") {
			out = append(out, n)
		}
		if l == "exit" {
			break
		}
	}
	return out
}

// installExample returns the example overlay of docs/install.md (the fenced block between its markers).
func installExample(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../docs/install.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, "<!-- BEGIN EXAMPLE overlay"), strings.Index(doc, "<!-- END EXAMPLE overlay -->")
	if i < 0 || j < i {
		t.Fatal("docs/install.md: no example overlay between markers")
	}
	block := doc[i:j]
	block = block[strings.Index(block, "```"):]
	block = block[strings.Index(block, "\n")+1:]
	return block[:strings.LastIndex(block, "```")]
}

// TestShipToRRecipes runs the tested recipes of docs/tor-recipes.md in the lab.
func TestShipToRRecipes(t *testing.T) {
	// The FRR recipe is the lab's ToR: its router bgp and bfd blocks, line for line (normalised), are those of
	// the configuration the lab's bgpd and bfdd run — which every e2e test peers with.
	t.Run("FRR", func(t *testing.T) {
		l := needLab(t)
		doc := recipe(t, "frr")
		for _, c := range []struct{ file, start string }{{"bgpd.conf", "router bgp "}, {"bfdd.conf", "bfd"}} {
			b, err := os.ReadFile(filepath.Join(l.ToR.Dir, c.file))
			if err != nil {
				t.Fatal(err)
			}
			want, got := frrBlock(string(b), c.start), frrBlock(doc, c.start)
			if len(want) == 0 {
				t.Fatalf("the lab's %s has no %q block", c.file, c.start)
			}
			if !slices.Equal(got, want) {
				t.Errorf("docs/tor-recipes.md FRR %q block differs from the lab ToR's %s:\n doc: %q\n lab: %q", c.start, c.file, got, want)
			}
		}
		// The lab's ToR is up with every node on this configuration.
		if err := l.ToR.WaitEstablished(context.Background(), nodeIPs(l.Nodes...)...); err != nil {
			t.Fatal(err)
		}
	})

	// BIRD runs the recipe as written, on a new host of the rack; every node peers with it through
	// canopy.io/peers (with the GTSM and BFD the recipe asks for), and BIRD must learn each node's pod CIDR with
	// that node as next hop, install it in its kernel, and have BFD up with every node.
	t.Run("BIRD", func(t *testing.T) {
		l := needLab(t)
		for _, b := range []string{"bird", "birdc"} {
			if _, err := exec.LookPath(b); err != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("%s: %v (hack/install-deps.sh installs bird2)", b, err)
				}
				t.Skipf("%s: %v (apt-get install bird2)", b, err)
			}
		}
		ctx := context.Background()
		conf := recipe(t, "bird")
		m := regexp.MustCompile(`local as (\d+);`).FindStringSubmatch(conf)
		if m == nil {
			t.Fatal("BIRD recipe: no local as")
		}
		dir := t.TempDir()
		path, sock := filepath.Join(dir, "bird.conf"), filepath.Join(dir, "bird.ctl")
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("bird", "-p", "-c", path).CombinedOutput(); err != nil {
			t.Fatalf("bird -p: the recipe does not parse: %v: %s", err, out)
		}
		h, err := l.AddFabricHost(ctx, "shipbird")
		if err != nil {
			t.Fatal(err)
		}
		p, err := h.Start("bird", "bird", "-f", "-c", path, "-s", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Stop(5 * time.Second) }) // after the annotations are gone (cleanups run last first)
		birdc := func(ctx context.Context, args ...string) (string, error) {
			out, err := exec.CommandContext(ctx, "birdc", append([]string{"-s", sock}, args...)...).CombinedOutput()
			if err != nil {
				return "", fmt.Errorf("birdc %v: %v: %s", args, err, out)
			}
			return string(out), nil
		}
		for _, n := range l.Nodes {
			annotatePeers(t, l, n, fmt.Sprintf(`[{"ip":"%s","asn":%s,"ttlSecurity":true,"bfd":true}]`, h.IP, m[1]))
		}
		eventually(t, 60*time.Second, "BIRD learns every node's pod CIDR from that node", func(ctx context.Context) error {
			routes, err := birdc(ctx, "show", "route")
			if err != nil {
				return err
			}
			learned := parseBirdRoutes(routes)
			bfd, err := birdc(ctx, "show", "bfd", "sessions")
			if err != nil {
				return err
			}
			kernel, err := routesIn(ctx, h.Exec, "proto", "bird")
			if err != nil {
				return err
			}
			for _, n := range l.Nodes {
				if !slices.Equal(learned[n.PodCIDR], []netip.Addr{n.IP}) {
					return fmt.Errorf("BIRD has %s via %v, want via %s (%s):\n%s", n.PodCIDR, learned[n.PodCIDR], n.IP, n.Name, routes)
				}
				if !slices.Equal(kernel[n.PodCIDR], []netip.Addr{n.IP}) {
					return fmt.Errorf("BIRD's kernel has %s via %v, want via %s", n.PodCIDR, kernel[n.PodCIDR], n.IP)
				}
				if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(n.IP.String()) + `\s+\S+\s+Up\b`).MatchString(bfd) {
					return fmt.Errorf("no BFD session Up with %s:\n%s", n.IP, bfd)
				}
				st, err := neighbors(ctx, n)
				if err != nil {
					return err
				}
				if st[h.IP] != "ESTABLISHED" {
					return fmt.Errorf("%s: session with BIRD %s is %q", n.Name, h.IP, st[h.IP])
				}
			}
			return nil
		})
		protos, _ := birdc(ctx, "show", "protocols")
		t.Logf("BIRD (%s) with the recipe of docs/tor-recipes.md:\n%s", h.IP, protos)
	})
}

// parseBirdRoutes reads `birdc show route`: prefix → next hops (via …) of its routes, sorted.
func parseBirdRoutes(out string) map[netip.Prefix][]netip.Addr {
	res := map[netip.Prefix][]netip.Addr{}
	var cur netip.Prefix
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if p, err := netip.ParsePrefix(f[0]); err == nil && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") {
			cur = p
			continue
		}
		if len(f) >= 2 && f[0] == "via" && cur.IsValid() {
			if a, err := netip.ParseAddr(f[1]); err == nil && !slices.Contains(res[cur], a) {
				res[cur] = append(res[cur], a)
				slices.SortFunc(res[cur], func(a, b netip.Addr) int { return a.Compare(b) })
			}
		}
	}
	return res
}

// ---------------------------------------------------------------------------------------------------------
// The dashboard, the metrics and the Events

type grafanaDashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name, Type string
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type, UID string
	} `json:"datasource"`
	GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

// readDashboard decodes manifests/dashboard.json strictly enough to catch a broken one: every panel has an id
// (unique), a place, and (unless a row) the templated Prometheus data source and at least one query.
func readDashboard(t *testing.T) (grafanaDashboard, []string) {
	t.Helper()
	b, err := os.ReadFile("../manifests/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatal("manifests/dashboard.json is not valid JSON")
	}
	var d grafanaDashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion == 0 || len(d.Panels) == 0 {
		t.Errorf("dashboard: title %q, uid %q, schemaVersion %d, %d panels", d.Title, d.UID, d.SchemaVersion, len(d.Panels))
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" {
		t.Error("dashboard: no templated data source variable $datasource")
	}
	var exprs []string
	ids := map[int]bool{}
	var walk func(ps []grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if ids[p.ID] || p.ID == 0 {
				t.Errorf("panel %q: id %d missing or not unique", p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: data source %+v, want prometheus ${datasource}", p.Title, p.Datasource)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q: no query", p.Title)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q: empty query %s", p.Title, tg.RefID)
				}
				exprs = append(exprs, tg.Expr)
			}
		}
	}
	walk(d.Panels)
	return d, exprs
}

var promKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
	"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true}

// metricNames returns the metric names a PromQL expression selects: identifiers that are neither functions,
// keywords, label names (in braces or in by/without/on/ignoring lists), strings, durations nor variables.
func metricNames(expr string) []string {
	s := regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).ReplaceAllString(expr, `""`) // strings
	s = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(s, " ")              // label matchers
	s = regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(s, " ")             // ranges
	s = regexp.MustCompile(`\$\{?\w+\}?`).ReplaceAllString(s, " ")            // Grafana variables
	s = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`).ReplaceAllString(s, " ")
	var out []string
	for _, m := range regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`).FindAllString(s, -1) {
		if strings.HasSuffix(m, "(") {
			continue // a function or aggregation
		}
		if promKeywords[strings.ToLower(m)] {
			continue
		}
		out = append(out, m)
	}
	return out
}

// metricFamilies scrapes a /metrics page: family name → type.
func metricFamilies(ctx context.Context, h *lab.Host, url string) (map[string]string, error) {
	req, err := newRequest(ctx, url)
	if err != nil {
		return nil, err
	}
	resp, err := h.HTTPClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	fams := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			fams[f[2]] = f[3]
		}
	}
	return fams, nil
}

// seriesExists says whether name is a series of fams: a family, or the _bucket/_sum/_count of a histogram
// (_sum/_count of a summary).
func seriesExists(fams map[string]string, name string) bool {
	if typ, ok := fams[name]; ok && typ != "histogram" && typ != "summary" {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok {
			switch fams[base] {
			case "histogram":
				return true
			case "summary":
				return suf != "_bucket"
			}
		}
	}
	return false
}

// troubleshootingEvents are the Event reasons of docs/troubleshooting.md's table between its markers.
func troubleshootingEvents(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../docs/troubleshooting.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, "<!-- BEGIN EVENTS"), strings.Index(doc, "<!-- END EVENTS -->")
	if i < 0 || j < i {
		t.Fatal("docs/troubleshooting.md: no Events table between markers")
	}
	out := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(\\w+)` \\| (\\w+) \\|").FindAllStringSubmatch(doc[i:j], -1) {
		out[m[1]] = m[2]
	}
	return out
}

// TestShipDashboard checks manifests/dashboard.json (valid, every query's metric names well formed) and, in the
// lab, that every series it uses exists on a lab agent's or canopy-controller's /metrics. Series that appear
// only once something happened are made to appear first, each by the misbehaviour docs/troubleshooting.md
// describes: a route outside the allowed prefixes, a peer past its prefix limit, a malformed annotation, a
// refused Service, a write to the read-only admin API, a bad LoadBalancer IP request. The Warning Events those
// leave must be the ones docs/troubleshooting.md lists, on the objects it names.
func TestShipDashboard(t *testing.T) {
	_, exprs := readDashboard(t)
	names := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricNames(e) {
			if !regexp.MustCompile(`^(canopy|process|go)_[a-z0-9_]+$`).MatchString(n) {
				t.Errorf("query %q uses %q: not a Canopy, process or Go metric", e, n)
			}
			names[n] = true
		}
	}
	if len(names) < 20 {
		t.Fatalf("only %d metric names in the dashboard: the parser is broken? %v", len(names), sortedKeys(names))
	}
	t.Logf("the dashboard uses %d metric names", len(names))

	l := needLab(t)
	ctx := context.Background()
	n := l.Nodes[0]
	provokeEvents(t, l, n)

	agent, err := metricFamilies(ctx, &n.Host, "http://127.0.0.1:9469/metrics")
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := metricFamilies(ctx, l.CP, "http://127.0.0.1:9470/metrics")
	if err != nil {
		t.Fatalf("canopy-controller's metrics: %v", err)
	}
	for _, name := range sortedKeys(names) {
		if !seriesExists(agent, name) && !seriesExists(ctl, name) {
			t.Errorf("the dashboard uses %s, which neither the agent on %s nor canopy-controller exports", name, n.Name)
		}
	}
}

// provokeEvents makes node n's agent (and canopy-controller) count and report each kind of refusal, waits for
// the counters, and checks the Events against docs/troubleshooting.md.
func provokeEvents(t *testing.T, l *lab.Lab, n *lab.Node) {
	t.Helper()
	ctx := context.Background()
	documented := troubleshootingEvents(t)
	start := time.Now().Truncate(time.Second) // Events have whole seconds
	before, err := metrics(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	sum := func(m map[string]float64, prefix string) float64 {
		var v float64
		for k, x := range m {
			if strings.HasPrefix(k, prefix) {
				v += x
			}
		}
		return v
	}
	// hasSeries waits until the series starting with prefix rise above what they were before this test.
	hasSeries := func(what, prefix string) {
		base := sum(before, prefix)
		eventually(t, 30*time.Second, what, func(ctx context.Context) error {
			m, err := metrics(ctx, n)
			if err != nil {
				return err
			}
			if v := sum(m, prefix); v <= base {
				return fmt.Errorf("%s… is %v on %s, was %v", prefix, v, n.Name, base)
			}
			return nil
		})
	}

	// A malformed canopy.io/peers: refused whole, InvalidBGPAnnotation.
	annotatePeers(t, l, n, "not: [a list")
	hasSeries("the agent refuses a malformed canopy.io/peers", `canopy_bgp_invalid_input_total{source="node_annotation"}`)

	// A peer (gobgpd on a new host of the rack) that sends a prefix outside the allowed ones, then more
	// prefixes than its limit of 2: a rejected route, then a prefix-limit teardown and BGPPrefixLimit.
	h, err := l.AddFabricHost(ctx, "shipgbp")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := fmt.Sprintf(`[global.config]
  as = 65098
  router-id = "%[1]s"
  port = 179
  local-address-list = ["%[1]s"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "%[2]s"
    peer-as = 64512
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
`, h.IP, n.IP)
	if err := os.WriteFile(filepath.Join(dir, "gobgpd.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := h.Start("gobgpd", "gobgpd", "-f", filepath.Join(dir, "gobgpd.toml"), "--api-hosts", "127.0.0.1:50051", "--pprof-disable", "-l", "warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	annotatePeers(t, l, n, fmt.Sprintf(`[{"ip":"%s","asn":65098,"maxPrefixes":2}]`, h.IP))
	eventually(t, 30*time.Second, n.Name+" peers with gobgpd", func(ctx context.Context) error {
		st, err := neighbors(ctx, n)
		if err != nil {
			return err
		}
		if st[h.IP] != "ESTABLISHED" {
			return fmt.Errorf("session with %s is %q", h.IP, st[h.IP])
		}
		return nil
	})
	rib := func(prefix string) {
		if out, err := h.Exec(ctx, "gobgp", "global", "rib", "-a", "ipv4", "add", prefix); err != nil {
			t.Fatalf("gobgp global rib add %s: %v: %s", prefix, err, out)
		}
	}
	rib("192.0.2.0/24")
	hasSeries("the agent rejects a route outside the allowed prefixes", `canopy_bgp_rejected_routes_total{reason="outside_allowed"}`)
	for _, pfx := range []string{"100.64.0.1/32", "100.64.0.2/32", "100.64.0.3/32"} {
		rib(pfx)
	}
	hasSeries("the agent tears down a peer past its prefix limit", `canopy_bgp_prefix_limit_teardowns_total{peer="`+h.IP.String()+`"}`)

	// A write to the read-only admin API.
	if out, err := n.Exec(ctx, "gobgp", "global", "rib", "-a", "ipv4", "add", "192.0.2.99/32"); err == nil {
		t.Errorf("the admin API accepted a write: %s", out)
	}
	hasSeries("the admin API refuses a write", "canopy_bgp_admin_api_refused_total{")

	// A Service asking for what it may not have: an ExternalIP outside the range, a kind of VIP the operator
	// does not announce, an unknown scheduler, a LoadBalancer IP that is not an address.
	svc := webService("ship-refused", "ship-refused")
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP}}
	svc.Spec.ExternalIPs = []string{"192.0.2.10"}
	svc.Annotations = map[string]string{"canopy.io/advertise": "cluster-ip", "canopy.io/scheduler": "bogus",
		"canopy.io/loadbalancer-ips": "not-an-address"}
	if _, err := l.Kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.Kube.CoreV1().Services("default").Delete(context.Background(), svc.Name, metav1.DeleteOptions{})
	})
	hasSeries("the agent refuses the Service's settings", "canopy_service_invalid_input_total{")

	// The Events: each one provoked above, on the kind of object the doc names.
	want := map[string]string{"InvalidBGPAnnotation": "Node", "BGPPrefixLimit": "Node", "ExternalIPRefused": "Service",
		"ServiceVIPNotAdvertised": "Service", "InvalidServiceProxyConfig": "Service", "InvalidLoadBalancerIPRequest": "Service"}
	eventually(t, 30*time.Second, "the Warning Events of docs/troubleshooting.md", func(ctx context.Context) error {
		evs, err := l.Kube.CoreV1().Events("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, e := range evs.Items {
			o := e.InvolvedObject
			if e.LastTimestamp.Time.Before(start) && e.EventTime.Time.Before(start) {
				continue // an earlier test's
			}
			if (o.Kind == "Node" && o.Name == n.Name) || (o.Kind == "Service" && o.Name == svc.Name && o.Namespace == "default") {
				if e.Type == corev1.EventTypeWarning {
					got[e.Reason] = o.Kind
				}
			}
		}
		var missing []string
		for reason, kind := range want {
			if got[reason] != kind {
				missing = append(missing, reason+" on a "+kind)
			}
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			return fmt.Errorf("no Warning Event %v (have %v)", missing, got)
		}
		return nil
	})
	for reason, kind := range want {
		if documented[reason] != kind {
			t.Errorf("docs/troubleshooting.md: Event %s on a %s is not in its Events table (it has %v)", reason, kind, documented)
		}
	}
}

// ---------------------------------------------------------------------------------------------------------
// The documents' links

// TestShipDocLinks: every relative link of the shipping documents points at a file that exists and, with a
// #fragment, at one of its headings (GitHub's anchors).
func TestShipDocLinks(t *testing.T) {
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	docs, err := filepath.Glob("../docs/*.md")
	if err != nil || len(docs) == 0 {
		t.Fatalf("docs/*.md: %v", err)
	}
	for _, doc := range append(docs, "../README.md") {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Dir(doc)
		doc = filepath.Base(doc)
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") {
				continue
			}
			file, frag, _ := strings.Cut(target, "#")
			if file == "" {
				file = doc
			}
			path := filepath.Join(dir, file)
			body, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%s links to %s: %v", doc, target, err)
				continue
			}
			if frag != "" && !strings.HasSuffix(file, "/") && !slices.Contains(headingAnchors(string(body)), frag) {
				t.Errorf("%s links to %s: no heading with that anchor in %s", doc, target, file)
			}
		}
	}
}

// headingAnchors returns GitHub's anchors of a markdown document's headings (outside code blocks).
func headingAnchors(md string) []string {
	var out []string
	inCode := false
	for _, l := range strings.Split(md, "\n") {
		if strings.HasPrefix(l, "```") {
			inCode = !inCode
			continue
		}
		if inCode || !strings.HasPrefix(l, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(l, "#")))
		var b strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
				b.WriteRune(r)
			}
		}
		out = append(out, b.String())
	}
	return out
}
