"""mpicloud cluster-side transfer helper (stdlib only, any OS): list, send, pack and receive files.

  send BASE PATH --offset N --length L [--compress C]   raw (or compressed) bytes; stderr: "sha256 HEX"
  pack BASE [--glob G]... [--filter S]... [--big N] [--compress auto|none|zstd|gzip|bzip2]
      stdin: JSON {"have": {path: [size, mtime]}}; stdout: frames `!HQ` (name length, size), name, data,
      32-byte SHA-256 of the data; the first frame is the manifest (`.mpicloud-manifest.json`:
      [[path, size, mtime], ...] of every selected file), then every selected file smaller than N not in
      "have"; a frame with an empty name ends the stream
  recv PATH --offset N --length L                      stdin bytes into PATH at offset; stdout: "sha256 HEX"
  hash PATH --offset N --length L                      "sha256 HEX" of a range already there (resume checks)
  claim STORE SHA --length SIZE                        the right to put one object into the input store, held
      while stdin stays open; stdout lines: "have" (it is there), "wait" (another uploader has it: wait for
      its result), "part NAME" (ours: upload into STORE/NAME, then write "commit" to stdin); after commit:
      "stored" once the whole object's SHA-256 was checked and it was renamed in, or "refused REASON"
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
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import IO, Any

BLOCK = 1 << 20
MANIFEST = ".mpicloud-manifest.json"
FRAME = "!HQ"
#: a dead uploader's part file of an object nobody claims is deleted after this long
STALE_PART = 24 * 3600
PROGRAMS = {"zstd": ["zstd", "-T0", "-3", "-q", "-c"], "gzip": ["pigz", "-c"], "bzip2": ["pbzip2", "-c"]}


def manifest(base: Path, globs: list[str], filters: list[str]) -> list[list[Any]]:
    """Files below base (relative POSIX paths), selected by glob (any) and substring (any)."""
    out: list[list[Any]] = []
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted(files):
            full = Path(folder) / name
            rel = full.relative_to(base).as_posix()
            if globs and not any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g) for g in globs):
                continue
            if filters and not any(f in rel for f in filters):
                continue
            st = full.stat()
            out.append([rel, st.st_size, st.st_mtime])
    return out


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
        with open(base / rel, "rb") as handle:
            sample += handle.read(256 * 1024)
        if len(sample) >= 4 << 20:
            break
    if not sample or len(sample) / max(1, len(zlib.compress(sample, 1))) < 1.2:
        return "none"
    return "zstd" if shutil.which("zstd") else "gzip"


def send(base: Path, rel: str, offset: int, length: int, codec: str) -> int:
    """Stream a byte range of one file; the range's SHA-256 goes to stderr at the end."""
    digest = hashlib.sha256()
    out = sys.stdout.buffer
    codec = choose_codec(base, [rel], codec)
    with open(base / rel, "rb") as handle, Compressed(out, codec) as sink:
        handle.seek(offset)
        left = length
        while left > 0:
            block = handle.read(min(BLOCK, left))
            if not block:
                break
            digest.update(block)
            sink.write(block)
            left -= len(block)
    sys.stderr.write(f"sha256 {digest.hexdigest()}\n")
    return 0


def _frame(sink: IO[bytes], name: str, size: int, chunks: Any) -> None:
    encoded = name.encode()
    sink.write(struct.pack(FRAME, len(encoded), size) + encoded)
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        sink.write(chunk)
    sink.write(digest.digest())


def _chunks(path: Path) -> Any:
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            yield block


def pack(base: Path, globs: list[str], filters: list[str], big: int, have: dict[str, list[Any]], codec: str) -> int:
    """The manifest, then the small files the client lacks, framed with their SHA-256, compressed."""
    selected = manifest(base, globs, filters)
    paths = [(rel, size) for rel, size, mtime in selected if size < big and have.get(rel) != [size, mtime]]
    codec = choose_codec(base, [p for p, _ in paths], codec)
    with Compressed(sys.stdout.buffer, codec) as sink:
        listing = json.dumps(selected).encode()
        _frame(sink, MANIFEST, len(listing), [listing])
        for rel, size in paths:
            _frame(sink, rel, size, _chunks(base / rel))
        sink.write(struct.pack(FRAME, 0, 0))
    return 0


def recv(path: Path, offset: int, length: int) -> int:
    """Write stdin into path at offset (the file is created when missing); print the range's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    mode = "r+b" if path.exists() else "w+b"
    source = sys.stdin.buffer
    with open(path, mode) as handle:
        handle.seek(offset)
        left = length
        while left > 0:
            block = source.read(min(BLOCK, left))
            if not block:
                break
            digest.update(block)
            handle.write(block)
            left -= len(block)
    if left:
        print(f"short input: {left} bytes missing", file=sys.stderr)
        return 3
    print(f"sha256 {digest.hexdigest()}")
    return 0


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


def reap(store: Path, age: float = STALE_PART) -> None:
    """Delete part files older than age whose object nobody holds a claim on (their uploader died)."""
    cutoff = time.time() - age
    for part in store.glob(".*.part"):
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
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--length", type=int, default=-1)
    parser.add_argument("--big", type=int, default=32 << 20)
    parser.add_argument("--compress", default="none", choices=["auto", "none", "zstd", "gzip", "bzip2"])
    args = parser.parse_args(argv)
    try:
        if args.command == "send":
            return send(args.base, args.path, args.offset, args.length, args.compress)
        if args.command == "pack":
            return pack(args.base, args.glob, args.filter, args.big, json.load(sys.stdin)["have"], args.compress)
        if args.command == "claim":
            return claim(args.base, args.path, args.length)
        if args.command == "hash":
            return range_hash(args.base, args.offset, args.length)
        return recv(args.base, args.offset, args.length)
    except (OSError, RuntimeError) as exc:
        print(f"transfer.py {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
