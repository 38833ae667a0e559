#!/usr/bin/env bash
# Build helm from Go modules (helm.sh/helm/v4, pinned in go.mod) into $OUT
# (default: <repo>/.cache/bin, next to the control plane), and helm3 from
# helm.sh/helm/v3 (the tests check the chart with both majors). Rebuilds only when
# go.mod, go.sum or this script change: .helm.stamp holds the hash of those inputs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/../../.cache/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

version="$(grep -oE 'helm\.sh/helm/v4 v[^ ]+' "$here/go.mod" | head -n1 | cut -d' ' -f2)"
version3="$(grep -oE 'helm\.sh/helm/v3 v[^ ]+' "$here/go.mod" | head -n1 | cut -d' ' -f2)"
k8s_minor="$(grep -oE 'k8s\.io/client-go v0\.[0-9]+' "$here/go.mod" | head -n1 | cut -d. -f3)"
stamp_input="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$out/.helm.stamp" && "$(cat "$out/.helm.stamp")" == "$stamp_input" \
      && -x "$out/helm" && -x "$out/helm3" ]]; then
  echo "helm up to date in $out ($version, helm3 $version3)"
  exit 0
fi

# The version stamps upstream's Makefiles set, so `helm version` tells the truth (helm 3
# also takes the Kubernetes version its lint rules check against).
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
ldflags3="-s -w -X helm.sh/helm/v3/internal/version.version=$version3"
ldflags3+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags3+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

cd "$here"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
start=$(date +%s)
echo "building helm $version and helm3 $version3 into $out"
go build -trimpath -ldflags "$ldflags" -o "$out/helm" helm.sh/helm/v4/cmd/helm
go build -trimpath -ldflags "$ldflags3" -o "$out/helm3" helm.sh/helm/v3/cmd/helm
echo "$stamp_input" > "$out/.helm.stamp"
echo "built in $(( $(date +%s) - start ))s:"
ls -l "$out/helm" "$out/helm3"
