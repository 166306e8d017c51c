"""The connection pool: one unreachable cluster does not stall connects to the others."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpicloud.cluster.registry import ClusterRecord, Node
from tests.conftest import cli


class SilentListener:
    """Accepts TCP connections and never says a word (an SSH server that hangs before its banner)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.open: list[socket.socket] = []
        self.most_open = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.open = [c for c in self.open if _connected(c)] + [conn]
                self.most_open = max(self.most_open, len(self.open))

    def close(self) -> None:
        self.sock.close()
        for conn in self.open:
            conn.close()


def _connected(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.fixture()
def silent() -> Iterator[SilentListener]:
    listener = SilentListener("127.0.133.1")
    try:
        yield listener
    finally:
        listener.close()


def test_clusters_connects_to_every_cluster_at_once(home: Path, tmp_path: Path, silent: SilentListener) -> None:
    key = tmp_path / "key"
    key.write_text("unused\n")
    for name in ("hang-a", "hang-b", "hang-c"):
        ClusterRecord(name=name, provider="attached", os="linux", user="nobody",
                      nodes=[Node(name="node0", host="127.0.133.1", port=silent.port)], slots_per_node=1,
                      shared_path="/shared", python=["python3"], runner="/opt/mpicloud/runner.py",
                      key_file=str(key)).save()
    result = cli("clusters", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["state"] for r in rows] == ["unreachable"] * 3
    # the three connects waited for the banner side by side, not one after the other
    assert silent.most_open == 3
