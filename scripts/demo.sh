#!/usr/bin/env bash
# make demo: a 2-node local cluster, an MPI job with 4 ranks through the queue, its output fetched, torn down.
# DEMO_SPEC=examples/local-slurm.yaml make demo: the same on namespaced nodes with Slurm (root), plus srun.
set -euo pipefail
export MPICLOUD_HOME="${MPICLOUD_HOME:-$PWD/.demo-home}"
mpicloud="${MPICLOUD:-.venv/bin/mpicloud}"
out="${DEMO_OUT:-demo-output}"
spec="${DEMO_SPEC:-examples/local.yaml}"
name=$(sed -n 's/^name: *\([a-z0-9-]*\).*/\1/p' "$spec")
$mpicloud validate "$spec"
$mpicloud down "$name" >/dev/null 2>&1 || true
trap '$mpicloud down "$name"' EXIT
$mpicloud up "$spec"
job=$($mpicloud submit "$name" --cores 4 --name allreduce \
        --input examples/mpi/allreduce.c --input examples/mpi/run.sh -- sh run.sh | tail -n 1)
echo "submitted job $job"
$mpicloud logs "$name" "$job" --follow
$mpicloud wait "$name" "$job"
$mpicloud get "$name" "$job" --dest "$out" --only result.txt
echo "result fetched to $out/$job/result.txt:"
cat "$out/$job/result.txt"
grep -q "ranks=4 .* OK" "$out/$job/result.txt"
conf="$MPICLOUD_HOME/clusters/$name/slurm/slurm.conf"
if [ -f "$conf" ]; then
  echo "Slurm: srun -N2 -n4 hostname"
  SLURM_CONF="$conf" srun -N2 -n4 hostname | sort | uniq -c
fi
