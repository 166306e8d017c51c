"""Per-cluster known_hosts: keys pinned at creation or attach, a changed key is a hard error."""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path
from typing import Any

import paramiko

from mpicloud.errors import ConnectError, HostKeyError


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry(host: str, port: int) -> str:
    """The known_hosts name for host and port (`[host]:port` unless port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    """Read a known_hosts file (empty when it does not exist)."""
    keys = paramiko.HostKeys()
    if path.is_file():
        keys.load(str(path))
    return keys


def pin_host_key(path: Path, host: str, port: int, key: paramiko.PKey) -> None:
    """Add (or replace) the pinned key for host:port in the cluster's known_hosts."""
    keys = load_known_hosts(path)
    entry = host_entry(host, port)
    if entry in keys:
        del keys[entry]
    keys.add(entry, key.get_name(), key)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys.save(str(path))
    path.chmod(0o600)


def scan_host_key(host: str, port: int, sock: Any = None, timeout: float = 10.0) -> paramiko.PKey:
    """Fetch the key a server presents (for explicit trust-on-first-use at attach)."""
    try:
        connection = sock or socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ConnectError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    transport = paramiko.Transport(connection)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError) as exc:
        raise ConnectError(f"{host}:{port} did not complete an SSH handshake: {exc}") from None
    finally:
        transport.close()


def changed_key_error(host: str, port: int, known_hosts: Path, cluster: str) -> HostKeyError:
    """The hard error for a host key that differs from the pinned one, with how to recover."""
    return HostKeyError(
        f"host key of {host_entry(host, port)} differs from the key pinned in {known_hosts}: possible "
        f"man-in-the-middle. If the node was really rebuilt, check its new fingerprint out of band and run "
        f"`mpicloud attach {cluster} --rekey --host-key-fingerprint SHA256:...`")


def unknown_key_error(host: str, port: int, known_hosts: Path, cluster: str) -> HostKeyError:
    """The error for a host with no pinned key."""
    return HostKeyError(
        f"no pinned host key for {host_entry(host, port)} in {known_hosts}; run `mpicloud attach {cluster} ...` "
        "to pin it")
