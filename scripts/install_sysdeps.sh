#!/usr/bin/env bash
# Install the system packages the tests (and the bench) talk to, when they are missing.
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
