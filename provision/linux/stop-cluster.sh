#!/bin/bash
# mpicloud idle shutdown: halt every worker over the intra-cluster SSH key, then the head node itself.
# With InstanceInitiatedShutdownBehavior=stop (the EC2 default) a halt stops the instance (disks kept).
# MPICLOUD_SYSROOT (tests only) prefixes /etc.
set -uo pipefail
while read -r host _; do
  [ "$host" = node0 ] && continue
  ssh -o BatchMode=yes -o ConnectTimeout=10 "$host" sudo -n /sbin/shutdown -h now || true
done < "${MPICLOUD_SYSROOT:-}/etc/mpicloud/hostfile"
sudo -n /sbin/shutdown -h now
