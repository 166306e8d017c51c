"""mpicloud's queue on the real local Slurm cluster (root, real daemons): the runner's Slurm backend.

The contract shared with the built-in queue is tested in test_queue.py / test_downloads.py (parametrised over
both); here what only Slurm does: allocations over namespaced nodes, Slurm's own records, arrays, scancel,
a restarting slurmctld, a runner killed between `sbatch` and recording the Slurm id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mpicloud.api import Cluster
from mpicloud.cluster import local_ns, netns, slurm_local
from mpicloud.cluster.processes import MARKER
from tests.conftest import ROOT, cli
from tests.runnerlib import LocalQueue
from tests.slurmlib import slurm_record, slurm_records


def shared(cluster: Cluster) -> Path:
    return Path(cluster.record.shared_path)


def state_of(cluster: Cluster, job_id: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((shared(cluster) / ".mpicloud" / "jobs" / job_id / "state.json").read_text())
    return data


@pytest.fixture(scope="module")
def allreduce(slurm_cluster: Cluster) -> Path:
    """examples/mpi/allreduce.c built once on the shared storage."""
    folder = shared(slurm_cluster) / "slurm-mpi"
    folder.mkdir(exist_ok=True)
    subprocess.run(["mpicc", "-O2", "-o", str(folder / "allreduce"), str(ROOT / "examples/mpi/allreduce.c")],
                   check=True, timeout=120)
    return folder / "allreduce"


def ranks_by_node(out: str) -> dict[str, int]:
    nodes: dict[str, int] = {}
    for line in out.splitlines():
        if line.startswith("rank "):
            node = line.split(" on ")[1].split()[0]
            nodes[node] = nodes.get(node, 0) + 1
    return nodes


def test_every_rank_sees_its_own_node_as_mpicloud_node(slurm_cluster: Cluster) -> None:
    """sbatch exports the runner's environment (node0's); Slurm's TaskProlog gives each task its own node."""
    job = slurm_cluster.submit(["sh", "-c", 'echo "$(hostname) $MPICLOUD_NODE"'], cores=4, mpi=True)
    assert job.wait(120).state == "succeeded", job.stderr()
    assert sorted(job.stdout().split("\n")[:-1]) == ["node0 node0"] * 2 + ["node1 node1"] * 2


def test_submit_mpi_runs_four_ranks_over_two_nodes_in_one_allocation(slurm_cluster: Cluster, allreduce: Path,
                                                                     cluster_home: Path) -> None:
    done = cli("submit", "slurmtest", "--cores", "4", "--mpi", "--", str(allreduce),
               env={"MPICLOUD_HOME": str(cluster_home)})
    assert done.returncode == 0, done.stderr
    job = slurm_cluster.job(done.stdout.split()[-1])
    info = job.wait(120)
    assert info.state == "succeeded", job.stderr()
    assert "allreduce sum=10 expected=10" in job.stdout()
    assert ranks_by_node(job.stdout()) == {"node0": 2, "node1": 2}
    assert info.hosts == (("node0", 2), ("node1", 2))
    record = slurm_record(slurm_cluster, state_of(slurm_cluster, job.id)["slurm_id"])
    assert record["Name"] == f"mpicloud-{job.id}" and record["NodeCnt"] == "2" and record["ProcCnt"] == "4"


@pytest.mark.parametrize("launch", ["mpirun", "srun --mpi=pmix"])
def test_a_jobs_own_mpirun_or_srun_uses_its_allocation(slurm_cluster: Cluster, allreduce: Path,
                                                      launch: str) -> None:
    job = slurm_cluster.submit(["sh", "-c", f"{launch} {allreduce}"], cores=4)
    info = job.wait(120)
    assert info.state == "succeeded", job.stderr()
    assert "allreduce sum=10 expected=10" in job.stdout()
    assert ranks_by_node(job.stdout()) == {"node0": 2, "node1": 2}


def test_exit_codes_and_a_job_slurm_ended_without_a_result(slurm_cluster: Cluster) -> None:
    failing = slurm_cluster.submit(["sh", "-c", "exit 7"])
    after = slurm_cluster.submit(["sh", "-c", "echo still served"])
    info = failing.wait(60)
    assert info.state == "failed" and info.exit_code == 7 and info.reason == "exited with code 7"
    assert after.wait(60).state == "succeeded" and after.stdout() == "still served\n"  # the queue goes on
    outside = slurm_cluster.submit(["sleep", "3605.5"])
    deadline = time.monotonic() + 60
    while outside.info().state != "running":
        assert time.monotonic() < deadline, outside.info()
        time.sleep(0.2)
    slurm_id = state_of(slurm_cluster, outside.id)["slurm_id"]
    env = {**os.environ, "SLURM_CONF": slurm_cluster.record.local["slurm_conf"]}
    subprocess.run(["scancel", slurm_id], env=env, check=True, timeout=30)  # behind mpicloud's back
    info = outside.wait(60)
    assert info.state == "failed" and f"Slurm job {slurm_id} ended CANCELLED" in (info.reason or ""), info.reason


def _pids(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"^(/usr/bin/)?sleep {marker}$"], capture_output=True, text=True)
    return found.stdout.split()


def test_cancel_of_a_running_two_node_job_leaves_no_process(slurm_cluster: Cluster) -> None:
    """srun's 4 tasks over both nodes, plus a double-forked orphan (proctrack/linuxproc misses it)."""
    job = slurm_cluster.submit(["sh", "-c", "(setsid sleep 3606.75 &); srun sleep 3606.5"], cores=4)
    deadline = time.monotonic() + 60
    while len(_pids("3606.5")) < 4 or not _pids("3606.75") or job.info().state != "running":
        assert time.monotonic() < deadline, job.info()
        time.sleep(0.2)
    try:
        assert job.info().hosts == (("node0", 2), ("node1", 2))
    finally:
        job.cancel()
    info = job.wait(60)
    assert info.state == "cancelled"
    assert _pids("3606.5") == [] and _pids("3606.75") == []  # cancelled only once all of them were gone


def test_a_sweep_of_twenty_rows_is_one_slurm_array(slurm_cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text("n\n" + "".join(f"{i}\n" for i in range(20)))
    template = tmp_path / "row.sh.j2"
    template.write_text("echo row={{ n }} task=$SLURM_ARRAY_TASK_ID\n")
    _, jobs = slurm_cluster.sweep(runs, template)
    assert [j.wait(120).state for j in jobs] == ["succeeded"] * 20
    ids = [state_of(slurm_cluster, j.id)["slurm_id"] for j in jobs]
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_{i}" for i in range(20)]
    assert [j.stdout() for j in jobs] == [f"row={i} task={i}\n" for i in range(20)]
    deadline = time.monotonic() + 20
    while len(tasks := [r for r in slurm_records(slurm_cluster) if r.get("ArrayJobId") == array]) < 20:
        assert time.monotonic() < deadline, tasks
        time.sleep(0.2)
    assert sorted(int(r["ArrayTaskId"]) for r in tasks) == list(range(20))
    assert {r["JobState"] for r in tasks} == {"COMPLETED"}


def _slurmctld(cluster: Cluster) -> int:
    conf = cluster.record.local["slurm_conf"].encode()
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"slurmctld") and conf in argv:
            return int(entry.name)
    raise AssertionError("no slurmctld runs for this cluster")


def _running(pid: int) -> bool:
    """True until pid has exited (a zombie: it was started by this process, which has not reaped it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_jobs_submitted_while_slurmctld_restarts_are_not_lost(slurm_cluster: Cluster) -> None:
    runs = shared(slurm_cluster) / "restart-runs.txt"
    command = ["sh", "-c", f'sleep 1; echo "$MPICLOUD_JOB_ID" >> {runs}']
    running = slurm_cluster.submit(command)
    controller = _slurmctld(slurm_cluster)
    os.kill(controller, signal.SIGTERM)
    while _running(controller):
        time.sleep(0.05)
    during = [slurm_cluster.submit(command) for _ in range(3)]
    time.sleep(3)  # the runner's sbatch and squeue fail meanwhile
    assert {j.info().state for j in during} <= {"queued", "starting"}  # accepted, their sbatch waits for Slurm
    record = slurm_cluster.record
    cluster_id = record.local["cluster_id"]
    slurm_local.start_controller(local_ns.slurm_layout(str(record.dir), cluster_id),
                                 netns.enter(record.local["holders"]["node0"]), {MARKER: cluster_id})
    for job in [running, *during]:
        assert job.wait(120).state == "succeeded", job.info()
    assert sorted(runs.read_text().split()) == sorted(j.id for j in [running, *during])  # each ran once


@pytest.mark.parametrize("point", ["start.after_starting", "start.after_spawn", "start.after_running",
                                   "slurm.after_sbatch"])
def test_runner_killed_around_sbatch_submits_and_runs_the_job_once(slurm_cluster: Cluster, tmp_path: Path,
                                                                   point: str) -> None:
    """A runner on its own root, served by Slurm: killed before `sbatch`, between `sbatch` and recording the
    Slurm id, or right after; restarted, it finds the submission again (by its comment) or makes it."""
    queue = LocalQueue(tmp_path / "root", [2, 2], scheduler="slurm",
                       slurm_env={"SLURM_CONF": slurm_cluster.record.local["slurm_conf"]})
    runs = tmp_path / "runs.txt"
    queue.serve(crash_at=point)
    job_id = queue.submit(["sh", "-c", f'echo "$MPICLOUD_JOB_ID" >> {runs}'])
    assert queue.proc is not None and queue.proc.wait(30) == -signal.SIGKILL
    queue.serve()
    try:
        assert queue.wait(job_id, 120)["state"] == "succeeded"
    finally:
        queue.stop()
    assert runs.read_text().split() == [job_id]
    slurm_record(slurm_cluster, queue.state(job_id)["slurm_id"])
    submitted = [r for r in slurm_records(slurm_cluster)
                 if r["Name"] == f"mpicloud-{job_id}" and r["WorkDir"].startswith(str(queue.root))]
    assert len(submitted) == 1, submitted  # sbatch ran once for it


def test_status_shows_slurms_nodes_and_pending_reasons(slurm_cluster: Cluster, cluster_home: Path) -> None:
    blocker = slurm_cluster.submit(["sleep", "30"], cores=4)
    waiting = slurm_cluster.submit(["true"], cores=2)
    env = {"MPICLOUD_HOME": str(cluster_home)}
    deadline = time.monotonic() + 60
    while True:
        data = json.loads(cli("status", "slurmtest", "--json", env=env).stdout)
        # Slurm's own reason, once squeue lists the job and its scheduler has looked at it ("None" before);
        # its nodes, once the runner's sinfo (every 5 s) answered
        if data.get("pending_reasons", {}).get(waiting.id) in ("Resources", "Priority") \
                and {n["name"] for n in data["slurm_nodes"]} == {"node0", "node1"} \
                and blocker.info().state == "running":
            break
        assert data["scheduler"] == "slurm" and "" not in data.get("pending_reasons", {}).values(), data
        assert time.monotonic() < deadline, data
        time.sleep(0.5)
    while f"job {waiting.id} pending in Slurm: " not in (text := cli("status", "slurmtest", env=env).stdout) \
            or "slurm node node0" not in text:  # one squeue that failed in between empties the reasons
        assert time.monotonic() < deadline, text
        time.sleep(0.5)
    for job in (blocker, waiting):
        job.cancel()
    assert [j.wait(60).state for j in (blocker, waiting)] == ["cancelled", "cancelled"]
