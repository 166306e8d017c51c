#!/bin/bash
# mpicloud Slurm on a cloud node (scheduler: slurm): the munge key cluster-secrets.sh fetched, slurm.conf for
# the node count and slots of this deployment, then munged, slurmctld (head node) and slurmd.
# usage: slurm-node.sh head|worker   (count and slots from /etc/mpicloud/node.env, the munge key in
# /etc/mpicloud/munge.key, the configuration template in /opt/mpicloud/slurm.conf.in)
# MPICLOUD_SYSROOT (tests only) prefixes /etc, /opt and /var; systemctl and chown come from PATH.
set -euo pipefail
role=$1
root=${MPICLOUD_SYSROOT:-}
. "$root/etc/mpicloud/node.env"
count=$MPICLOUD_COUNT slots=$MPICLOUD_SLOTS
[[ $count =~ ^[1-9][0-9]*$ && $slots =~ ^[1-9][0-9]*$ ]] || { echo "slurm-node.sh: bad count/slots" >&2; exit 2; }
install -d -m 755 "$root/etc/slurm" "$root/etc/munge"
# an elastic cluster's CLOUD nodes: node1..node<count-1> at the addresses /etc/hosts gives them (cluster-files.sh)
addrs=
if grep -q '^NodeName=.*@ADDRS@' "$root/opt/mpicloud/slurm.conf.in"; then
  [ "$count" -ge 2 ] || { echo "slurm-node.sh: an elastic cluster needs compute nodes" >&2; exit 2; }
  for ((i = 1; i < count; i++)); do
    addr=$(awk -v n="node$i" '$2 == n && $1 ~ /^[0-9.]+$/ {print $1; exit}' "$root/etc/hosts")
    [ -n "$addr" ] || { echo "slurm-node.sh: no address of node$i in /etc/hosts" >&2; exit 2; }
    addrs=${addrs:+$addrs,}$addr
  done
fi
sed -e "s/@LAST@/$((count - 1))/g" -e "s/@CPUS@/$slots/" -e "s/@ADDRS@/$addrs/" "$root/opt/mpicloud/slurm.conf.in" \
  > "$root/etc/slurm/slurm.conf"
chmod 644 "$root/etc/slurm/slurm.conf"
install -m 400 "$root/etc/mpicloud/munge.key" "$root/etc/munge/munge.key"
chown munge:munge "$root/etc/munge/munge.key"
install -d -m 755 -o slurm -g slurm "$root/var/lib/slurm/slurmctld" "$root/var/log/slurm"
install -d -m 755 "$root/var/lib/slurm/slurmd"
systemctl restart munge
if [ "$role" = head ]; then
  systemctl enable --now slurmctld
fi
systemctl enable --now slurmd
