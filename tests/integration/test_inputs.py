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

import pytest

from mpicloud.api import Cluster
from tests.conftest import ROOT, cli

SIZE = 24 << 20  # big enough for several ranges when RANGE is lowered, small enough for CI

#: a submitter that connects and says "ready", then for each round waits for that round's go file and submits a
#: job hashing the round's input; argv: FILE-PREFIX ROUNDS [RANGE [KILL-AFTER-RANGES]]
SUBMITTER = """
import os, sys, time
from pathlib import Path
from mpicloud.api import Cluster
from mpicloud.jobs import ranges, transfer
prefix, rounds = sys.argv[1], int(sys.argv[2])
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
for round in range(rounds):
    path, go = Path(f"{prefix}-{round}.bin"), Path(f"{prefix}-{round}.go")
    while not go.exists():
        time.sleep(0.005)
    events = []
    job = cluster.submit(["sha256sum", path.name], inputs=[path], on_input=lambda n, e: events.append(e))
    print(job.id, ",".join(events), flush=True)
"""


def _store(cluster: Cluster) -> Path:
    return Path(cluster.record.shared_path) / ".mpicloud" / "store"


def _env(cluster_home: Path) -> dict[str, str]:
    return {**os.environ, "MPICLOUD_HOME": str(cluster_home), "PYTHONPATH": str(ROOT)}


def _submitters(cluster_home: Path, prefix: Path, count: int, *extra: str,
                rounds: int = 1) -> list[subprocess.Popen[str]]:
    """`count` submitter processes, each connected and waiting for the go file of round 0."""
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, str(prefix), str(rounds), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cluster_home))
             for _ in range(count)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    return procs


def _go(prefix: Path, round_: int = 0) -> None:
    Path(f"{prefix}-{round_}.go").touch()


def _new_file(path: Path, size: int = SIZE) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(900)
def test_four_concurrent_submitters_of_one_new_input_ten_times(local_cluster: Cluster, cluster_home: Path,
                                                               tmp_path: Path) -> None:
    prefix, rounds = tmp_path / "data", 10
    digests = [_new_file(Path(f"{prefix}-{n}.bin")) for n in range(rounds)]
    procs = _submitters(cluster_home, prefix, 4, str(8 << 20), rounds=rounds)
    store = _store(local_cluster)
    for trial, digest in enumerate(digests):
        _go(prefix, trial)
        lines = []
        for proc in procs:
            assert proc.stdout is not None
            lines.append(proc.stdout.readline().split())
            assert len(lines[-1]) == 2, f"trial {trial}: a submitter failed: {proc.communicate()[1]}"
        events = [event for _, event in lines]
        assert events.count("uploaded") + events.count("resumed") >= 1, events
        for job_id, _ in lines:
            job = local_cluster.job(job_id)
            assert job.wait(120).state == "succeeded", job.stderr()
            assert job.stdout() == f"{digest}  data-{trial}.bin\n", f"trial {trial}: job {job_id} got wrong bytes"
        assert hashlib.sha256((store / digest).read_bytes()).hexdigest() == digest
        assert not list(store.glob(f".{digest}*")), "part or lock files left behind"
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err, err


def test_an_uploader_killed_mid_upload_leaves_no_store_object_and_a_retry_resumes(
        local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "killed"
    digest = _new_file(Path(f"{prefix}-0.bin"), 12 << 20)
    range_size = str(2 << 20)  # 6 ranges, 4 streams: killed after the 3rd arrived, others in flight
    (killed,) = _submitters(cluster_home, prefix, 1, range_size, "3")
    _go(prefix)
    killed.communicate(timeout=120)
    assert killed.returncode == -9
    store = _store(local_cluster)
    assert not (store / digest).exists(), "a partial upload entered the store"
    assert list(store.glob(f".{digest}.*.part")), "the killed uploader's part file is kept for a resume"
    (retry,) = _submitters(cluster_home, prefix, 1, range_size)
    out, err = retry.communicate(timeout=120)
    assert retry.returncode == 0, err
    job_id, event = out.split()
    assert event == "resumed"
    job = local_cluster.job(job_id)
    assert job.wait(60).state == "succeeded", job.stderr()
    assert job.stdout() == f"{digest}  killed-0.bin\n"
    assert hashlib.sha256((store / digest).read_bytes()).hexdigest() == digest
    assert not list(store.glob(f".{digest}*"))


def test_a_waiting_uploader_takes_over_when_the_first_one_dies(local_cluster: Cluster, cluster_home: Path,
                                                               tmp_path: Path) -> None:
    prefix = tmp_path / "handover"
    digest = _new_file(Path(f"{prefix}-0.bin"), 12 << 20)
    doomed, waiter = _submitters(cluster_home, prefix, 1, str(2 << 20), "2")[0], \
        _submitters(cluster_home, tmp_path / "handover-b", 1, str(2 << 20))[0]
    Path(f"{tmp_path}/handover-b-0.bin").symlink_to(f"{prefix}-0.bin")
    store = _store(local_cluster)
    _go(prefix)
    deadline = time.monotonic() + 60
    while not list(store.glob(f".{digest}.*.part")):  # the first one holds the claim: start the second now
        assert time.monotonic() < deadline and doomed.poll() is None, doomed.stderr
        time.sleep(0.002)
    _go(tmp_path / "handover-b")
    doomed.communicate(timeout=120)
    out, err = waiter.communicate(timeout=120)
    assert doomed.returncode == -9 and waiter.returncode == 0, err
    job = local_cluster.job(out.split()[0])
    assert job.wait(60).state == "succeeded", job.stderr()
    assert job.stdout() == f"{digest}  handover-b-0.bin\n"
    assert hashlib.sha256((store / digest).read_bytes()).hexdigest() == digest


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


def test_inputs_arrive_with_their_modes_and_times(local_cluster: Cluster, tmp_path: Path) -> None:
    """`./solve.sh` runs straight from the work dir on every node; times survive too (make-style tools)."""
    script = tmp_path / "solve.sh"
    script.write_text("#!/bin/sh\necho solved\n")
    script.chmod(0o750)
    private = tmp_path / "folder" / "secret.cfg"
    private.parent.mkdir()
    private.write_text("k=v\n")
    private.chmod(0o4640)  # setuid never reaches the cluster
    os.utime(script, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    job = local_cluster.submit(["sh", "-c", "./solve.sh && stat -c '%a %Y' solve.sh folder/secret.cfg"],
                               inputs=[script, private.parent])
    assert job.wait(60).state == "succeeded", job.stderr()
    assert job.stdout() == f"solved\n750 1600000000\n640 {int(private.stat().st_mtime)}\n"


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
