"""Find and stop every process a local cluster started, by the marker variable its sshds hand down."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MARKER = "MPICLOUD_LOCAL_CLUSTER_ID"


def marked_processes(cluster_id: str) -> list[int]:
    """PIDs whose environment carries MARKER=cluster_id (sshds, sessions, runner, jobs, MPI ranks)."""
    needle = f"{MARKER}={cluster_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_marked(cluster_id: str, grace: float = 3.0) -> list[int]:
    """TERM every marked process, KILL what is left after `grace` seconds; return the PIDs still alive."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = marked_processes(cluster_id)
        if not pids:
            return []
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pids):
            time.sleep(0.05)
    return _alive(marked_processes(cluster_id))


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive
