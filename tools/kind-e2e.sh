#!/usr/bin/env bash
# make kind-e2e: Limpet on a real (kind) cluster, from image build to tear-down.
#
#   1. create a kind cluster;
#   2. build the image (Dockerfile) and load it into the cluster;
#   3. apply deploy/overlays/kind (CRDs, RBAC, operator) and examples/ (counter app,
#      StickyService, Ingress), and wait for everything to be ready;
#   4. smoke scenario through the proxies (kubectl port-forward): simulated users with
#      real sessions while the app scales 3 -> 5 and one pod terminates; no session
#      may break;
#   5. the admin NetworkPolicy: a pod in the app's namespace reaches a proxy's traffic
#      port but not its admin port (kind's kindnet enforces NetworkPolicy since v0.24);
#   6. delete the cluster (KEEP_CLUSTER=1 keeps it for a look around).
#
# Needs docker (a running engine), kind and kubectl on PATH (kubectl falls back to the
# one in .cache/bin), and python3 for the stdlib smoke client. The development machine
# of this project has no Docker engine, so this does not run in `make test`; the tests
# check only its syntax (bash -n, shellcheck).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER:-limpet-e2e}
IMAGE=${IMAGE:-limpet:dev}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
SMOKE_SECONDS=${SMOKE_SECONDS:-90}
DEMO_NS=limpet-demo
PROXY_SERVICE=counter-proxy
PROXY_DEPLOYMENT=counter-proxy
LOCAL_PORT=${LOCAL_PORT:-18080}

say() { printf '\n== %s\n' "$*"; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 1; }

KUBECTL=${KUBECTL:-}
if [[ -z $KUBECTL ]]; then
  if command -v kubectl >/dev/null; then KUBECTL=kubectl; else KUBECTL=$ROOT/.cache/bin/kubectl; fi
fi
for tool in docker kind python3; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH (see README.md, quick start on kind)"
done
[[ -x $KUBECTL ]] || command -v "$KUBECTL" >/dev/null || die "no kubectl (set KUBECTL=...)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"

WORK=$(mktemp -d)
KUBECONFIG=$WORK/kubeconfig
export KUBECONFIG
PF_PID=""
SMOKE_PID=""

cleanup() {
  local rc=$?
  local pid
  for pid in "$SMOKE_PID" "$PF_PID"; do
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; fi
  done
  if ((rc != 0)); then
    echo "kind-e2e failed; operator log tail:" >&2
    "$KUBECTL" -n limpet-system logs deploy/limpet-operator --tail=50 >&2 2>/dev/null || true
  fi
  if [[ $KEEP_CLUSTER == 1 ]]; then
    echo "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s

say "image $IMAGE"
docker build --tag "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

say "operator (deploy/overlays/kind)"
"$KUBECTL" apply --server-side -k "$ROOT/deploy/overlays/kind"
"$KUBECTL" -n limpet-system rollout status deploy/limpet-operator --timeout=180s

say "sample app (examples/)"
# examples/ names the released image; point it at the one just loaded.
mkdir -p "$WORK/examples"
cat >"$WORK/examples/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $ROOT/examples
images:
  - name: ghcr.io/limpet-dev/limpet
    newName: ${IMAGE%:*}
    newTag: ${IMAGE##*:}
EOF
"$KUBECTL" apply --server-side -k "$WORK/examples"
"$KUBECTL" -n "$DEMO_NS" rollout status deploy/counter --timeout=180s
"$KUBECTL" -n "$DEMO_NS" wait stickyservice/counter --for=condition=Ready --timeout=180s
"$KUBECTL" -n "$DEMO_NS" rollout status "deploy/$PROXY_DEPLOYMENT" --timeout=180s

say "smoke: ${SMOKE_SECONDS}s of sessions while scaling 3 -> 5 and draining one pod"
"$KUBECTL" -n "$DEMO_NS" port-forward "svc/$PROXY_SERVICE" "$LOCAL_PORT:http" >"$WORK/pf.log" 2>&1 &
PF_PID=$!
for _ in $(seq 50); do
  if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$LOCAL_PORT" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
python3 "$ROOT/operator/limpet/demo/smoke.py" --url "http://127.0.0.1:$LOCAL_PORT/" \
  --users 30 --duration "$SMOKE_SECONDS" --think 0.5 --min-pods 3 >"$WORK/smoke.json" &
SMOKE_PID=$!
sleep $((SMOKE_SECONDS / 4))
"$KUBECTL" -n "$DEMO_NS" scale deploy/counter --replicas=5
"$KUBECTL" -n "$DEMO_NS" rollout status deploy/counter --timeout=120s
sleep $((SMOKE_SECONDS / 4))
victim=$("$KUBECTL" -n "$DEMO_NS" get pods -l app.kubernetes.io/name=counter -o jsonpath='{.items[0].metadata.name}')
echo "terminating $victim (drain)"
"$KUBECTL" -n "$DEMO_NS" delete pod "$victim" --wait=false
smoke_rc=0
wait "$SMOKE_PID" || smoke_rc=$?
SMOKE_PID=""
cat "$WORK/smoke.json"
"$KUBECTL" -n "$DEMO_NS" get stickyservice counter -o wide
((smoke_rc == 0)) || die "smoke failed: sessions broke or requests failed"

# probe NAME ADDRESS PORT: a one-shot pod (restricted profile, the image just loaded)
# that tries one TCP connection; prints the pod's final phase (Succeeded = connected).
probe() {
  local name=$1 address=$2 port=$3 phase=""
  "$KUBECTL" -n "$DEMO_NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, labels: {app.kubernetes.io/name: limpet-e2e-probe}}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: probe
      image: $IMAGE
      imagePullPolicy: Never
      command: [python3, -c, "import socket; socket.create_connection(('$address', $port), 5)"]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
EOF
  for _ in $(seq 60); do
    phase=$("$KUBECTL" -n "$DEMO_NS" get pod "$name" -o jsonpath='{.status.phase}')
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 1
  done
  "$KUBECTL" -n "$DEMO_NS" delete pod "$name" --wait=false >/dev/null
  echo "$phase"
}

say "admin port closed to everyone but the operator (NetworkPolicy)"
proxy_ip=$("$KUBECTL" -n "$DEMO_NS" get pods -l app.kubernetes.io/name=limpet-proxy \
  -o jsonpath='{.items[0].status.podIP}')
[[ -n $proxy_ip ]] || die "no proxy pod IP"
traffic=$(probe limpet-e2e-traffic "$proxy_ip" 8080)
admin=$(probe limpet-e2e-admin "$proxy_ip" 9901)
echo "traffic port: $traffic, admin port: $admin"
[[ $traffic == Succeeded ]] || die "a pod could not reach the proxy's traffic port ($traffic)"
[[ $admin == Failed ]] || die "a pod reached the proxy's admin port ($admin): is NetworkPolicy enforced by this CNI?"
say "kind-e2e passed"
