"""Elastic clusters: submit-to-start when a node must start first, and node-hours of a bursty workload.

`python -m benchmarks.elastic_bench [REPEAT]`: (1) submit-to-start of a 1-core job on a min0/max1 cluster
whose node is stopped, against a fixed cluster whose node is up (median of REPEAT); (2) a synthetic one-hour
bursty workload replayed 60x fast (jobs of 1-4 cores lasting 2-6 minutes in three bursts) on a fixed 4-node
cluster and on min0/max4 (10 and 2 minutes scale-down idle time, replayed as 10 and 2 s), node-hours scaled
back to real hours; (3) with Slurm (root, namespaced nodes): submit-to-start of a 1-core job when Slurm must
power its node up first, through mpicloud and as a native `sbatch` on node0, next to a native `sbatch` on the
node while it is up, in the same run (`python -m benchmarks.elastic_bench REPEAT slurm` runs only this).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import bench_cluster
from mpicloud.api import Cluster

SPEED = 60.0  # replayed seconds per real minute of the workload


def _pool(cluster: Cluster) -> dict[str, object]:
    data: dict[str, object] = json.loads((Path(cluster.record.runner_root) / "status.json").read_text())["pool"]
    return data


def _start_delay(cluster: Cluster) -> float:
    job = cluster.submit(["true"])
    job.wait(120)
    state = json.loads((Path(cluster.record.runner_root) / "jobs" / job.id / "state.json").read_text())
    return float(state["started_at"]) - float(state["submitted_at"])


def submit_to_start(repeat: int) -> None:
    """Median submit-to-start with the node stopped (elastic) and up (fixed)."""
    cold = []
    with bench_cluster(nodes={"min": 0, "max": 1}, slots=1, base="127.0.164.1",
                       scale_down_idle_minutes=0.02) as (cluster, _):
        for _ in range(repeat):
            while set(_pool(cluster)["nodes"].values()) != {"stopped"}:  # type: ignore[attr-defined]
                time.sleep(0.2)
            cold.append(_start_delay(cluster))
    with bench_cluster(nodes=2, slots=1, base="127.0.165.1") as (cluster, _):
        warm = [_start_delay(cluster) for _ in range(repeat)]
    print(f"submit-to-start, node stopped (min0/max1): median {statistics.median(cold):.2f} s "
          f"(min {min(cold):.2f}, max {max(cold):.2f}); node up (fixed): median {statistics.median(warm):.3f} s; "
          f"a node start costs {statistics.median(cold) - statistics.median(warm):.2f} s here", flush=True)


#: native `sbatch` on node0: seconds from submit to the job's first command
NATIVE = 's=$(date +%s.%N); f=$(mktemp -u); sbatch --parsable -o /dev/null --wrap "date +%s.%N > $f" >/dev/null; ' \
         'while [ ! -s $f ]; do sleep 0.01; done; echo "$(cat $f) - $s" | bc; rm -f $f'


def _powered_down(cluster: Cluster, timeout: float = 120) -> None:
    """Wait until Slurm shows node1 powered down and done powering down (it may be powered up again)."""
    env = {**os.environ, "SLURM_CONF": cluster.record.local["slurm_conf"]}
    deadline = time.monotonic() + timeout
    while subprocess.run(["sinfo", "-h", "-n", "node1", "-o", "%t"], env=env, capture_output=True, text=True,
                         timeout=30).stdout.strip() != "idle~":
        assert time.monotonic() < deadline, "node1 was not powered down"
        time.sleep(0.2)


def slurm_submit_to_start(repeat: int) -> None:
    """Slurm min0/max1: mpicloud submit and native sbatch when node1 is powered down, native sbatch when it is up."""
    cold, native_cold, native_up = [], [], []
    with bench_cluster(nodes={"min": 0, "max": 1}, slots=1, scheduler="slurm",
                       scale_down_idle_minutes=0.05) as (cluster, _):
        transport = cluster.queue.transport
        for _ in range(repeat):
            _powered_down(cluster)
            cold.append(_start_delay(cluster))
            native_up.append(float(transport.run(NATIVE, timeout=120).stdout.decode()))  # node1 is up for 3 s
            _powered_down(cluster)
            native_cold.append(float(transport.run(NATIVE, timeout=300).stdout.decode()))
    print(f"Slurm submit-to-start, node powered down (min0/max1): mpicloud median {statistics.median(cold):.2f} s "
          f"(min {min(cold):.2f}, max {max(cold):.2f}); native sbatch median {statistics.median(native_cold):.2f} s; "
          f"native sbatch on the node while up: median {statistics.median(native_up):.2f} s "
          f"(min {min(native_up):.2f}, max {max(native_up):.2f})", flush=True)


def workload(seed: int = 16) -> list[tuple[float, int, float]]:
    """(submit minute, cores, minutes) of a bursty hour: three bursts, quiet in between."""
    rng = random.Random(seed)
    jobs = []
    for burst in (0.0, 20.0, 45.0):
        for _ in range(rng.randint(6, 8)):
            jobs.append((burst + rng.uniform(0, 3), rng.randint(1, 4), rng.uniform(2, 6)))
    return sorted(jobs)


def replay(cluster: Cluster, jobs: list[tuple[float, int, float]]) -> dict[str, float]:
    """Submit each job at its (replayed) minute; at the end of the hour (or the last job), the node-hours."""
    began = time.monotonic()
    handles = []
    for minute, cores, length in jobs:
        time.sleep(max(0.0, began + minute * 60 / SPEED - time.monotonic()))
        handles.append(cluster.submit(["sleep", f"{length * 60 / SPEED:.2f}"], cores=cores))
    states = [h.wait(600).state for h in handles]
    assert states == ["succeeded"] * len(jobs), states
    time.sleep(max(0.0, began + 60 * 60 / SPEED - time.monotonic()))
    pool = _pool(cluster)
    wall = (time.monotonic() - began) * SPEED / 60
    return {"minutes": wall, "node_hours": float(pool["node_hours"]) * SPEED,  # type: ignore[arg-type]
            "compute_node_hours": float(pool["compute_node_hours"]) * SPEED}  # type: ignore[arg-type]


def node_hours() -> None:
    """The bursty hour on fixed-4 and on min0/max4 with 10 and with 2 minutes of scale-down idle time."""
    jobs = workload()
    with bench_cluster(nodes=4, slots=2, base="127.0.166.1") as (cluster, _):
        fixed = replay(cluster, jobs)
    print(f"bursty hour ({len(jobs)} jobs, replayed {SPEED:.0f}x): fixed 4 nodes {fixed['node_hours']:.2f} "
          f"node-hours over {fixed['minutes']:.0f} min", flush=True)
    for idle in (10, 2):
        with bench_cluster(nodes={"min": 0, "max": 4}, slots=2, base="127.0.167.1",
                           scale_down_idle_minutes=idle / SPEED) as (cluster, _):
            elastic = replay(cluster, jobs)
        print(f"  min0/max4, scale_down_idle_minutes {idle}: {elastic['node_hours']:.2f} node-hours (head "
              f"{elastic['node_hours'] - elastic['compute_node_hours']:.2f} + compute "
              f"{elastic['compute_node_hours']:.2f}) over {elastic['minutes']:.0f} min: "
              f"{elastic['node_hours'] / fixed['node_hours']:.2f}x of fixed", flush=True)


def main(repeat: int = 5, only: str = "") -> None:
    if only != "slurm":
        submit_to_start(repeat)
        node_hours()
    slurm_submit_to_start(repeat)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]), *sys.argv[2:3])
