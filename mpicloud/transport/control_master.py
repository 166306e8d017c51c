"""The control master's loop: serve a transport's short operations to this user's processes over a Unix socket
until it has been idle for its persist time, its SSH connection drops, or another master took its path."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from mpicloud.transport.base import Transport
from mpicloud.transport.control import error_reply, recv_msg, send_msg


class _Clock:
    """Last activity, and how many connections are open (a master never expires under an open one)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.open = 0
        self.stop = False
        self.lock = threading.Lock()

    def touch(self, opened: int = 0) -> None:
        with self.lock:
            self.last = time.monotonic()
            self.open += opened

    def idle_for(self) -> float:
        with self.lock:
            return 0.0 if self.open else time.monotonic() - self.last


def _answer(transport: Transport, op: str, args: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
    """One request against the transport."""
    if op == "ping":
        return {}, b""
    if op == "ask":
        return {}, transport.ask(args["command"], payload)
    if op == "recall":
        return {"value": transport.recall(args["key"])}, b""
    if op == "remember":
        transport.remember(args["key"], args["value"])
        return {}, b""
    if op == "run":
        result = transport.run(args["command"], stdin=payload if args.get("stdin") else None,
                               timeout=args.get("timeout"))
        return {"exit_code": result.exit_code, "stdout": len(result.stdout)}, result.stdout + result.stderr
    path = args.get("path", "")
    if op == "read_bytes":
        return {}, transport.read_bytes(path)
    if op == "read_range":
        return {}, transport.read_range(path, int(args["offset"]), int(args["size"]))
    if op == "write_bytes":
        transport.write_bytes(path, payload, mode=args.get("mode"))
    elif op == "rename":
        transport.rename(args["src"], args["dst"])
    elif op == "makedirs":
        transport.makedirs(path)
    elif op == "listdir":
        return {"names": transport.listdir(path)}, b""
    elif op == "walk":
        return {"files": transport.walk(path)}, b""
    elif op == "stat":
        found = transport.stat(path)
        return {"stat": None if found is None else {"size": found.size, "mtime": found.mtime,
                                                      "is_dir": found.is_dir}}, b""
    elif op == "remove":
        transport.remove(path)
    else:
        raise ValueError(f"unknown control operation {op!r}")
    return {}, b""


def _peer_is_me(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _handle(conn: socket.socket, transport: Transport, clock: _Clock) -> None:
    """Serve one connection (counted open by the accept loop) until the peer closes it."""
    try:
        if not _peer_is_me(conn):
            return
        while (message := recv_msg(conn)) is not None:
            header, payload = message
            if header.get("op") == "exit":
                clock.stop = True
                send_msg(conn, {})
                return
            try:
                reply, data = _answer(transport, str(header.get("op")), header, payload)
            except Exception as exc:  # every failure goes back to the caller, the master stays
                reply, data = error_reply(exc), b""
            send_msg(conn, reply, data)
            clock.touch()
    except OSError:
        pass
    finally:
        conn.close()
        clock.touch(opened=-1)


def bind(path: Path) -> socket.socket:
    """A listening socket at path, owner-only, swapped in atomically (a stale socket file is replaced)."""
    staging = path.with_name(f"{path.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(str(staging))
    finally:
        os.umask(old)
    os.chmod(staging, 0o600)
    server.listen(16)
    os.replace(staging, path)
    return server


def serve(transport: Transport, server: socket.socket, path: Path, persist: float) -> None:
    """Answer requests until idle for `persist` seconds, the connection dropped, an `exit` request, or the
    socket path no longer being ours; then remove the path if it still is."""
    mine = path.stat().st_ino
    clock = _Clock()
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    try:
        while not clock.stop and clock.idle_for() < persist and transport.alive and _still_mine(path, mine):
            if selector.select(timeout=min(0.1, persist)):
                conn, _ = server.accept()
                clock.touch(opened=1)
                threading.Thread(target=_handle, args=(conn, transport, clock), daemon=True).start()
    finally:
        if _still_mine(path, mine):
            with contextlib.suppress(OSError):
                path.unlink()
        server.close()
        transport.close()


def _still_mine(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False
