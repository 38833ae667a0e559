#!/usr/bin/env bash
# Build helm from Go modules (helm.sh/helm/v4, pinned in go.mod) into $OUT
# (default: <repo>/.cache/bin, next to the control plane). Rebuilds only when
# go.mod, go.sum or this script change: .helm.stamp holds the hash of those inputs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/../../.cache/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

version="$(grep -oE 'helm\.sh/helm/v4 v[^ ]+' "$here/go.mod" | head -n1 | cut -d' ' -f2)"
stamp_input="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$out/.helm.stamp" && "$(cat "$out/.helm.stamp")" == "$stamp_input" && -x "$out/helm" ]]; then
  echo "helm up to date in $out ($version)"
  exit 0
fi

# The same version stamp upstream's Makefile sets, so `helm version` tells the truth.
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

cd "$here"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
start=$(date +%s)
echo "building helm $version into $out"
go build -trimpath -ldflags "$ldflags" -o "$out/helm" helm.sh/helm/v4/cmd/helm
echo "$stamp_input" > "$out/.helm.stamp"
echo "built in $(( $(date +%s) - start ))s:"
ls -l "$out/helm"
