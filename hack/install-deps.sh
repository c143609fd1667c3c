#!/usr/bin/env bash
# Installs the Debian packages the tests and the lab need. Idempotent: does nothing when all are present.
set -euo pipefail
PKGS=(iproute2 iptables ipset nftables iputils-ping socat conntrack tcpdump frr bird2 gobgpd openssl procps psmisc)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages may start services on a machine with systemd; the lab runs its own instances in namespaces.
for svc in frr bird gobgpd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true; systemctl disable "$svc" >/dev/null 2>&1 || true
  fi
done
echo "install-deps: done"
