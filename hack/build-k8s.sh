#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager, kubectl) from the Go module proxy
# and caches the binaries by version outside the repo. Idempotent: a cached version is reused.
# Prints the directory holding the binaries on its last line.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.35.4}
CACHE=${CANOPY_CACHE:-/var/cache/canopy}
OUT="$CACHE/k8s-$K8S_VERSION"
BINS=(kube-apiserver kube-controller-manager kubectl)

have_all() { for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "$OUT"; exit 0; fi

mkdir -p "$OUT"
exec 9>"$CACHE/.k8s-build.lock"
flock 9
if have_all; then echo "$OUT"; exit 0; fi

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
staging="v0.${K8S_VERSION#v1.}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "build-k8s: building Kubernetes $K8S_VERSION control plane into $OUT (cold: ~7 min on 2 cores)" >&2
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
  echo "tool ("
  echo "  k8s.io/kubernetes/cmd/kube-apiserver"
  echo "  k8s.io/kubernetes/cmd/kube-controller-manager"
  echo "  k8s.io/kubectl"  # placeholder, replaced below
  echo ")"
} > go.mod
# kubectl's main lives in k8s.io/kubernetes/cmd/kubectl.
sed -i 's#  k8s.io/kubectl  *$#  k8s.io/kubernetes/cmd/kubectl#; s#  k8s.io/kubectl$#  k8s.io/kubernetes/cmd/kubectl#' go.mod
GOFLAGS=-mod=mod go mod tidy >&2
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
for b in "${BINS[@]}"; do
  echo "build-k8s: $b" >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2
  mv "$OUT/$b.tmp" "$OUT/$b"
done
echo "$OUT"
