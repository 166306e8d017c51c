"""mpicloud cluster-side transfer helper (stdlib only, any OS): list, send, pack and receive files.

  send [--offset N --length L --size S --mtime NS --compress C] -- BASE PATH
      raw (or compressed) bytes of one regular file; stderr: "sha256 HEX"; exit 4 (CHANGED) when the file
      is no longer the size/mtime the listing said, or changes while it is sent
  pack [--glob G]... [--filter S]... [--exclude G]... [--unchanged JSON] [--big N] [--compress C] -- BASE
      (modes are the permission bits, null from Windows nodes)
      stdin: JSON {"have": {path: [size, mtime_ns]}}; stdout: a pack stream (mpicloud/protocol/transfer.py):
      the manifest of the selection, every selected file smaller than N not in "have", the files skipped
      while sending; --unchanged names a {path: [size, mtime_ns]} snapshot (the job's staged inputs):
      files still exactly as recorded there are left out
  recv PATH --offset N --length L [--skip K] [--mark M]
      stdin bytes into PATH at offset+K (the range's first K bytes are there); stdout: "sha256 HEX" of what
      arrived; M records every MARK_EVERY bytes how much of the range is written (removed once complete)
  hash PATH --offset N --length L                      "sha256 HEX" of a range already there (resume checks)
  claim STORE SHA --length SIZE                        the right to put one object into the input store, held
      while stdin stays open; stdout lines: "have" (it is there), "wait" (another uploader has it: wait for
      its result), "part NAME" (ours: upload into STORE/NAME, then write "commit" to stdin); after commit:
      "stored" once the whole object's SHA-256 was checked and it was renamed in, or "refused REASON"
Only regular files and symbolic links that stay inside BASE are listed; links are sent as links (never
followed), everything else (fifos, sockets, devices, links leading out, non-UTF-8 or unportable names) is
listed as skipped with the reason. Files are opened without following links and without blocking.
Compression uses a multi-threaded program on the node when there is one (zstd -T0, pigz, pbzip2), Python's
zlib/bz2 otherwise; the client recognises the format by its magic bytes.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import fnmatch
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import IO, Any

# an isolated interpreter leaves the script's own directory off sys.path: the protocol package installed
# beside this file must still be found
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpicloud.protocol.paths import UnsafePath, check_link, check_name
from mpicloud.protocol.transfer import BIG, BOOKKEEPING, CHANGED, FRAME, MANIFEST, MARK_EVERY, SKIPPED, upload_mark

BLOCK = 1 << 20
#: a dead uploader's part file of an object nobody claims is deleted after this long
STALE_PART = 24 * 3600
PROGRAMS = {"zstd": ["zstd", "-T0", "-3", "-q", "-c"], "gzip": ["pigz", "-c"], "bzip2": ["pbzip2", "-c"]}


class Selection:
    """Which files of a directory are wanted: any glob (on path or name), any substring, no exclude glob,
    and not an unchanged entry of a snapshot."""

    def __init__(self, globs: list[str], filters: list[str], excludes: list[str],
                 unchanged: dict[str, list[int]]) -> None:
        self.globs, self.filters, self.excludes, self.unchanged = globs, filters, excludes, unchanged

    def wants(self, rel: str, name: str) -> bool:
        def matches(pattern: str) -> bool:
            return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(name, pattern)

        return (not self.globs or any(matches(g) for g in self.globs)) and \
            (not self.filters or any(f in rel for f in self.filters)) and not any(matches(e) for e in self.excludes)


def shown(rel: str) -> str:
    """A name as text a client can show (undecodable bytes as \\x escapes)."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def unportable(rel: str) -> str | None:
    """Why a name cannot be sent (not UTF-8, or refused by the one path rule), or None."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    try:
        check_name(rel)
    except UnsafePath as exc:
        return str(exc)
    return None


def link_inside(base: Path, rel: str, target: str) -> bool:
    """A relative link target that stays inside base, by its text and (when it exists) by where it leads."""
    if unportable(rel) is not None:
        return False
    try:
        check_link(rel, target)
    except UnsafePath:
        return False
    real = os.path.realpath(base / rel)
    root = os.path.realpath(base)
    return not os.path.exists(real) or real.startswith(root + os.sep)


def manifest(base: Path, selection: Selection) -> dict[str, list[dict[str, Any]]]:
    """The selected regular files and inside links below base (relative POSIX paths), and what is skipped."""
    out: dict[str, list[dict[str, Any]]] = {"files": [], "links": [], "skipped": []}

    def skip(rel: str, reason: str) -> None:
        out["skipped"].append({"path": shown(rel), "reason": reason})

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            st = entry.stat(follow_symlinks=False)
            if not prefix and entry.name == BOOKKEEPING:
                skip(rel, f"{BOOKKEEPING!r} is reserved for the client's transfer bookkeeping")
            elif stat.S_ISDIR(st.st_mode):
                reason = unportable(rel)
                if reason:
                    skip(rel + "/", reason)
                else:
                    walk(Path(entry.path), rel + "/")
            elif not selection.wants(rel, entry.name):
                continue
            elif (reason := unportable(rel)) is not None:
                skip(rel, reason)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(entry.path)
                if link_inside(base, rel, target):
                    out["links"].append({"path": rel, "target": target})
                else:
                    skip(rel, f"symbolic link to {shown(target)!r}, outside the job's directory")
            elif not stat.S_ISREG(st.st_mode):
                skip(rel, "not a regular file (fifo, socket or device)")
            elif selection.unchanged.get(rel) != [st.st_size, st.st_mtime_ns]:
                out["files"].append({"path": rel, "size": st.st_size, "mtime": st.st_mtime_ns,
                                     "mode": None if os.name == "nt" else stat.S_IMODE(st.st_mode) & 0o777})

    walk(base, "")
    return out


def open_regular(path: Path) -> tuple[IO[bytes], os.stat_result]:
    """Open a regular file for reading without following a link or blocking on a fifo; OSError otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb"), st


def same(st: os.stat_result, size: int, mtime: int) -> bool:
    """Whether a file still has the size and mtime the listing recorded."""
    return st.st_size == size and st.st_mtime_ns == mtime


class ZlibWriter(io.RawIOBase):
    """A gzip (or bzip2) compressing writer in Python, for nodes without pigz/pbzip2."""

    def __init__(self, sink: IO[bytes], codec: str) -> None:
        self.sink = sink
        self.comp: Any = zlib.compressobj(6, zlib.DEFLATED, 31) if codec == "gzip" else bz2.BZ2Compressor(9)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sink.write(self.comp.compress(bytes(data)))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.sink.write(self.comp.flush())
            self.sink.flush()
        super().close()


class Compressed:
    """Context manager yielding a writable stream that compresses into sink (or passes through)."""

    def __init__(self, sink: IO[bytes], codec: str) -> None:
        self.sink, self.codec = sink, codec
        self.proc: subprocess.Popen[bytes] | None = None
        self.writer: Any = None

    def __enter__(self) -> IO[bytes]:
        if self.codec == "none":
            return self.sink
        program = PROGRAMS[self.codec]
        if shutil.which(program[0]):
            self.sink.flush()
            self.proc = subprocess.Popen(program, stdin=subprocess.PIPE, stdout=self.sink)
            assert self.proc.stdin is not None
            return self.proc.stdin
        self.writer = ZlibWriter(self.sink, self.codec)
        return io.BufferedWriter(self.writer, BLOCK)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            if self.proc.wait() != 0:
                raise RuntimeError(f"{PROGRAMS[self.codec][0]} failed")
        elif self.writer is not None:
            self.writer.close()
        self.sink.flush()


def choose_codec(base: Path, paths: list[str], requested: str) -> str:
    """`auto`: compress a sample with zlib level 1; compress only when it pays (ratio >= 1.2)."""
    if requested != "auto":
        return requested
    sample = b""
    for rel in paths[:32]:
        try:
            handle, _ = open_regular(base / rel)
        except OSError:
            continue  # gone or replaced since the listing: reported when it is sent
        with handle:
            sample += handle.read(256 * 1024)
        if len(sample) >= 4 << 20:
            break
    if not sample or len(sample) / max(1, len(zlib.compress(sample, 1))) < 1.2:
        return "none"
    return "zstd" if shutil.which("zstd") else "gzip"


def copy_range(source: IO[bytes], sink: IO[bytes], length: int, digest: Any) -> int:
    """Copy up to length bytes from source to sink, hashing them into digest; returns the bytes missing."""
    left = length
    while left > 0:
        block = source.read(min(BLOCK, left))
        if not block:
            break
        digest.update(block)
        sink.write(block)
        left -= len(block)
    return left


def send(base: Path, rel: str, offset: int, length: int, codec: str, size: int, mtime: int) -> int:
    """Stream a byte range of one regular file; the range's SHA-256 goes to stderr at the end. CHANGED
    when the file is not (or stops being) the size/mtime the client listed."""
    digest = hashlib.sha256()
    out = sys.stdout.buffer
    try:
        handle, st = open_regular(base / rel)
    except FileNotFoundError:
        print(f"{rel}: deleted since it was listed", file=sys.stderr)
        return CHANGED
    with handle:
        if size >= 0 and not same(st, size, mtime):
            print(f"{rel}: changed since it was listed", file=sys.stderr)
            return CHANGED
        codec = choose_codec(base, [rel], codec)
        with Compressed(out, codec) as sink:
            handle.seek(offset)
            left = copy_range(handle, sink, length, digest)
        if left > 0 or (size >= 0 and not same(os.fstat(handle.fileno()), size, mtime)):
            print(f"{rel}: changed while it was sent", file=sys.stderr)
            return CHANGED
    sys.stderr.write(f"sha256 {digest.hexdigest()}\n")
    return 0


def _frame(sink: IO[bytes], name: str, data: bytes) -> None:
    encoded = name.encode()
    sink.write(struct.pack(FRAME, len(encoded), len(data)) + encoded)
    sink.write(data)
    sink.write(hashlib.sha256(data).digest())


def read_listed(path: Path, size: int, mtime: int) -> bytes | None:
    """A small file's bytes when they are exactly what the listing recorded (else None: it changed)."""
    try:
        handle, st = open_regular(path)
    except OSError:
        return None
    with handle:
        data = handle.read(size + 1)
        after = os.fstat(handle.fileno())
    return data if len(data) == size and same(st, size, mtime) and same(after, size, mtime) else None


def pack(base: Path, selection: Selection, big: int, have: dict[str, list[Any]], codec: str) -> int:
    """The manifest, then the small files the client lacks (each framed with its SHA-256), then the files
    that changed while being read; compressed."""
    listing = manifest(base, selection)
    small = [f for f in listing["files"] if f["size"] < big and have.get(f["path"]) != [f["size"], f["mtime"]]]
    codec = choose_codec(base, [f["path"] for f in small], codec)
    changed = []
    with Compressed(sys.stdout.buffer, codec) as sink:
        _frame(sink, MANIFEST, json.dumps(listing).encode())
        for entry in small:
            data = read_listed(base / entry["path"], entry["size"], entry["mtime"])
            if data is None:
                changed.append({"path": entry["path"], "reason": "changed while it was being sent"})
            else:
                _frame(sink, entry["path"], data)
        _frame(sink, SKIPPED, json.dumps(changed).encode())
        sink.write(struct.pack(FRAME, 0, 0))
    return 0


def recv(path: Path, offset: int, length: int, skip: int = 0, mark: Path | None = None) -> int:
    """Write stdin into the range's bytes skip.. of path at offset (the file is created when missing; the first
    skip bytes are there from an earlier attempt); print the SHA-256 of what arrived. With mark, record there
    every MARK_EVERY bytes how much of the range is written, so a killed upload resumes where it stopped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    mode = "r+b" if path.exists() else "w+b"
    source = sys.stdin.buffer
    done = skip
    with open(path, mode) as handle:
        handle.seek(offset + skip)
        while done < length:
            chunk = min(MARK_EVERY, length - done)
            missing = copy_range(source, handle, chunk, digest)
            done += chunk - missing
            if missing:
                break
            if mark is not None:
                handle.flush()
                _write_mark(mark, done)
    if done < length:
        print(f"short input: {length - done} bytes missing", file=sys.stderr)
        return 3
    if mark is not None:
        mark.unlink(missing_ok=True)
    print(f"sha256 {digest.hexdigest()}")
    return 0


def _write_mark(mark: Path, done: int) -> None:
    tmp = mark.with_name(f"{mark.name}.{os.getpid()}.tmp")
    tmp.write_text(str(done), encoding="ascii")
    os.replace(tmp, mark)


def range_hash(path: Path, offset: int, length: int) -> int:
    """Print the SHA-256 of a byte range, or "missing" when the file does not hold all of it."""
    if not path.is_file() or path.stat().st_size < offset + length:
        print("missing")
        return 0
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        left = length
        while left > 0:
            block = handle.read(min(BLOCK, left))
            digest.update(block)
            left -= len(block)
    print(f"sha256 {digest.hexdigest()}")
    return 0


def _lock(path: Path, wait: bool) -> int | None:
    """An exclusive lock on path held by this process (released when it exits, however it exits); None when
    another process holds it and wait is False."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if os.name == "nt":
        import msvcrt

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
                return fd
            except OSError:
                if not wait:
                    os.close(fd)
                    return None
                time.sleep(0.2)
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _complete(store: Path, sha: str, size: int) -> bool:
    target = store / sha
    return target.is_file() and target.stat().st_size == size


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _drop_marks(store: Path, sha: str) -> None:
    for mark in store.glob(f"{upload_mark(sha)}*"):
        mark.unlink(missing_ok=True)


def reap(store: Path, age: float = STALE_PART) -> None:
    """Delete part files (and upload progress markers) older than age whose object nobody holds a claim on
    (their uploader died)."""
    cutoff = time.time() - age
    for part in [*store.glob(".*.part"), *store.glob(".*.r[0-9]*")]:
        sha = part.name[1:].split(".", 1)[0]
        try:
            if part.stat().st_mtime >= cutoff or not re.fullmatch(r"[0-9a-f]{64}", sha):
                continue
        except OSError:
            continue
        fd = _lock(store / f".{sha}.lock", wait=False)
        if fd is not None:
            part.unlink(missing_ok=True)
            os.close(fd)


def _release(fd: int, lock: Path) -> None:
    """Release and remove an object's lock once the object is in the store: whoever locks it next (through
    this file or a new one) finds the object complete. Windows keeps the file while a waiter has it open."""
    os.close(fd)
    with contextlib.suppress(OSError):
        lock.unlink(missing_ok=True)


def claim(store: Path, sha: str, size: int) -> int:
    """Hold the claim on store/SHA while stdin is open (see the module doc). Objects enter the store only
    whole and verified, so an existing one of the right size is complete. Waiting uploaders block on the
    claim's lock; an uploader that dies (its connection closes) releases it, and the next claimant resumes
    from its part file, whose ranges are checked before reuse and whose whole hash is checked at commit."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        print(f"not a SHA-256: {sha!r}", file=sys.stderr)
        return 2
    store.mkdir(parents=True, exist_ok=True)
    if _complete(store, sha, size):
        _say("have")
        return 0
    lock = store / f".{sha}.lock"
    fd = _lock(lock, wait=False)
    if fd is None:
        _say("wait")
        fd = _lock(lock, wait=True)
        assert fd is not None  # a waiting lock returns only once held
    if _complete(store, sha, size):  # it arrived meanwhile (the lock file may be one made after it was removed)
        _release(fd, lock)
        _say("have")
        return 0
    reap(store)
    mine = store / f".{sha}.{secrets.token_hex(8)}.part"
    earlier = sorted(store.glob(f".{sha}*.part"), key=lambda p: p.stat().st_mtime)
    if earlier:  # a previous claimant died: resume from its newest part, drop the rest
        os.replace(earlier[-1], mine)
        for old in earlier[:-1]:
            old.unlink(missing_ok=True)
    else:  # progress markers of a part that is gone describe nothing
        _drop_marks(store, sha)
    _say(f"part {mine.name}")
    if sys.stdin.readline().strip() != "commit":
        return 0  # the uploader went away: keep the part for the next claimant
    try:
        got = _file_hash(mine) if mine.is_file() and mine.stat().st_size == size else None
    except OSError as exc:
        got = f"unreadable ({exc})"
    if got != sha:
        mine.unlink(missing_ok=True)
        _say(f"refused: the uploaded object has SHA-256 {got or 'of the wrong size'}, not {sha}")
        return 3
    os.replace(mine, store / sha)
    _drop_marks(store, sha)
    _release(fd, lock)
    _say("stored")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="transfer.py")
    parser.add_argument("command", choices=["send", "pack", "recv", "hash", "claim"])
    parser.add_argument("base", type=Path)
    parser.add_argument("path", nargs="?")
    parser.add_argument("--glob", action="append", default=[])
    parser.add_argument("--filter", action="append", default=[])
    parser.add_argument("--exclude", action="append", default=[])
    parser.add_argument("--unchanged", type=Path)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--length", type=int, default=-1)
    parser.add_argument("--size", type=int, default=-1)
    parser.add_argument("--mtime", type=int, default=-1)
    parser.add_argument("--big", type=int, default=BIG)
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--mark", type=Path)
    parser.add_argument("--compress", default="none", choices=["auto", "none", "zstd", "gzip", "bzip2"])
    args = parser.parse_args(argv)
    try:
        if args.command == "send":
            return send(args.base, args.path, args.offset, args.length, args.compress, args.size, args.mtime)
        if args.command == "pack":
            unchanged = json.loads(args.unchanged.read_text(encoding="utf-8")) \
                if args.unchanged and args.unchanged.is_file() else {}
            selection = Selection(args.glob, args.filter, args.exclude, unchanged)
            return pack(args.base, selection, args.big, json.load(sys.stdin)["have"], args.compress)
        if args.command == "claim":
            return claim(args.base, args.path, args.length)
        if args.command == "hash":
            return range_hash(args.base, args.offset, args.length)
        return recv(args.base, args.offset, args.length, args.skip, args.mark)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"transfer.py {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
