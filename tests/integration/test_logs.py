"""Job logs on the real local cluster: offset reads, chunked streaming, the post stream, exit status, escaping."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

from mpicloud.api import Cluster
from mpicloud.jobs import query
from mpicloud.jobs.remote import QueueHandle
from tests.conftest import ROOT, cli


class CountingTransport:
    """The cluster's real transport, counting the log bytes that cross the wire."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.read = 0

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        data: bytes = self.inner.read_range(path, offset, size)
        self.read += len(data)
        return data

    def read_bytes(self, path: str) -> bytes:
        data: bytes = self.inner.read_bytes(path)
        if path.endswith(".log"):
            self.read += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_follow_reads_each_byte_once_in_bounded_chunks(local_cluster: Cluster) -> None:
    job = local_cluster.submit(["sh", "-c", "head -c 6000000 /dev/zero | tr '\\0' x; echo; "
                                "while [ ! -e go ]; do sleep 0.1; done; echo tail-line"])
    counting = CountingTransport(local_cluster.queue.transport)
    queue = QueueHandle(transport=counting, os="linux", root=local_cluster.queue.root,
                              python=local_cluster.queue.python, runner=local_cluster.queue.runner, cluster="itest")
    chunks: list[int] = []
    seen = bytearray()
    released = False

    def emit(stream: str, data: bytes) -> None:
        nonlocal released
        chunks.append(len(data))
        seen.extend(data)
        if len(seen) >= 6000001 and not released:
            local_cluster.queue.transport.write_bytes(local_cluster.queue.job_path(job.id, "work", "go"), b"")
            released = True

    info = query.follow_logs(queue, job.id, emit, follow=True, poll=0.05)
    assert info.state == "succeeded"
    assert bytes(seen) == b"x" * 6000000 + b"\ntail-line\n"
    assert counting.read == len(seen)  # polling while the job waited re-read nothing
    assert max(chunks) <= query.LOG_CHUNK
    assert job.log("stdout", offset=6000001) == b"tail-line\n"
    assert job.log("stdout", offset=10, limit=5) == b"xxxxx"


def test_logs_follow_exits_with_the_jobs_code_and_post_stream(local_cluster: Cluster, cluster_home: Path) -> None:
    env = {"MPICLOUD_HOME": str(cluster_home)}
    sub = cli("submit", "itest", "--post", "sh -c 'echo posted; echo post-err >&2'", "--", "sh", "-c",
              "echo main; exit 3", env=env)
    job_id = sub.stdout.split()[-1]
    follow = cli("logs", "itest", job_id, "-f", env=env)
    assert follow.returncode == 3 and follow.stdout == "main\n"
    post = cli("logs", "itest", job_id, "--stream", "post", env=env)
    assert post.returncode == 0 and post.stdout == "posted\npost-err\n"
    bad = cli("logs", "itest", job_id, "--stream", "nosuch", env=env)
    assert bad.returncode == 2 and "--stream must be one of stdout, stderr, post" in bad.stderr


NASTY = "printf 'a\\033]0;pwned\\007b\\033[2Jc\\302\\233d\\n'"


def _on_a_terminal(args: list[str], env: dict[str, str]) -> bytes:
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mpicloud.cli", *args], stdout=child, stderr=child,
                            env={**os.environ, **env}, cwd=ROOT)
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    proc.wait(60)
    os.close(main)
    return output


def test_control_characters_are_escaped_on_a_terminal_raw_in_a_pipe(local_cluster: Cluster,
                                                                     cluster_home: Path) -> None:
    env = {"MPICLOUD_HOME": str(cluster_home)}
    sub = cli("submit", "itest", "--name", "evil\x1b[31mname\nx", "--", "sh", "-c", NASTY, env=env)
    job_id = sub.stdout.split()[-1]
    assert cli("wait", "itest", job_id, env=env).returncode == 0
    piped = subprocess.run([sys.executable, "-m", "mpicloud.cli", "logs", "itest", job_id], capture_output=True,
                           env={**os.environ, **env}, cwd=ROOT)
    assert piped.stdout == b"a\x1b]0;pwned\x07b\x1b[2Jc\xc2\x9bd\n"
    shown = _on_a_terminal(["logs", "itest", job_id], env)
    assert b"\x1b" not in shown and b"\x07" not in shown and b"\xc2\x9b" not in shown
    assert b"a\\x1b]0;pwned\\x07b\\x1b[2Jc\\u009bd" in shown
    listing = cli("jobs", "itest", env=env).stdout
    assert "evil\\x1b[31mname\\x0ax" in listing and "\x1b" not in listing


def test_purge_removes_old_jobs_outputs_and_logs(local_cluster: Cluster, cluster_home: Path) -> None:
    env = {"MPICLOUD_HOME": str(cluster_home)}
    job = local_cluster.submit(["sh", "-c", "echo gone > f; echo said"])
    assert job.wait(60).state == "succeeded" and job.stdout() == "said\n"
    nothing = cli("purge", "itest", env=env)
    assert nothing.returncode == 2 and "--older-than" in nothing.stderr
    purged = cli("purge", "itest", job.id, "--logs", env=env)
    assert purged.returncode == 0 and "purged the outputs and logs of 1 jobs" in purged.stdout, purged.stderr
    assert job.stdout() == "" and job.info().state == "succeeded"
    assert local_cluster.queue.transport.stat(local_cluster.queue.job_path(job.id, "work")) is None
