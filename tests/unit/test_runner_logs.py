"""Job logs on the runner side: a capped log keeps head and tail; purge can remove logs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.runnerlib import NODE_PYTHON, LocalQueue

WRITER = "import sys\nfor i in range(20000): sys.stdout.write(f'line {i:05d}\\n')\nsys.stderr.write('short\\n')\n"


def test_a_job_writing_more_than_its_cap_keeps_head_and_tail(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1], log_limit_bytes=4000)
    q.serve()
    try:
        job_id = q.submit([NODE_PYTHON, "-c", WRITER])
        assert q.wait(job_id)["state"] == "succeeded"
    finally:
        q.stop()
    jobdir = q.root / "jobs" / job_id
    log = (jobdir / "stdout.log").read_bytes()
    head, rest = log.split(b"\n[mpicloud: log limit reached; the last 2000 bytes of the rest are added when the "
                           b"job ends]\n")
    assert head == b"".join(f"line {i:05d}\n".encode() for i in range(20000))[:2000]
    middle, tail = rest.split(b" bytes follow]\n")
    total = 20000 * 11
    assert middle == f"\n[mpicloud: {total - 2000 - 2000} bytes dropped; the last 2000".encode()
    assert tail == b"".join(f"line {i:05d}\n".encode() for i in range(20000))[-2000:]
    assert (jobdir / "stderr.log").read_bytes() == b"short\n"
    assert not list(jobdir.glob("*.tail"))


def test_a_job_may_ask_for_a_lower_cap_not_a_higher_one(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1], log_limit_bytes=100000)
    q.serve()
    try:
        low = q.submit([NODE_PYTHON, "-c", WRITER], env={"MPICLOUD_LOG_LIMIT": "1000"})
        high = q.submit([NODE_PYTHON, "-c", WRITER], env={"MPICLOUD_LOG_LIMIT": "100000000"})
        assert q.wait(low)["state"] == "succeeded" and q.wait(high)["state"] == "succeeded"
    finally:
        q.stop()
    low_log = (q.root / "jobs" / low / "stdout.log").read_bytes()
    assert b"the last 500 bytes follow]\n" in low_log and len(low_log) < 1200
    high_log = (q.root / "jobs" / high / "stdout.log").read_bytes()
    assert b"the last 50000 bytes follow]\n" in high_log and len(high_log) < 100200


def test_purge_removes_logs_only_when_asked_and_only_of_ended_jobs(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1])
    q.serve()
    try:
        done = q.submit(["sh", "-c", "echo out; echo kept > f"])
        assert q.wait(done)["state"] == "succeeded"
        running = q.submit(["sh", "-c", "touch started; sleep 30"])
        started = q.root / "jobs" / running / "work" / "started"
        deadline = time.monotonic() + 60
        while not started.exists():  # "running" is recorded before the wrapper makes the work dir
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        purge = subprocess.run([NODE_PYTHON, str(q.runner), "purge", done, running, "--logs", "--root",
                                str(q.root)], capture_output=True, text=True)
        assert purge.returncode == 2 and f"job {running} is running" in purge.stderr
        jobdir = q.root / "jobs" / done
        assert not (jobdir / "stdout.log").exists() and not (jobdir / "work").exists()
        assert json.loads((jobdir / "state.json").read_text())["state"] == "succeeded"
        assert started.exists()
    finally:
        (q.root / "jobs" / running / "cancel").touch()
        q.wait(running)
        q.stop()


def test_a_log_both_streams_share_keeps_the_order_they_were_written_in(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1])
    q.serve()
    try:
        job = q.submit(["true"], post=["sh", "-c", "for i in $(seq 1 300); do echo o$i; echo e$i >&2; done"])
        assert q.wait(job)["state"] == "succeeded"
    finally:
        q.stop()
    expected = "".join(f"o{i}\ne{i}\n" for i in range(1, 301))
    assert (q.root / "jobs" / job / "post.log").read_text() == expected
