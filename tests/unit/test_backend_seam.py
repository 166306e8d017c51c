"""The queue's backend seam, driven tick by tick with a fake clock and a fake backend (no sleeps, no processes)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.runnerlib import LocalQueue, runner_module

runner = runner_module()


class Clock:
    """The runner's `now`, moved by hand."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class FakeBackend:
    """A scheduler with `capacity` cores whose launches run until the test ends them."""

    def __init__(self, queue: Any, capacity: int = 1, together: int = 1) -> None:
        self.queue = queue
        self.capacity = capacity
        self.together = together
        self.live: dict[str, int] = {}  # job id -> cores
        self.launched: list[list[str]] = []
        self.signals: list[tuple[str, int]] = []
        self.refuse = False
        self.stubborn = False
        self.foreign = False  # jobs the scheduler runs that are not the queue's

    def batch(self, queue: list[str], cores: int) -> list[str]:
        return queue[:self.together]

    def place(self, cores: int) -> list[tuple[str, int]] | None:
        return [] if sum(self.live.values()) + cores <= self.capacity else None

    def launch(self, batch: list[str], launches: dict[str, str]) -> dict[str, dict[str, Any]]:
        if self.refuse:
            return {}
        self.launched.append(list(batch))
        for job_id in batch:
            self.live[job_id] = int(self.queue.state(job_id)["cores"])
        return {job_id: {"state": "running", "fake": True} for job_id in batch}

    def resume(self, job_id: str, state: dict[str, Any]) -> None:
        raise AssertionError("no crash in these tests")

    def poll(self) -> None:
        pass

    def alive(self, job_id: str, state: dict[str, Any]) -> bool:
        return job_id in self.live

    def describe(self, job_id: str, state: dict[str, Any]) -> str:
        return f"fake:{job_id}"

    def lost(self, job_id: str, state: dict[str, Any]) -> str:
        return "the fake launch vanished"

    def cancel(self, job_id: str, state: dict[str, Any], sig: int) -> None:
        self.signals.append((job_id, sig))
        if not self.stubborn or sig == signal.SIGKILL:
            self.live.pop(job_id, None)

    def status(self) -> dict[str, Any]:
        return {"scheduler": "fake"}

    def busy(self) -> bool:
        return self.foreign


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(runner, "now", fake)
    return fake


def make(tmp_path: Path, **backend_args: Any) -> tuple[LocalQueue, Any, FakeBackend]:
    """A queue root, a Runner on it with a FakeBackend (not served: the test ticks it)."""
    queue = LocalQueue(tmp_path / "root", [4])
    fakes: list[FakeBackend] = []

    def factory(owner: Any) -> FakeBackend:
        fakes.append(FakeBackend(owner, **backend_args))
        return fakes[0]

    return queue, runner.Runner(queue.root, backend=factory), fakes[0]


def tick(serving: Any, clock: Clock, seconds: float = 1.0) -> None:
    for step in (serving.accept, serving.cancel_requests, serving.reap, serving.schedule):
        step()
    clock.t += seconds


def end(queue: LocalQueue, backend: FakeBackend, job_id: str, code: int | None) -> None:
    """The launch ends, with a result (exit code) or without one (None)."""
    if code is not None:
        (queue.root / "jobs" / job_id / "result.json").write_text(json.dumps(
            {"exit_code": code, "post_exit_code": None, "reason": None, "ended_at": 1.0}))
    backend.live.pop(job_id)


def test_head_of_queue_waits_for_room_and_a_failed_job_does_not_block(tmp_path: Path, clock: Clock) -> None:
    queue, serving, backend = make(tmp_path, capacity=2)
    first, second, third = (queue.submit(["x"], cores=c) for c in (2, 1, 1))
    tick(serving, clock)
    assert backend.launched == [[first]]
    assert queue.state(second)["state"] == "queued"
    end(queue, backend, first, 3)
    tick(serving, clock)
    assert queue.state(first)["state"] == "failed" and queue.state(first)["exit_code"] == 3
    assert backend.launched == [[first], [second], [third]]
    for job_id in (second, third):
        end(queue, backend, job_id, 0)
    tick(serving, clock)
    assert [queue.state(j)["state"] for j in (second, third)] == ["succeeded", "succeeded"]
    serving.write_status()
    assert json.loads((queue.root / "status.json").read_text())["scheduler"] == "fake"


def test_a_launch_that_vanishes_without_result_fails_naming_the_backend_reason(tmp_path: Path,
                                                                                clock: Clock) -> None:
    queue, serving, backend = make(tmp_path)
    job = queue.submit(["x"])
    tick(serving, clock)
    end(queue, backend, job, None)
    tick(serving, clock)
    state = queue.state(job)
    assert state["state"] == "failed" and state["reason"].startswith("the fake launch vanished without recording")


def test_cancel_sends_term_then_kill_after_the_grace_and_waits_for_the_end(tmp_path: Path, clock: Clock) -> None:
    queue, serving, backend = make(tmp_path)
    backend.stubborn = True
    job = queue.submit(["x"])
    tick(serving, clock)
    (queue.root / "jobs" / job / "cancel").touch()
    tick(serving, clock)
    assert backend.signals == [(job, signal.SIGTERM)] and queue.state(job)["state"] == "running"
    tick(serving, clock, runner.STOP_GRACE)
    tick(serving, clock)
    assert backend.signals == [(job, signal.SIGTERM), (job, signal.SIGKILL)]
    tick(serving, clock)
    assert queue.state(job)["state"] == "cancelled"


def test_jobs_started_together_share_a_group_and_keep_their_index(tmp_path: Path, clock: Clock) -> None:
    queue, serving, backend = make(tmp_path, capacity=4, together=3)
    jobs = [queue.submit(["x"]) for _ in range(3)]
    tick(serving, clock)
    assert backend.launched == [jobs]
    states = [queue.state(j) for j in jobs]
    assert {s["group"] for s in states} == {states[0]["launch"]}
    assert [s["index"] for s in states] == [0, 1, 2]


def test_jobs_the_backend_did_not_launch_go_back_to_the_head_of_the_queue(tmp_path: Path, clock: Clock) -> None:
    queue, serving, backend = make(tmp_path)
    backend.refuse = True
    first, second = queue.submit(["x"]), queue.submit(["x"])
    tick(serving, clock)
    assert serving.queue == [first, second]
    state = queue.state(first)
    assert state["state"] == "queued" and state["launch"] is None
    assert len(list((queue.root / "jobs" / first).glob("launch-*"))) == 1  # the token was given up for good
    backend.refuse = False
    tick(serving, clock)
    assert backend.launched == [[first]]


@pytest.mark.parametrize(("names", "tasks", "expected"), [
    (["node0"], "1", [("node0", 1)]),
    (["node0", "node1"], "2(x2)", [("node0", 2), ("node1", 2)]),
    (["a", "b", "c", "d"], "2(x3),1", [("a", 2), ("b", 2), ("c", 2), ("d", 1)]),
])
def test_slurm_allocation_hosts(names: list[str], tasks: str, expected: list[tuple[str, int]]) -> None:
    assert runner.slurm_hosts(names, tasks) == expected


def test_slurm_allocation_that_does_not_add_up_is_refused() -> None:
    with pytest.raises(ValueError, match="2 nodes"):
        runner.slurm_hosts(["a", "b"], "2(x3)")


def test_idle_shutdown_waits_for_the_schedulers_own_jobs_too(tmp_path: Path, clock: Clock) -> None:
    queue, serving, backend = make(tmp_path)
    serving.config["idle_shutdown_minutes"] = 1
    job = queue.submit(["true"])
    tick(serving, clock)
    end(queue, backend, job, 0)
    tick(serving, clock)
    backend.foreign = True  # e.g. `sbatch` on node0: mpicloud's queue is empty, Slurm's is not
    clock.t += 120
    assert not serving.idle_expired()
    backend.foreign = False
    clock.t += 30
    assert not serving.idle_expired()  # idle counts from when Slurm's queue emptied
    clock.t += 31
    assert serving.idle_expired()
