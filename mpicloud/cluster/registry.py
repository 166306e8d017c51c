"""The registry of clusters under ~/.mpicloud (MPICLOUD_HOME): how to reach each one."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mpicloud.errors import ClusterError

RECORD_VERSION = 1


def home() -> Path:
    """The mpicloud state directory (MPICLOUD_HOME or ~/.mpicloud)."""
    return Path(os.environ.get("MPICLOUD_HOME") or Path.home() / ".mpicloud")


def cluster_dir(name: str) -> Path:
    """Where a cluster's record, keys and (for local clusters) node files live."""
    if not re.match(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$", name):
        raise ClusterError(f"{name!r} is not a cluster name (lower-case letters, digits, '-')")
    return home() / "clusters" / name


@dataclass
class Node:
    """One node as the client reaches it."""

    name: str
    host: str
    port: int = 22


@dataclass
class ProxySettings:
    """A proxy hop for every connection to the cluster (password from an environment variable)."""

    url: str
    username: str | None = None
    password_env: str | None = None


@dataclass
class ClusterRecord:
    """Everything needed to talk to a cluster; secrets are referenced by variable name, never stored."""

    name: str
    provider: str  # "local" or "attached"
    os: str
    user: str
    nodes: list[Node]
    slots_per_node: int
    shared_path: str  # cluster-side path of the shared storage
    python: list[str]  # how to start Python on the head node
    runner: str  # cluster-side path of runner.py
    key_file: str | None = None
    password_env: str | None = None
    created_at: float = field(default_factory=time.time)
    teardown: str = ""
    idle_shutdown_minutes: float | None = None
    jump: Node | None = None
    jump_user: str | None = None
    proxy: ProxySettings | None = None
    proxy_command: str | None = None
    pac_url: str | None = None
    local: dict[str, Any] = field(default_factory=dict)
    stopped_at: float | None = None  # local clusters: processes stopped, files kept (`mpicloud start` resumes)
    stop_reason: str = ""
    version: int = RECORD_VERSION

    @property
    def dir(self) -> Path:
        """The record's directory."""
        return cluster_dir(self.name)

    @property
    def known_hosts(self) -> Path:
        """The cluster's pinned host keys."""
        return self.dir / "known_hosts"

    @property
    def head(self) -> Node:
        """Node 0, where the runner lives."""
        return self.nodes[0]

    @property
    def runner_root(self) -> str:
        """Cluster-side path of the queue directory."""
        sep = "\\" if self.os == "windows" else "/"
        return self.shared_path.rstrip("/\\") + sep + ".mpicloud"

    def save(self) -> None:
        """Write the record atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.dir / "cluster.json")


def load(name: str) -> ClusterRecord:
    """Read a registered cluster; ClusterError naming it (and the known ones) if absent."""
    path = cluster_dir(name) / "cluster.json"
    if not path.is_file():
        known = ", ".join(r.name for r in all_records()) or "none"
        raise ClusterError(f"no cluster named {name!r} (registered: {known}); "
                           "create it with `mpicloud up SPEC` or `mpicloud attach`")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["nodes"] = [Node(**n) for n in data["nodes"]]
    data["jump"] = Node(**data["jump"]) if data.get("jump") else None
    data["proxy"] = ProxySettings(**data["proxy"]) if data.get("proxy") else None
    return ClusterRecord(**data)


def all_records() -> list[ClusterRecord]:
    """Every registered cluster, by name."""
    root = home() / "clusters"
    if not root.is_dir():
        return []
    return [load(p.name) for p in sorted(root.iterdir()) if (p / "cluster.json").is_file()]


@dataclass(frozen=True)
class DownReport:
    """What `down` did: the data it removed, or (attached clusters) that the machines still run."""

    name: str
    provider: str
    jobs_removed: int = 0
    removed: tuple[str, ...] = ()
    still_running: bool = False
    teardown: str = ""


def forget(name: str) -> None:
    """Remove a cluster's record and files."""
    shutil.rmtree(cluster_dir(name), ignore_errors=True)
