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
    """An SSH server that says nothing until `waiting` clients are connected at once, then answers each with a
    banner paramiko refuses (SSH-1.0). A client that gave up waiting before that fails with a banner timeout."""

    def __init__(self, address: str, waiting: int) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.waiting = waiting
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if len(self.conns) == self.waiting:
                for waiting in self.conns:
                    try:
                        waiting.sendall(b"SSH-1.0-silent\r\n")
                    except OSError:
                        continue

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture()
def silent() -> Iterator[SilentListener]:
    listener = SilentListener("127.0.133.1", waiting=3)
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
    # the three connects waited for the banner side by side: none timed out before the third one came
    assert all("Incompatible version (1.0 instead of 2.0)" in r["flag"] for r in rows), rows
