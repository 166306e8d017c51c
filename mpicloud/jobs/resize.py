"""Resize a running cluster through its runner: a resize request, then the pool's report until it settles."""

from __future__ import annotations

import secrets
import time
from typing import Any

from mpicloud.errors import JobError
from mpicloud.jobs.remote import QueueHandle
from mpicloud.protocol.pool import MAX_NODES, RESIZE_FILE, STOPPED, UP, resize_request


def pool_status(queue: QueueHandle) -> dict[str, Any]:
    """The runner's pool report (status.json `pool`); JobError when the runner has none (an older runner)."""
    pool: dict[str, Any] | None = queue.runner_json("status").get("pool")
    if not pool:
        raise JobError(f"the runner of cluster {queue.cluster!r} keeps no node pool; update the cluster's runner")
    return pool


def resize(queue: QueueHandle, nodes: int | None, force: bool = False, timeout: float | None = None,
           poll: float = 0.5) -> dict[str, Any]:
    """Ask for `nodes` compute nodes (None: back to the spec's min/max) and wait until that many are up and no
    node is still starting, draining or stopping (a draining node waits for its jobs; `force` cancels them).
    Returns the pool's last report; JobError when the cluster cannot be resized or on timeout."""
    queue.prepare()
    pool = pool_status(queue)
    if not pool.get("resizable"):
        raise JobError(f"cluster {queue.cluster!r} cannot be resized: its runner has no node actions (elastic "
                       "clusters on AWS and Azure, Linux and Windows, local clusters and elastic local Slurm "
                       "clusters have them)")
    least = 1 if pool.get("head_runs_jobs") else 0
    most = int(pool.get("most", MAX_NODES))  # Slurm: the nodes slurm.conf lists
    if nodes is not None and not least <= nodes <= most:
        raise JobError(f"--nodes must be between {least} and {most}"
                       + (" (node0, the head, runs jobs and stays)" if least else "")
                       + (" (the compute nodes Slurm knows: the spec's max)" if most < MAX_NODES else ""))
    temporary = queue.path(f".{RESIZE_FILE}.{secrets.token_hex(4)}")
    queue.transport.write_bytes(temporary, resize_request(nodes, force))
    queue.transport.rename(temporary, queue.path(RESIZE_FILE))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pool = pool_status(queue)
        if settled(pool, nodes) and queue.transport.stat(queue.path(RESIZE_FILE)) is None:
            return pool
        if deadline is not None and time.monotonic() > deadline:
            states = ", ".join(f"{n} {s}" for n, s in sorted(pool["nodes"].items()))
            raise JobError(f"cluster {queue.cluster!r} not resized after {timeout:.0f} s: {states}")
        time.sleep(poll)


def settled(pool: dict[str, Any], nodes: int | None) -> bool:
    """True when the pool has taken the request: `nodes` up (None: the spec's limits back in force) and none
    in between states."""
    states = list(pool["nodes"].values())
    if nodes is None:
        return not pool["resized"]
    return bool(pool["resized"]) and set(states) <= {UP, STOPPED} and states.count(UP) == nodes
