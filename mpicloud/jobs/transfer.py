"""Fast, verified, resumable transfers: many small files packed and compressed on the cluster into one
stream, large files in byte ranges over several parallel streams; SHA-256 checked per file or range."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mpicloud.errors import TransportError
from mpicloud.jobs.ranges import RangeJob, run_ranges, verify
from mpicloud.jobs.remote import QueueHandle, sftp_path
from mpicloud.jobs.streams import StreamReader, decoded

RANGE = 64 << 20  # large files move in ranges of this size: the unit of parallelism and of resume
BIG = 32 << 20  # files at least this big are sent in ranges, smaller ones packed
MANIFEST = ".mpicloud-manifest.json"
FRAME = "!HQ"  # pack frames: name length, data size (then name, data, 32-byte SHA-256)
STATE = ".mpicloud-transfer.json"
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass
class Summary:
    """What a transfer did."""

    files: int = 0
    bytes: int = 0
    wire_bytes: int = 0
    skipped: int = 0
    seconds: float = 0.0
    codecs: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Payload bytes per byte on the wire."""
        return self.bytes / self.wire_bytes if self.wire_bytes else 1.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "ratio": round(self.ratio, 3)}


class _State:
    """What already arrived (verified), kept in DEST/.mpicloud-transfer.json so an interrupted transfer resumes."""

    def __init__(self, dest: Path) -> None:
        self.path = dest / STATE
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {"files": {}, "ranges": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
        self.saved = time.monotonic()

    def done(self, rel: str, size: int, mtime: float, dest: Path) -> bool:
        entry = self.data["files"].get(rel)
        target = dest / rel
        return bool(entry and entry == [size, mtime] and target.is_file() and target.stat().st_size == size)

    def ranges(self, rel: str, size: int, mtime: float) -> set[int]:
        entry = self.data["ranges"].get(rel)
        return set(entry[2]) if entry and entry[:2] == [size, mtime] else set()

    def mark_range(self, rel: str, size: int, mtime: float, index: int) -> None:
        with self.lock:
            entry = self.data["ranges"].setdefault(rel, [size, mtime, []])
            if entry[:2] != [size, mtime]:
                entry[:] = [size, mtime, []]
            entry[2].append(index)
            self.save()

    def mark_file(self, rel: str, size: int, mtime: float, force: bool = False) -> None:
        with self.lock:
            self.data["files"][rel] = [size, mtime]
            self.data["ranges"].pop(rel, None)
            if force or time.monotonic() - self.saved > 0.5:
                self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        tmp.replace(self.path)
        self.saved = time.monotonic()


class _Meter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, 0, progress
        self.lock = threading.Lock()

    def add(self, count: int) -> None:
        with self.lock:
            self.done += count
            if self.progress:
                self.progress(self.done, self.total)


def download(queue: QueueHandle, base: str, dest: Path, globs: list[str] | None = None,
             filters: list[str] | None = None, compress: str = "auto", streams: int = 4,
             progress: Progress | None = None) -> Summary:
    """Fetch files below cluster directory `base` into dest; resumes from dest's transfer state.

    One command on the node lists the selection and streams the small files packed; large files follow in
    parallel ranges as soon as the listing arrives."""
    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    state = _State(dest)
    have = {rel: v for rel, v in state.data["files"].items() if state.done(rel, v[0], v[1], dest)}
    selection = [*[f"--glob={g}" for g in globs or []], *[f"--filter={f}" for f in filters or []]]
    stream = queue.transport.open_stream(queue.helper("pack", base, *selection, f"--big={BIG}",
                                                      f"--compress={compress}"))
    stream.write(json.dumps({"have": have}).encode())
    stream.close_input()
    raw = StreamReader(stream)
    summary = Summary()
    try:
        reader, codec = decoded(io.BufferedReader(raw, 1 << 20))
        entries = _read_manifest(reader, queue.cluster)
        todo = [e for e in entries if e[0] not in have]
        summary.skipped, summary.files = len(entries) - len(todo), len(todo)
        for rel, _, _ in todo:
            _safe(dest, rel)
        meter = _Meter(sum(e[1] for e in todo), progress)
        large = [e for e in todo if e[1] >= BIG]
        with ThreadPoolExecutor(max_workers=1) as side:
            ranged = side.submit(_fetch_large, queue, base, large, dest, compress, streams, state, meter, summary)
            _unpack(reader, {e[0]: e for e in todo}, dest, state, meter, queue.cluster)
            ranged.result()
    except (OSError, EOFError, ValueError) as exc:
        stream.abort()
        raise TransportError(f"transfer from cluster {queue.cluster!r} broke off: {exc}") from None
    finally:
        state.save()
    code, err = stream.finish()
    if code != 0:
        raise TransportError(f"packing on cluster {queue.cluster!r} failed: {err.decode(errors='replace').strip()}")
    summary.wire_bytes += raw.wire_bytes
    summary.codecs.append(codec)
    summary.bytes = meter.done
    summary.seconds = time.monotonic() - started
    state.path.unlink(missing_ok=True)
    return summary


def _frame(reader: Any, cluster: str) -> tuple[str, bytes] | None:
    """One frame of a pack stream: (name, data) after checking the data's SHA-256; None at the end."""
    head = _exactly(reader, struct.calcsize(FRAME))
    length, size = struct.unpack(FRAME, head)
    if length == 0:
        return None
    name = _exactly(reader, length).decode()
    data = _exactly(reader, size)
    verify(name, hashlib.sha256(data).hexdigest(), _exactly(reader, 32).hex(), cluster)
    return name, data


def _exactly(reader: Any, count: int) -> bytes:
    data = reader.read(count)
    while len(data) < count:
        more = reader.read(count - len(data))
        if not more:
            raise EOFError("the stream ended early")
        data += more
    return bytes(data)


def _read_manifest(reader: Any, cluster: str) -> list[tuple[str, int, float]]:
    first = _frame(reader, cluster)
    if first is None or first[0] != MANIFEST:
        raise TransportError(f"cluster {cluster!r} sent no file list; is its transfer helper current?")
    return [(str(e[0]), int(e[1]), float(e[2])) for e in json.loads(first[1])]


def _fetch_large(queue: QueueHandle, base: str, large: list[tuple[str, int, float]], dest: Path, compress: str,
                 streams: int, state: _State, meter: _Meter, summary: Summary) -> None:
    """Large files in verified ranges over parallel streams; a file is moved into place when all arrived."""
    for rel, size, _ in large:
        part = _part(dest, rel)
        part.parent.mkdir(parents=True, exist_ok=True)
        if not part.exists():
            with open(part, "wb") as handle:
                handle.truncate(size)
    jobs = [RangeJob("get", index, index * RANGE, min(RANGE, size - index * RANGE), str(_part(dest, rel)), base,
                     rel, compress)
            for rel, size, mtime in large for index in range(-(-size // RANGE))
            if index not in state.ranges(rel, size, mtime)]
    by_rel = {e[0]: e for e in large}
    for moved in run_ranges(queue, jobs, streams, meter.add):
        state.mark_range(moved.job.rel, *by_rel[moved.job.rel][1:], moved.job.index)
        with meter.lock:
            summary.wire_bytes += moved.wire_bytes
            summary.codecs.append(moved.codec)
    for rel, size, mtime in large:
        if len(state.ranges(rel, size, mtime)) == -(-size // RANGE):
            os.replace(_part(dest, rel), dest / rel)
            state.mark_file(rel, size, mtime)


def _safe(dest: Path, rel: str) -> None:
    parts = Path(rel).parts
    if rel.startswith("/") or ".." in parts or not parts:
        raise TransportError(f"refusing to write {rel!r} outside {dest}")


def _part(dest: Path, rel: str) -> Path:
    target = dest / rel
    return target.with_name(target.name + ".mpicloud-part")


def _unpack(reader: Any, wanted: dict[str, tuple[str, int, float]], dest: Path, state: _State, meter: _Meter,
            cluster: str) -> None:
    """Read the packed small files (each checked against its SHA-256 as it arrives); a few threads write them,
    since creating files is the slow part on most disks."""
    slots = threading.BoundedSemaphore(32)  # at most 32 files (each < 32 MiB) in flight

    def store(rel: str, data: bytes) -> None:
        try:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            state.mark_file(rel, *wanted[rel][1:])
            meter.add(len(data))
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=4) as writers:
        futures = []
        while (frame := _frame(reader, cluster)) is not None:
            rel, data = frame
            if rel not in wanted:
                raise TransportError(f"cluster {cluster!r} sent {rel!r}, which was not asked for")
            slots.acquire()
            futures.append(writers.submit(store, rel, data))
        for future in futures:
            future.result()
def upload(queue: QueueHandle, local: Path, remote: str, streams: int = 4, progress: Progress | None = None) -> int:
    """Send a local file to cluster path `remote` in parallel verified ranges (the caller commits it).
    Ranges a previous attempt already left there intact are not sent again; returns the bytes sent."""
    size = local.stat().st_size
    meter = _Meter(size, progress)
    if size == 0:
        queue.transport.write_bytes(sftp_path(queue.os, remote), b"")
        return 0
    resume = queue.transport.stat(sftp_path(queue.os, remote)) is not None
    jobs = [RangeJob("put", index, index * RANGE, min(RANGE, size - index * RANGE), str(local), remote, resume=resume)
            for index in range(-(-size // RANGE))]
    return sum(result.sent for result in run_ranges(queue, jobs, streams, meter.add))
