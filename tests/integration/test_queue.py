"""The durable FIFO queue on the real local cluster: concurrency, cancel, idle shutdown, sweeps, inputs."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from mpicloud.api import Cluster, Job, JobInfo
from mpicloud.jobs import query
from tests.conftest import ROOT, QueueCluster, cli, wait_running
from tests.slurmlib import slurm_record

SUBMITTER = """
import sys
from mpicloud.api import Cluster
cluster = Cluster.get(sys.argv[3])
for i in range(int(sys.argv[2])):
    print(cluster.submit(["true"], name=f"{sys.argv[1]}-{i}").id, flush=True)
"""


def test_fifo_and_exactly_once_across_concurrent_clients(queue_cluster: QueueCluster) -> None:
    env = {"MPICLOUD_HOME": str(queue_cluster.home), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, f"c{n}", "50", queue_cluster.name],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, **env}) for n in range(4)]
    outputs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    submitted = [i for out in outputs for i in out]
    assert len(submitted) == 200 == len(set(submitted))
    deadline = time.monotonic() + 240
    while True:
        infos = {i.id: i for i in queue_cluster.cluster.jobs() if i.id in set(submitted)}
        if len(infos) == 200 and all(i.done for i in infos.values()):
            break
        assert time.monotonic() < deadline, "200 jobs did not finish in time"
        time.sleep(0.5)
    assert all(i.state == "succeeded" for i in infos.values())
    order = [i.id for i in queue_cluster.cluster.jobs() if i.id in infos]
    assert len(order) == 200  # each accepted exactly once
    starts = _start_times(queue_cluster, order, infos)
    assert starts == sorted(starts), "jobs started out of FIFO order"
    for out in outputs:  # each client's jobs were queued in the order it submitted them
        positions = [order.index(i) for i in out]
        assert positions == sorted(positions)


def _start_times(queue_cluster: QueueCluster, order: list[str], infos: dict[str, JobInfo]) -> list[float]:
    """When each job started, in queue order: the runner's record (built-in), or Slurm's own (jobcomp.txt:
    StartTime, in seconds) after checking that the jobs went to Slurm in queue order (ascending job ids)."""
    if queue_cluster.scheduler == "builtin":
        return [infos[i].started_at or 0 for i in order]
    jobs = Path(queue_cluster.cluster.record.shared_path) / ".mpicloud" / "jobs"
    slurm_ids = [int(json.loads((jobs / i / "state.json").read_text())["slurm_id"]) for i in order]
    assert slurm_ids == sorted(slurm_ids), "jobs went to Slurm out of FIFO order"
    return [datetime.fromisoformat(slurm_record(queue_cluster.cluster, str(s))["StartTime"]).timestamp()
            for s in slurm_ids]


def test_cancel_stops_every_rank_on_every_node(local_cluster: Cluster) -> None:
    marker = "3607.25"
    job = local_cluster.submit(["sleep", marker], cores=4, mpi=True)
    _wait_ranks(job, marker, 4)
    assert _rank_nodes(marker) == ["MPICLOUD_NODE=node0"] * 2 + ["MPICLOUD_NODE=node1"] * 2
    job.cancel()
    info = job.wait(30)
    assert info.state == "cancelled"
    deadline = time.monotonic() + 10
    while _count(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(marker) == 0


def _ranks_ignoring_term(marker: str) -> list[str]:
    """A rank command that ignores SIGTERM (inherited across exec) and shows as `sleep MARKER`."""
    return ["sh", "-c", f"trap '' TERM; exec sleep {marker}"]


def _rank_nodes(marker: str) -> list[str]:
    return sorted(subprocess.run(["sh", "-c", f"for p in $(pgrep -f '^sleep {marker}$'); do "
                                 "tr '\\0' '\\n' < /proc/$p/environ | grep ^MPICLOUD_NODE=; done"],
                                 capture_output=True, text=True).stdout.split())


def _state_file(cluster: Cluster, job: Job) -> Path:
    return Path(cluster.record.shared_path) / ".mpicloud" / "jobs" / job.id / "state.json"


def test_cancel_of_term_ignoring_ranks_ends_only_when_every_rank_on_every_node_is_gone(
        local_cluster: Cluster) -> None:
    marker = "3607.5"
    job = local_cluster.submit(_ranks_ignoring_term(marker), cores=4, mpi=True)
    _wait_ranks(job, marker, 4)
    assert _rank_nodes(marker) == ["MPICLOUD_NODE=node0"] * 2 + ["MPICLOUD_NODE=node1"] * 2
    job.cancel()
    deadline = time.monotonic() + 60
    while not (info := job.info()).done:
        assert time.monotonic() < deadline, f"cancel never ended: {info}"
        time.sleep(0.05)
    assert info.state == "cancelled"
    assert _count(marker) == 0, "the job was reported cancelled while ranks still ran"


def test_killed_wrapper_of_an_mpi_job_keeps_its_slots_until_every_rank_is_gone(local_cluster: Cluster) -> None:
    marker = "3607.75"
    job = local_cluster.submit(_ranks_ignoring_term(marker), cores=4, mpi=True)
    _wait_ranks(job, marker, 4)
    behind = local_cluster.submit(["true"], cores=4)  # needs every slot: may start only once the ranks are gone
    os.kill(int(json.loads(_state_file(local_cluster, job).read_text())["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        # `behind` first: the runner records the job's end before it starts `behind`, so a `behind` seen started
        # with the job still not done after it would be slots given away while ranks ran (read the other way
        # round, the job may end between the two reads)
        waiting = behind.info().state
        if (info := job.info()).done:
            break
        assert time.monotonic() < deadline, f"the job never ended: {info}"
        assert waiting in ("submitted", "queued"), "the slots went to the next job while ranks ran"
        time.sleep(0.05)
    assert info.state == "failed" and "died without recording a result" in (info.reason or ""), info
    assert _count(marker) == 0, "the job was failed while ranks still ran"
    after = behind.wait(60)
    assert after.state == "succeeded" and after.started_at is not None and info.ended_at is not None
    assert after.started_at >= info.ended_at


def _wait_ranks(job: Job, marker: str, ranks: int) -> None:
    deadline = time.monotonic() + 30
    while _count(marker) < ranks:
        assert time.monotonic() < deadline, f"ranks did not start: {job.info()}"
        time.sleep(0.1)


def _count(marker: str) -> int:
    found = subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True).stdout.split()
    return len(found)


def test_killed_job_process_and_post_command(queue_cluster: QueueCluster) -> None:
    killed = queue_cluster.cluster.submit(["sh", "-c", "kill -9 $$"])
    info = killed.wait(30)
    assert info.state == "failed" and info.reason == "killed by signal 9"
    with_post = queue_cluster.cluster.submit(["sh", "-c", "echo 42 > answer.txt"],
                                             post=["sh", "-c", "grep -q 41 answer.txt"])
    info = with_post.wait(30)
    assert info.state == "succeeded" and info.exit_code == 0 and info.post_exit_code == 1


def _tar_gz(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tf.addfile(member, io.BytesIO(data))
    return path


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_inputs_reused_and_overlaid_in_order(queue_cluster: QueueCluster, tmp_path: Path) -> None:
    base = _tar_gz(tmp_path / "base.tar.gz", {"build/a.txt": "base-a", "build/b.txt": "base-b"})
    delta = _zip(tmp_path / "delta.zip", {"build/b.txt": "delta-b"})
    events: list[tuple[str, str]] = []
    show = ["sh", "-c", "cat build/a.txt build/b.txt"]
    first = queue_cluster.cluster.submit(show, inputs=[base, delta], on_input=lambda n, e: events.append((n, e)))
    assert first.wait(30).state == "succeeded", first.stderr()
    assert first.stdout() == "base-adelta-b"
    assert ("base.tar.gz", "uploaded") in events or ("base.tar.gz", "reused") in events
    events.clear()
    reversed_order = queue_cluster.cluster.submit(show, inputs=[delta, base],
                                                  on_input=lambda n, e: events.append((n, e)))
    assert reversed_order.wait(30).state == "succeeded"
    assert reversed_order.stdout() == "base-abase-b"
    assert events == [("delta.zip", "reused"), ("base.tar.gz", "reused")]


def test_cli_says_reused(local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    data = tmp_path / "mesh.dat"
    data.write_bytes(b"x" * 100_000)
    env = {"MPICLOUD_HOME": str(cluster_home)}
    first = cli("submit", "itest", "--input", str(data), "--", "true", env=env)
    second = cli("submit", "itest", "--input", str(data), "--", "true", env=env)
    assert "input mesh.dat: uploaded" in first.stderr
    assert "input mesh.dat: reused" in second.stderr


def test_sweep_with_a_failing_row(queue_cluster: QueueCluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text("case,mach,cores\n" + "".join(f"c{i},{0.1 * i:.1f},{1 + i % 2}\n" for i in range(6)))
    template = tmp_path / "run.sh.j2"
    template.write_text("echo case={{ case }} mach={{ mach }} np=$MPICLOUD_NP\n"
                        "{% if case == 'c3' %}exit 5{% endif %}\n")
    made = queue_cluster.cli("sweep", queue_cluster.name, "--runs", str(runs), "--template", str(template), "--json")
    assert made.returncode == 0, made.stderr
    sweep = json.loads(made.stdout)
    assert len(sweep["jobs"]) == 6
    for job_id in sweep["jobs"]:
        queue_cluster.cluster.job(job_id).wait(60)
    status = json.loads(queue_cluster.cli("sweep", "status", queue_cluster.name, sweep["sweep"], "--json").stdout)
    assert status["total"] == 6 and status["done"] == 6
    assert status["counts"] == {"succeeded": 5, "failed": 1}
    assert status["failed"][0]["row"]["case"] == "c3" and status["failed"][0]["exit_code"] == 5
    outputs = [queue_cluster.cluster.job(j).stdout() for j in sweep["jobs"]]
    assert outputs[1] == "case=c1 mach=0.1 np=2\n" and outputs[2] == "case=c2 mach=0.2 np=1\n"
    text = queue_cluster.cli("sweep", "status", queue_cluster.name, sweep["sweep"]).stdout
    assert "6/6 done" in text and "failed" in text


def test_sweep_bulk_cancel(queue_cluster: QueueCluster, tmp_path: Path) -> None:
    runs = tmp_path / "r.csv"
    runs.write_text("n\n" + "".join(f"{i}\n" for i in range(5)))
    template = tmp_path / "slow.sh.j2"
    template.write_text("sleep 60 # {{ n }}\n")
    sweep_id, jobs = queue_cluster.cluster.sweep(runs, template, cores_per_run=4)
    assert queue_cluster.cluster.cancel_sweep(sweep_id) == 5
    states = [j.wait(30).state for j in jobs]
    assert states == ["cancelled"] * 5


# ---------------------------------------------------------------- issue 9: supervision, placement, admission
def _status_file(cluster: Cluster) -> Path:
    return Path(cluster.record.shared_path) / ".mpicloud" / "status.json"


def _runner_pid(cluster: Cluster) -> int:
    return int(json.loads(_status_file(cluster).read_text())["pid"])


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _wait_new_runner(cluster: Cluster, old: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = json.loads(_status_file(cluster).read_text())
            if data["pid"] != old and time.time() - data["heartbeat"] < 3:
                return int(data["pid"])
        except (OSError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, "no new runner came up"
        time.sleep(0.1)


def test_too_many_cores_refused_at_submit(queue_cluster: QueueCluster) -> None:
    before = len(queue_cluster.cluster.jobs())
    done = queue_cluster.cli("submit", queue_cluster.name, "--cores", "9", "--", "true")
    assert done.returncode == 2
    assert "needs 9 cores" in done.stderr and "has 4" in done.stderr and "Traceback" not in done.stderr
    assert len(queue_cluster.cluster.jobs()) == before


def test_jobs_shows_failure_reasons(queue_cluster: QueueCluster) -> None:
    job = queue_cluster.cluster.submit(["sh", "-c", "exit 3"], name="fails-3")
    assert job.wait(30).state == "failed"
    listing = queue_cluster.cli("jobs", queue_cluster.name).stdout
    line = next(row for row in listing.splitlines() if row.startswith(job.id))
    assert "fails-3" in line and "exited with code 3" in line


def test_script_runs_on_the_first_node_of_its_allocation(local_cluster: Cluster) -> None:
    blocker = local_cluster.submit(["sleep", "300"], cores=2)  # holds node0's two slots until cancelled
    wait_running(blocker)
    script = local_cluster.submit(["sh", "-c", 'echo "$MPICLOUD_NODE"; cat "$MPICLOUD_HOSTFILE"'])
    info = script.wait(60)
    blocker.cancel()
    assert info.state == "succeeded", script.stderr()
    assert info.hosts == (("node1", 1),)
    assert script.stdout() == "node1\nnode1 slots=1\n"
    assert blocker.wait(60).state == "cancelled"


def test_submit_with_an_id_is_idempotent(queue_cluster: QueueCluster) -> None:
    runs = Path(queue_cluster.cluster.record.shared_path) / "idem-runs.txt"
    command = ["sh", "-c", f'echo "$MPICLOUD_JOB_ID" >> {runs}']
    key = f"idem-{int(time.time() * 1000)}"
    first = queue_cluster.cluster.submit(command, job_id=key)
    again = queue_cluster.cluster.submit(command, job_id=key)
    assert first.id == again.id == key
    # a try killed before its rename left a spool dir behind: the retry still goes through
    spooled = f"{key}-b"
    stale = Path(queue_cluster.cluster.record.shared_path) / ".mpicloud" / "spool" / spooled
    stale.mkdir()
    (stale / "job.json").write_text("{half")
    printed = queue_cluster.cli("submit", queue_cluster.name, "--id", spooled, "--", *command)
    assert printed.returncode == 0 and printed.stdout.split() == [spooled], printed.stderr
    assert queue_cluster.cli("submit", queue_cluster.name, "--id", spooled, "--", *command).stdout.split() == [spooled]
    assert queue_cluster.cluster.job(key).wait(30).state == "succeeded"
    assert queue_cluster.cluster.job(spooled).wait(30).state == "succeeded"
    time.sleep(1.0)
    assert sorted(runs.read_text().split()) == [key, spooled]
    assert [i.id for i in queue_cluster.cluster.jobs()].count(key) == 1
    bad = queue_cluster.cli("submit", queue_cluster.name, "--id", "../escape", "--", "true")
    assert bad.returncode == 2 and "job id '../escape' is not valid" in bad.stderr


def test_dead_runner_is_restarted_by_its_watchdog_and_by_clients(local_cluster: Cluster, cluster_home: Path,
                                                              tmp_path: Path) -> None:
    env = {"MPICLOUD_HOME": str(cluster_home)}
    old = _runner_pid(local_cluster)
    os.kill(old, signal.SIGKILL)  # the watchdog restarts it, no client needed
    new = _wait_new_runner(local_cluster, old)
    # now the watchdog dies too: nothing on the cluster restarts the runner
    os.kill(_parent(new), signal.SIGKILL)
    os.kill(new, signal.SIGKILL)
    time.sleep(6)  # the heartbeat goes stale
    status = cli("status", "itest", env=env)
    assert status.returncode == 0, status.stderr
    assert "the runner was not running (last heartbeat" in status.stdout and "restarted it" in status.stdout
    assert "heartbeat" in status.stdout and "s ago" in status.stdout
    third = _runner_pid(local_cluster)
    os.kill(_parent(third), signal.SIGKILL)
    os.kill(third, signal.SIGKILL)
    time.sleep(6)
    spec = tmp_path / "itest.yaml"
    spec.write_text("name: itest\ncloud: local\nnodes: 2\nslots_per_node: 2\nlocal: {address_base: 127.0.91.1}\n")
    up = cli("up", str(spec), env=env)
    assert up.returncode == 0 and "already running" in up.stdout and "restarted it" in up.stdout, up.stderr
    fourth = _runner_pid(local_cluster)
    os.kill(_parent(fourth), signal.SIGKILL)
    os.kill(fourth, signal.SIGKILL)
    time.sleep(6)
    job = cli("submit", "itest", "--", "sh", "-c", "echo served", env=env)  # submit restarts it
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.split()[-1]
    waited = cli("wait", "itest", job_id, "--timeout", "60", env=env)
    assert waited.returncode == 0 and "succeeded" in waited.stderr
    fifth = _runner_pid(local_cluster)
    os.kill(_parent(fifth), signal.SIGKILL)
    os.kill(fifth, signal.SIGKILL)
    time.sleep(6)
    slow = cli("submit", "itest", "--", "sleep", "60", env=env).stdout.split()[-1]
    cancelled = cli("cancel", "itest", slow, env=env)
    assert cancelled.returncode == 0 and "Traceback" not in cancelled.stderr, cancelled.stderr
    assert local_cluster.job(slow).wait(60).state == "cancelled"


def test_wait_outlives_a_runner_and_watchdog_killed_while_it_waits(local_cluster: Cluster,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query, "RUNNER_CHECK_SECONDS", 1.0)
    job = local_cluster.submit(["sh", "-c", "sleep 2; echo waited"])
    waited: list[JobInfo] = []
    waiter = threading.Thread(target=lambda: waited.append(job.wait(120)))
    waiter.start()
    runner = _runner_pid(local_cluster)
    os.kill(_parent(runner), signal.SIGKILL)  # nothing on the cluster restarts it now: only the waiting client
    os.kill(runner, signal.SIGKILL)
    waiter.join(150)
    assert waited and waited[0].state == "succeeded" and job.stdout() == "waited\n"
    assert _runner_pid(local_cluster) != runner


CHAOS_SUBMITTER = """
import sys
from mpicloud.api import Cluster
cluster = Cluster.get(sys.argv[4])
for i in range(int(sys.argv[2])):
    print(cluster.submit(["sh", "-c", 'echo "$MPICLOUD_JOB_ID" >> ' + sys.argv[3]], job_id=f"{sys.argv[1]}-{i:04d}").id,
          flush=True)
"""


def test_runner_killed_repeatedly_under_load_runs_each_job_once(queue_cluster: QueueCluster) -> None:
    """3 submitters x 40 jobs while the runner is kill -9'd 8 times: every job ends succeeded, ran once."""
    runs = Path(queue_cluster.cluster.record.shared_path) / f"chaos-{int(time.time())}.txt"
    env = {**os.environ, "MPICLOUD_HOME": str(queue_cluster.home), "PYTHONPATH": str(ROOT)}
    tag = f"k{int(time.time()) % 100000}"
    procs = [subprocess.Popen([sys.executable, "-c", CHAOS_SUBMITTER, f"{tag}c{n}", "40", str(runs),
                               queue_cluster.name], stdout=subprocess.PIPE, text=True, env=env) for n in range(3)]
    kills = 0
    while kills < 8:
        time.sleep(0.7)
        try:
            pid = _runner_pid(queue_cluster.cluster)
            os.kill(pid, signal.SIGKILL)
            kills += 1
            _wait_new_runner(queue_cluster.cluster, pid)
        except (OSError, ValueError):
            continue
    ids = [i for p in procs for i in p.communicate(timeout=300)[0].split()]
    assert all(p.returncode == 0 for p in procs) and len(ids) == 120
    for job_id in ids:
        assert queue_cluster.cluster.job(job_id).wait(120).state == "succeeded"
    ran = runs.read_text().split()
    assert sorted(ran) == sorted(ids), "a job ran twice or not at all"
    listed = [i.id for i in queue_cluster.cluster.jobs() if i.id.startswith(tag)]
    assert sorted(listed) == sorted(ids)


def test_dead_node_gets_no_jobs_and_fails_the_job_that_lost_it(home: Path) -> None:
    from mpicloud.spec import spec_from_dict

    spec = spec_from_dict({"name": "deadnode", "cloud": "local", "nodes": 2, "slots_per_node": 1,
                           "local": {"address_base": "127.0.97.1"}})
    cluster = Cluster.up(spec)
    try:
        mark = "3610.25"
        lost = cluster.submit(["sleep", mark], cores=2, mpi=True)
        _wait_ranks(lost, mark, 2)
        sshd = int((cluster.record.dir / "node1" / "sshd.pid").read_text())
        os.kill(sshd, signal.SIGTERM)  # only this cluster's node1 listener
        info = lost.wait(60)
        assert info.state == "failed" and "node node1 became unreachable" in (info.reason or "")
        assert _count(mark) == 0
        deadline = time.monotonic() + 30  # status.json is rewritten every second; a restarted runner re-probes
        while "node1" not in cluster.status()["unreachable"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "node1" in cluster.status()["unreachable"]
        text = cli("status", "deadnode").stdout
        assert "node node1 UNREACHABLE" in text
        placed = [cluster.submit(["true"]) for _ in range(3)]
        assert all(j.wait(30).state == "succeeded" for j in placed)
        assert {j.info().hosts for j in placed} == {(("node0", 1),)}
        waiting = cluster.submit(["true"], cores=2)
        time.sleep(2)
        assert waiting.info().state in ("submitted", "queued")  # accepted or not yet, never placed
        waiting.cancel()
        assert waiting.wait(30).state == "cancelled"
    finally:
        cluster.down()
