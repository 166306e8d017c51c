"""Elastic namespaced local clusters, real (root): Slurm's power saving powers CLOUD nodes up for queued jobs
and down when idle (each node its netns, holder, sshd and slurmd, made live by `mpicloud node start`), resize
maps to Slurm's power states, and the built-in queue's pool makes namespaced nodes live too. After `down` no
namespace, interface or process of the cluster is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from mpicloud.api import Cluster
from mpicloud.cluster import registry
from mpicloud.cluster.local_nodes import node_pids
from tests.conftest import cli, wait_running
from tests.elasticlib import burst, pool_nodes
from tests.slurmlib import ours, processes_with, require_slurm, slurm_record

#: per job: the node it ran on, its id into its work dir, a pause (long enough to see a node busy)
SCRIPT = 'hostname; echo "$MPICLOUD_JOB_ID" > out.txt; sleep 2'


@pytest.fixture()
def elastic(home: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A spec file writer; every cluster it made is brought `down` after the test, leaving nothing behind."""
    require_slurm()
    before = ours()
    names: list[str] = []

    def spec(name: str, text: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\ncloud: local\n{text}")
        names.append(name)
        return path

    yield spec  # type: ignore[misc]
    for name in names:
        down = cli("down", name)
        assert down.returncode == 0, down.stderr
    assert ours() == before
    assert processes_with(str(home)) == []


def _up(spec: Path) -> Cluster:
    up = cli("up", str(spec), timeout=180)
    assert up.returncode == 0, up.stderr
    return Cluster.get(spec.stem)


def _when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_slurm_burst_takes_min0_max4_from_0_to_4_nodes_and_back(elastic: object) -> None:
    cluster = _up(elastic("sburst", "nodes: {min: 0, max: 4}\nslots_per_node: 2\nscheduler: slurm\n"  # type: ignore[operator]
                                    "scale_down_idle_minutes: 0.1\n"))
    root = Path(cluster.record.runner_root)
    conf = Path(cluster.record.local["slurm_conf"]).read_text()
    assert "State=CLOUD" in conf and "SuspendTime=6\n" in conf and "NodeName=node0" not in conf
    jobs = burst(cluster, SCRIPT, settle=90)
    records = [slurm_record(cluster, json.loads((root / "jobs" / j.id / "state.json").read_text())["slurm_id"])
               for j in jobs]
    starts = [_when(r["StartTime"]) for r in records]
    assert starts == sorted(starts)  # sched/builtin + priority/basic: Slurm starts them in submit order
    runs: dict[str, list[tuple[float, float]]] = {}
    for job, record in zip(jobs, records, strict=True):
        state = json.loads((root / "jobs" / job.id / "state.json").read_text())
        ran_on = (root / "jobs" / job.id / "stdout.log").read_text().split()
        assert ran_on == [state["hosts"][0][0]] and ran_on[0] != "node0"  # once, never on the head
        assert (root / "jobs" / job.id / "work" / "out.txt").read_text() == f"{job.id}\n"
        for node, _ in state["hosts"]:
            runs.setdefault(node, []).append((_when(record["StartTime"]), _when(record["EndTime"])))
    deadline = time.monotonic() + 30  # Slurm shows a node powered down (~) while its SuspendProgram still runs
    while any(node_pids(registry.load("sburst"), f"node{i}") for i in range(1, 5)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    suspends = []  # (node, when slurmctld ran SuspendProgram for it)
    for line in (root / "slurm" / "power.log").read_text().splitlines():
        words = line.split()
        if words[3] == "suspend" and words[4].endswith(":") and len(words) > 5 and words[5] != "done":
            suspends += [(node, _when(f"{words[0]}T{words[1]}")) for node in words[5:]]
    assert {n for n, _ in suspends} == {"node1", "node2", "node3", "node4"}
    for node, at in suspends:  # no node was powered down while a job ran on it
        assert not any(start < at < end for start, end in runs.get(node, [])), (node, at, runs.get(node))
    status = cli("status", "sburst")
    assert "nodes: 4 stopped; min 0, max 4" in status.stdout and "node-hours since" in status.stdout, status.stdout
    hours = json.loads((root / "status.json").read_text())["pool"]["compute_node_hours"]
    assert 0 < hours < 0.2


def test_slurm_resize_drains_without_loss_and_force_cancels_with_the_reason(elastic: object) -> None:
    cluster = _up(elastic("sresize", "nodes: {min: 0, max: 2}\nscheduler: slurm\n"  # type: ignore[operator]
                                     "scale_down_idle_minutes: 5\n"))
    root = Path(cluster.record.runner_root)
    refused = cli("resize", "sresize", "--nodes", "3")
    assert refused.returncode == 2 and "--nodes must be between 0 and 2" in refused.stderr, refused.stderr
    long = cluster.submit(["sh", "-c", "sleep 7; echo finished > out.txt"])
    wait_running(long)
    began = time.monotonic()
    shrunk = cluster.resize(0, timeout=120)
    assert time.monotonic() - began > 1.5  # it waited (~7 s) for the job on the draining node
    assert long.info().state == "succeeded"
    assert (root / "jobs" / long.id / "work" / "out.txt").read_text() == "finished\n"
    assert shrunk["nodes"] == {"node1": "stopped", "node2": "stopped"}
    grown = cli("resize", "sresize", "--nodes", "2", timeout=180)
    assert grown.returncode == 0 and "2 up" in grown.stdout, grown.stderr
    stuck = cluster.submit(["sleep", "300"], cores=2)
    wait_running(stuck)
    forced = cli("resize", "sresize", "--nodes", "1", "--force", timeout=180)
    assert forced.returncode == 0, forced.stderr
    info = stuck.info()
    assert info.state == "cancelled"
    assert info.reason == "cancelled by resize --force: node node2 leaves the cluster"
    after = cluster.submit(["hostname"], cores=1).wait(120)
    assert after.state == "succeeded" and cluster.job(after.id).stdout() == "node1\n"  # node2 stays out of use
    assert cli("resize", "sresize", "--auto", timeout=120).returncode == 0
    wide = cluster.submit(["hostname"], cores=2).wait(180)  # node2 is Slurm's to power up again
    assert wide.state == "succeeded", wide.reason


def test_builtin_pool_makes_namespaced_nodes_live(elastic: object) -> None:
    cluster = _up(elastic("nsburst", "nodes: {min: 0, max: 2}\nlocal: {network: namespaces}\n"  # type: ignore[operator]
                                     "scale_down_idle_minutes: 0.05\n"))
    root = Path(cluster.record.runner_root)
    job = cluster.submit(["sh", "-c", "hostname; ip -4 -o addr show eth0"], cores=1).wait(120)
    assert job.state == "succeeded", job.reason
    name, addr = cluster.job(job.id).stdout().splitlines()
    assert name == "node1"
    record = registry.load("nsburst")
    node1 = next(n for n in record.nodes if n.name == "node1")
    assert f"inet {node1.host}/" in addr  # its own netns and address on the cluster's bridge
    deadline = time.monotonic() + 60
    while pool_nodes(root).get("node1") != "stopped":
        assert time.monotonic() < deadline, pool_nodes(root)
        time.sleep(0.2)
    assert not node_pids(record, "node1")
    tag = record.local["tag"]
    assert not {f"mpc{tag}n1", f"mpc{tag}h1"} & ours()  # its netns and veth are gone with it


def test_a_failed_resume_requeues_the_job_and_the_node_is_tried_again_so_the_job_runs(elastic: object) -> None:
    """A node that fails to power up is set DOWN with the reason (the job is requeued at once, its prolog ends) and
    powered down; the runner resumes it after retry_failed_seconds, and once it can start the job runs: no job
    waits forever on a node Slurm gave up."""
    cluster = _up(elastic("sfail", "nodes: {min: 0, max: 2}\nscheduler: slurm\n"))  # type: ignore[operator]
    blocker = registry.cluster_dir("sfail") / "node2"
    blocker.write_text("not a directory: `mpicloud node start sfail node2` fails\n")
    env = {**os.environ, "SLURM_CONF": cluster.record.local["slurm_conf"]}
    job = cluster.submit(["hostname"], cores=2)  # one slot per node: it needs node1 and node2
    deadline = time.monotonic() + 60
    while True:
        reasons = subprocess.run(["sinfo", "-h", "-R", "-o", "%n|%E"], env=env, capture_output=True, text=True,
                                 timeout=30).stdout
        if "node2|mpicloud resume failed" in reasons:
            break
        assert time.monotonic() < deadline, reasons
        time.sleep(0.2)
    sid = json.loads((Path(cluster.record.runner_root) / "jobs" / job.id / "state.json").read_text())["slurm_id"]
    deadline = time.monotonic() + 30
    while (shown := subprocess.run(["squeue", "-h", "-j", sid, "-o", "%T"], env=env, capture_output=True,
                                   text=True, timeout=30).stdout.strip()) != "PENDING":
        assert time.monotonic() < deadline, shown  # requeued at once, not CONFIGURING until ResumeTimeout
        time.sleep(0.2)
    # DOWN, then powered down (its SuspendProgram ran): the pool takes it as out of use (no jobs)
    deadline = time.monotonic() + 30  # the runner reads sinfo every few seconds into status.json
    while (seen := json.loads((Path(cluster.record.runner_root) / "status.json").read_text())["pool"]["nodes"])[
            "node2"] not in ("stopping", "stopped"):
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert job.info().state == "queued"
    blocker.unlink()  # whatever kept the node from starting is gone (on a cloud: capacity is back)
    deadline = time.monotonic() + 90  # SuspendTimeout 10 s, then the local retry delay of 10 s
    while (state := subprocess.run(["sinfo", "-h", "-n", "node2", "-o", "%t"], env=env, capture_output=True,
                                   text=True, timeout=30).stdout.strip()) != "idle~":
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    log = (Path(cluster.record.runner_root) / "slurm" / "power.log").read_text()
    # on failure, power.log's own timestamped lines (not the commands' output): a failed update shows scontrol's error
    assert "set node2 POWER_DOWN_FORCE: done" in log and "suspend node2: done" in log, \
        [line for line in log.splitlines() if line.startswith("20")]
    # Slurm holds a requeued job for about two minutes (its own fixed delay); lift the hold instead of waiting
    subprocess.run(["scontrol", "update", f"JobId={sid}", "StartTime=now"], env=env, check=True, timeout=30)
    done = job.wait(120)
    assert done.state == "succeeded", done.reason
    assert "resume node2: node2" in (Path(cluster.record.runner_root) / "slurm" / "power.log").read_text()


def test_a_node_up_before_slurm_asked_joins_idle_is_powered_down_when_idle_and_up_again_for_a_job(
        elastic: object) -> None:
    """Azure's way: its compute VMs are created with the cluster and boot before Slurm ever asks for them. A CLOUD
    node whose slurmd registers unasked (with a fresh boot, as slurm-node.sh's first start on a cloud node) is
    taken as powered up and idle, not DOWN; after SuspendTime Slurm powers it down through SuspendProgram, and a
    queued job powers it up again."""
    cluster = _up(elastic("sahead", "nodes: {min: 0, max: 2}\nscheduler: slurm\n"  # type: ignore[operator]
                                    "scale_down_idle_minutes: 0.1\n"))
    env = {**os.environ, "SLURM_CONF": cluster.record.local["slurm_conf"]}

    def state(node: str) -> str:
        return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], env=env, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    assert state("node1") == "idle~"  # powered down: nothing asked for it
    booted = cli("node", "start", "sahead", "node1", timeout=120)  # the "VM" boots by itself
    assert booted.returncode == 0, booted.stderr
    # registered unasked: powered up (being powered down, %, once its SuspendTime of 6 s passed), not down,
    # no power-up pending
    assert state("node1") in ("idle", "idle%")
    log = Path(cluster.record.runner_root) / "slurm" / "power.log"
    deadline = time.monotonic() + 60  # SuspendProgram stops the node, then logs "done"
    while state("node1") != "idle~" or node_pids(registry.load("sahead"), "node1") \
            or "suspend node1: done" not in log.read_text():
        assert time.monotonic() < deadline, state("node1")
        time.sleep(0.2)
    assert "resume node1" not in log.read_text()
    job = cluster.submit(["hostname"], cores=2).wait(120)  # one slot per node: both nodes
    assert job.state == "succeeded", job.reason
    # Slurm powered both up for it (the job may start before slurm_power.py logs each resume as done)
    assert "resume node[1-2]: node1 node2" in (Path(cluster.record.runner_root) / "slurm" / "power.log").read_text()


def test_an_elastic_slurm_cluster_stopped_and_started_powers_nodes_up_again_for_its_jobs(elastic: object) -> None:
    """The whole-cluster stop (idle shutdown's) with nodes up and a job running, then `start`: the nodes the
    pool had up come back, the job that was running ends with Slurm's reason (it never runs again), and a new
    job needing both nodes runs; idle nodes are powered down again afterwards."""
    cluster = _up(elastic("sagain", "nodes: {min: 0, max: 2}\nscheduler: slurm\n"  # type: ignore[operator]
                                    "scale_down_idle_minutes: 0.1\n"))
    runs = Path(cluster.record.shared_path) / "runs.txt"
    busy = cluster.submit(["sh", "-c", f'echo "$MPICLOUD_JOB_ID" >> {runs}; sleep 300'], cores=2)
    wait_running(busy)
    assert cli("stop", "sagain").returncode == 0
    assert not any(node_pids(registry.load("sagain"), f"node{i}") for i in range(3))
    started = cli("start", "sagain", timeout=180)
    assert started.returncode == 0, started.stderr
    cluster = Cluster.get("sagain")
    ended = cluster.job(busy.id).wait(120)
    assert ended.state == "failed" and " ended CANCELLED" in (ended.reason or ""), ended.reason
    job = cluster.submit(["hostname"], cores=2).wait(180)
    assert job.state == "succeeded", job.reason
    assert cluster.job(job.id).stdout() == "node1\n"  # the script runs on its allocation's first node
    assert runs.read_text().split() == [busy.id]  # never ran again
    root = Path(cluster.record.runner_root)
    deadline = time.monotonic() + 90
    while set(pool_nodes(root).values()) != {"stopped"}:
        assert time.monotonic() < deadline, pool_nodes(root)
        time.sleep(0.5)
