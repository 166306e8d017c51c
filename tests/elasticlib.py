"""Shared steps of the elastic cluster tests (built-in pool and Slurm power saving): the pool's node states and
a burst of 20 mixed jobs that must take a `min: 0, max: 4` cluster of 2-slot nodes from 0 to 4 nodes and back."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from mpicloud.api import Cluster, Job
from tests.conftest import cli

#: the burst's core counts, in submit order (4 nodes x 2 slots fit each)
BURST_CORES = [1, 3, 8, 2, 1, 4, 6, 1, 2, 8, 1, 1, 5, 2, 3, 7, 1, 2, 4, 1]


def pool_nodes(root: Path) -> dict[str, str]:
    """Each compute node's state in the runner's status.json (empty while it is being rewritten)."""
    try:
        return dict(json.loads((root / "status.json").read_text())["pool"]["nodes"])
    except (OSError, ValueError, KeyError):
        return {}


def burst(cluster: Cluster, script: str, settle: float) -> list[Job]:
    """A 9-core job is refused at submit; the burst's jobs all succeed while a sampler counts the nodes up; within
    `settle` s after the last one every node is stopped. Asserts the pool went 0 -> 4 -> 0; returns the jobs."""
    root = Path(cluster.record.runner_root)
    too_big = cli("submit", cluster.name, "--cores", "9", "--", "true")  # 4 nodes x 2 slots at most, none up now
    assert too_big.returncode == 2 and "9 cores" in too_big.stderr and "8" in too_big.stderr, too_big.stderr
    seen: list[int] = []
    done = threading.Event()

    def sample() -> None:  # the last sample is taken after `done`: it sees the settled pool
        while True:
            finished = done.is_set()
            seen.append(sum(s == "up" for s in pool_nodes(root).values()))
            if finished:
                return
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        jobs = [cluster.submit(["sh", "-c", script], cores=c) for c in BURST_CORES]
        finals = [job.wait(300) for job in jobs]
        assert [f.state for f in finals] == ["succeeded"] * 20, [(f.id, f.state, f.reason) for f in finals]
        deadline = time.monotonic() + settle
        while set(pool_nodes(root).values()) != {"stopped"}:
            assert time.monotonic() < deadline, pool_nodes(root)
            time.sleep(0.2)
    finally:
        done.set()
        sampler.join()
    assert seen[0] == 0 and max(seen) == 4 and seen[-1] == 0, seen
    return jobs
