"""The runner's elastic pool, served for real (a runner process) with node actions that only log what they
are asked: nodes start for queued cores, jobs go only to nodes that are up, idle nodes stop, resize drains
without loss or cancels with --force, and a runner killed at each pool step loses and repeats nothing."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from mpicloud.assets import runner_bundle
from mpicloud.protocol.pool import RESIZE_FILE, resize_request
from tests.runnerlib import LocalQueue, node_module

nodepool = node_module("nodepool")


def compact_runner(folder: Path) -> Path:
    """The Linux compact bundle (function docstrings dropped, as Azure's userData carries it) unpacked in folder,
    after checking that its pool files are byte for byte the Windows bootstrap's: runner.py there."""
    bundles = {}
    for os_name in ("linux", "windows"):
        with tarfile.open(fileobj=io.BytesIO(runner_bundle(os_name, compact=True, cloud="azure"))) as tar:
            bundles[os_name] = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    for name in ("autoscale.py", "nodepool.py", "azure_nodes.py", "runner.py", "mpicloud/protocol/pool.py"):
        assert bundles["windows"][name] == bundles["linux"][name], name
    with tarfile.open(fileobj=io.BytesIO(runner_bundle("linux", compact=True))) as tar:
        tar.extractall(folder, filter="data")
    return folder / "runner.py"


def elastic(tmp_path: Path, low: int = 0, high: int = 2, idle_minutes: float = 0.02,
            listed: int = 0, compact: bool = False, **extra: Any) -> LocalQueue:
    """A queue whose head runs no jobs and whose compute nodes n1..n<high> (2 slots) start and stop on demand;
    each start/stop is a line in actions.log, as is each job's begin and end. `listed`: compute nodes runner.json
    lists beside the head (created with the cluster, as Azure's VMs are); `compact`: the runner of the compact
    bundle the clouds' nodes get."""
    log = tmp_path / "actions.log"
    action = 'sleep 0.3; echo "{} $0" >> ' + str(log)
    pool = {"min": low, "max": high, "idle_minutes": idle_minutes, "slots_per_node": 2, "head_runs_jobs": False,
            "resume_command": ["sh", "-c", action.format("start")],
            "suspend_command": ["sh", "-c", action.format("stop")], **extra}
    q = LocalQueue(tmp_path / "root", [0] + [2] * listed, pool=pool, probe_seconds=0)
    if compact:
        q.runner = compact_runner(tmp_path / "compact")
    return q


def job(q: LocalQueue, cores: int, seconds: float = 0.3, gate: Path | None = None) -> str:
    """A job logging its begin and end; it runs `seconds`, or (`gate`) until that file exists."""
    log = q.root.parent / "actions.log"
    body = f"while [ ! -e {gate} ]; do sleep 0.05; done" if gate else f"sleep {seconds}"
    script = f'echo "begin $MPICLOUD_JOB_ID" >> {log}; {body}; echo "end $MPICLOUD_JOB_ID" >> {log}'
    return q.submit(["sh", "-c", script], cores=cores)


def pool_status(q: LocalQueue) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((q.root / "status.json").read_text())["pool"]
    return data


def wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def all_stopped(q: LocalQueue) -> bool:
    try:
        return set(pool_status(q)["nodes"].values()) == {"stopped"}
    except (OSError, ValueError, KeyError):
        return False


def check_log(q: LocalQueue, jobs: list[str]) -> list[str]:
    """Every job ran once, started in FIFO order, only on nodes that had started and were not stopped before
    its end; returns the log's lines."""
    lines = (q.root.parent / "actions.log").read_text().split("\n")[:-1]
    assert sorted(line.split()[1] for line in lines if line.startswith("begin")) == sorted(jobs)
    starts = [q.state(j)["started_at"] for j in jobs]
    assert starts == sorted(starts)
    up: set[str] = set()
    running: dict[str, list[str]] = {}
    for line in lines:
        word, what = line.split()
        if word == "start":
            up.add(what)
        elif word == "stop":
            assert not [j for j, hosts in running.items() if what in hosts], f"{what} stopped under a job"
            up.discard(what)
        elif word == "begin":
            hosts = [str(h) for h, _ in q.state(what)["hosts"]]
            assert set(hosts) <= up, f"{what} placed on {hosts}, up: {up}"
            running[what] = hosts
        else:
            del running[what]
    return lines


def test_nodes_start_for_queued_cores_and_stop_when_idle(tmp_path: Path) -> None:
    q = elastic(tmp_path)
    q.serve()
    try:
        wait_for(lambda: (q.root / "status.json").exists())
        assert pool_status(q)["nodes"] == {"n1": "stopped", "n2": "stopped"}
        jobs = [job(q, c) for c in (1, 2, 3, 4, 1)]
        finals = [q.wait(j) for j in jobs]
        assert [f["state"] for f in finals] == ["succeeded"] * 5
        wait_for(lambda: all_stopped(q))
        lines = check_log(q, jobs)
        assert sorted(line for line in lines if line.split()[0] in ("start", "stop")) == \
            ["start n1", "start n2", "stop n1", "stop n2"]
        assert 0 < pool_status(q)["node_hours"] < 0.1
    finally:
        stop(q)


def test_nodes_created_with_the_cluster_are_up_and_idle_then_stop_down_to_min(tmp_path: Path) -> None:
    """Azure creates every compute VM up front and lists them in runner.json: the pool's first start takes them as
    up, and the idle limit deallocates them down to min (nothing else deallocates them after the deployment)."""
    q = elastic(tmp_path, low=1, high=3, listed=3)
    q.serve()
    try:
        wait_for(lambda: (q.root / "status.json").exists())
        wait_for(lambda: sorted(pool_status(q)["nodes"].values()) == ["stopped", "stopped", "up"])
        lines = (q.root.parent / "actions.log").read_text().split("\n")[:-1]
        stopped = sorted(n for n, state in pool_status(q)["nodes"].items() if state == "stopped")
        assert sorted(lines) == [f"stop {n}" for n in stopped]  # never started: they were up already
        assert pool_status(q)["min"] == 1 and pool_status(q)["max"] == 3
    finally:
        stop(q)


def test_a_job_bigger_than_max_fails_at_once(tmp_path: Path) -> None:
    q = elastic(tmp_path)
    q.serve()
    try:
        state = q.wait(job(q, 5))
        assert state["state"] == "failed" and "needs 5 cores but the cluster has 4" in state["reason"]
    finally:
        stop(q)


def resize(q: LocalQueue, nodes: int | None, force: bool = False) -> None:
    tmp = q.root / ".resize.tmp"
    tmp.write_bytes(resize_request(nodes, force))
    tmp.rename(q.root / RESIZE_FILE)


def test_resize_down_drains_the_running_job_then_stops_the_node(tmp_path: Path) -> None:
    q = elastic(tmp_path, idle_minutes=60)
    q.serve()
    try:
        go = tmp_path / "go"  # the long job runs until the test has seen the drain
        long = job(q, 4, gate=go)
        wait_for(lambda: q.state(long)["state"] == "running")
        resize(q, 0)
        wait_for(lambda: set(pool_status(q)["nodes"].values()) == {"draining"})
        late = job(q, 1)
        wait_for(lambda: q.state(late)["state"] != "submitted")
        time.sleep(0.5)
        assert q.state(late)["state"] == "queued"  # no new job on a draining node, none started for it
        go.touch()
        assert q.wait(long)["state"] == "succeeded"
        wait_for(lambda: all_stopped(q))
        resize(q, None)  # back to the spec's limits: the waiting job gets a node
        assert q.wait(late)["state"] == "succeeded"
        check_log(q, [long, late])
    finally:
        stop(q)


def test_forced_resize_cancels_with_the_reason(tmp_path: Path) -> None:
    q = elastic(tmp_path, idle_minutes=60)
    q.serve()
    try:
        long = job(q, 2, seconds=60)
        wait_for(lambda: q.state(long)["state"] == "running")
        resize(q, 0, force=True)
        state = q.wait(long)
        assert state["state"] == "cancelled"
        assert state["reason"] == "cancelled by resize --force: node n1 leaves the cluster"
        wait_for(lambda: all_stopped(q))
    finally:
        stop(q)


def test_a_hostile_resize_request_is_ignored_and_named(tmp_path: Path) -> None:
    q = elastic(tmp_path)
    q.serve()
    try:
        for text in ('{"nodes": -3}', '{"nodes": "2"}', "[1]", "{not json"):
            (q.root / RESIZE_FILE).write_text(text)
            wait_for(lambda: not (q.root / RESIZE_FILE).exists())
        assert q.wait(job(q, 4))["state"] == "succeeded"  # the pool still works, with the spec's limits
        assert not pool_status(q)["resized"]
        log = q.log.read_text()
        assert "resize: -3 is not a node count (0..255); request ignored" in log
        assert "resize: '2' is not a node count" in log
    finally:
        stop(q)


@pytest.mark.parametrize("compact", [False, True], ids=["source", "compact-bundle"])
@pytest.mark.parametrize("point", nodepool.POOL_CRASH_POINTS)
def test_runner_killed_at_each_pool_step_loses_nothing(tmp_path: Path, point: str, compact: bool) -> None:
    q = elastic(tmp_path, compact=compact)
    jobs = [job(q, c) for c in (2, 3, 1)]
    q.serve(crash_at=point)
    try:
        assert q.proc is not None
        assert q.proc.wait(30) == -signal.SIGKILL, f"the runner did not reach {point}"
        q.serve()
        assert [q.wait(j)["state"] for j in jobs] == ["succeeded"] * 3
        wait_for(lambda: all_stopped(q))
        check_log(q, jobs)
    finally:
        stop(q)


def stop(q: LocalQueue) -> None:
    """Stop the runner; kill it when it does not stop (a failed test leaves no runner behind)."""
    try:
        q.stop()
    except subprocess.TimeoutExpired:
        q.kill()


def test_node_hours_stop_counting_while_the_runner_is_stopped_on_purpose(tmp_path: Path) -> None:
    q = elastic(tmp_path, idle_minutes=60)
    q.serve()
    try:
        assert q.wait(job(q, 2))["state"] == "succeeded"  # n1 is up now, and stays up (idle limit 60 min)
    finally:
        stop(q)
    record = json.loads((q.root / nodepool.POOL_FILE).read_text())
    assert record["paused"] and record["head_since"] is None and record["nodes"]["n1"]["up_since"] is None
    before = pool_status(q)["node_hours"]
    time.sleep(5.0)  # the cluster is stopped: not counted (head and n1 would add 10 node-seconds)
    q.serve()
    seen: dict[str, Any] = {}

    def restarted() -> bool:  # one read: the pool's state and its node-hours from the same status.json
        seen.update(json.loads((q.root / "status.json").read_text()))
        return bool(seen["pool"]["nodes"] == {"n1": "up", "n2": "stopped"} and seen["heartbeat"] > time.time() - 1)
    try:
        wait_for(restarted)
        assert seen["pool"]["node_hours"] - before < 5 / 3600  # head and n1 counted only since the restart
    finally:
        stop(q)


def test_after_a_cluster_stop_nodes_that_were_up_start_again_before_they_take_jobs(tmp_path: Path) -> None:
    """Azure (resume_after_pause): the cluster's stop deallocated every VM and its start brings back the head only;
    the pool runs the start action of the nodes that were up, and places jobs on them only once they are up."""
    q = elastic(tmp_path, idle_minutes=60, listed=2, resume_after_pause=True)
    q.serve()
    try:
        wait_for(lambda: (q.root / "status.json").exists() and pool_status(q)["nodes"] == {"n1": "up", "n2": "up"})
    finally:
        stop(q)
    log = q.root.parent / "actions.log"
    assert not log.exists()  # created up: no action so far
    q.serve()
    try:
        jobs = [job(q, 4)]
        assert q.wait(jobs[0])["state"] == "succeeded"
        wait_for(lambda: pool_status(q)["nodes"] == {"n1": "up", "n2": "up"})  # status.json follows each pass
        lines = check_log(q, jobs)  # the job began only after both nodes had started again
        assert sorted(line for line in lines if line.startswith("start")) == ["start n1", "start n2"]
        record = json.loads((q.root / nodepool.POOL_FILE).read_text())
        assert record["nodes"]["n0"]["state"] == "up"  # the head is not the pool's to start
    finally:
        stop(q)
