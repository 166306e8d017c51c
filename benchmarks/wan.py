"""A WAN emulator on loopback: a TCP relay adding a one-way delay and a rate limit per direction.

Each direction is a link: a chunk read at time t leaves the link at max(t, link free) + size / rate and is
delivered `delay` seconds later. Chunks are pipelined (the link carries many at once, as a real path does),
and at most `buffer` bytes wait in a direction (the reader then stops reading: TCP backpressure), so what a
sender keeps in flight decides its throughput, as across an ocean.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

CHUNK = 64 << 10


@dataclass(frozen=True)
class Link:
    """One direction: one-way delay in seconds and rate in bytes/s."""

    delay: float
    rate: float


class _Pipe:
    """One direction of one connection: a reader thread stamps chunks with their delivery time, a writer
    thread delivers them then."""

    def __init__(self, source: socket.socket, sink: socket.socket, link: Link, buffer: int) -> None:
        self.source, self.sink, self.link, self.buffer = source, sink, link, buffer
        self.chunks: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.cond = threading.Condition()
        self.eof = False
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        free = 0.0
        try:
            while data := self.source.recv(CHUNK):
                with self.cond:
                    while self.queued > self.buffer:
                        self.cond.wait()
                    free = max(time.monotonic(), free) + len(data) / self.link.rate
                    self.chunks.append((free + self.link.delay, data))
                    self.queued += len(data)
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.chunks and not self.eof:
                        self.cond.wait()
                    if not self.chunks:
                        break
                    due, data = self.chunks[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.sink.sendall(data)
                with self.cond:
                    self.chunks.popleft()
                    self.queued -= len(data)
                    self.cond.notify_all()
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.sink.shutdown(socket.SHUT_WR)


class Wan:
    """Forward 127.0.0.1:<port> to target through an emulated path (`up`: client to server, `down`: back), in
    this process (see `WanProcess` for one in its own process)."""

    def __init__(self, target: tuple[str, int], up: Link, down: Link, buffer: int | None = None) -> None:
        self.target, self.up, self.down = target, up, down
        # room for twice the bandwidth-delay product of the round trip, as a well-sized router queue
        self.buffer = buffer or int(2 * max(up.rate, down.rate) * (up.delay + down.delay)) + (1 << 20)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def symmetric(cls, target: tuple[str, int], rtt_ms: float, mbit: float) -> Wan:
        """A path of this round-trip time and rate both ways."""
        link = Link(rtt_ms / 2000, mbit * 1e6 / 8)
        return cls(target, link, link)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _Pipe(client, upstream, self.up, self.buffer)
            _Pipe(upstream, client, self.down, self.buffer)

    def close(self) -> None:
        """Stop accepting connections."""
        self.server.close()


class WanProcess:
    """A symmetric emulated path served by its own process (`python -m benchmarks.wan`), so the relay's
    threads never compete with the client under test for its interpreter lock."""

    def __init__(self, target: tuple[str, int], rtt_ms: float, mbit: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.wan", target[0], str(target[1]),
                                      str(rtt_ms), str(mbit)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def close(self) -> None:
        """Stop the relay process."""
        self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    wan = Wan.symmetric((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]), float(sys.argv[4]))
    print(wan.port, flush=True)
    threading.Event().wait()
