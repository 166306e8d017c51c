"""Benchmark helpers: a throwaway local cluster and OpenSSH measured in the same run."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mpicloud.api import Cluster
from mpicloud.spec import spec_from_dict


@contextmanager
def bench_cluster(nodes: int | dict[str, int] = 2, slots: int = 2, base: str = "127.0.98.1",
                  scheduler: str = "builtin", **extra: object) -> Iterator[tuple[Cluster, float]]:
    """A local cluster in a private MPICLOUD_HOME (`extra`: more spec fields); yields it and the seconds `up`
    took. Slurm clusters run in namespaced mode (their own addresses), so `base` applies to the built-in queue
    only."""
    with tempfile.TemporaryDirectory() as home:
        os.environ["MPICLOUD_HOME"] = home
        local = {"address_base": base} if scheduler == "builtin" else {}
        spec = spec_from_dict({"name": "bench", "cloud": "local", "nodes": nodes, "slots_per_node": slots,
                               "scheduler": scheduler, "local": local, **extra})
        started = time.perf_counter()
        cluster = Cluster.up(spec)
        elapsed = time.perf_counter() - started
        try:
            yield cluster, elapsed
        finally:
            cluster.down()


def openssh(cluster: Cluster, *command: str) -> list[str]:
    """argv for OpenSSH `ssh` to the head node with the cluster's key and pinned host keys."""
    r = cluster.record
    return ["ssh", "-F", r.local["ssh_config"], r.head.name, *command]


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall times of repeat calls."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def run_quiet(argv: list[str]) -> None:
    """Run a command, fail loudly if it fails."""
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def median_ms(values: list[float]) -> float:
    """Median in milliseconds."""
    return statistics.median(values) * 1000


def report(name: str, ours: float, theirs: float, unit: str, better: str = "lower", against: str = "OpenSSH") -> None:
    """One line: ours, theirs (OpenSSH, or `against`), and the ratio (ours / theirs)."""
    ratio = ours / theirs if theirs else float("inf")
    print(f"{name:<44} mpicloud {ours:10.2f} {unit:<6} {against} {theirs:10.2f} {unit:<6} ratio {ratio:6.2f}x "
          f"({better} is better)", flush=True)


