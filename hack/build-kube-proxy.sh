#!/usr/bin/env bash
# Builds kube-proxy (the reference service proxy the e2e benchmark BenchmarkProxySideBySide times Canopy against)
# from the Go module proxy, the same way hack/build-k8s.sh builds the control plane: a wrapper module requiring
# k8s.io/kubernetes with one replace per staging module, and the version ldflags. The binary is cached next to
# the control plane's, in $CANOPY_CACHE/k8s-$K8S_VERSION/kube-proxy; only its own presence is checked, so an
# existing control-plane cache is never rebuilt. Idempotent. Prints the directory holding the binary on its last
# line.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.35.4}
CACHE=${CANOPY_CACHE:-/var/cache/canopy}
OUT="$CACHE/k8s-$K8S_VERSION"
BIN=kube-proxy

if [ -x "$OUT/$BIN" ]; then echo "$OUT"; exit 0; fi

mkdir -p "$OUT"
exec 9>"$CACHE/.kube-proxy-build.lock"
flock 9
if [ -x "$OUT/$BIN" ]; then echo "$OUT"; exit 0; fi

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
staging="v0.${K8S_VERSION#v1.}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "build-kube-proxy: building kube-proxy $K8S_VERSION into $OUT (cold: ~2 min on 2 cores, less after build-k8s.sh)" >&2
go mod download -json "k8s.io/kubernetes@$K8S_VERSION" > dl.json
kmod=$(sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p' dl.json)
{
  echo "module canopy.io/k8s-test-bins"
  echo
  echo "go 1.25.0"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging' "$kmod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  echo
  echo "tool k8s.io/kubernetes/cmd/$BIN"
} > go.mod
GOFLAGS=-mod=mod go mod tidy >&2
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$OUT/$BIN.tmp" "k8s.io/kubernetes/cmd/$BIN" >&2
mv "$OUT/$BIN.tmp" "$OUT/$BIN"
echo "$OUT"
