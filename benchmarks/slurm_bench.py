"""Native Slurm on the local Slurm cluster (namespaced nodes, root): the baselines mpicloud-on-Slurm is held to.

Everything runs on node0 over ONE SSH session (the cluster's own paramiko transport): `up` time with Slurm,
N no-op `sbatch` jobs in a loop, one `sbatch --array` of N, submit-to-start latency on an idle cluster.
It measures native Slurm only: mpicloud's queue does not run on Slurm yet (the runner's Slurm backend is
still to be built), so there is no mpicloud side to compare yet.

    .venv/bin/python -m benchmarks.slurm_bench [N] [CPUS_PER_NODE]
"""

from __future__ import annotations

import statistics
import sys
import time

from benchmarks.common import bench_cluster
from mpicloud.api import Cluster
from mpicloud.transport.base import Transport

DRAIN = "while [ -n \"$(squeue -h -o %i)\" ]; do sleep 0.2; done"
LATENCY = """
d=$(mktemp -d)
for i in $(seq {n}); do
  s=$(date +%s.%N)
  sbatch --parsable -o /dev/null --wrap "date +%s.%N > $d/$i" >/dev/null
  while [ ! -s $d/$i ]; do sleep 0.01; done
  echo "$s $(cat $d/$i)"
done
rm -rf "$d"
"""


def remote(transport: Transport, script: str, timeout: float = 3600) -> tuple[str, float]:
    """Run a shell script on node0 over the session; its stdout and wall seconds (fails loudly)."""
    started = time.perf_counter()
    result = transport.run(script, timeout=timeout)
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(f"on node0: {script.strip().splitlines()[0]} failed: {result.stderr.decode()[-500:]}")
    return result.text, elapsed


def native_side(cluster: Cluster, jobs: int) -> dict[str, float]:
    """Native Slurm figures, measured on node0 over one SSH session."""
    transport = cluster.queue.transport
    figures: dict[str, float] = {}
    remote(transport, "true")  # the session is open and warm from here on
    figures["ssh_true_s"] = statistics.median(remote(transport, "true")[1] for _ in range(5))
    _, figures["loop_submit_s"] = remote(
        transport, f"for i in $(seq {jobs}); do sbatch --parsable -o /dev/null --wrap=true >/dev/null; done")
    _, drain = remote(transport, DRAIN)
    figures["loop_total_s"] = figures["loop_submit_s"] + drain
    _, figures["array_submit_s"] = remote(transport, f"sbatch --parsable -o /dev/null --array=1-{jobs} --wrap=true")
    _, drain = remote(transport, DRAIN)
    figures["array_total_s"] = figures["array_submit_s"] + drain
    out, _ = remote(transport, LATENCY.format(n=20))
    pairs = [line.split() for line in out.splitlines() if line.strip()]
    figures["submit_to_start_median_s"] = statistics.median(float(b) - float(a) for a, b in pairs)
    return figures


def main(jobs: int = 1000, cpus: int = 16) -> None:
    with bench_cluster(nodes=2, slots=cpus, scheduler="slurm") as (cluster, up_seconds):
        print(f"mpicloud up, 2 namespaced nodes x {cpus} CPUs with Slurm: {up_seconds:.2f} s", flush=True)
        native = native_side(cluster, jobs)
        print(f"one command over the session (true, median 5):{native['ssh_true_s'] * 1000:8.1f} ms")
        print(f"native sbatch x{jobs} in a loop: submitted   {native['loop_submit_s']:8.2f} s "
              f"({jobs / native['loop_submit_s']:.0f}/s), all done {native['loop_total_s']:8.2f} s")
        print(f"native sbatch --array=1-{jobs}: submitted    {native['array_submit_s']:8.2f} s, "
              f"all done {native['array_total_s']:8.2f} s")
        print(f"native submit-to-start, idle (median of 20): {native['submit_to_start_median_s'] * 1000:8.1f} ms")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
