"""The client's resize (mpicloud/jobs/resize.py) against a stub queue: refusals name the reason, the request
is written atomically, and the wait ends only once the pool has settled."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mpicloud.errors import JobError
from mpicloud.jobs import resize
from mpicloud.protocol.pool import RESIZE_FILE


class StubQueue:
    """runner_json("status") answers from `pools` in turn (the last one for good; the runner takes a resize
    request on the second answer); the transport keeps written files in a dict, `requests` what was renamed
    into place."""

    cluster = "c1"

    def __init__(self, *pools: dict[str, Any]) -> None:
        self.pools = list(pools)
        self.files: dict[str, bytes] = {}
        self.requests: list[bytes] = []
        self.transport = self
        self.asked = 0

    def prepare(self) -> None:
        pass

    def path(self, *parts: str) -> str:
        return "/".join(["root", *parts])

    def runner_json(self, *args: str) -> Any:
        self.asked += 1
        if self.asked == 2:
            self.files.pop(self.path(RESIZE_FILE), None)
        return {"pool": self.pools.pop(0) if len(self.pools) > 1 else self.pools[0]}

    def write_bytes(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def rename(self, src: str, dst: str) -> None:
        self.files[dst] = self.files.pop(src)
        self.requests.append(self.files[dst])

    def stat(self, path: str) -> object | None:
        return object() if path in self.files else None


def pool(states: dict[str, str], resized: bool = True, head_runs_jobs: bool = False,
         resizable: bool = True) -> dict[str, Any]:
    return {"nodes": states, "resized": resized, "head_runs_jobs": head_runs_jobs, "resizable": resizable,
            "min": 0, "max": 4}


def test_a_cluster_without_node_actions_is_refused() -> None:
    with pytest.raises(JobError, match="cannot be resized: its runner has no node actions"):
        resize.resize(StubQueue(pool({}, resizable=False)), 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(("head", "nodes", "message"), [
    (True, 0, "between 1 and 255 .node0, the head, runs jobs and stays"),
    (False, -1, "between 0 and 255"), (False, 256, "between 0 and 255")])
def test_counts_out_of_range_are_refused_before_anything_is_written(head: bool, nodes: int, message: str) -> None:
    queue = StubQueue(pool({}, head_runs_jobs=head))
    with pytest.raises(JobError, match=message):
        resize.resize(queue, nodes)  # type: ignore[arg-type]
    assert queue.files == {}


def test_the_wait_ends_when_the_pool_settled_at_the_count() -> None:
    moving = pool({"node1": "up", "node2": "draining"})
    done = pool({"node1": "up", "node2": "stopped"})
    queue = StubQueue(pool({"node1": "up", "node2": "up"}, resized=False), moving, moving, done)
    assert resize.resize(queue, 1, force=True, poll=0.0) == done  # type: ignore[arg-type]
    assert queue.asked == 4  # it polled through the moving states
    assert [json.loads(r) for r in queue.requests] == [{"nodes": 1, "force": True}]


def test_settled() -> None:
    assert resize.settled(pool({"node1": "up", "node2": "stopped"}), 1)
    assert not resize.settled(pool({"node1": "up", "node2": "stopping"}), 1)
    assert not resize.settled(pool({"node1": "up", "node2": "up"}), 1)
    assert not resize.settled(pool({"node1": "up"}, resized=False), 1)  # not taken yet
    assert resize.settled(pool({"node1": "up"}, resized=False), None)
