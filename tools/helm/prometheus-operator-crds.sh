#!/usr/bin/env bash
# Fetch the Prometheus Operator's CRDs (PodMonitor, ServiceMonitor, PrometheusRule) from
# their upstream YAML, through the Go module proxy: the module
# github.com/prometheus-operator/prometheus-operator ships them in
# example/prometheus-operator-crd/. The version and the module's checksum are pinned
# here; the files land in $OUT (default <repo>/.cache/prometheus-operator-crds), and a
# stamp skips the work when nothing changed. The chart's monitoring objects are tested
# against them (tests/deploy/test_helm_monitoring.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/../../.cache/prometheus-operator-crds}"
module="github.com/prometheus-operator/prometheus-operator"
version="v0.85.0"
sum="h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s="
crds=(podmonitors servicemonitors prometheusrules)

mkdir -p "$out"
out="$(cd "$out" && pwd)"
stamp="$version $sum ${crds[*]}"
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" ]]; then
  echo "Prometheus Operator CRDs up to date in $out ($version)"
  exit 0
fi
info="$(cd "$here" && GOFLAGS=-mod=mod go mod download -json "$module@$version")"
got_sum="$(grep -oE '"Sum": *"[^"]+"' <<<"$info" | cut -d'"' -f4)"
dir="$(grep -oE '"Dir": *"[^"]+"' <<<"$info" | cut -d'"' -f4)"
if [[ "$got_sum" != "$sum" ]]; then
  echo "checksum mismatch for $module@$version: got $got_sum, want $sum" >&2
  exit 1
fi
for crd in "${crds[@]}"; do
  install -m 0644 "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$out/"
done
echo "$stamp" > "$out/.stamp"
echo "Prometheus Operator $version CRDs in $out: ${crds[*]}"
