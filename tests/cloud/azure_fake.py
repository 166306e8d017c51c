"""A loopback stand-in for what Linux nodes on Azure talk to: IMDS (compute, address, userData, identity tokens),
a Key Vault's secrets and Resource Manager's deallocate; it records every request with its Authorization header."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

TOKEN = "fake-access-token"


@dataclass
class FakeAzure:
    """State of the fake: what IMDS serves, the vault's secrets, the requests seen."""

    compute: dict[str, Any]
    private_ip: str = "10.0.0.10"
    user_data: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        if path == "/metadata/instance/compute":
            return 200, json.dumps(self.compute)
        if path == "/metadata/instance/network/interface/0/ipv4/ipAddress/0":
            return 200, json.dumps({"privateIpAddress": self.private_ip, "publicIpAddress": ""})
        if path == "/metadata/instance/compute/userData":
            return 200, self.user_data
        if path == "/metadata/identity/oauth2/token":
            return 200, json.dumps({"access_token": TOKEN})
        if path.startswith("/vault/secrets/"):
            name = path.rsplit("/", 1)[-1]
            if method == "PUT":
                self.secrets[name] = json.loads(body)["value"]
                return 200, "{}"
            return (200, json.dumps({"value": self.secrets[name]})) if name in self.secrets else (404, "{}")
        if path.startswith("/arm/") and method == "POST":
            return 202, ""
        return 404, ""


@contextmanager
def serve(fake: FakeAzure) -> Iterator[FakeAzure]:
    """Run the fake on 127.0.0.1 for the duration of the block; fake.url is its base URL."""
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlparse(self.path).path
            fake.requests.append((self.command, path, self.headers.get("Authorization")))
            status, text = fake._answer(self.command, path, body)
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
