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
addrs= elastic=
if grep -q '^NodeName=.*@ADDRS@' "$root/opt/mpicloud/slurm.conf.in"; then
  elastic=1
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
if [ -z "$elastic" ]; then
  systemctl enable --now slurmd  # a fixed cluster: every node runs jobs
elif [ "$role" = worker ]; then
  # an elastic head runs no jobs (no slurmd). A compute node's first slurmd after this boot reports a fresh boot
  # (-b): Slurm 22.05 ends a power-up only when the node reports a boot newer than the request, and a VM created
  # up front (Azure) may have booted before Slurm asked it up while its first boot (packages, secrets, /shared)
  # still ran. Later starts report the real boot: a slurmd restarted under running jobs is no reboot.
  dropin=$root/run/systemd/system/slurmd.service.d
  install -d -m 755 "$dropin"
  printf '[Service]\nExecStart=\nExecStart=/usr/sbin/slurmd -D -s -b $SLURMD_OPTIONS\n' > "$dropin/mpicloud-boot.conf"
  systemctl daemon-reload
  systemctl enable --now slurmd
  rm -f "$dropin/mpicloud-boot.conf"
  systemctl daemon-reload
fi
