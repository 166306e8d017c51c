#!/bin/bash
# mpicloud node identity and cluster files: /etc/hosts names node0..nodeN-1, MPICLOUD_NODE machine-wide,
# the Open MPI hostfile, and on the head node runner.json (N nodes of SLOTS slots, idle shutdown minutes, MPI
# settings for the node's RDMA device: EFA or InfiniBand).
# An elastic cluster's runner.base.json has a `pool`: runner.json keeps its nodes (the head, no slots) and its
# pool.aws gets the deployment's region, launch template and cluster name (instance tags, node-env.sh).
# usage: cluster-files.sh INDEX USER SHARED IP0 IP1 ... (N, SLOTS from /etc/mpicloud/node.env)
# INDEX auto (a worker of the CloudFormation template, whose nodes share one user data): the position of this
# node's private address (MPICLOUD_PRIVATE_IP) among IP1..; the host name is set to nodeINDEX then.
# MPICLOUD_SYSROOT (tests only) prefixes /etc, /opt and /sys.
set -euo pipefail
index=$1 user=$2 shared=$3
shift 3
root=${MPICLOUD_SYSROOT:-}
. "$root/etc/mpicloud/node.env"
count=$MPICLOUD_COUNT slots=$MPICLOUD_SLOTS
ips=("$@")
[ "${#ips[@]}" -ge "$count" ] || { echo "cluster-files.sh: $count nodes but ${#ips[@]} addresses" >&2; exit 2; }
if [ "$index" = auto ]; then
  for ((i = 1; i < count; i++)); do [ "${ips[$i]}" = "${MPICLOUD_PRIVATE_IP:-}" ] && index=$i && break; done
  [ "$index" != auto ] || { echo "cluster-files.sh: ${MPICLOUD_PRIVATE_IP:-?} is no worker address" >&2; exit 2; }
  echo "node$index" > "$root/etc/hostname"
  [ -n "$root" ] || hostnamectl set-hostname "node$index"
fi
install -d -m 755 "$root/etc/mpicloud"
: > "$root/etc/mpicloud/hostfile"
for ((i = 0; i < count; i++)); do
  grep -q " node$i\$" "$root/etc/hosts" || echo "${ips[$i]} node$i" >> "$root/etc/hosts"
  echo "node$i slots=$slots" >> "$root/etc/mpicloud/hostfile"
done
grep -q '^MPICLOUD_NODE=' "$root/etc/environment" || echo "MPICLOUD_NODE=node$index" >> "$root/etc/environment"
[ "$index" = 0 ] || exit 0
install -d -m 775 -o "$user" -g "$(id -gn "$user")" "$shared" "$shared/.mpicloud"
# every node must see this file before the runner starts an MPI job there (runner.py: share_problem)
[ -f "$shared/.mpicloud/share-marker" ] || echo "mpicloud shared storage of node0" > "$shared/.mpicloud/share-marker"
python3 - "$count" "$slots" "$MPICLOUD_IDLE_MINUTES" "$shared/.mpicloud/runner.json" "$root" \
  "${MPICLOUD_REGION:-}" "${MPICLOUD_LAUNCH_TEMPLATE:-}" "${MPICLOUD_CLUSTER:-}" <<'PY'
import glob, json, os, sys
count, slots, idle, target = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
with open(sys.argv[5] + "/opt/mpicloud/runner.base.json", encoding="utf-8") as handle:
    config = json.load(handle)
aws = (config.get("pool") or {}).get("aws")
if aws is not None:
    region, template, cluster = sys.argv[6:9]
    if not (region and template and cluster):
        sys.exit("cluster-files.sh: an elastic head needs its region and the mpicloud:launch-template and "
                 "mpicloud:cluster instance tags")
    aws.update(region=region, launch_template_id=template, cluster=cluster)
else:
    config["nodes"] = [{"name": f"node{i}", "slots": slots} for i in range(count)]
config["idle_shutdown_minutes"] = idle or None
# MPI over the RDMA device of this node's size (every node has the same): EFA through libfabric, InfiniBand
# (Azure HB/HC/HX/ND) through UCX; plain TCP otherwise
devices = [d.rsplit("/", 1)[-1] for d in glob.glob(sys.argv[5] + "/sys/class/infiniband/*")]
if any(d.startswith("efa") for d in devices):
    config["env"].update(FI_PROVIDER="efa", OMPI_MCA_pml="cm", OMPI_MCA_mtl="ofi")
elif any(d.startswith("mlx") for d in devices):
    config["env"].update(OMPI_MCA_pml="ucx", OMPI_MCA_osc="ucx")
with open(target + ".part", "w", encoding="utf-8") as handle:
    json.dump(config, handle, sort_keys=True, indent=2)
os.replace(target + ".part", target)
PY
chown "$user" "$shared/.mpicloud/runner.json"
