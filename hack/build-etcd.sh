#!/usr/bin/env bash
# Builds etcd for the test control plane from the Go module proxy (go.etcd.io/etcd/server/v3's etcdmain behind a
# one-line main) and caches it by version outside the repo, in $CANOPY_CACHE/etcd-$ETCD_VERSION/etcd. Debian's
# etcd-server (3.4.23) is older than Kubernetes 1.35 supports, and lacks the progress requests the API server
# needs to stream an informer's first list (watch-list: on by default in client-go 1.35 and kube-apiserver
# 1.34+): against it every informer falls back to a whole LIST, which is not how the agent starts in a cluster
# of today. Idempotent. Prints the binary's path on its last line.
set -euo pipefail
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE=${CANOPY_CACHE:-/var/cache/canopy}
OUT="$CACHE/etcd-$ETCD_VERSION"

if [ -x "$OUT/etcd" ]; then echo "$OUT/etcd"; exit 0; fi

mkdir -p "$OUT"
exec 9>"$CACHE/.etcd-build.lock"
flock 9
if [ -x "$OUT/etcd" ]; then echo "$OUT/etcd"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "build-etcd: building etcd $ETCD_VERSION into $OUT (cold: ~2 min on 2 cores)" >&2
cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
printf 'module canopy.io/etcd-test-bin\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
GOFLAGS=-mod=mod go mod tidy >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" . >&2
"$OUT/etcd.tmp" --version >&2
mv "$OUT/etcd.tmp" "$OUT/etcd"
echo "$OUT/etcd"
