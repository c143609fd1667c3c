#!/usr/bin/env bash
# Regenerates what controller-gen makes from the canopy.io API types (api/v1alpha1):
#   api/v1alpha1/zz_generated.deepcopy.go   DeepCopy methods (runtime.Object)
#   manifests/crds/canopy.io_*.yaml         the CustomResourceDefinitions (OpenAPI schema, CEL rules, columns)
# controller-gen is pinned in hack/tools/go.mod (its own module: the agent's go.mod does not change).
#
# Usage: hack/gen-crds.sh [OUT]
#   OUT (default: the repository) receives the files at the same relative paths; the freshness test
#   (api/v1alpha1) writes into a temporary OUT and compares with the committed files.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root}
mkdir -p "$out"
out=$(cd "$out" && pwd)
GO=${GO:-go}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Built from the tools module (cached by the go build cache after the first time).
"$GO" -C "$root/hack/tools" build -o "$tmp/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen

cd "$root"
"$tmp/controller-gen" \
	object paths=./api/... output:object:dir="$tmp/object" \
	crd paths=./api/... output:crd:dir="$tmp/crds"

mkdir -p "$out/api/v1alpha1" "$out/manifests/crds"
cp "$tmp/object/zz_generated.deepcopy.go" "$out/api/v1alpha1/zz_generated.deepcopy.go"
# Replace the generated CRDs as a whole, so a renamed or removed kind leaves no stale file behind.
rm -f "$out"/manifests/crds/canopy.io_*.yaml
cp "$tmp"/crds/canopy.io_*.yaml "$out/manifests/crds/"
