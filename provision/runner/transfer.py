"""mpicloud cluster-side transfer helper (stdlib only, any OS): list, send, pack and receive files.

  manifest BASE [--glob G]... [--filter S]...   JSON [[path, size, mtime], ...] of files below BASE
  send BASE PATH --offset N --length L [--compress C]   raw (or compressed) bytes; stderr: "sha256 HEX"
  pack BASE [--compress auto|none|zstd|gzip|bzip2]      stdin: JSON list of paths; stdout: a tar stream with a
                                                        `.mpicloud-sha256/<path>` member after every file
  recv PATH --offset N --length L                      stdin bytes into PATH at offset; stdout: "sha256 HEX"
  hash PATH --offset N --length L                      "sha256 HEX" of a range already there (resume checks)
Compression uses a multi-threaded program on the node when there is one (zstd -T0, pigz, pbzip2), Python's
zlib/bz2 otherwise; the client recognises the format by its magic bytes.
"""

from __future__ import annotations

import argparse
import bz2
import fnmatch
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import IO, Any

BLOCK = 1 << 20
SHA_DIR = ".mpicloud-sha256"
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


class _Hashing(io.RawIOBase):
    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.handle.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def pack(base: Path, paths: list[str], codec: str) -> int:
    """A tar stream of the files, each followed by a member holding its SHA-256."""
    codec = choose_codec(base, paths, codec)
    with Compressed(sys.stdout.buffer, codec) as sink, tarfile.open(fileobj=sink, mode="w|") as tar:
        for rel in paths:
            full = base / rel
            info = tar.gettarinfo(str(full), arcname=rel)
            with open(full, "rb") as handle:
                hashing = _Hashing(handle)
                tar.addfile(info, io.BufferedReader(hashing, BLOCK))
            digest = hashing.digest.hexdigest().encode()
            side = tarfile.TarInfo(f"{SHA_DIR}/{rel}")
            side.size = len(digest)
            tar.addfile(side, io.BytesIO(digest))
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="transfer.py")
    parser.add_argument("command", choices=["manifest", "send", "pack", "recv", "hash"])
    parser.add_argument("base", type=Path)
    parser.add_argument("path", nargs="?")
    parser.add_argument("--glob", action="append", default=[])
    parser.add_argument("--filter", action="append", default=[])
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--length", type=int, default=-1)
    parser.add_argument("--compress", default="none", choices=["auto", "none", "zstd", "gzip", "bzip2"])
    args = parser.parse_args(argv)
    try:
        if args.command == "manifest":
            print(json.dumps(manifest(args.base, args.glob, args.filter)))
            return 0
        if args.command == "send":
            return send(args.base, args.path, args.offset, args.length, args.compress)
        if args.command == "pack":
            return pack(args.base, json.load(sys.stdin), args.compress)
        if args.command == "hash":
            return range_hash(args.base, args.offset, args.length)
        return recv(args.base, args.offset, args.length)
    except (OSError, RuntimeError) as exc:
        print(f"transfer.py {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
