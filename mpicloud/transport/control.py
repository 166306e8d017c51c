"""A per-cluster control socket, as OpenSSH's ControlMaster: one process keeps the authenticated SSH connection
and serves short requests from later CLI calls over a Unix socket that only its owner can reach.

This module is the client side and the wire format; it imports only the standard library (the CLI pays for no
SSH library when a master is up). The master's loop is `mpicloud.transport.control_master`.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpicloud import errors
from mpicloud.transport.base import FileStat, OutputCallback, ProgressCallback, RunResult, Stream, Transport

#: seconds a master lives without a request (OpenSSH's ControlPersist); MPICLOUD_CONTROL_PERSIST overrides
PERSIST_SECONDS = 600.0
#: the request format; part of the socket's name, so a client never talks to a master of another format
CONTROL_VERSION = 1
_HEAD = struct.Struct("!II")


def persist_seconds() -> float:
    """How long an idle master stays (MPICLOUD_CONTROL_PERSIST seconds, default 10 minutes)."""
    value = os.environ.get("MPICLOUD_CONTROL_PERSIST")
    return float(value) if value else PERSIST_SECONDS


def control_dir() -> Path | None:
    """This user's socket directory (created 0700); None when it exists but is not exclusively ours (then no
    control socket is used: another user could reach it)."""
    path = Path(tempfile.gettempdir()) / f"mpicloud-control-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return path


def send_msg(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    """One message: lengths, a JSON header, a binary payload."""
    head = json.dumps(header).encode()
    sock.sendall(_HEAD.pack(len(head), len(payload)) + head + payload)


def recv_msg(sock: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """The next message, None when the peer closed the connection."""
    lengths = _recv_exact(sock, _HEAD.size)
    if lengths is None:
        return None
    head_len, payload_len = _HEAD.unpack(lengths)
    head = _recv_exact(sock, head_len)
    payload = _recv_exact(sock, payload_len)
    if head is None or payload is None:
        raise ConnectionError("control connection closed mid-message")
    return json.loads(head), payload


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            if left == size:
                return None
            raise ConnectionError("control connection closed mid-message")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def error_reply(exc: BaseException) -> dict[str, Any]:
    """How the master reports an exception: its class (one of the error tree's, or FileNotFoundError)."""
    return {"error": type(exc).__name__, "message": str(exc)}


def raise_reply(header: dict[str, Any]) -> None:
    """Raise the error a master reported, as the same class."""
    name, message = header["error"], header.get("message", "")
    if name == "FileNotFoundError":
        raise FileNotFoundError(message)
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.MpicloudError) and cls not in (errors.SpecError,
                                                                                       errors.CommandFailed):
        raise cls(message)
    raise errors.TransportError(message)


class ControlTransport:
    """The Transport of a CLI call: short operations go through the master's connection; bulk streams (and
    worker processes) open their own SSH connection, made on first use by `direct`."""

    def __init__(self, sock: socket.socket, direct: Callable[[], Transport], label: str) -> None:
        self._sock = sock
        self._direct_factory = direct
        self._direct: Transport | None = None
        self._lock = threading.Lock()
        self.label = label

    def _call(self, op: str, payload: bytes = b"", **args: Any) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            try:
                send_msg(self._sock, {"op": op, **args}, payload)
                reply = recv_msg(self._sock)
            except OSError as exc:
                raise errors.ConnectError(f"the control connection to {self.label} broke off: {exc}") from None
        if reply is None:
            raise errors.ConnectError(f"the control connection to {self.label} was closed")
        header, data = reply
        if "error" in header:
            raise_reply(header)
        return header, data

    @property
    def alive(self) -> bool:
        """True while the master answers."""
        try:
            self._call("ping")
        except errors.TransportError:
            return False
        return True

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None) -> RunResult:
        """Run a command through the master (output is delivered to the callbacks once it ended)."""
        header, data = self._call("run", stdin or b"", command=command, timeout=timeout, stdin=stdin is not None)
        out, err = data[:header["stdout"]], data[header["stdout"]:]
        if on_stdout and out:
            on_stdout(out)
        if on_stderr and err:
            on_stderr(err)
        return RunResult(exit_code=header["exit_code"], stdout=out, stderr=err)

    def read_bytes(self, path: str) -> bytes:
        """Read a whole remote file."""
        return self._call("read_bytes", path=path)[1]

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to size bytes of a remote file from offset."""
        return self._call("read_range", path=path, offset=offset, size=size)[1]

    def write_bytes(self, path: str, data: bytes, *, mode: int | None = None) -> None:
        """Write a whole remote file."""
        self._call("write_bytes", data, path=path, mode=mode)

    def rename(self, src: str, dst: str) -> None:
        """Atomic rename on the cluster."""
        self._call("rename", src=src, dst=dst)

    def makedirs(self, path: str) -> None:
        """mkdir -p."""
        self._call("makedirs", path=path)

    def listdir(self, path: str) -> list[str]:
        """Names in a remote directory."""
        return list(self._call("listdir", path=path)[0]["names"])

    def walk(self, path: str) -> list[tuple[str, int]]:
        """(relative path, size) of every file below a remote directory."""
        return [(p, s) for p, s in self._call("walk", path=path)[0]["files"]]

    def stat(self, path: str) -> FileStat | None:
        """Stat a remote path, None when missing."""
        found = self._call("stat", path=path)[0]["stat"]
        return FileStat(**found) if found else None

    def remove(self, path: str) -> None:
        """Remove a remote file."""
        self._call("remove", path=path)

    def ask(self, command: str, request: bytes) -> bytes:
        """One line to a long-running command kept by the master (shared by every call), one line back."""
        return self._call("ask", request, command=command)[1]

    def recall(self, key: str) -> Any:
        """A fact remembered on the master's connection (by any earlier call), None when nothing was."""
        return self._call("recall", key=key)[0].get("value")

    def remember(self, key: str, value: Any) -> None:
        """Remember a fact on the master's connection, for the calls after this one."""
        self._call("remember", key=key, value=value)

    def direct(self) -> Transport:
        """This call's own SSH connection, for bulk data (opened on first use)."""
        if self._direct is None:
            self._direct = self._direct_factory()
        return self._direct

    def rtt(self) -> float:
        """The round-trip time of this call's direct connection (where bulk data goes)."""
        return self.direct().rtt()

    def open_stream(self, command: str) -> Stream:
        """Bulk streams run on a direct connection (no relay through the master)."""
        return self.direct().open_stream(command)

    def put(self, local: Path, remote: str, progress: ProgressCallback | None = None) -> None:
        """Upload a local file (direct connection)."""
        self.direct().put(local, remote, progress)

    def get(self, remote: str, local: Path, progress: ProgressCallback | None = None) -> None:
        """Download a remote file (direct connection)."""
        self.direct().get(remote, local, progress)

    def reopen(self) -> Callable[[], Transport]:
        """A picklable recipe for another (direct) connection."""
        return self.direct().reopen()

    def close(self) -> None:
        """Close this call's side; the master keeps its connection for the next call."""
        self._sock.close()
        if self._direct is not None:
            self._direct.close()


def connect_socket(path: Path) -> socket.socket | None:
    """A connection to a live master at path, None when there is none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        send_msg(sock, {"op": "ping"})
        if recv_msg(sock) is not None:
            return sock
    except OSError:
        pass
    sock.close()
    return None
