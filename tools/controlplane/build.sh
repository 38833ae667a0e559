#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl
# from Go modules into $OUT (default: <repo>/.cache/bin). Rebuilds only when
# go.mod, go.sum, tools.go, this script or the etcd wrapper change: a stamp file
# holds the hash of those inputs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/../../.cache/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

k8s_version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod" | head -n1)"
stamp_input="$(cat "$here/go.mod" "$here/go.sum" "$here/tools.go" "$here/build.sh" \
  "$here/cmd/etcd/main.go" | sha256sum | cut -d' ' -f1)"
commands=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
up_to_date=yes
for bin in etcd "${commands[@]}"; do
  [[ -x "$out/$bin" ]] || up_to_date=no
done
if [[ $up_to_date == yes && -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp_input" ]]; then
  echo "control plane binaries up to date in $out ($k8s_version)"
  exit 0
fi

major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

cd "$here"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
start=$(date +%s)
echo "building control plane $k8s_version into $out (cold build takes several minutes)"
for bin in "${commands[@]}"; do
  t=$(date +%s)
  go build -trimpath -ldflags "$ldflags" -o "$out/$bin" "k8s.io/kubernetes/cmd/$bin"
  echo "  $bin: $(( $(date +%s) - t ))s"
done
t=$(date +%s)
go build -trimpath -ldflags "-s -w" -o "$out/etcd" ./cmd/etcd
echo "  etcd: $(( $(date +%s) - t ))s"
echo "$stamp_input" > "$out/.stamp"
echo "built in $(( $(date +%s) - start ))s:"
ls -l "$out/etcd" "${commands[@]/#/$out/}"
