"""paramiko SSH + SFTP transport with pinned host keys, jump hosts and one reused connection per node."""

from __future__ import annotations

import select
import socket
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import paramiko

from mpicloud.errors import ConnectError, TransportError
from mpicloud.secret import Secret
from mpicloud.transport.base import FileStat, OutputCallback, ProgressCallback, RunResult
from mpicloud.transport.hostkeys import changed_key_error, unknown_key_error
from mpicloud.transport.link import stream_window

SocketFactory = Callable[[str, int, float], Any]
PACKET = 32768


class _FastTransport(paramiko.Transport):
    """Prefer AES-GCM: no separate MAC pass, about 1.4x the throughput of AES-CTR + HMAC in paramiko."""

    _preferred_ciphers = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr",
                          "aes256-ctr")


    def __init__(self, sock: Any, **options: Any) -> None:
        super().__init__(sock, **options)
        # paramiko's own rekey (client-initiated every 512 MiB) races with a busy session channel and fails with
        # "Key-exchange timed out" (paramiko issue #822); leave rekeying to the server (OpenSSH rekeys by its
        # RekeyLimit, for AES after 2^32 blocks), which paramiko handles correctly.
        self.packetizer.REKEY_BYTES = 1 << 62
        self.packetizer.REKEY_PACKETS = 1 << 62


def _fast_transport(sock: Any, **options: Any) -> paramiko.Transport:
    return _FastTransport(sock, disabled_algorithms=options.get("disabled_algorithms"))


@dataclass(frozen=True)
class Endpoint:
    """How to reach one node: address, user, credentials, pinned keys, and the hops in between."""

    host: str
    port: int
    user: str
    known_hosts: Path
    cluster: str = "cluster"
    key_file: Path | None = None
    password: Secret | None = field(default=None, compare=False)
    jump: Endpoint | None = None
    sock_factory: SocketFactory | None = field(default=None, compare=False)
    connect_timeout: float = 15.0

    @property
    def label(self) -> str:
        """user@host:port, for messages."""
        return f"{self.user}@{self.host}:{self.port}"


class SSHTransport:
    """One SSH connection to one node, with a lazily opened, shared SFTP session."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._jump: SSHTransport | None = None
        self._client = self._connect()
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.RLock()
        self._facts: dict[str, Any] = {}
        self._rtt: float | None = None
        self._helpers: dict[str, ChannelStream] = {}
        self._helpers_lock = threading.Lock()

    def _open_socket(self) -> Any:
        ep = self.endpoint
        if ep.jump is not None:
            self._jump = SSHTransport(ep.jump)
            outer = self._jump._client.get_transport()
            assert outer is not None
            try:
                return outer.open_channel("direct-tcpip", (ep.host, ep.port), ("127.0.0.1", 0),
                                          timeout=ep.connect_timeout)
            except paramiko.ChannelException as exc:
                raise ConnectError(f"jump host {ep.jump.label} could not reach {ep.host}:{ep.port}: "
                                   f"{exc.text}") from None
        if ep.sock_factory is not None:
            return ep.sock_factory(ep.host, ep.port, ep.connect_timeout)
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=ep.connect_timeout)
        except OSError as exc:
            raise ConnectError(f"cannot reach {ep.host}:{ep.port} ({exc.strerror or exc}); is the cluster "
                               f"{ep.cluster!r} running?") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stalls on small requests
        return sock

    def _connect(self) -> paramiko.SSHClient:
        ep = self.endpoint
        client = paramiko.SSHClient()
        if ep.known_hosts.is_file():
            client.load_host_keys(str(ep.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = self._open_socket()
        try:
            client.connect(
                ep.host, port=ep.port, username=ep.user, sock=sock,
                key_filename=str(ep.key_file) if ep.key_file else None,
                password=ep.password.reveal() if ep.password else None,
                look_for_keys=False, allow_agent=ep.key_file is None and ep.password is None,
                timeout=ep.connect_timeout, banner_timeout=ep.connect_timeout, auth_timeout=ep.connect_timeout,
                transport_factory=_fast_transport)
        except paramiko.BadHostKeyException:
            raise changed_key_error(ep.host, ep.port, ep.known_hosts, ep.cluster) from None
        except paramiko.AuthenticationException:
            how = "password" if ep.password else f"key {ep.key_file}" if ep.key_file else "agent keys"
            raise ConnectError(f"{ep.label} rejected the login ({how}); check the user and credentials "
                               f"registered for cluster {ep.cluster!r}") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise unknown_key_error(ep.host, ep.port, ep.known_hosts, ep.cluster) from None
            raise ConnectError(f"SSH to {ep.label} failed: {exc}") from None
        except OSError as exc:
            raise ConnectError(f"SSH to {ep.label} failed: {exc.strerror or exc}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
        return client

    @property
    def alive(self) -> bool:
        """True while the underlying SSH connection is up."""
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None) -> RunResult:
        """Run a command; stream its output; return exit code and collected output."""
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectError(f"connection to {self.endpoint.label} was lost")
        try:
            channel = transport.open_session(timeout=self.endpoint.connect_timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError) as exc:
            raise TransportError(f"cannot start a command on {self.endpoint.label}: {exc}") from None
        if stdin is not None:
            channel.sendall(stdin)
        channel.shutdown_write()
        return _collect(channel, timeout, on_stdout, on_stderr, self.endpoint.label)

    def rtt(self) -> float:
        """This connection's round-trip time (seconds): the fastest of three no-op requests, measured once."""
        if self._rtt is None:
            transport = self._client.get_transport()
            samples = []
            for _ in range(3):
                started = time.perf_counter()
                if transport is not None:
                    transport.global_request("keepalive@openssh.com", wait=True)  # answered, even refused
                samples.append(time.perf_counter() - started)
            self._rtt = min(samples)
        return self._rtt

    def open_stream(self, command: str) -> ChannelStream:
        """Start a command whose stdin/stdout carry bulk data, with a receive window sized to the link."""
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectError(f"connection to {self.endpoint.label} was lost")
        window = stream_window(self.rtt())
        try:  # a large window keeps data flowing while the client writes to disk
            channel = transport.open_session(window_size=window, timeout=self.endpoint.connect_timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError) as exc:
            raise TransportError(f"cannot start a transfer on {self.endpoint.label}: {exc}") from None
        return ChannelStream(channel, self.endpoint.label)

    def sftp(self) -> paramiko.SFTPClient:
        """The shared SFTP session of this connection (opened on first use)."""
        with self._sftp_lock:
            if self._sftp is None:
                try:
                    self._sftp = self._client.open_sftp()
                except paramiko.SSHException as exc:
                    raise TransportError(f"{self.endpoint.label} offers no SFTP: {exc}") from None
            return self._sftp

    def read_bytes(self, path: str) -> bytes:
        """Read a whole remote file."""
        with self._sftp_lock, self._io(path), self.sftp().open(path, "rb") as handle:
            handle.prefetch()
            return handle.read()

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to size bytes of a remote file from offset (only those cross the wire; b"" past the end)."""
        with self._sftp_lock, self._io(path), self.sftp().open(path, "rb") as handle:
            size = min(size, (handle.stat().st_size or 0) - offset)
            if size <= 0:
                return b""
            return b"".join(handle.readv([(offset, size)]))  # pipelined requests, as prefetch does

    def write_bytes(self, path: str, data: bytes, *, mode: int | None = None) -> None:
        """Write a whole remote file; `mode` is applied while it is still empty."""
        with self._sftp_lock, self._io(path), self.sftp().open(path, "wb") as handle:
            if mode is not None:
                handle.chmod(mode)
            handle.set_pipelined(True)
            handle.write(data)

    def rename(self, src: str, dst: str) -> None:
        """Atomic rename (posix-rename@openssh.com when offered)."""
        with self._sftp_lock, self._io(src):
            self.sftp().posix_rename(src, dst)

    def makedirs(self, path: str) -> None:
        """mkdir -p over SFTP: one round trip when the parent exists (the usual case), parents made only when
        that fails."""
        with self._sftp_lock:
            if self._mkdir(path):
                return
            parent = path.rsplit("/", 1)[0]
            if parent and parent != path and not parent.endswith(":"):
                self.makedirs(parent)
            if not self._mkdir(path):
                raise TransportError(f"cannot create directory {path} on {self.endpoint.label}")

    def _mkdir(self, path: str) -> bool:
        """True when path exists now (made, or already there)."""
        try:
            self.sftp().mkdir(path)
        except OSError:
            return self.stat(path) is not None
        return True

    def listdir(self, path: str) -> list[str]:
        """Names in a remote directory."""
        with self._sftp_lock, self._io(path):
            return self.sftp().listdir(path)

    def walk(self, path: str) -> list[tuple[str, int]]:
        """(relative path, size) of every file below a remote directory."""
        out: list[tuple[str, int]] = []
        pending = [""]
        with self._sftp_lock:
            while pending:
                rel = pending.pop()
                with self._io(path):
                    entries = self.sftp().listdir_attr(f"{path}/{rel}" if rel else path)
                for entry in entries:
                    child = f"{rel}/{entry.filename}" if rel else entry.filename
                    if stat_mod.S_ISDIR(entry.st_mode or 0):
                        pending.append(child)
                    else:
                        out.append((child, entry.st_size or 0))
        return sorted(out)

    def stat(self, path: str) -> FileStat | None:
        """Stat a remote path, None when missing."""
        with self._sftp_lock:
            try:
                attrs = self.sftp().stat(path)
            except FileNotFoundError:
                return None
            return FileStat(size=attrs.st_size or 0, mtime=float(attrs.st_mtime or 0),
                            is_dir=stat_mod.S_ISDIR(attrs.st_mode or 0))

    def remove(self, path: str) -> None:
        """Remove a remote file."""
        with self._sftp_lock, self._io(path):
            self.sftp().remove(path)

    def put(self, local: Path, remote: str, progress: ProgressCallback | None = None) -> None:
        """Upload a local file (pipelined)."""
        with self._sftp_lock, self._io(remote):
            self.sftp().put(str(local), remote, callback=progress, confirm=True)

    def get(self, remote: str, local: Path, progress: ProgressCallback | None = None) -> None:
        """Download a remote file (prefetched)."""
        with self._sftp_lock, self._io(remote):
            self.sftp().get(remote, str(local), callback=progress)

    def ask(self, command: str, request: bytes) -> bytes:
        """One request line to a long-running command (kept open per command), one answer line back; b"" when
        the command ended (it is started afresh on the next ask)."""
        with self._helpers_lock:
            helper = self._helpers.get(command)
            if helper is None or helper.channel.closed:
                helper = self._helpers[command] = self.open_stream(command)
            helper.write(request.rstrip(b"\n") + b"\n")
            answer = helper.read_line()
            if not answer:
                del self._helpers[command]
                helper.abort()
            return answer

    def recall(self, key: str) -> Any:
        """A fact remembered on this connection, None when nothing was."""
        return self._facts.get(key)

    def remember(self, key: str, value: Any) -> None:
        """Remember a fact for as long as this connection lives."""
        self._facts[key] = value

    def reopen(self) -> Callable[[], SSHTransport]:
        """A picklable recipe for another connection to the same node (worker processes use it)."""
        return partial(SSHTransport, self.endpoint)

    def close(self) -> None:
        """Close SFTP, the connection and any jump connection."""
        if self._sftp is not None:
            self._sftp.close()
        self._client.close()
        if self._jump is not None:
            self._jump.close()

    def _io(self, path: str) -> AbstractContextManager[None]:
        return _sftp_errors(path, self.endpoint.label)


class ChannelStream:
    """A command's channel used as a binary pipe (see Stream)."""

    def __init__(self, channel: paramiko.Channel, label: str) -> None:
        self.channel = channel
        self.label = label
        self._pending = b""  # read past a line by read_line

    def read(self, size: int) -> bytes:
        """Up to size bytes of stdout; b"" at the end."""
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        return self._recv(size)

    def _recv(self, size: int) -> bytes:
        try:
            return self.channel.recv(size)
        except (paramiko.SSHException, OSError) as exc:
            raise TransportError(f"transfer from {self.label} broke off: {exc}") from None

    def write(self, data: bytes) -> None:
        """Send bytes to stdin (through a memoryview: paramiko's sendall re-copies the rest of the buffer after
        every 32 KiB packet, which costs more than the encryption for large writes)."""
        view = memoryview(data)
        try:
            while view:
                sent = self.channel.send(bytes(view[:PACKET]))
                if sent == 0:
                    raise OSError("channel closed")
                view = view[sent:]
        except (paramiko.SSHException, OSError) as exc:
            raise TransportError(f"transfer to {self.label} broke off: {exc}") from None

    def close_input(self) -> None:
        """End of stdin."""
        self.channel.shutdown_write()

    def read_line(self) -> bytes:
        """The next line of stdout (without its newline); b"" when stdout ended first."""
        while b"\n" not in self._pending:
            chunk = self._recv(65536)
            if not chunk:
                self._pending = b""
                return b""
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line

    def finish(self) -> tuple[int, bytes]:
        """Exit code and stderr of the command."""
        while self.channel.recv(65536):
            pass
        code = self.channel.recv_exit_status()
        err = b""
        while self.channel.recv_stderr_ready():
            err += self.channel.recv_stderr(65536)
        self.channel.close()
        return code, err

    def abort(self) -> None:
        """Close at once."""
        self.channel.close()


@contextmanager
def _sftp_errors(path: str, label: str) -> Iterator[None]:
    """Turn SFTP I/O errors into TransportError naming the path; FileNotFoundError passes through."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, paramiko.SSHException) as exc:
        raise TransportError(f"{label}: {path}: {exc}") from None


def _collect(channel: paramiko.Channel, timeout: float | None, on_stdout: OutputCallback | None,
             on_stderr: OutputCallback | None, label: str) -> RunResult:
    out: list[bytes] = []
    err: list[bytes] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        progressed = False
        while channel.recv_ready():
            chunk = channel.recv(65536)
            out.append(chunk)
            if on_stdout:
                on_stdout(chunk)
            progressed = True
        while channel.recv_stderr_ready():
            chunk = channel.recv_stderr(65536)
            err.append(chunk)
            if on_stderr:
                on_stderr(chunk)
            progressed = True
        if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        if deadline is not None and time.monotonic() > deadline:
            channel.close()
            raise TransportError(f"command on {label} did not finish within {timeout:.0f} s")
        if not progressed:
            select.select([channel], [], [], 0.2)
    code = channel.recv_exit_status()
    channel.close()
    return RunResult(exit_code=code, stdout=b"".join(out), stderr=b"".join(err))


_POOL: dict[Endpoint, SSHTransport] = {}
_POOL_LOCK = threading.Lock()  # guards the two dicts only, never held across a connect
_ENDPOINT_LOCKS: dict[Endpoint, threading.Lock] = {}


def connect(endpoint: Endpoint) -> SSHTransport:
    """The process-wide connection to this endpoint (opened on first use, reopened when it dropped). Connects
    to one endpoint are serialised by that endpoint's own lock, so an unreachable cluster stalls no other."""
    with _POOL_LOCK:
        existing = _POOL.get(endpoint)
        if existing is not None and existing.alive:
            return existing
        endpoint_lock = _ENDPOINT_LOCKS.setdefault(endpoint, threading.Lock())
    with endpoint_lock:
        with _POOL_LOCK:
            existing = _POOL.get(endpoint)
        if existing is not None and existing.alive:
            return existing
        transport = _connect_with_retries(endpoint)
        with _POOL_LOCK:
            _POOL[endpoint] = transport
        return transport


def _connect_with_retries(endpoint: Endpoint, attempts: int = 3, delay: float = 0.5) -> SSHTransport:
    """Connecting changes nothing, so it is retried (unreachable host only: never auth or host-key errors)."""
    for attempt in range(attempts - 1):
        try:
            return SSHTransport(endpoint)
        except ConnectError as exc:
            if "cannot reach" not in str(exc):
                raise
            time.sleep(delay * 2**attempt)
    return SSHTransport(endpoint)


def close_cluster(cluster: str) -> None:
    """Close the pooled connections of one cluster (every node, and their jump hops); others stay open."""
    with _POOL_LOCK:
        mine = [e for e in _POOL if e.cluster == cluster]
        transports = [_POOL.pop(e) for e in mine]
    for transport in transports:
        transport.close()


def close_all() -> None:
    """Close every pooled connection."""
    with _POOL_LOCK:
        transports = list(_POOL.values())
        _POOL.clear()
    for transport in transports:
        transport.close()
