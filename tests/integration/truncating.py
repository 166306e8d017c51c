"""A loopback HTTP relay that cuts object downloads short: the status line and headers (with the full
Content-Length) go through, then half the body, then the connection closes, the way a dropped link looks."""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: request headers not passed on (hop-by-hop)
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}


@dataclass
class Cutter:
    """Which GETs to cut: those whose path ends with `suffix`, the first `times` of them (-1: all)."""

    suffix: str = ""
    times: int = 0
    cut: int = 0
    gets: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def should_cut(self, method: str, path: str) -> bool:
        if method != "GET" or not self.suffix or not urllib.parse.urlsplit(path).path.endswith(self.suffix):
            return False
        with self.lock:
            self.gets += 1
            if self.times < 0 or self.cut < self.times:
                self.cut += 1
                return True
        return False


def _handler(target: tuple[str, int], cutter: Cutter) -> type[http.server.BaseHTTPRequestHandler]:
    class Relay(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            upstream = http.client.HTTPConnection(*target, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            cut = self.command == "GET" and answer.status in (200, 206) and len(data) > 1 and \
                cutter.should_cut(self.command, self.path)
            self.send_response_only(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOP and (key.lower() != "content-length" or self.command == "HEAD"):
                    self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close" if cut else "keep-alive")
            self.end_headers()
            self.wfile.write(data[:len(data) // 2] if cut else data)
            self.wfile.flush()
            if cut:
                self.close_connection = True
            upstream.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

    return Relay


@contextmanager
def truncating_relay(target_url: str, cutter: Cutter) -> Iterator[str]:
    """Serve on 127.0.0.1 (a free port), relaying to target_url's host; yields the relay's base URL (with the
    target's path)."""
    parts = urllib.parse.urlsplit(target_url)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler((parts.hostname or "", parts.port or 80),
                                                                         cutter))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{parts.path}"
    finally:
        server.shutdown()
        server.server_close()
