"""The cluster-side runner: launchers, job format versions, and the queue state machine with real processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.runnerlib import LocalQueue, runner_module

runner = runner_module()
NODES = [{"name": "n0", "slots": 2}, {"name": "n1", "slots": 2}]


@pytest.mark.parametrize(("busy", "cores", "expected"), [
    ({}, 1, [("n0", 1)]),
    ({}, 4, [("n0", 2), ("n1", 2)]),
    ({"n0": 1}, 2, [("n0", 1), ("n1", 1)]),
    ({"n0": 2, "n1": 1}, 2, None),
    ({}, 5, None),
])
def test_allocate_fills_nodes_in_order(busy: dict[str, int], cores: int, expected: object) -> None:
    assert runner.allocate(NODES, busy, cores) == expected


@pytest.mark.parametrize(("launcher", "expected"), [
    ("mpirun", ["mpirun", "--hostfile", "/j/hostfile", "-np", "3", "-x", "A", "-x", "B", "./app", "x y"]),
    ("mpiexec", ["mpiexec", "-hosts", "2", "N0", "2", "N1", "1", "-wdir", "C:\\shared\\w", "-env", "A", "1",
                 "-env", "B", "two words", "./app", "x y"]),
])
def test_launch_argv(launcher: str, expected: list[str]) -> None:
    argv = runner.launch_argv(launcher, [("N0", 2), ("N1", 1)] if launcher == "mpiexec" else [("n0", 3)], 3,
                              "/j/hostfile", "C:\\shared\\w", {"B": "two words", "A": "1"}, ["./app", "x y"])
    assert argv == expected


def test_hostfile_formats() -> None:
    assert runner.hostfile_text([("n0", 2), ("n1", 1)], "linux") == "n0 slots=2\nn1 slots=1\n"
    assert runner.hostfile_text([("N0", 2)], "windows") == "N0 2\n"


def test_job_format_chain_upgrades_v1_and_rejects_too_new() -> None:
    v1 = {"version": 1, "id": "j", "argv": ["true"], "cores": 1, "inputs": ["a.txt"]}
    up = runner.upgrade_job(v1)
    assert up["version"] == runner.JOB_VERSION
    assert up["inputs"] == [{"name": "a.txt", "source": "jobdir", "unpack": False}]
    assert up["post"] is None and up["output_to"] is None
    with pytest.raises(ValueError, match="newer than this runner"):
        runner.upgrade_job({"version": runner.JOB_VERSION + 1})


@pytest.fixture()
def queue(tmp_path: Path) -> LocalQueue:
    q = LocalQueue(tmp_path / "root", [2])
    q.serve()
    yield q
    q.stop()


def test_strict_fifo_failed_job_does_not_block(queue: LocalQueue) -> None:
    stamp = queue.root / "stamps"
    first = queue.submit(["sh", "-c", f"sleep 0.5; date +%s.%N > {stamp}.a"], cores=2)
    failing = queue.submit(["sh", "-c", "exit 3"])
    missing = queue.submit(["no-such-program-xyz"])
    last = queue.submit(["sh", "-c", f"date +%s.%N > {stamp}.b"])
    assert queue.wait(first)["state"] == "succeeded"
    failed = queue.wait(failing)
    assert failed["state"] == "failed" and failed["exit_code"] == 3 and "code 3" in failed["reason"]
    gone = queue.wait(missing)
    assert gone["exit_code"] == 127 and "command not found" in gone["reason"]
    assert queue.wait(last)["state"] == "succeeded"
    assert float(Path(f"{stamp}.a").read_text()) <= float(Path(f"{stamp}.b").read_text())
    assert queue.state(failing)["started_at"] >= queue.state(first)["ended_at"] - 0.05


def test_too_many_cores_fails_with_reason(queue: LocalQueue) -> None:
    state = queue.wait(queue.submit(["true"], cores=3))
    assert state["state"] == "failed" and "needs 3 cores but the cluster has 2" in state["reason"]


def test_cancel_queued_and_running(queue: LocalQueue) -> None:
    running = queue.submit(["sleep", "30"], cores=2)
    queued = queue.submit(["true"])
    while queue.state(running)["state"] != "running":
        time.sleep(0.05)
    (queue.root / "jobs" / queued / "cancel").touch()
    (queue.root / "jobs" / running / "cancel").touch()
    assert queue.wait(queued)["state"] == "cancelled"
    state = queue.wait(running, timeout=15)
    assert state["state"] == "cancelled"
    assert runner.process_start_time(int(state["pid"])) is None


def test_invalid_and_duplicate_submissions(queue: LocalQueue) -> None:
    bad = queue.submit(["true"], version=99)
    state = queue.wait(bad)
    assert state["state"] == "failed" and "newer than this runner" in state["reason"]
    ok = queue.submit(["true"])
    queue.wait(ok)
    (queue.root / "queue" / ok).mkdir()
    (queue.root / "queue" / ok / "job.json").write_text(json.dumps({"version": 2, "id": ok}))
    time.sleep(0.5)
    order = (queue.root / "order.log").read_text().split()
    assert order.count(ok) == 1 and not (queue.root / "queue" / ok).exists()


def test_runner_killed_and_restarted_readopts_and_finishes(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1])
    q.serve()
    long = q.submit(["sh", "-c", "sleep 1.5; echo done"])
    after = q.submit(["sh", "-c", "echo next"])
    while q.state(long)["state"] != "running":
        time.sleep(0.05)
    q.kill()
    time.sleep(2.0)  # the job finishes while no runner is alive
    q.serve()
    try:
        assert q.wait(long)["state"] == "succeeded"
        assert q.wait(after)["state"] == "succeeded"
        assert (q.root / "jobs" / long / "stdout.log").read_text() == "done\n"
    finally:
        q.stop()


def test_orphan_without_result_is_failed_on_restart(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1])
    q.serve()
    job = q.submit(["sleep", "30"])
    while q.state(job)["state"] != "running":
        time.sleep(0.05)
    q.kill()
    state = q.state(job)
    runner.kill_tree(int(state["pid"]), state["pid_token"], grace=1)
    q.serve()
    try:
        final = q.wait(job)
        assert final["state"] == "failed" and "gone when the runner restarted" in final["reason"]
    finally:
        q.stop()


def test_idle_shutdown_runs_the_stop_command(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    q = LocalQueue(tmp_path / "root", [1], idle_shutdown_minutes=0.02, stop_command=["touch", str(marker)])
    q.serve()
    assert q.proc is not None
    q.proc.wait(10)
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    assert "idle" in json.loads((q.root / "shutdown.json").read_text())["reason"]
