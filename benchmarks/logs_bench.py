"""Job logs: `mpicloud logs` of a large log (time, client peak memory) against `ssh head cat LOG`, and what
`logs --follow` transfers while a job is quiet."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from benchmarks.common import bench_cluster, openssh, report
from mpicloud.jobs import query
from mpicloud.jobs.remote import QueueHandle

MIB = 1 << 20


def _cli_rusage(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a command, its stdout to /dev/null."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, argv
    return time.perf_counter() - started, usage.ru_maxrss


def main(size_mib: int = 256) -> None:
    with bench_cluster(nodes=1, slots=1, base="127.0.134.1") as (cluster, _):
        job = cluster.submit(["sh", "-c", f"head -c {size_mib * MIB} /dev/zero | tr '\\0' x; "
                              "while [ ! -e go ]; do sleep 0.1; done; echo 120-bytes"])
        queue = cluster.queue
        log = queue.job_path(job.id, "stdout.log")
        while (stat := queue.transport.stat(log)) is None or stat.size < size_mib * MIB:
            time.sleep(0.2)
        env_cli = [sys.executable, "-m", "mpicloud.cli", "logs", cluster.name, job.id, "--stream", "stdout"]
        ours, rss = _cli_rusage(env_cli)
        theirs, _ = _cli_rusage(openssh(cluster, "cat", log))
        report(f"logs of a {size_mib} MiB log (s)", ours, theirs, "s")
        print(f"client peak memory for it: {rss / 1024:.0f} MiB (the log is {size_mib} MiB)", flush=True)
        read = 0
        inner = queue.transport

        class Counting:
            def __getattr__(self, name: str) -> object:
                return getattr(inner, name)

            def read_range(self, path: str, offset: int, size: int) -> bytes:
                nonlocal read
                data: bytes = inner.read_range(path, offset, size)
                read += len(data)
                return data

        counted = QueueHandle(transport=Counting(), os=queue.os, root=queue.root, python=queue.python,  # type: ignore[arg-type]
                              runner=queue.runner, cluster=queue.cluster)
        release = threading.Timer(5.0, lambda: queue.transport.write_bytes(queue.job_path(job.id, "work", "go"), b""))

        def emit(stream: str, data: bytes) -> None:
            if read >= size_mib * MIB and release.ident is None:
                release.start()  # the job stays quiet for 5 s of polling, then writes 10 bytes

        started = time.monotonic()
        query.follow_logs(counted, job.id, emit, follow=True)
        seconds = time.monotonic() - started
        extra = read - (size_mib * MIB + len("120-bytes\n"))
        print(f"logs --follow over {seconds:.1f} s (5 s of it quiet): read {read} bytes for a {size_mib} MiB log "
              f"+ 10 new bytes ({extra} bytes more than the log)", flush=True)


if __name__ == "__main__":
    main()
