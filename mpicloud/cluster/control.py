"""A cluster's control master: found or started by a CLI call, it keeps the head node's SSH connection for the
next calls (`python -m mpicloud.cluster.control NAME SOCKET` is the master process itself)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
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


def _prefix(record: ClusterRecord) -> str:
    """The start of every socket name of this cluster in this registry home, whatever its record says now."""
    home = hashlib.sha256(f"{CONTROL_VERSION} {registry.home().resolve()}".encode()).hexdigest()[:8]
    return f"{record.name}-{home}-"


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
    return directory / f"{_prefix(record)}{digest.hexdigest()[:12]}.sock"


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
    """Ask every master of the cluster (one per version of its record: a record changes when the cluster stops,
    starts or resizes) to close its connection and exit; with forget (the cluster is being removed), also remove
    their lock and log files."""
    directory = control_dir()
    if directory is None:
        return
    for path in sorted(directory.glob(f"{_prefix(record)}*.sock")):
        sock = connect_socket(path)
        if sock is None:
            continue
        master = _peer_pid(sock)
        with contextlib.suppress(OSError):
            send_msg(sock, {"op": "exit"})
            sock.recv(1)
        sock.close()
        _wait_gone(master, EXIT_WAIT)
    if forget:
        for leftover in directory.glob(f"{_prefix(record)}*"):
            if leftover.suffix in (".lock", ".log"):
                leftover.unlink(missing_ok=True)


#: seconds stop_master waits for a master to be gone after it answered `exit` (it closes its SSH connection)
EXIT_WAIT = 10.0


def _peer_pid(sock: socket.socket) -> int:
    """The PID of the process at the other end of a Unix socket (the master)."""
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return int(pid)


def _wait_gone(pid: int, timeout: float) -> None:
    """Until the process has exited (or timeout): `down` must leave no process of the cluster behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:  # not ours: nothing we may wait for
            return
        time.sleep(0.02)


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
