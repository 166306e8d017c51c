#!/usr/bin/env bash
# make demo: a 2-node local cluster, an MPI job with 4 ranks through the queue, its output fetched, torn down.
set -euo pipefail
export MPICLOUD_HOME="${MPICLOUD_HOME:-$PWD/.demo-home}"
mpicloud="${MPICLOUD:-.venv/bin/mpicloud}"
out="${DEMO_OUT:-demo-output}"
$mpicloud validate examples/local.yaml
$mpicloud down demo >/dev/null 2>&1 || true
trap '$mpicloud down demo' EXIT
$mpicloud up examples/local.yaml
job=$($mpicloud submit demo --cores 4 --name allreduce \
        --input examples/mpi/allreduce.c --input examples/mpi/run.sh -- sh run.sh | tail -n 1)
echo "submitted job $job"
$mpicloud logs demo "$job" --follow
$mpicloud wait demo "$job"
$mpicloud get demo "$job" --dest "$out" --only result.txt
echo "result fetched to $out/$job/result.txt:"
cat "$out/$job/result.txt"
grep -q "ranks=4 .* OK" "$out/$job/result.txt"
