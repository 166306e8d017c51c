"""Reading remote streams: byte counting, codec detection by magic bytes, decompression on the client."""

from __future__ import annotations

import bz2
import gzip
import io
from typing import IO, Any

import zstandard

from mpicloud.transport.base import Stream

MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip", b"BZh": "bzip2"}


class StreamReader(io.RawIOBase):
    """A remote stream's stdout as a raw file, counting the bytes that crossed the wire."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.wire_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        self.wire_bytes += len(data)
        buffer[: len(data)] = data
        return len(data)


def detect(raw: io.BufferedReader) -> str:
    """The codec of a stream from its first bytes (peeked, not consumed)."""
    head = raw.peek(4)[:4]
    for magic, codec in MAGIC.items():
        if head.startswith(magic):
            return codec
    return "none"


def decoded(raw: io.BufferedReader) -> tuple[IO[bytes], str]:
    """A reader of the decompressed data (zstd and gzip/bzip2 streams of several frames included)."""
    codec = detect(raw)
    reader: Any
    if codec == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    elif codec == "gzip":
        reader = gzip.GzipFile(fileobj=raw)
    elif codec == "bzip2":
        reader = bz2.BZ2File(raw)
    else:
        reader = raw
    return (io.BufferedReader(reader, 1 << 20) if codec != "none" else reader), codec
