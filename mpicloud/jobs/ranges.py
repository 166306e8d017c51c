"""Byte ranges of large files, moved over their own streams (threads or worker processes) and verified."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import queue as queue_mod
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpicloud.errors import TransportError
from mpicloud.jobs.remote import QueueHandle, sftp_path
from mpicloud.jobs.streams import StreamReader, decoded
from mpicloud.protocol.transfer import CHANGED, MARK_EVERY

PROCESS_THRESHOLD = 256 << 20  # this much range data is worth worker processes (each its own connection)
PROCESS_MIN_CPUS = 4  # with fewer cores, encryption already saturates them: threads do as well
OnBytes = Callable[[int], None]


@dataclass(frozen=True)
class RangeJob:
    """One range: `get` remote base/rel into a local part file, or `put` a local file into a remote path."""

    kind: str
    index: int
    offset: int
    length: int
    local: str
    remote: str
    rel: str = ""
    compress: str = "none"
    resume: bool = False
    size: int = -1  # get: the file's size and mtime_ns in the listing (the node refuses a changed file)
    mtime: int = -1
    done: int = 0  # get: bytes a killed earlier attempt wrote at the range's start (checked by hash)
    mark: str = ""  # put: cluster path prefix of the node's progress marker (+ offset), for resume within a range


@dataclass(frozen=True)
class RangeResult:
    """What one range moved."""

    job: RangeJob
    wire_bytes: int
    sent: int
    codec: str
    changed: bool = False  # get: the file changed on the cluster while it was being sent


def verify(what: str, got: str, expected: str, cluster: str) -> None:
    """Raise when two SHA-256 hex digests differ."""
    if got != expected.strip():
        raise TransportError(f"{what}: checksum mismatch after transfer with cluster {cluster!r} "
                             f"(got {got[:12]}, expected {expected.strip()[:12]}); run the command again")


def drain(reader: Any, part: Path, offset: int, on_bytes: OnBytes, mark: OnBytes | None = None) -> Any:
    """Read a stream in this thread while another hashes and writes, so the channel never waits on the disk;
    mark(bytes written so far) is called every MARK_EVERY bytes, after they were handed to the OS."""
    blocks: queue_mod.Queue[bytes | None] = queue_mod.Queue(maxsize=8)
    digest = hashlib.sha256()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            written = marked = 0
            with open(part, "r+b") as out:
                out.seek(offset)
                while (block := blocks.get()) is not None:
                    digest.update(block)
                    out.write(block)
                    on_bytes(len(block))
                    written += len(block)
                    if mark and written - marked >= MARK_EVERY:
                        out.flush()
                        mark(written)
                        marked = written
        except BaseException as exc:  # surfaced in the reading thread
            failure.append(exc)
            while blocks.get() is not None:
                pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while block := reader.read(1 << 20):
            blocks.put(block)
    finally:
        blocks.put(None)
        thread.join()
    if failure:
        raise failure[0]
    return digest


def progress_file(job: RangeJob) -> Path:
    """Beside the part file: how many bytes of this range a download already wrote."""
    return Path(f"{job.local}.{job.index}")


def _mark(job: RangeJob, start: int) -> OnBytes:
    def mark(written: int) -> None:
        tmp = Path(f"{progress_file(job)}.tmp")
        tmp.write_text(str(start + written), encoding="ascii")
        os.replace(tmp, progress_file(job))
    return mark


def local_hash(path: Path, offset: int, length: int) -> str:
    """SHA-256 of a byte range of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        left = length
        while left > 0:
            block = handle.read(min(1 << 20, left))
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _intact(queue: QueueHandle, job: RangeJob, remote: str, length: int) -> bool:
    """Whether the range's first `length` bytes are the same in cluster file `remote` and in the local file
    (SHA-256 on both ends): what an earlier attempt left there may be kept."""
    command = queue.helper("hash", f"--offset={job.offset}", f"--length={length}", "--", remote)
    return queue.transport.run(command, timeout=600).text.strip() == \
        f"sha256 {local_hash(Path(job.local), job.offset, length)}"


def fetch_range(queue: QueueHandle, job: RangeJob, on_bytes: OnBytes) -> RangeResult:
    """Stream one range of a remote file into the local part file; verified against the node's hash. Bytes an
    earlier attempt left at the range's start are kept when their hash matches the cluster's."""
    start = job.done if job.done and _intact(queue, job, f"{job.remote}{queue.sep}{job.rel}", job.done) else 0
    offset, length = job.offset + start, job.length - start
    stream = queue.transport.open_stream(queue.helper(
        "send", f"--offset={offset}", f"--length={length}", f"--size={job.size}", f"--mtime={job.mtime}",
        f"--compress={job.compress}", "--", job.remote, job.rel))
    stream.close_input()
    raw = StreamReader(stream)
    reader, codec = decoded(io.BufferedReader(raw, 1 << 20))
    digest = drain(reader, Path(job.local), offset, on_bytes, _mark(job, start))
    code, err = stream.finish()
    if code == CHANGED:
        return RangeResult(job, raw.wire_bytes, 0, codec, changed=True)
    text = err.decode(errors="replace")
    if code != 0 or "sha256 " not in text:
        raise TransportError(f"sending {job.rel} from cluster {queue.cluster!r} failed: {text.strip()}")
    verify(f"{job.rel} bytes {offset}-{offset + length}", digest.hexdigest(), text.split("sha256 ")[-1],
           queue.cluster)
    return RangeResult(job, raw.wire_bytes, 0, codec)


def _pushed_before(queue: QueueHandle, job: RangeJob) -> int:
    """Bytes at the range's start that an earlier, killed upload left on the node (its progress marker) and
    that still hash like the local file's; 0 when none."""
    try:
        done = int(queue.transport.read_bytes(sftp_path(queue.os, f"{job.mark}{job.offset}")).strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0
    if not 0 < done < job.length:
        return 0
    return done if _intact(queue, job, job.remote, done) else 0


def push_range(queue: QueueHandle, job: RangeJob, on_bytes: OnBytes) -> RangeResult:
    """Send one range of a local file; skipped when a previous attempt left it intact (resume), and started
    where a killed attempt's progress marker says when those bytes are intact."""
    local = Path(job.local)
    if job.resume and _intact(queue, job, job.remote, job.length):
        on_bytes(job.length)
        return RangeResult(job, 0, 0, "none")
    skip = _pushed_before(queue, job) if job.resume and job.mark else 0
    on_bytes(skip)
    stream = queue.transport.open_stream(queue.helper(
        "recv", job.remote, f"--offset={job.offset}", f"--length={job.length}", f"--skip={skip}",
        *([f"--mark={job.mark}{job.offset}"] if job.mark else [])))
    digest = hashlib.sha256()
    with open(local, "rb") as handle:
        handle.seek(job.offset + skip)
        left = job.length - skip
        while left > 0:
            block = handle.read(min(1 << 20, left))
            digest.update(block)
            stream.write(block)
            on_bytes(len(block))
            left -= len(block)
    stream.close_input()
    answer = b""
    while chunk := stream.read(4096):
        answer += chunk
    code, err = stream.finish()
    if code != 0:
        raise TransportError(f"upload of {local} to cluster {queue.cluster!r} failed: "
                             f"{err.decode(errors='replace').strip()}")
    verify(f"{local.name} bytes {job.offset + skip}-{job.offset + job.length}", digest.hexdigest(),
           answer.decode().split("sha256 ")[-1], queue.cluster)
    return RangeResult(job, job.length - skip, job.length - skip, "none")


def _move(queue: QueueHandle, job: RangeJob, on_bytes: OnBytes) -> RangeResult:
    return (fetch_range if job.kind == "get" else push_range)(queue, job, on_bytes)


# -- worker processes: each keeps its own connection, reports bytes through a queue
_WORKER: dict[str, Any] = {}


def _init_worker(fields: dict[str, Any], recipe: Callable[[], Any], progress: Any) -> None:
    _WORKER.update(queue=QueueHandle(transport=recipe(), **fields), progress=progress)


def _in_worker(job: RangeJob) -> RangeResult:
    progress = _WORKER["progress"]
    return _move(_WORKER["queue"], job, progress.put)


def run_ranges(queue: QueueHandle, jobs: list[RangeJob], streams: int, on_bytes: OnBytes) -> Iterator[RangeResult]:
    """Move every range with `streams` in parallel (worker processes for a lot of data); yields as they finish."""
    total = sum(j.length for j in jobs)
    if streams > 1 and total >= PROCESS_THRESHOLD and (os.cpu_count() or 1) >= PROCESS_MIN_CPUS:
        recipe = queue.transport.reopen()
        context = _context()
        progress = context.Queue()
        pump = threading.Thread(target=_pump, args=(progress, on_bytes), daemon=True)
        pump.start()
        fields = {"os": queue.os, "root": queue.root, "python": queue.python, "runner": queue.runner,
                  "cluster": queue.cluster}
        init: Any = _init_worker
        pool: Executor = ProcessPoolExecutor(max_workers=min(streams, len(jobs)), mp_context=context,
                                             initializer=init, initargs=(fields, recipe, progress))
        try:
            yield from _completed(pool, _in_worker, jobs)
        finally:
            progress.put(None)
            pump.join()
        return
    with ThreadPoolExecutor(max_workers=max(1, streams)) as threads:
        yield from _completed(threads, lambda job: _move(queue, job, on_bytes), jobs)


def _context() -> Any:
    """forkserver (a clean, preloaded parent: fast and thread-safe) where the OS has it, else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mpicloud.jobs.ranges", "mpicloud.transport.ssh"])
        return context
    return multiprocessing.get_context("spawn")


def _completed(pool: Executor, work: Callable[[RangeJob], RangeResult], jobs: list[RangeJob]) -> Iterator[RangeResult]:
    with pool:
        futures = [pool.submit(work, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _pump(progress: Any, on_bytes: OnBytes) -> None:
    while (count := progress.get()) is not None:
        on_bytes(count)
