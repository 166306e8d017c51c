"""Native Slurm on the local Slurm cluster (namespaced nodes, root): the baselines mpicloud-on-Slurm is held to.

Same run, same cluster: native Slurm on node0 over ONE SSH session (the cluster's own paramiko transport) —
N no-op `sbatch` jobs in a loop, one `sbatch --array` of N, submit-to-start latency on an idle cluster — and
the same through mpicloud (the runner's Slurm backend): N `submit`s, a sweep of N rows (one array), submit-to-
start; plus `up` time with Slurm. Prints each pair and the ratio mpicloud / native.

    .venv/bin/python -m benchmarks.slurm_bench [N] [CPUS_PER_NODE]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import bench_cluster, report
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


def wait_all(cluster: Cluster, ids: list[str], timeout: float = 3600) -> None:
    """Until every job ended (the last one is waited for, then all are checked: listing every job's state
    in a loop would load the 2 cores the runner and Slurm need); fails loudly unless all succeeded."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    cluster.job(ids[-1]).wait(timeout)
    while True:
        infos = [i for i in cluster.jobs() if i.id in wanted]
        if len(infos) == len(wanted) and all(i.done for i in infos):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(wanted)} jobs did not end within {timeout:.0f} s")
        time.sleep(0.5)
    failed = [i.id for i in infos if i.state != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")


def mpicloud_side(cluster: Cluster, jobs: int) -> dict[str, float]:
    """The same figures through mpicloud (Python API, one SSH session of the client)."""
    figures: dict[str, float] = {}
    started = time.perf_counter()
    ids = [cluster.submit(["true"]).id for _ in range(jobs)]
    figures["loop_submit_s"] = time.perf_counter() - started
    wait_all(cluster, ids)
    figures["loop_total_s"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        runs, template = Path(folder) / "runs.csv", Path(folder) / "noop.sh.j2"
        runs.write_text("n\n" + "".join(f"{i}\n" for i in range(jobs)))
        template.write_text("true # {{ n }}\n")
        started = time.perf_counter()
        _, rows = cluster.sweep(runs, template)
        figures["array_submit_s"] = time.perf_counter() - started
        wait_all(cluster, [j.id for j in rows])
        figures["array_total_s"] = time.perf_counter() - started
    latencies = []
    for _ in range(20):
        info = cluster.submit(["true"]).wait(60)
        assert info.started_at and info.submitted_at
        latencies.append(info.started_at - info.submitted_at)
    figures["submit_to_start_median_s"] = statistics.median(latencies)
    return figures


def main(jobs: int = 1000, cpus: int = 16) -> None:
    with bench_cluster(nodes=2, slots=cpus, scheduler="slurm") as (cluster, up_seconds):
        print(f"mpicloud up, 2 namespaced nodes x {cpus} CPUs with Slurm: {up_seconds:.2f} s", flush=True)
        native = native_side(cluster, jobs)
        print(f"one command over the session (true, median 5):{native['ssh_true_s'] * 1000:8.1f} ms", flush=True)
        ours = mpicloud_side(cluster, jobs)
        for key, name in (("loop_submit_s", f"{jobs} jobs: submitted (s)"),
                          ("loop_total_s", f"{jobs} jobs: all done (s)"),
                          ("array_submit_s", f"sweep/array of {jobs}: submitted (s)"),
                          ("array_total_s", f"sweep/array of {jobs}: all done (s)"),
                          ("submit_to_start_median_s", "submit-to-start, idle (median of 20, s)")):
            report(name, ours[key], native[key], "s", against="native sbatch")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
