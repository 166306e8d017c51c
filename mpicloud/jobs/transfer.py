"""Fast, verified, resumable transfers: many small files packed and compressed on the cluster into one
stream, large files in byte ranges over several parallel streams; SHA-256 checked per file or range."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mpicloud.errors import TransportError
from mpicloud.jobs.ranges import RangeJob, run_ranges, verify
from mpicloud.jobs.remote import QueueHandle, sftp_path
from mpicloud.jobs.streams import StreamReader, decoded

RANGE = 64 << 20  # large files move in ranges of this size: the unit of parallelism and of resume
BIG = 32 << 20  # files at least this big are sent in ranges, smaller ones packed
SHA_DIR = ".mpicloud-sha256"
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
    """Fetch files below cluster directory `base` into dest; resumes from dest's transfer state."""
    started = time.monotonic()
    args = ["manifest", base, *[f"--glob={g}" for g in globs or []], *[f"--filter={f}" for f in filters or []]]
    result = queue.transport.run(queue.helper(*args), timeout=600)
    if result.exit_code != 0:
        raise TransportError(f"cannot list {base} on cluster {queue.cluster!r}: "
                             f"{result.stderr.decode(errors='replace').strip()}")
    entries: list[tuple[str, int, float]] = [(str(e[0]), int(e[1]), float(e[2])) for e in json.loads(result.stdout)]
    dest.mkdir(parents=True, exist_ok=True)
    state = _State(dest)
    summary = Summary()
    todo = [e for e in entries if not state.done(e[0], e[1], e[2], dest)]
    summary.skipped = len(entries) - len(todo)
    for rel, _, _ in todo:
        _safe(dest, rel)
    meter = _Meter(sum(e[1] for e in todo), progress)
    small = [e for e in todo if e[1] < BIG]
    large = [e for e in todo if e[1] >= BIG]
    ranges = [RangeJob("get", index, index * RANGE, min(RANGE, size - index * RANGE), str(_part(dest, rel)), base,
                       rel, compress)
              for rel, size, mtime in large for index in range(-(-size // RANGE))
              if index not in state.ranges(rel, size, mtime)]
    entries_by_rel = {e[0]: e for e in large}
    for rel, size, _ in large:
        part = _part(dest, rel)
        part.parent.mkdir(parents=True, exist_ok=True)
        if not part.exists():
            with open(part, "wb") as handle:
                handle.truncate(size)
    try:
        packs: list[Callable[[], None]] = [partial(_unpack, queue, base, group, dest, compress, state, meter,
                                                   summary) for group in _groups(small, streams)]
        with ThreadPoolExecutor(max_workers=1) as side:
            packed = side.submit(_run_all, packs, streams) if packs else None
            for moved in run_ranges(queue, ranges, streams, meter.add):
                rel = moved.job.rel
                state.mark_range(rel, *entries_by_rel[rel][1:], moved.job.index)
                with meter.lock:
                    summary.wire_bytes += moved.wire_bytes
                    summary.codecs.append(moved.codec)
            if packed is not None:
                packed.result()
        for rel, size, mtime in large:
            if len(state.ranges(rel, size, mtime)) == -(-size // RANGE):
                os.replace(_part(dest, rel), dest / rel)
                state.mark_file(rel, size, mtime)
    finally:
        state.save()
    summary.files = len(todo)
    summary.bytes = meter.done
    summary.seconds = time.monotonic() - started
    state.path.unlink(missing_ok=True)
    return summary


def _groups(files: list[tuple[str, int, float]], streams: int) -> list[list[tuple[str, int, float]]]:
    """Small files split into packs of similar size (at least 8 MiB each), one stream per pack."""
    total = sum(f[1] for f in files)
    count = max(1, min(streams, total // (8 << 20), len(files)))
    groups: list[list[tuple[str, int, float]]] = [[] for _ in range(count)]
    for index, entry in enumerate(sorted(files, key=lambda f: -f[1])):
        groups[index % count].append(entry)
    return [g for g in groups if g]


def _safe(dest: Path, rel: str) -> None:
    parts = Path(rel).parts
    if rel.startswith("/") or ".." in parts or not parts:
        raise TransportError(f"refusing to write {rel!r} outside {dest}")


def _run_all(tasks: list[Callable[[], None]], streams: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, streams)) as pool:
        futures = [pool.submit(task) for task in tasks]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def _part(dest: Path, rel: str) -> Path:
    target = dest / rel
    return target.with_name(target.name + ".mpicloud-part")


def _unpack(queue: QueueHandle, base: str, files: list[tuple[str, int, float]], dest: Path, compress: str,
            state: _State, meter: _Meter, summary: Summary) -> None:
    """One packed stream: untar on the fly, verify each file against the SHA-256 member after it."""
    stream = queue.transport.open_stream(queue.helper("pack", base, f"--compress={compress}"))
    stream.write(json.dumps([f[0] for f in files]).encode())
    stream.close_input()
    raw = StreamReader(stream)
    reader, codec = decoded(io.BufferedReader(raw, 1 << 20))
    meta = {f[0]: f for f in files}
    digests: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                source = tar.extractfile(member)
                if source is None:
                    continue
                if member.name.startswith(SHA_DIR + "/"):
                    rel = member.name[len(SHA_DIR) + 1:]
                    verify(rel, digests.pop(rel, ""), source.read().decode(), queue.cluster)
                    os.replace(_part(dest, rel), dest / rel)
                    state.mark_file(rel, *meta[rel][1:])
                    continue
                digests[member.name] = _write(source, _part(dest, member.name), 0, meter)
    except (tarfile.TarError, OSError, EOFError) as exc:
        stream.abort()
        raise TransportError(f"packed transfer from cluster {queue.cluster!r} broke off: {exc}") from None
    code, err = stream.finish()
    if code != 0:
        raise TransportError(f"packing on cluster {queue.cluster!r} failed: {err.decode(errors='replace').strip()}")
    with meter.lock:
        summary.wire_bytes += raw.wire_bytes
        summary.codecs.append(codec)


def _write(source: Any, target: Path, offset: int, meter: _Meter) -> str:
    """Copy a reader into target at offset, hashing what was written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(target, "r+b" if target.exists() and offset else "wb") as out:
        out.seek(offset)
        while block := source.read(1 << 20):
            digest.update(block)
            out.write(block)
            meter.add(len(block))
    return digest.hexdigest()


def upload(queue: QueueHandle, local: Path, remote: str, streams: int = 4, progress: Progress | None = None) -> int:
    """Send a local file to cluster path `remote` in parallel verified ranges (the caller renames it).
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
