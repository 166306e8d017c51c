"""Transfers on the real local cluster: filters, codecs, checksums, resume after a kill, uploads, watch."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpicloud.api import Cluster, Job
from tests.conftest import ROOT, cli

MAKE_OUTPUTS = """
import os, random
random.seed(7)
os.makedirs("a", exist_ok=True); os.makedirs("b/c", exist_ok=True)
open("a/x.log", "w").write("log line\\n" * 5000)
open("a/y.dat", "wb").write(bytes(random.getrandbits(8) for _ in range(200000)))
open("b/c/z.log", "w").write("another log\\n" * 100)
open("field.csv", "w").write("".join(f"{i},{i*0.001:.6f},{(i % 360) * 0.5:.3f}\\n" for i in range(300000)))
with open("big.bin", "wb") as f:
    f.write(os.urandom(40 << 20))
"""


@pytest.fixture(scope="module")
def outputs_job(local_cluster: Cluster) -> Job:
    job = local_cluster.submit([sys.executable, "-c", MAKE_OUTPUTS])
    assert job.wait(120).state == "succeeded", job.stderr()
    return job


def cluster_work(cluster: Cluster, job: Job) -> Path:
    return Path(cluster.record.runner_root) / "jobs" / job.id / "work"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> dict[str, str]:
    """Every file below folder with its SHA-256, leaving out a download's own bookkeeping (.mpicloud/)."""
    return {p.relative_to(folder).as_posix(): digest(p) for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).parts[0] != ".mpicloud"}


@pytest.mark.parametrize("compress", ["auto", "none", "zstd", "gzip", "bzip2"])
def test_all_outputs_identical_with_every_codec(local_cluster: Cluster, outputs_job: Job, tmp_path: Path,
                                                compress: str) -> None:
    summary = outputs_job.get(tmp_path, compress=compress)
    expected = files_under(cluster_work(local_cluster, outputs_job))
    assert files_under(tmp_path / outputs_job.id) == expected
    assert summary.files == 5 and summary.not_downloaded == []
    # auto: the text outputs are compressed on the cluster, the random big.bin is sent as is
    assert set(summary.codecs) == ({"zstd", "none"} if compress == "auto" else {compress})
    if compress != "none":
        assert summary.wire_bytes < summary.bytes


def test_filters_select_exactly(outputs_job: Job, tmp_path: Path) -> None:
    outputs_job.get(tmp_path / "logs", filters=[".log"])
    assert sorted(files_under(tmp_path / "logs" / outputs_job.id)) == ["a/x.log", "b/c/z.log"]
    outputs_job.get(tmp_path / "dat", globs=["*.dat"])
    assert sorted(files_under(tmp_path / "dat" / outputs_job.id)) == ["a/y.dat"]
    outputs_job.get(tmp_path / "only", only=["field.csv"])
    assert sorted(files_under(tmp_path / "only" / outputs_job.id)) == ["field.csv"]


def test_cli_get_json_and_missing_file(local_cluster: Cluster, outputs_job: Job, cluster_home: Path,
                                       tmp_path: Path) -> None:
    env = {"MPICLOUD_HOME": str(cluster_home)}
    got = cli("get", "itest", outputs_job.id, "--dest", str(tmp_path), "--glob", "*.log", "--json", env=env)
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["files"] == 2 and summary["ratio"] > 1
    missing = cli("get", "itest", outputs_job.id, "--dest", str(tmp_path), "--only", "nope.txt", env=env)
    assert missing.returncode == 2 and "has no file 'nope.txt'" in missing.stderr


def test_killed_download_resumes_and_verifies(local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    job = local_cluster.submit(["sh", "-c", "head -c 300000000 /dev/urandom > huge.bin"])
    assert job.wait(120).state == "succeeded"
    env = {**os.environ, "MPICLOUD_HOME": str(cluster_home)}
    argv = [sys.executable, "-m", "mpicloud.cli", "get", "itest", job.id, "--dest", str(tmp_path), "--streams", "1",
            "--compress", "none"]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / job.id / ".mpicloud" / "transfer.json"
    deadline = time.monotonic() + 60
    while not (state.exists() and any(entry[2] for entry in json.loads(state.read_text())["ranges"].values())):
        assert proc.poll() is None and time.monotonic() < deadline, "transfer ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / job.id / "huge.bin").exists()
    again = cli("get", "itest", job.id, "--dest", str(tmp_path), "--json", "--compress", "none",
                env={"MPICLOUD_HOME": str(cluster_home)})
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["bytes"] < 300_000_000  # only the missing ranges moved
    assert digest(tmp_path / job.id / "huge.bin") == digest(cluster_work(local_cluster, job) / "huge.bin")


def test_large_parallel_download_in_worker_processes(local_cluster: Cluster, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mpicloud.jobs import ranges

    monkeypatch.setattr(ranges, "PROCESS_MIN_CPUS", 1)  # the worker-process path, even on a 2-core machine
    job = local_cluster.submit(["sh", "-c", "head -c 300000000 /dev/urandom > huge.bin"])
    assert job.wait(120).state == "succeeded"
    seen: list[int] = []
    summary = job.get(tmp_path, streams=3, compress="none", progress=lambda done, total: seen.append(done))
    assert summary.bytes == 300_000_000 and seen[-1] == 300_000_000
    assert digest(tmp_path / job.id / "huge.bin") == digest(cluster_work(local_cluster, job) / "huge.bin")


def _part_bytes(store: Path, sha: str) -> int:
    """Bytes written to this upload's part file in the store (0 while there is none, or once it was renamed)."""
    try:
        return sum(p.stat().st_blocks * 512 for p in store.glob(f".{sha}.*part"))
    except FileNotFoundError:
        return 0


def test_upload_resumes_after_a_kill(local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    data = tmp_path / "input.bin"
    data.write_bytes(os.urandom(200 << 20))
    env = {**os.environ, "MPICLOUD_HOME": str(cluster_home)}
    argv = [sys.executable, "-m", "mpicloud.cli", "submit", "itest", "--input", str(data), "--", "true"]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = Path(local_cluster.record.runner_root) / "store"
    deadline = time.monotonic() + 60
    sha = digest(data)
    while _part_bytes(store, sha) <= (120 << 20):
        assert proc.poll() is None and time.monotonic() < deadline, "upload ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    events: list[tuple[str, str]] = []
    job = local_cluster.submit(["sha256sum", "input.bin"], inputs=[data], on_input=lambda n, e: events.append((n, e)))
    assert events == [("input.bin", "resumed")]
    assert job.wait(60).state == "succeeded"
    assert job.stdout().split()[0] == sha


def test_upload_killed_inside_its_first_range_resumes_there(local_cluster: Cluster, cluster_home: Path,
                                                            tmp_path: Path) -> None:
    data = tmp_path / "one-range.bin"
    data.write_bytes(os.urandom(60 << 20))  # a single range: without resume inside it, a retry sends it all
    sha = digest(data)
    env = {**os.environ, "MPICLOUD_HOME": str(cluster_home)}
    argv = [sys.executable, "-m", "mpicloud.cli", "submit", "itest", "--input", str(data), "--", "true"]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = Path(local_cluster.record.runner_root) / "store"
    deadline = time.monotonic() + 60
    while not list(store.glob(f".{sha}.r0")):  # the node marked at least one chunk
        assert proc.poll() is None and time.monotonic() < deadline, "upload ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    events: list[tuple[str, str]] = []
    job = local_cluster.submit(["sha256sum", "one-range.bin"], inputs=[data],
                               on_input=lambda n, e: events.append((n, e)))
    assert events == [("one-range.bin", "resumed")]
    assert job.wait(60).state == "succeeded"
    assert job.stdout().split()[0] == sha
    assert not list(store.glob(f".{sha}.*"))  # no part, marker or lock left behind


def test_watch_downloads_each_job_once(local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    first = local_cluster.submit(["sh", "-c", "echo one > out.txt"])
    second = local_cluster.submit(["sh", "-c", "echo two > out.txt; exit 1"])
    first.wait(60)
    second.wait(60)
    env = {"MPICLOUD_HOME": str(cluster_home)}
    dest = tmp_path / "w"
    run1 = cli("watch", "itest", "--dest", str(dest), "--once", "--filter", "out.txt", env=env,
               timeout=600)
    assert run1.returncode == 0, run1.stderr
    assert (dest / first.id / "out.txt").read_text() == "one\n"
    assert (dest / second.id / "out.txt").read_text() == "two\n"
    run2 = cli("watch", "itest", "--dest", str(dest), "--once", "--filter", "out.txt", env=env,
               timeout=600)
    assert first.id not in run2.stdout and second.id not in run2.stdout
    third = local_cluster.submit(["sh", "-c", "echo three > out.txt"])
    third.wait(60)
    run3 = cli("watch", "itest", "--dest", str(dest), "--once", "--filter", "out.txt", "--delete-after-verify",
               env=env, timeout=600)
    assert third.id in run3.stdout and first.id not in run3.stdout
    assert not cluster_work(local_cluster, third).exists()
    assert cluster_work(local_cluster, first).exists()
