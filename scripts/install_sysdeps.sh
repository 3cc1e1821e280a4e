#!/usr/bin/env bash
# Install the system packages the tests (and the bench) talk to, and what mypyc needs to
# compile splice, when they are missing.
# Needs root for apt-get; without root it says what to install and fails.
set -euo pipefail
need=()
command -v curl     >/dev/null || need+=(curl)
command -v openssl  >/dev/null || need+=(openssl)
command -v caddy    >/dev/null || need+=(caddy)
command -v nginx    >/dev/null || need+=(nginx-light)
command -v ip       >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strace   >/dev/null || need+=(strace)
# mypyc's C: a compiler, and the headers of the Python the venv is made from
command -v cc       >/dev/null || need+=(gcc)
"${PYTHON:-python3}" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)
if [ "${#need[@]}" -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "installing: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the nginx and caddy packages start system services; the tests run their own
for svc in nginx caddy; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
