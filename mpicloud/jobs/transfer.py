"""Fast, verified, resumable transfers: many small files packed and compressed on the cluster into one
stream, large files in byte ranges over several parallel streams; SHA-256 checked per file or range.

A download never overwrites a local file that changed since it was downloaded (or that it did not download)
unless asked to, keeps the remote modes and modification times, recreates symbolic links as links, and
reports by name whatever it did not download (and why) instead of failing the whole transfer."""

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mpicloud.errors import TransportError
from mpicloud.jobs.deststate import DestState
from mpicloud.jobs.ranges import RangeJob, progress_file, run_ranges, verify
from mpicloud.jobs.remote import QueueHandle, sftp_path
from mpicloud.jobs.streams import StreamReader, decoded
from mpicloud.protocol.paths import UnsafePath, check_link, check_name, safe_join
from mpicloud.protocol.transfer import BIG, FRAME, MANIFEST, SKIPPED
from mpicloud.transport.link import bandwidth_delay

RANGE = 64 << 20  # large files move in ranges of this size: the unit of parallelism and of resume
Progress = Callable[[int, int], None]  # (bytes done, bytes total)
EDITED = "changed locally since it was downloaded; --overwrite replaces it"
FOREIGN = "exists locally and differs from the cluster's; --overwrite replaces it"


@dataclass
class Summary:
    """What a transfer did; `not_downloaded` names every selected entry that did not arrive, with why."""

    files: int = 0
    bytes: int = 0
    wire_bytes: int = 0
    skipped: int = 0
    links: int = 0
    seconds: float = 0.0
    partial: bool = False
    codecs: list[str] = field(default_factory=list)
    not_downloaded: list[dict[str, str]] = field(default_factory=list)
    #: what is now in dest exactly as on the cluster: {"path", "size", "mtime"} or {"path", "target"}
    verified: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def ratio(self) -> float:
        """Payload bytes per byte on the wire."""
        return self.bytes / self.wire_bytes if self.wire_bytes else 1.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data.pop("verified")
        return {**data, "ratio": round(self.ratio, 3)}


@dataclass(frozen=True)
class Selection:
    """Which files of a remote directory a download wants (see provision/runner/transfer.py `pack`)."""

    globs: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    unchanged: str | None = None  # cluster path of a {path: [size, mtime_ns]} snapshot to leave out

    def args(self) -> list[str]:
        """The pack helper's options for this selection."""
        return [*[f"--glob={g}" for g in self.globs], *[f"--filter={f}" for f in self.filters],
                *[f"--exclude={e}" for e in self.excludes],
                *([f"--unchanged={self.unchanged}"] if self.unchanged else [])]


@dataclass(frozen=True)
class Remote:
    """One regular file in the cluster's listing."""

    rel: str
    size: int
    mtime: int
    mode: int | None  # permission bits; None from Windows nodes (the local default then)


class _Meter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, 0, progress
        self.lock = threading.Lock()

    def add(self, count: int) -> None:
        with self.lock:
            self.done += count
            if self.progress:
                self.progress(self.done, self.total)


class _Download:
    """One download's shared context: where, what state, what happened."""

    def __init__(self, queue: QueueHandle, base: str, dest: Path, overwrite: bool) -> None:
        self.queue, self.base, self.dest, self.overwrite = queue, base, dest, overwrite
        self.state = DestState(dest)
        self.summary = Summary()
        self.lock = threading.Lock()

    def problem(self, rel: str, reason: str) -> None:
        with self.lock:
            self.summary.not_downloaded.append({"path": rel, "reason": reason})

    def verified(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.summary.verified.append(entry)

    def target(self, rel: str, link: bool = False) -> Path | None:
        """Where rel goes in dest (never outside it, never through a link; for a link, only its directory
        is checked so an existing link can be compared), or None (reported)."""
        try:
            parts = check_name(rel).parts
            if not link:
                return safe_join(self.dest, rel)
            if len(parts) > 1:
                safe_join(self.dest, "/".join(parts[:-1]))
            return self.dest.joinpath(*parts)
        except UnsafePath as exc:
            self.problem(rel, str(exc))
            return None

    def place(self, remote: Remote, part: Path, sha: str, force_save: bool, data: bytes | None = None) -> None:
        """Move a verified part file (written here from data, for small files) into place with the remote mode
        and mtime, recorded in the state first."""
        target = self.target(remote.rel)
        if target is None or target.is_dir():
            if target is not None:
                self.problem(remote.rel, "a local directory has this name")
            part.unlink(missing_ok=True)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC if data is not None else os.O_RDWR
        fd = os.open(part, flags | getattr(os, "O_BINARY", 0), 0o666)
        try:
            view = memoryview(data or b"")
            while view:
                view = view[os.write(fd, view):]
            if remote.mode is not None and os.name != "nt":
                os.fchmod(fd, remote.mode)
            if os.utime in os.supports_fd:
                os.utime(fd, ns=(remote.mtime, remote.mtime))
            else:
                os.utime(part, ns=(remote.mtime, remote.mtime))
            local_mtime = os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.state.mark_file(remote.rel, remote.size, remote.mtime, sha, local_mtime, force_save)
        os.replace(part, target)
        self.verified({"path": remote.rel, "size": remote.size, "mtime": remote.mtime})


def download(queue: QueueHandle, base: str, dest: Path, globs: list[str] | None = None,
             filters: list[str] | None = None, compress: str = "auto", streams: int = 4,
             progress: Progress | None = None, selection: Selection | None = None,
             overwrite: bool = False) -> Summary:
    """Fetch files below cluster directory `base` into dest; resumes from and keeps dest's transfer state.

    One command on the node lists the selection and streams the small files packed; large files follow in
    parallel ranges as soon as the listing arrives. Files already in dest exactly as downloaded before are
    not fetched again; files changed locally (or not downloaded by mpicloud) are left alone unless
    overwrite, and reported."""
    started = time.monotonic()
    selection = selection or Selection(tuple(globs or ()), tuple(filters or ()))
    dest.mkdir(parents=True, exist_ok=True)
    run = _Download(queue, base, dest, overwrite)
    state, summary = run.state, run.summary
    have = _have(state, overwrite)
    stream = queue.transport.open_stream(queue.helper("pack", *selection.args(), f"--big={BIG}",
                                                      f"--compress={compress}", "--", base))
    stream.write(json.dumps({"have": have}).encode())
    stream.close_input()
    raw = StreamReader(stream)
    meter = _Meter(0, progress)
    try:
        reader, codec = decoded(io.BufferedReader(raw, 1 << 20))
        listing = _read_manifest(reader, queue.cluster)
        todo = _plan(run, listing, have)
        meter.total = sum(r.size for r in todo)
        large = [r for r in todo if r.size >= BIG]
        with ThreadPoolExecutor(max_workers=1) as side:
            ranged = side.submit(_fetch_large, run, large, compress, streams, meter)
            _unpack(reader, run, {r.rel: r for r in todo if r.size < BIG}, meter)
            ranged.result()
        _links(run, listing["links"])
    except EOFError:  # the helper ended early: its own error says why
        code, err = stream.finish()
        raise TransportError(f"transfer from cluster {queue.cluster!r} broke off: the stream ended early "
                             f"(helper exit {code}: {err.decode(errors='replace').strip() or 'no message'})") from None
    except (OSError, ValueError) as exc:
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
    summary.files = len(todo) - len({p["path"] for p in summary.not_downloaded} & {r.rel for r in todo})
    summary.seconds = time.monotonic() - started
    return summary


def _have(state: DestState, overwrite: bool) -> dict[str, list[int]]:
    """Files the node need not send: present as downloaded, or edited locally (not replaced unless overwrite)."""
    have = {}
    for rel, entry in state.data["files"].items():
        try:
            target = safe_join(state.dest, rel)
        except UnsafePath:
            continue
        if state.local(rel, target) in (("verified",) if overwrite else ("verified", "edited")):
            have[rel] = entry[:2]
    return have


def _plan(run: _Download, listing: dict[str, Any], have: dict[str, list[int]]) -> list[Remote]:
    """The listed files to fetch; the rest are counted as already there or reported."""
    for item in listing["skipped"]:
        run.problem(str(item["path"]), str(item["reason"]))
    todo = []
    for item in listing["files"]:
        mode = None if item.get("mode") is None else int(item["mode"]) & 0o777
        remote = Remote(str(item["path"]), int(item["size"]), int(item["mtime"]), mode)
        target = run.target(remote.rel)
        if target is None:
            continue
        local = run.state.local(remote.rel, target)
        if local == "edited" and not run.overwrite:
            run.problem(remote.rel, EDITED)
        elif local == "verified" and have.get(remote.rel) == [remote.size, remote.mtime]:
            run.summary.skipped += 1
            run.verified({"path": remote.rel, "size": remote.size, "mtime": remote.mtime})
        elif local == "foreign" and remote.size >= BIG and not run.overwrite:
            if _same_as_remote(run, remote, target):  # e.g. fetched before the state was kept: adopt it
                run.state.mark_file(remote.rel, remote.size, remote.mtime, "", target.stat().st_mtime_ns)
                run.summary.skipped += 1
                run.verified({"path": remote.rel, "size": remote.size, "mtime": remote.mtime})
            else:
                run.problem(remote.rel, FOREIGN)
        else:
            todo.append(remote)
    return todo


def _same_as_remote(run: _Download, remote: Remote, target: Path) -> bool:
    """Whether a local file holds exactly the remote file's bytes (SHA-256 on both ends)."""
    if not target.is_file() or target.is_symlink() or target.stat().st_size != remote.size:
        return False
    command = run.queue.helper("hash", "--offset=0", f"--length={remote.size}", "--",
                               f"{run.base}{run.queue.sep}{remote.rel}")
    return run.queue.transport.run(command, timeout=3600).text.strip() == f"sha256 {_sha_of(target)}"


def _frame(reader: Any, cluster: str) -> tuple[str, bytes, str] | None:
    """One frame of a pack stream: (name, data, sha256) after checking the data's SHA-256; None at the end."""
    head = _exactly(reader, struct.calcsize(FRAME))
    length, size = struct.unpack(FRAME, head)
    if length == 0:
        return None
    name = _exactly(reader, length).decode()
    data = _exactly(reader, size)
    sha = hashlib.sha256(data).hexdigest()
    verify(name, sha, _exactly(reader, 32).hex(), cluster)
    return name, data, sha


def _exactly(reader: Any, count: int) -> bytes:
    data = reader.read(count)
    while len(data) < count:
        more = reader.read(count - len(data))
        if not more:
            raise EOFError("the stream ended early")
        data += more
    return bytes(data)


def _read_manifest(reader: Any, cluster: str) -> dict[str, Any]:
    first = _frame(reader, cluster)
    if first is None or first[0] != MANIFEST:
        raise TransportError(f"cluster {cluster!r} sent no file list; is its transfer helper current?")
    listing: dict[str, Any] = json.loads(first[1])
    return listing


def _fetch_large(run: _Download, large: list[Remote], compress: str, streams: int, meter: _Meter) -> None:
    """Large files in verified ranges over parallel streams; a file is moved into place when all arrived.
    A file that changes on the cluster while it is sent is reported and not moved into place."""
    state = run.state
    jobs = []
    for remote in large:
        part = state.part(remote.rel)
        count = -(-remote.size // RANGE)
        done = state.ranges(remote.rel, remote.size, remote.mtime)
        fresh = not part.is_file() or part.stat().st_size != remote.size or \
            not state.started(remote.rel, remote.size, remote.mtime)
        if fresh:  # a new download of this version: no earlier bytes to trust
            state.forget_ranges(remote.rel)
            with open(part, "wb") as handle:
                handle.truncate(remote.size)
        for index in range(count):
            if index in done:
                continue
            job = RangeJob("get", index, index * RANGE, min(RANGE, remote.size - index * RANGE), str(part),
                           run.base, remote.rel, compress, size=remote.size, mtime=remote.mtime)
            if fresh:
                progress_file(job).unlink(missing_ok=True)
            jobs.append(job if fresh else replace(job, done=_written(job)))
        if fresh:
            state.start_ranges(remote.rel, remote.size, remote.mtime)
    by_rel = {r.rel: r for r in large}
    changed: set[str] = set()
    for moved in run_ranges(run.queue, jobs, streams, meter.add):
        with meter.lock:
            run.summary.wire_bytes += moved.wire_bytes
            run.summary.codecs.append(moved.codec)
        progress_file(moved.job).unlink(missing_ok=True)
        if moved.changed:
            changed.add(moved.job.rel)
        else:
            state.mark_range(moved.job.rel, by_rel[moved.job.rel].size,
                             by_rel[moved.job.rel].mtime,
                             moved.job.index)
    for remote in large:
        part = state.part(remote.rel)
        if remote.rel in changed:
            state.forget_ranges(remote.rel)
            part.unlink(missing_ok=True)
            run.problem(remote.rel, "changed on the cluster while it was being sent (still being written?)")
        elif len(state.ranges(remote.rel, remote.size, remote.mtime)) == -(-remote.size // RANGE):
            run.place(remote, part, "", force_save=True)


def _written(job: RangeJob) -> int:
    """Bytes of a range an earlier attempt recorded as written (0 when none or unreadable)."""
    try:
        return max(0, min(job.length, int(progress_file(job).read_text(encoding="ascii"))))
    except (OSError, ValueError):
        return 0


def _unpack(reader: Any, run: _Download, wanted: dict[str, Remote], meter: _Meter) -> None:
    """Read the packed small files (each checked against its SHA-256 as it arrives); a few threads write them,
    since creating files is the slow part on most disks."""
    slots = threading.BoundedSemaphore(32)  # at most 32 files (each < 32 MiB) in flight

    def store(remote: Remote, data: bytes, sha: str) -> None:
        try:
            target = run.target(remote.rel)
            if target is None:
                return
            if run.state.local(remote.rel, target) == "foreign" and not run.overwrite and \
                    _sha_of(target) != sha:
                run.problem(remote.rel, FOREIGN)
                return
            run.place(remote, run.state.part(remote.rel), sha, force_save=False, data=data)
            meter.add(len(data))
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=4) as writers:
        futures = []
        while (frame := _frame(reader, run.queue.cluster)) is not None:
            rel, data, sha = frame
            if rel == SKIPPED:
                for item in json.loads(data):
                    run.problem(str(item["path"]), str(item["reason"]))
                continue
            if rel not in wanted:
                raise TransportError(f"cluster {run.queue.cluster!r} sent {rel!r}, which was not asked for")
            slots.acquire()
            futures.append(writers.submit(store, wanted[rel], data, sha))
        for future in futures:
            future.result()


def _sha_of(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return ""


def _links(run: _Download, links: list[dict[str, str]]) -> None:
    """Recreate the listed links (relative, inside the directory) as links, after every file was written;
    never followed here. An existing different entry is left alone unless overwrite."""
    for item in links:
        rel, link = str(item["path"]), str(item["target"])
        try:
            check_link(rel, link)  # the node checks it too; a hostile node must not plant a link out of dest
        except UnsafePath as exc:
            run.problem(rel, str(exc))
            continue
        target = run.target(rel, link=True)
        if target is None:
            continue
        if target.is_symlink() and os.readlink(target) == link:
            run.summary.skipped += 1
        elif target.is_dir() and not target.is_symlink():
            run.problem(rel, "a local directory has this name")
            continue
        elif os.path.lexists(target) and not run.overwrite:
            run.problem(rel, "a different local file is in the way of this symbolic link; --overwrite replaces it")
            continue
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            try:
                os.symlink(link, target)
            except OSError as exc:
                run.problem(rel, f"cannot create the symbolic link here: {exc.strerror}")
                continue
            run.summary.links += 1
        run.verified({"path": rel, "target": link})


def upload(queue: QueueHandle, local: Path, remote: str, streams: int = 4, progress: Progress | None = None,
           mark: str = "") -> int:
    """Send a local file to cluster path `remote` in parallel verified ranges (the caller commits it).
    Ranges a previous attempt already left there intact are not sent again, nor (with `mark`, the cluster path
    prefix of the node's progress markers) the intact start of a range it was killed in; returns the bytes
    sent."""
    size = local.stat().st_size
    meter = _Meter(size, progress)
    if size == 0:
        queue.transport.write_bytes(sftp_path(queue.os, remote), b"")
        return 0
    resume = queue.transport.stat(sftp_path(queue.os, remote)) is not None
    streams, span = upload_plan(size, streams, queue.transport.rtt())
    jobs = [RangeJob("put", index, index * span, min(span, size - index * span), str(local), remote, resume=resume,
                     mark=mark) for index in range(-(-size // span))]
    return sum(result.sent for result in run_ranges(queue, jobs, streams, meter.add))


#: the server's receive window per channel (OpenSSH's), which bounds what one upload stream keeps in flight
SERVER_WINDOW = 2 << 20
MAX_UPLOAD_STREAMS = 16


def upload_plan(size: int, streams: int, rtt: float) -> tuple[int, int]:
    """Streams and range size for an upload: one stream carries at most SERVER_WINDOW per round trip, so a
    path longer than `streams` windows fill gets as many streams as fill the link (bandwidth_delay's rate, up
    to 16), in ranges small enough to keep them all busy (at least 8 MiB, at most RANGE)."""
    wanted = min(MAX_UPLOAD_STREAMS, -(-bandwidth_delay(rtt) // SERVER_WINDOW))
    if wanted <= streams:
        return streams, RANGE
    span = min(RANGE, max(8 << 20, -(-size // wanted)))
    return wanted, -(-span // (1 << 20)) << 20
