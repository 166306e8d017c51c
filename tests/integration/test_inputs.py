"""Inputs on the real local cluster: the content-addressed store under concurrent and killed uploaders,
directory inputs, archives kept as files on request."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

from mpicloud.api import Cluster
from tests.conftest import ROOT, cli

SIZE = 24 << 20  # big enough for several ranges when RANGE is lowered, small enough for CI

#: a submitter that connects, says "ready", waits for the go file, then submits a job hashing its input
SUBMITTER = """
import os, sys, time
from pathlib import Path
from mpicloud.api import Cluster
from mpicloud.jobs import ranges, transfer
path, go = Path(sys.argv[1]), Path(sys.argv[2])
if len(sys.argv) > 3:  # lower the range size so the upload is several ranges (a resume point between them)
    transfer.RANGE = int(sys.argv[3])
if len(sys.argv) > 4:  # the named kill point: SIGKILL this client after that many ranges were sent
    done, push = [], ranges.push_range
    def push_then_die(*args, **kwargs):
        result = push(*args, **kwargs)
        done.append(1)
        if len(done) >= int(sys.argv[4]):
            os.kill(os.getpid(), 9)
        return result
    ranges.push_range = push_then_die
cluster = Cluster.get("itest")
cluster.queue.prepare()
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
events = []
job = cluster.submit(["sha256sum", path.name], inputs=[path], on_input=lambda n, e: events.append(e))
print(job.id, ",".join(events), flush=True)
"""


def _store(cluster: Cluster) -> Path:
    return Path(cluster.record.shared_path) / ".mpicloud" / "store"


def _env(cluster_home: Path) -> dict[str, str]:
    return {**os.environ, "MPICLOUD_HOME": str(cluster_home), "PYTHONPATH": str(ROOT)}


def _submitters(cluster_home: Path, path: Path, go: Path, count: int, *extra: str) -> list[subprocess.Popen[str]]:
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, str(path), str(go), *extra], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(cluster_home)) for _ in range(count)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    go.touch()
    return procs


def _new_file(path: Path, size: int = SIZE) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_four_concurrent_submitters_of_one_new_input_ten_times(local_cluster: Cluster, cluster_home: Path,
                                                               tmp_path: Path) -> None:
    for trial in range(10):
        path = tmp_path / f"data-{trial}.bin"
        digest = _new_file(path)
        procs = _submitters(cluster_home, path, tmp_path / f"go-{trial}", 4, str(8 << 20))
        results = [(p.communicate(timeout=300), p.returncode) for p in procs]
        for (out, err), code in results:
            assert code == 0 and "Traceback" not in err, f"trial {trial}: a submitter failed: {err}"
        job_ids = [out.split()[0] for (out, _), _ in results]
        events = [out.split()[1] for (out, _), _ in results]
        assert events.count("uploaded") + events.count("resumed") >= 1, events
        for job_id in job_ids:
            job = local_cluster.job(job_id)
            assert job.wait(120).state == "succeeded", job.stderr()
            assert job.stdout() == f"{digest}  {path.name}\n", f"trial {trial}: job {job_id} got the wrong bytes"
        assert hashlib.sha256((_store(local_cluster) / digest).read_bytes()).hexdigest() == digest
        assert not list(_store(local_cluster).glob(f".{digest}*")), "part or lock files left behind"


def test_an_uploader_killed_mid_upload_leaves_no_store_object_and_a_retry_resumes(
        local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "killed.bin"
    digest = _new_file(path)
    range_size = str(2 << 20)  # 12 ranges, 4 streams: killed after the 3rd arrived, others in flight
    (killed,) = _submitters(cluster_home, path, tmp_path / "go-kill", 1, range_size, "3")
    killed.communicate(timeout=120)
    assert killed.returncode == -9
    store = _store(local_cluster)
    assert not (store / digest).exists(), "a partial upload entered the store"
    assert list(store.glob(f".{digest}.*.part")), "the killed uploader's part file is kept for a resume"
    (retry,) = _submitters(cluster_home, path, tmp_path / "go-retry", 1, range_size)
    out, err = retry.communicate(timeout=120)
    assert retry.returncode == 0, err
    job_id, event = out.split()
    assert event == "resumed"
    job = local_cluster.job(job_id)
    assert job.wait(60).state == "succeeded", job.stderr()
    assert job.stdout() == f"{digest}  killed.bin\n"
    assert hashlib.sha256((store / digest).read_bytes()).hexdigest() == digest
    assert not list(store.glob(f".{digest}*"))


def test_a_waiting_uploader_takes_over_when_the_first_one_dies(local_cluster: Cluster, cluster_home: Path,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "handover.bin"
    digest = _new_file(path)
    go = tmp_path / "go-handover"
    doomed = _submitters(cluster_home, path, go, 1, str(2 << 20), "2")[0]
    store = _store(local_cluster)
    deadline = time.monotonic() + 60
    while not list(store.glob(f".{digest}.*.part")):  # the first one holds the claim: start the second now
        assert time.monotonic() < deadline and doomed.poll() is None, doomed.stderr
        time.sleep(0.005)
    go.unlink()
    waiter = _submitters(cluster_home, path, go, 1, str(2 << 20))[0]
    doomed.communicate(timeout=120)
    out, err = waiter.communicate(timeout=120)
    assert doomed.returncode == -9 and waiter.returncode == 0, err
    job = local_cluster.job(out.split()[0])
    assert job.wait(60).state == "succeeded", job.stderr()
    assert job.stdout() == f"{digest}  handover.bin\n"


def test_directory_input_arrives_as_a_folder_with_nested_files(local_cluster: Cluster, cluster_home: Path,
                                                                tmp_path: Path) -> None:
    folder = tmp_path / "d"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "a").write_text("top\n")
    (folder / "sub" / "deeper" / "b.txt").write_text("nested\n")
    made = cli("submit", "itest", "--input", str(folder), "--", "sh", "-c",
               "cat d/a d/sub/deeper/b.txt && find d -type f | sort", env={"MPICLOUD_HOME": str(cluster_home)})
    assert made.returncode == 0, made.stderr
    job = local_cluster.job(made.stdout.split()[-1])
    info = job.wait(60)
    assert info.state == "succeeded", info.reason
    assert job.stdout() == "top\nnested\nd/a\nd/sub/deeper/b.txt\n"


def test_archives_kept_as_files_with_no_unpack(local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inside.txt", "x")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    kept = local_cluster.submit(["sh", "-c", "sha256sum bundle.zip; ls"], inputs=[archive], unpack=False)
    assert kept.wait(60).state == "succeeded", kept.stderr()
    assert kept.stdout() == f"{digest}  bundle.zip\nbundle.zip\n"
    made = cli("submit", "itest", "--no-unpack", "--input", str(archive), "--", "ls",
               env={"MPICLOUD_HOME": str(cluster_home)})
    assert made.returncode == 0, made.stderr
    job = local_cluster.job(made.stdout.split()[-1])
    assert job.wait(60).state == "succeeded" and job.stdout() == "bundle.zip\n"
    unpacked = local_cluster.submit(["ls"], inputs=[archive])
    assert unpacked.wait(60).state == "succeeded" and unpacked.stdout() == "inside.txt\n"


def test_hostile_sweep_cells_reach_the_script_as_literal_values(local_cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    cells = [f"$(touch {marker}-1)", f"`touch {marker}-2`", f"'; touch {marker}-3; '", 'say "hi',
             f"line one\nline two; touch {marker}-5", "back\\slash\\"]
    runs = tmp_path / "runs.csv"
    with open(runs, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["value"])
        writer.writerows([c] for c in cells)
    template = tmp_path / "run.sh.j2"
    template.write_text("printf '%s' {{ value }} > value.txt\ncat value.txt\n")
    _, jobs = local_cluster.sweep(runs, template)
    for cell, job in zip(cells, jobs, strict=True):
        assert job.wait(60).state == "succeeded", job.stderr()
        assert job.stdout() == cell
    assert not list(tmp_path.glob("pwned-*")), "a cell was executed on the cluster"
