"""A rate-limited TCP relay on loopback: emulates a slow link (e.g. 100 Mbit/s) between client and cluster."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Relay:
    """Forward 127.0.0.1:<port> to target, at most `rate` bytes/s in each direction."""

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.target, self.rate = target, rate
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        sent, started = 0, time.monotonic()
        try:
            while data := source.recv(16384):
                sink.sendall(data)
                sent += len(data)
                ahead = sent / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting connections."""
        self.stopped = True
        self.server.close()
