#!/usr/bin/env bash
# Install the Debian packages mpicloud's local cluster and tests need (only what is missing; root only).
set -euo pipefail
want=(openssh-server openssh-client openmpi-bin libopenmpi-dev samba smbclient cifs-utils squid dante-server
      pigz pbzip2 zstd iproute2 procps util-linux cloud-init
      slurmctld slurmd slurm-client munge libpmix-dev
      python3-boto3 python3-azure-storage nodejs)
#: the Azure Storage emulator the tests run (npm), pinned
AZURITE=azurite@3.35.0
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
command -v npm >/dev/null || missing+=(npm)  # nodejs from NodeSource brings its own npm
need_azurite=$(command -v azurite-blob >/dev/null || echo yes)
[ ${#missing[@]} -eq 0 ] && [ -z "$need_azurite" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}${need_azurite:+ and the npm package $AZURITE}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}${need_azurite:+; sudo npm install -g $AZURITE}" >&2
  exit 1
fi
if [ ${#missing[@]} -eq 0 ]; then
  npm install -g --no-fund --no-audit "$AZURITE"
  exit 0
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Package scripts must not start daemons: mpicloud's local clusters and tests run their own instances.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -q --no-install-recommends "${missing[@]}"
for svc in smbd nmbd squid danted ssh; do
  (command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1) || true
  (command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1) || true
done
# Not `service slurmd stop`: Debian's init scripts stop every slurmd/slurmctld by executable name, which
# would also end the local clusters' own daemons. Stop only the packaged instances, by their PID files.
for svc in munge slurmctld slurmd; do
  (command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1) || true
done
for pidfile in /run/munge/munged.pid /run/slurmctld.pid /run/slurmd.pid; do
  [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
[ -z "$need_azurite" ] || npm install -g --no-fund --no-audit "$AZURITE"
