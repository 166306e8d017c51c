"""The durable FIFO queue on the real local cluster: concurrency, cancel, idle shutdown, sweeps, inputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from mpicloud.api import Cluster
from tests.conftest import ROOT, cli

SUBMITTER = """
import sys
from mpicloud.api import Cluster
cluster = Cluster.get("itest")
for i in range(int(sys.argv[2])):
    print(cluster.submit(["true"], name=f"{sys.argv[1]}-{i}").id, flush=True)
"""


def test_fifo_and_exactly_once_across_concurrent_clients(local_cluster: Cluster, cluster_home: Path) -> None:
    env = {"MPICLOUD_HOME": str(cluster_home), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, f"c{n}", "50"], stdout=subprocess.PIPE, text=True,
                              env={**__import__("os").environ, **env}) for n in range(4)]
    outputs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    submitted = [i for out in outputs for i in out]
    assert len(submitted) == 200 == len(set(submitted))
    deadline = time.monotonic() + 240
    while True:
        infos = {i.id: i for i in local_cluster.jobs() if i.id in set(submitted)}
        if len(infos) == 200 and all(i.done for i in infos.values()):
            break
        assert time.monotonic() < deadline, "200 jobs did not finish in time"
        time.sleep(0.5)
    assert all(i.state == "succeeded" for i in infos.values())
    order = [i.id for i in local_cluster.jobs() if i.id in infos]
    assert len(order) == 200  # each accepted exactly once
    starts = [infos[i].started_at or 0 for i in order]
    assert starts == sorted(starts), "jobs started out of FIFO order"
    for out in outputs:  # each client's jobs were queued in the order it submitted them
        positions = [order.index(i) for i in out]
        assert positions == sorted(positions)


def test_cancel_stops_every_rank_on_every_node(local_cluster: Cluster) -> None:
    marker = "3607.25"
    job = local_cluster.submit(["sleep", marker], cores=4, mpi=True)
    deadline = time.monotonic() + 30
    while _count(marker) < 4:
        assert time.monotonic() < deadline, f"ranks did not start: {job.info()}"
        time.sleep(0.1)
    nodes = subprocess.run(["sh", "-c", f"for p in $(pgrep -f '^sleep {marker}$'); do "
                            "tr '\\0' '\\n' < /proc/$p/environ | grep ^MPICLOUD_NODE=; done"],
                           capture_output=True, text=True).stdout.split()
    assert sorted(nodes) == ["MPICLOUD_NODE=node0"] * 2 + ["MPICLOUD_NODE=node1"] * 2
    job.cancel()
    info = job.wait(30)
    assert info.state == "cancelled"
    deadline = time.monotonic() + 10
    while _count(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(marker) == 0


def _count(marker: str) -> int:
    found = subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True).stdout.split()
    return len(found)


def test_killed_job_process_and_post_command(local_cluster: Cluster) -> None:
    killed = local_cluster.submit(["sh", "-c", "kill -9 $$"])
    info = killed.wait(30)
    assert info.state == "failed" and info.reason == "killed by signal 9"
    with_post = local_cluster.submit(["sh", "-c", "echo 42 > answer.txt"], post=["sh", "-c", "grep -q 41 answer.txt"])
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


def test_inputs_reused_and_overlaid_in_order(local_cluster: Cluster, tmp_path: Path) -> None:
    base = _tar_gz(tmp_path / "base.tar.gz", {"build/a.txt": "base-a", "build/b.txt": "base-b"})
    delta = _zip(tmp_path / "delta.zip", {"build/b.txt": "delta-b"})
    events: list[tuple[str, str]] = []
    show = ["sh", "-c", "cat build/a.txt build/b.txt"]
    first = local_cluster.submit(show, inputs=[base, delta], on_input=lambda n, e: events.append((n, e)))
    assert first.wait(30).state == "succeeded", first.stderr()
    assert first.stdout() == "base-adelta-b"
    assert ("base.tar.gz", "uploaded") in events or ("base.tar.gz", "reused") in events
    events.clear()
    reversed_order = local_cluster.submit(show, inputs=[delta, base], on_input=lambda n, e: events.append((n, e)))
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


def test_sweep_with_a_failing_row(local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text("case,mach,cores\n" + "".join(f"c{i},{0.1 * i:.1f},{1 + i % 2}\n" for i in range(6)))
    template = tmp_path / "run.sh.j2"
    template.write_text("echo case={{ case }} mach={{ mach }} np=$MPICLOUD_NP\n"
                        "{% if case == 'c3' %}exit 5{% endif %}\n")
    env = {"MPICLOUD_HOME": str(cluster_home)}
    made = cli("sweep", "itest", "--runs", str(runs), "--template", str(template), "--json", env=env)
    assert made.returncode == 0, made.stderr
    sweep = json.loads(made.stdout)
    assert len(sweep["jobs"]) == 6
    for job_id in sweep["jobs"]:
        local_cluster.job(job_id).wait(60)
    status = json.loads(cli("sweep", "status", "itest", sweep["sweep"], "--json", env=env).stdout)
    assert status["total"] == 6 and status["done"] == 6
    assert status["counts"] == {"succeeded": 5, "failed": 1}
    assert status["failed"][0]["row"]["case"] == "c3" and status["failed"][0]["exit_code"] == 5
    outputs = [local_cluster.job(j).stdout() for j in sweep["jobs"]]
    assert outputs[1] == "case=c1 mach=0.1 np=2\n" and outputs[2] == "case=c2 mach=0.2 np=1\n"
    text = cli("sweep", "status", "itest", sweep["sweep"], env=env).stdout
    assert "6/6 done" in text and "failed" in text


def test_sweep_bulk_cancel(local_cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "r.csv"
    runs.write_text("n\n" + "".join(f"{i}\n" for i in range(5)))
    template = tmp_path / "slow.sh.j2"
    template.write_text("sleep 60 # {{ n }}\n")
    sweep_id, jobs = local_cluster.sweep(runs, template, cores_per_run=4)
    assert local_cluster.cancel_sweep(sweep_id) == 5
    states = [j.wait(30).state for j in jobs]
    assert states == ["cancelled"] * 5
