"""Downloads that never corrupt, clobber, hang or escape, on the real local cluster: resume from the first
second, skip what is there, keep local edits, links as links, unsendable files named, bookkeeping out of the
user's namespace, running jobs refused, excludes, and automatic downloads that delete only what arrived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpicloud.api import Cluster, Job
from tests.conftest import ROOT, QueueCluster, cli
from tests.integration.test_transfer import cluster_work, digest, files_under

MiB = 1 << 20


def run_job(cluster: Cluster, script: str, **extra: object) -> Job:
    job = cluster.submit([sys.executable, "-c", script], **extra)  # type: ignore[arg-type]
    assert job.wait(120).state == "succeeded", job.stderr()
    return job


def env_for(cluster_home: Path) -> dict[str, str]:
    return {"MPICLOUD_HOME": str(cluster_home)}


def allocated(folder: Path) -> int:
    """Bytes really written into the part files below folder (they are sparse until written)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*part") if p.is_file())


def test_get_killed_in_its_first_seconds_resumes_without_resending(local_cluster: Cluster, cluster_home: Path,
                                                                   tmp_path: Path) -> None:
    job = local_cluster.submit(["sh", "-c", "head -c 300000000 /dev/urandom > huge.bin"])
    assert job.wait(120).state == "succeeded"
    argv = [sys.executable, "-m", "mpicloud.cli", "get", "itest", job.id, "--dest", str(tmp_path), "--streams", "4",
            "--compress", "none"]
    proc = subprocess.Popen(argv, env={**os.environ, **env_for(cluster_home)}, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while allocated(tmp_path) < 100 * MiB:  # well before any of the four 64 MiB ranges in flight is complete
        assert proc.poll() is None and time.monotonic() < deadline, "transfer ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    arrived = allocated(tmp_path)
    assert not (tmp_path / job.id / "huge.bin").exists()
    again = cli("get", "itest", job.id, "--dest", str(tmp_path), "--json", "--compress", "none",
                env=env_for(cluster_home))
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    # what had arrived was kept (at most 4 MiB per stream in flight is fetched again), not sent a second time
    assert summary["wire_bytes"] <= 300_000_000 - (arrived - 4 * 5 * MiB)
    assert digest(tmp_path / job.id / "huge.bin") == digest(cluster_work(local_cluster, job) / "huge.bin")


KEEP_META = """
import os
os.makedirs("d", exist_ok=True)
open("a.txt", "w").write("alpha\\n")
open("d/b.sh", "w").write("echo b\\n")
os.chmod("d/b.sh", 0o750)
os.utime("a.txt", ns=(978307200123456789, 978307200123456789))
with open("big.bin", "wb") as f:
    f.write(os.urandom(33 << 20))
"""


def test_second_get_skips_verified_files_and_keeps_local_edits(local_cluster: Cluster, cluster_home: Path,
                                                               tmp_path: Path) -> None:
    job = run_job(local_cluster, KEEP_META)
    first = job.get(tmp_path)
    here = tmp_path / job.id
    assert first.files == 3 and files_under(here) == files_under(cluster_work(local_cluster, job))
    assert (here / "a.txt").stat().st_mtime_ns == 978307200123456789  # remote times and modes are kept
    assert (here / "d" / "b.sh").stat().st_mode & 0o777 == 0o750
    again = job.get(tmp_path)
    assert again.files == 0 and again.skipped == 3 and again.bytes == 0
    assert again.wire_bytes < 4096  # only the listing crossed the wire
    (here / "a.txt").write_text("my edit\n")
    (here / "big.bin").write_bytes(b"mine")
    edited = cli("get", "itest", job.id, "--dest", str(tmp_path), "--json", env=env_for(cluster_home))
    assert edited.returncode == 1, edited.stderr
    refused = {p["path"]: p["reason"] for p in json.loads(edited.stdout)["not_downloaded"]}
    assert set(refused) == {"a.txt", "big.bin"} and "--overwrite" in refused["a.txt"]
    assert (here / "a.txt").read_text() == "my edit\n" and (here / "big.bin").read_bytes() == b"mine"
    forced = cli("get", "itest", job.id, "--dest", str(tmp_path), "--overwrite", env=env_for(cluster_home))
    assert forced.returncode == 0, forced.stderr
    assert files_under(here) == files_under(cluster_work(local_cluster, job))


LINKS = """
import os
os.makedirs("data", exist_ok=True)
open("data/x.txt", "w").write("inside\\n")
os.symlink("data/x.txt", "inside")
os.symlink("data", "dirlink")
os.symlink("/etc/passwd", "passwd")
os.symlink("/dev/zero", "zero")
os.symlink("../../../..", "up")
os.symlink("data/../../state.json", "sneaky")
"""


def test_symlinks_arrive_as_links_and_never_their_targets_outside(local_cluster: Cluster, cluster_home: Path,
                                                                  tmp_path: Path) -> None:
    job = run_job(local_cluster, LINKS)
    got = cli("get", "itest", job.id, "--dest", str(tmp_path), "--json", env=env_for(cluster_home), timeout=60)
    assert got.returncode == 1, got.stderr
    here = tmp_path / job.id
    assert os.readlink(here / "inside") == "data/x.txt" and (here / "inside").read_text() == "inside\n"
    assert os.readlink(here / "dirlink") == "data"
    skipped = {p["path"] for p in json.loads(got.stdout)["not_downloaded"]}
    assert skipped == {"passwd", "zero", "up", "sneaky"}
    for name in skipped:
        assert not os.path.lexists(here / name)


HOSTILE = """
import os
open("ok.txt", "w").write("fine\\n")
os.symlink("nowhere", "dangling")
open(b"bad\\xff.txt", "w").write("x")
os.mkfifo("pipe")
for name in ("-big.bin", "--offset=0"):
    with open(name, "wb") as f:
        f.write(os.urandom(33 << 20))
"""


def helpers_blocked_on(work: Path) -> list[str]:
    """Transfer helpers still running on the cluster for this work dir (a hang leaves one behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "transfer.py" in cmdline and str(work) in cmdline:
            found.append(cmdline)
    return found


def test_unsendable_outputs_are_skipped_by_name_and_never_hang(local_cluster: Cluster, cluster_home: Path,
                                                               tmp_path: Path) -> None:
    job = run_job(local_cluster, HOSTILE)
    got = cli("get", "itest", job.id, "--dest", str(tmp_path), "--json", env=env_for(cluster_home), timeout=90)
    assert got.returncode == 1, got.stderr
    summary = json.loads(got.stdout)
    reasons = {p["path"]: p["reason"] for p in summary["not_downloaded"]}
    assert set(reasons) == {"bad\\xff.txt", "pipe"}
    assert "UTF-8" in reasons["bad\\xff.txt"] and "not a regular file" in reasons["pipe"]
    here, work = tmp_path / job.id, cluster_work(local_cluster, job)
    for name in ("ok.txt", "-big.bin", "--offset=0"):
        assert digest(here / name) == digest(work / name)
    assert os.readlink(here / "dangling") == "nowhere"
    assert helpers_blocked_on(work) == []


GROWING = """
import os, time
open("done.txt", "w").write("stable\\n")
with open("grow.bin", "wb") as f:
    f.write(os.urandom(33 << 20))
open("started", "w").close()
end = time.time() + 120
with open("grow.bin", "ab") as big, open("grow.txt", "a") as small:
    while time.time() < end:
        big.write(b"x" * 100); big.flush()
        small.write("line\\n"); small.flush()
        time.sleep(0.001)
"""


def test_running_job_is_refused_unless_partial_and_growing_files_are_reported(
        local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    job = local_cluster.submit([sys.executable, "-c", GROWING])
    work = cluster_work(local_cluster, job)
    deadline = time.monotonic() + 60
    while not (work / "started").exists():
        assert time.monotonic() < deadline and not job.info().done, job.stderr()
        time.sleep(0.1)
    try:
        refused = cli("get", "itest", job.id, "--dest", str(tmp_path), env=env_for(cluster_home))
        assert refused.returncode == 2 and "running" in refused.stderr and "--partial" in refused.stderr
        assert not (tmp_path / job.id).exists()
        got = cli("get", "itest", job.id, "--dest", str(tmp_path), "--partial", "--json", env=env_for(cluster_home))
        assert got.returncode == 1, got.stderr
        summary = json.loads(got.stdout)
        assert summary["partial"] is True
        reasons = {p["path"]: p["reason"] for p in summary["not_downloaded"]}
        assert "changed" in reasons["grow.bin"] and not (tmp_path / job.id / "grow.bin").exists()
        assert (tmp_path / job.id / "done.txt").read_text() == "stable\n"
        if "grow.txt" in reasons:
            assert not (tmp_path / job.id / "grow.txt").exists()
        else:  # read whole between two appends: then it is exactly a state the file was in
            text = (tmp_path / job.id / "grow.txt").read_text()
            assert text == "line\n" * (len(text) // 5)
        text_mode = cli("get", "itest", job.id, "--dest", str(tmp_path / "t"), "--partial", "--only", "done.txt",
                        env=env_for(cluster_home))
        assert text_mode.returncode == 0 and "PARTIAL" in text_mode.stdout
    finally:
        job.cancel()
        job.wait(60)


BOOKKEEPING_NAMES = """
import os
open(".mpicloud-transfer.json", "w").write("mine\\n")
open("x.bin.mpicloud-part", "w").write("also mine\\n")
with open("x.bin", "wb") as f:
    f.write(os.urandom(33 << 20))
os.makedirs(".mpicloud", exist_ok=True)
open(".mpicloud/evil.txt", "w").write("collides with the client's bookkeeping\\n")
os.makedirs("sub/.mpicloud", exist_ok=True)
open("sub/.mpicloud/fine.txt", "w").write("not at the top: an ordinary name\\n")
"""


def test_outputs_with_bookkeeping_like_names_are_never_lost(local_cluster: Cluster, tmp_path: Path) -> None:
    job = run_job(local_cluster, BOOKKEEPING_NAMES)
    summary = job.get(tmp_path)
    here, work = tmp_path / job.id, cluster_work(local_cluster, job)
    for name in (".mpicloud-transfer.json", "x.bin.mpicloud-part", "x.bin", "sub/.mpicloud/fine.txt"):
        assert digest(here / name) == digest(work / name)
    assert [p["path"] for p in summary.not_downloaded] == [".mpicloud"]
    assert not (here / ".mpicloud" / "evil.txt").exists()
    assert job.get(tmp_path).skipped == 4  # the state survived, in DEST/JOB/.mpicloud/


def test_exclude_and_no_inputs_and_api_and_cli_land_in_the_same_place(queue_cluster: QueueCluster,
                                                                      tmp_path: Path) -> None:
    build = tmp_path / "build.bin"
    build.write_bytes(os.urandom(3 * MiB))
    config = tmp_path / "config.txt"
    config.write_text("a=1\n")
    job = run_job(queue_cluster.cluster,
                  "open('config.txt', 'a').write('b=2\\n'); open('result.txt', 'w').write('42\\n');"
                  "open('run.log', 'w').write('noise\\n')", inputs=[build, config])
    api = job.get(tmp_path / "api", exclude=["*.log"], no_inputs=True)
    assert sorted(files_under(tmp_path / "api" / job.id)) == ["config.txt", "result.txt"]  # changed input kept
    assert api.files == 2
    got = cli("get", queue_cluster.name, job.id, "--dest", str(tmp_path / "cli"), "--exclude", "*.log", "--exclude",
              "build.*", env=env_for(queue_cluster.home))
    assert got.returncode == 0, got.stderr
    assert files_under(tmp_path / "cli" / job.id) == files_under(tmp_path / "api" / job.id)
    for hostile in ("../config.txt", "/etc/passwd", "C:/x", "a\\b"):
        refused = cli("get", queue_cluster.name, job.id, "--dest", str(tmp_path / "only"), "--only", hostile,
                      env=env_for(queue_cluster.home))
        assert refused.returncode == 2 and "--only" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "only").exists()


def test_delete_after_verify_deletes_only_what_was_downloaded(queue_cluster: QueueCluster,
                                                             tmp_path: Path) -> None:
    job = run_job(queue_cluster.cluster, "import os; os.makedirs('r', exist_ok=True); open('r/result-q10b.txt', 'w')"
                                 ".write('42\\n'); open('other-q10b.dat', 'w').write('not downloaded\\n')")
    dest = tmp_path / "w"
    run = cli("watch", queue_cluster.name, "--dest", str(dest), "--once", "--filter", "result-q10b",
              "--delete-after-verify", env=env_for(queue_cluster.home))
    assert run.returncode == 0, run.stderr
    assert (dest / job.id / "r" / "result-q10b.txt").read_text() == "42\n"
    work = cluster_work(queue_cluster.cluster, job)
    assert not (work / "r").exists()
    assert (work / "other-q10b.dat").read_text() == "not downloaded\n"


def test_watch_remembers_per_selection_and_revisits_after_an_empty_match(local_cluster: Cluster,
                                                                         cluster_home: Path, tmp_path: Path) -> None:
    job = run_job(local_cluster, "open('sel-a-q10b.txt', 'w').write('a\\n'); open('sel-b-q10b.txt', 'w').write('b')")
    dest, env = tmp_path / "w", env_for(cluster_home)
    empty = cli("watch", "itest", "--dest", str(dest), "--once", "--filter", "no-such-file-q10b", env=env)
    assert empty.returncode == 0, empty.stderr
    first = cli("watch", "itest", "--dest", str(dest), "--once", "--filter", "sel-a-q10b", env=env)
    assert job.id in first.stdout and (dest / job.id / "sel-a-q10b.txt").read_text() == "a\n"
    second = cli("watch", "itest", "--dest", str(dest), "--once", "--filter", "sel-b-q10b", env=env)
    assert job.id in second.stdout and (dest / job.id / "sel-b-q10b.txt").read_text() == "b"
    repeat = cli("watch", "itest", "--dest", str(dest), "--once", "--filter", "sel-a-q10b", env=env)
    assert job.id not in repeat.stdout


def test_jobs_without_a_work_dir_are_passed_over_by_watch_and_named_by_get(local_cluster: Cluster,
                                                                           cluster_home: Path, tmp_path: Path) -> None:
    purged = run_job(local_cluster, "open('gone-q10b.txt', 'w').write('x')")
    purged.purge()
    kept = run_job(local_cluster, "open('kept-q10b.txt', 'w').write('y')")
    env = env_for(cluster_home)
    watched = cli("watch", "itest", "--dest", str(tmp_path / "w"), "--once", "--filter", "q10b.txt", env=env)
    assert watched.returncode == 0, watched.stderr
    assert (tmp_path / "w" / kept.id / "kept-q10b.txt").read_text() == "y"
    assert not (tmp_path / "w" / purged.id).exists()
    got = cli("get", "itest", purged.id, "--dest", str(tmp_path / "g"), env=env)
    assert got.returncode != 0 and "no work dir" in got.stderr and "Traceback" not in got.stderr


@pytest.mark.parametrize("changed", [False, True])
def test_purge_of_a_list_deletes_only_unchanged_entries(tmp_path: Path, changed: bool) -> None:
    """The node side of --delete-after-verify, under the nodes' own interpreter."""
    from mpicloud.assets import install_runner
    from tests.runnerlib import NODE_PYTHON

    runner = install_runner(tmp_path / "opt")
    work = tmp_path / "root" / "jobs" / "j1" / "work"
    (work / "sub").mkdir(parents=True)
    (tmp_path / "root" / "jobs" / "j1" / "state.json").write_text(json.dumps({"state": "succeeded"}))
    (work / "sub" / "done.txt").write_text("downloaded\n")
    (work / "keep.txt").write_text("never downloaded\n")
    os.symlink("keep.txt", work / "link")
    st = (work / "sub" / "done.txt").stat()
    listed = [{"path": "sub/done.txt", "size": st.st_size, "mtime": st.st_mtime_ns},
              {"path": "link", "target": "keep.txt"}, {"path": "../../state.json", "size": 1, "mtime": 1}]
    if changed:
        (work / "sub" / "done.txt").write_text("rewritten after the download\n")
    done = subprocess.run([NODE_PYTHON, str(runner), "purge", "j1", "--listed", "--root", str(tmp_path / "root")],
                          input=json.dumps(listed), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    kept = json.loads(done.stdout)["kept"]
    assert (work / "keep.txt").exists() and not os.path.lexists(work / "link")
    assert (tmp_path / "root" / "jobs" / "j1" / "state.json").exists()
    assert (work / "sub" / "done.txt").exists() == changed
    assert kept == (["sub/done.txt", "../../state.json"] if changed else ["../../state.json"])
