#!/bin/bash
# mpicloud shared volume (head node): the shared directory lives on its own EBS volume, which outlives the
# instance (a replaced head node gets the same volume and so the same results). Waits for the volume to show up,
# makes a file system only on a volume with no signature at all (blkid -p exit code 2), and mounts it by UUID.
# usage: shared-volume.sh DIR [DEVICE ...]   (the volume id MPICLOUD_SHARED_VOLUME from /etc/mpicloud/node.env;
# none: nothing to do. DEVICE: candidates besides the volume's NVMe name, default /dev/sdf /dev/xvdf)
# MPICLOUD_SYSROOT (tests only) prefixes /etc.
set -euo pipefail
dir=$1
shift
etc=${MPICLOUD_SYSROOT:-}/etc
. "$etc/mpicloud/node.env"
volume=${MPICLOUD_SHARED_VOLUME:-}
[ -n "$volume" ] || exit 0
candidates=("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volume//-/}" "${@:-/dev/sdf}")
[ $# -gt 0 ] || candidates+=(/dev/xvdf)
device=''
for _ in $(seq 120); do
  for candidate in "${candidates[@]}"; do
    if [ -b "$candidate" ]; then device=$(readlink -f "$candidate"); break 2; fi
  done
  sleep 5
done
[ -n "$device" ] || { echo "shared-volume.sh: volume $volume did not appear" >&2; exit 1; }
set +e
blkid -p "$device" >/dev/null 2>&1
found=$?
set -e
if [ "$found" = 2 ]; then
  mkfs.ext4 -q -L mpicloud-shared "$device"
elif [ "$found" != 0 ]; then
  echo "shared-volume.sh: cannot tell whether $device holds data (blkid exit $found); not formatting it" >&2
  exit 1
fi
uuid=$(blkid -p -s UUID -o value "$device")
mkdir -p "$dir"
grep -q "^UUID=$uuid " "$etc/fstab" || echo "UUID=$uuid $dir ext4 defaults,nofail,x-systemd.device-timeout=300s 0 2" >> "$etc/fstab"
findmnt -n -M "$dir" >/dev/null || mount -t ext4 "$device" "$dir"
