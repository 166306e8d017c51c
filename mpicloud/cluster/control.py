"""A cluster's control master: found or started by a CLI call, it keeps the head node's SSH connection for the
next calls (`python -m mpicloud.cluster.control NAME SOCKET` is the master process itself)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from mpicloud import __version__
from mpicloud.cluster import registry
from mpicloud.cluster.registry import ClusterRecord
from mpicloud.errors import MpicloudError
from mpicloud.transport.base import Transport
from mpicloud.transport.control import (
    CONTROL_VERSION,
    ControlTransport,
    connect_socket,
    control_dir,
    error_reply,
    persist_seconds,
    raise_reply,
    send_msg,
)


def socket_path(record: ClusterRecord) -> Path | None:
    """The cluster's socket: named by everything that decides where and how it connects (the registry home, the
    record, the pinned host keys), so a re-pinned or changed cluster never reuses an older master."""
    directory = control_dir()
    if directory is None:
        return None
    digest = hashlib.sha256(f"{CONTROL_VERSION} {__version__} {registry.home().resolve()}".encode())
    digest.update(json.dumps(asdict(record), sort_keys=True).encode())
    with contextlib.suppress(OSError):
        digest.update(Path(record.known_hosts).read_bytes())
    return directory / f"{record.name}-{digest.hexdigest()[:20]}.sock"


def control_transport(record: ClusterRecord) -> Transport | None:
    """A transport through the cluster's master, started now when none serves it (one start when calls race);
    None when no control socket can be used here. Connection errors (host key, login) are raised as they are."""
    path = socket_path(record)
    if path is None:
        return None
    sock = connect_socket(path)
    if sock is None:
        with _locked(path.with_suffix(".lock")):
            sock = connect_socket(path) or _start_master(record, path)
    if sock is None:
        return None

    def direct() -> Transport:
        from mpicloud.cluster.connect import head_transport  # the SSH library only when bulk data moves

        return head_transport(record)

    return ControlTransport(sock, direct, f"{record.user}@{record.head.host}:{record.head.port}")


def stop_master(record: ClusterRecord, forget: bool = False) -> None:
    """Ask the cluster's master (if any) to close its connection and exit; with forget (the cluster is being
    removed), also remove its lock and log files."""
    path = socket_path(record)
    if path is None:
        return
    sock = connect_socket(path)
    if sock is not None:
        with contextlib.suppress(OSError):
            send_msg(sock, {"op": "exit"})
            sock.recv(1)
        sock.close()
    if forget:
        for leftover in (path.with_suffix(".lock"), path.with_suffix(".log")):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start_master(record: ClusterRecord, path: Path) -> socket.socket | None:
    """Start the master, wait for its first line (ready, or the error it met connecting), connect to it."""
    log = os.open(path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mpicloud.cluster.control", record.name, str(path)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True)
    finally:
        os.close(log)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    reply = json.loads(line) if line.strip() else {}
    if "error" in reply:
        raise_reply(reply)
    return connect_socket(path) if reply.get("ok") else None


def _master(name: str, path: Path) -> None:
    """The master process: connect (host keys pinned as for any connection), report, serve."""
    from mpicloud.cluster.connect import head_transport
    from mpicloud.transport.control_master import bind, serve

    try:
        transport = head_transport(registry.load(name))
        server = bind(path)
    except (MpicloudError, OSError) as exc:
        print(json.dumps(error_reply(exc)), flush=True)
        os._exit(1)  # at once: a half-made SSH connection's threads must not keep the process around
    print(json.dumps({"ok": True, "pid": os.getpid()}), flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    serve(transport, server, path, persist_seconds())
    os._exit(0)


if __name__ == "__main__":
    _master(sys.argv[1], Path(sys.argv[2]))
