"""Find and stop every process a local cluster started, by the marker variable its sshds hand down."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

MARKER = "MPICLOUD_LOCAL_CLUSTER_ID"


def cluster_processes(cluster_id: str, directory: str) -> list[int]:
    """PIDs of a local cluster: its sshds (by config path in the command line), everything below them, and
    every process whose environment carries MARKER=cluster_id (runner, jobs, MPI ranks that left the tree)."""
    return matching_processes({f"{MARKER}={cluster_id}".encode()}, directory.encode())


def matching_processes(markers: set[bytes], sshd_path: bytes) -> list[int]:
    """PIDs whose environment holds every one of `markers` (`NAME=value`), sshds whose command line contains
    `sshd_path`, and everything below them. sshd overwrites its own environment with its process title, hence
    the two ways."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if markers <= set(environ.split(b"\0")) or (b"sshd" in cmdline and sshd_path in cmdline):
            found.add(pid)
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found and pid != os.getpid()}
        grew = not below <= found
        found |= below
    return sorted(found)


def stop_processes(find: Callable[[], list[int]], grace: float = 3.0) -> list[int]:
    """TERM every process `find` names, KILL what is left after `grace` seconds; return the PIDs still alive."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = find()
        if not pids:
            return []
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pids):
            time.sleep(0.05)
    return alive(find())


def stop_cluster_processes(cluster_id: str, directory: str, grace: float = 3.0) -> list[int]:
    """TERM every cluster process, KILL what is left after `grace` seconds; return the PIDs still alive."""
    return stop_processes(lambda: cluster_processes(cluster_id, directory), grace)


def alive(pids: list[int]) -> list[int]:
    """The PIDs still running (zombies are not)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive
