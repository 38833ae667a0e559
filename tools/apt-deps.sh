#!/usr/bin/env bash
# Install the Debian packages that tests, benchmarks and the demo need, only if
# missing. apt-get update runs at most once, and only when something is missing.
set -euo pipefail
# gcc, libc6-dev and python3-dev: the mypyc build of the proxy's hot path (tools/native/);
# libssl-dev: OpenSSL's headers for its C cookie MAC (limpet/proxy/session/native_mac.c);
# valgrind: `bench proxy_instructions` counts instructions a request with callgrind;
# linux-perf: `bench proxy_cpu --where` samples where a request's CPU time goes.
packages=(iproute2 procps haproxy nginx-light caddy wrk shellcheck prometheus redis-server
  gcc libc6-dev python3-dev libssl-dev valgrind linux-perf)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or install them yourself)" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts nginx, haproxy, caddy and prometheus as services on install (where an
# init system runs); the benchmarks and tests run their own instances on loopback ports, so the services just
# installed are stopped through the init system, which stops only its own instance.
for p in "${missing[@]}"; do
  case "$p" in
    nginx-light) svc=nginx ;;
    haproxy | caddy | prometheus | redis-server) svc=$p ;;
    *) continue ;;
  esac
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  elif [[ -x /etc/init.d/$svc ]]; then
    /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
  fi
done
