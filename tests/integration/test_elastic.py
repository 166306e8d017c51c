"""Elastic local clusters, real: compute nodes (their own sshd) start for queued jobs and stop when idle, and
`resize` grows a running cluster live or drains it without losing a job or an output."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from mpicloud.api import Cluster
from mpicloud.cluster import local, registry
from mpicloud.cluster.local_nodes import node_pids
from tests.conftest import cli, wait_running
from tests.elasticlib import burst, pool_nodes

#: per job: the node it ran on (hostname: each loopback node has its own), its id into its work dir, a pause
SCRIPT = 'hostname; echo "$MPICLOUD_JOB_ID" > out.txt; sleep 1'


def _up(tmp_path: Path, name: str, nodes: str, address: str, extra: str = "") -> Cluster:
    """A running local cluster from a spec with these nodes (loopback addresses from `address`)."""
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\ncloud: local\nnodes: {nodes}\n{extra}local: {{address_base: {address}}}\n")
    up = cli("up", str(spec))
    assert up.returncode == 0, up.stderr
    return Cluster.get(name)


def test_a_burst_takes_min0_max4_from_0_to_4_nodes_and_back_every_job_once_in_order(home: Path,
                                                                                   tmp_path: Path) -> None:
    cluster = _up(tmp_path, "burst", "{min: 0, max: 4}", "127.0.162.1",
                  "slots_per_node: 2\nscale_down_idle_minutes: 0.05\n")
    root = Path(cluster.record.runner_root)
    try:
        jobs = burst(cluster, SCRIPT, settle=60)
    finally:
        stopped = cli("stop", "burst")
        assert stopped.returncode == 0, stopped.stderr
    states = [json.loads((root / "jobs" / j.id / "state.json").read_text()) for j in jobs]
    starts = [s["started_at"] for s in states]
    assert starts == sorted(starts)  # strict FIFO
    for job, state in zip(jobs, states, strict=True):
        ran_on = (root / "jobs" / job.id / "stdout.log").read_text().split()
        assert ran_on == [state["hosts"][0][0]]  # ran once, on the first node of its allocation
        assert (root / "jobs" / job.id / "work" / "out.txt").read_text() == f"{job.id}\n"
        assert all(host != "node0" for host, _ in state["hosts"])  # the head holds the queue, runs no jobs
    assert not any(node_pids(cluster.record, f"node{i}") for i in range(1, 5))
    hours = json.loads((root / "status.json").read_text())["pool"]["node_hours"]
    assert 0 < hours < 0.2


def test_resize_grows_live_and_shrinking_drains_or_cancels_with_force(home: Path, tmp_path: Path) -> None:
    cluster = _up(tmp_path, "sizer", "2", "127.0.163.1")
    root = Path(cluster.record.runner_root)
    try:
        refused = cli("resize", "sizer", "--nodes", "0")
        assert refused.returncode == 2 and "--nodes must be between 1 and 255" in refused.stderr
        assert "Traceback" not in refused.stderr
        grown = cli("resize", "sizer", "--nodes", "3")
        assert grown.returncode == 0 and "3 up" in grown.stdout, grown.stderr
        wide = cluster.submit(["hostname"], cores=3, mpi=True).wait(120)
        assert wide.state == "succeeded"
        assert sorted(cluster.job(wide.id).stdout().split()) == ["node0", "node1", "node2"]  # node2 is new
        long = cluster.submit(["sh", "-c", "sleep 6; echo finished > out.txt"], cores=3)
        wait_running(long)
        began = time.monotonic()
        shrunk = cluster.resize(1)
        assert time.monotonic() - began > 1.5  # it waited (~6 s) for the job on the draining nodes
        assert long.info().state == "succeeded"
        assert (root / "jobs" / long.id / "work" / "out.txt").read_text() == "finished\n"
        assert shrunk["nodes"] == {"node0": "up", "node1": "stopped", "node2": "stopped"}
        assert not node_pids(cluster.record, "node1") and not node_pids(cluster.record, "node2")
        cluster.resize(2)
        stuck = cluster.submit(["sleep", "300"], cores=2)
        wait_running(stuck)
        forced = cli("resize", "sizer", "--nodes", "1", "--force")
        assert forced.returncode == 0, forced.stderr
        info = stuck.info()
        assert info.state == "cancelled"
        assert info.reason == "cancelled by resize --force: node node1 leaves the cluster"
        status = cli("status", "sizer")
        assert "nodes: 2 stopped, 1 up; min 1, max 1 (resized by hand" in status.stdout, status.stdout
        assert "node-hours since" in status.stdout
        assert cli("stop", "sizer").returncode == 0
        started = cli("start", "sizer")
        assert started.returncode == 0, started.stderr
        assert not node_pids(cluster.record, "node1")  # a stopped node stays stopped across stop/start
        again = Cluster.get("sizer")
        after = again.submit(["hostname"]).wait(60)
        assert after.state == "succeeded" and again.job(after.id).stdout() == "node0\n"
    finally:
        assert cli("stop", "sizer").returncode == 0


def test_an_up_node_that_stops_answering_is_replaced(home: Path, tmp_path: Path) -> None:
    cluster = _up(tmp_path, "heal", "{min: 1, max: 1}", "127.0.164.1")
    root = Path(cluster.record.runner_root)
    try:
        assert cli("stop", "heal").returncode == 0  # probe every 0.5 s, replace after 1 s unreachable
        config = json.loads((root / "runner.json").read_text())
        config["probe_seconds"] = 0.5
        config["pool"]["replace_unreachable_seconds"] = 1
        (root / "runner.json").write_text(json.dumps(config))
        assert cli("start", "heal").returncode == 0
        first = cluster.submit(["hostname"]).wait(60)
        assert first.state == "succeeded", (first.reason, cluster.job(first.id).stderr())
        assert cluster.job(first.id).stdout() == "node1\n"
        sshd = int((cluster.record.dir / "node1" / "sshd.pid").read_text())
        os.kill(sshd, signal.SIGTERM)  # only this cluster's node1 listener: the node stops answering
        deadline = time.monotonic() + 60
        log = root / "runner.log"
        while "node node1 has been unreachable" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        after = cluster.submit(["hostname"]).wait(90)  # waits for the node started in its place
        assert after.state == "succeeded", (after.reason, cluster.job(after.id).stderr(), log.read_text()[-3000:])
        assert cluster.job(after.id).stdout() == "node1\n"
        assert int((cluster.record.dir / "node1" / "sshd.pid").read_text()) != sshd
        deadline = time.monotonic() + 30
        while pool_nodes(root) != {"node1": "up"}:  # status.json is rewritten every second
            assert time.monotonic() < deadline, pool_nodes(root)
            time.sleep(0.2)
        assert "node1" not in cluster.status()["unreachable"]
    finally:
        assert cli("stop", "heal").returncode == 0


def test_stop_keeps_a_node_a_node_action_added_after_the_caller_read_the_record(home: Path, tmp_path: Path) -> None:
    _up(tmp_path, "race", "{min: 0, max: 2}", "127.0.165.1")
    stale = registry.load("race")  # read before the node exists, as `mpicloud stop` does before it waits
    assert cli("node", "start", "race", "node1").returncode == 0
    assert local.stop(stale, "test") == []
    assert [n.name for n in registry.load("race").nodes] == ["node0", "node1"]
