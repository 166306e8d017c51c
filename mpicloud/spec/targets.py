"""Where a cluster runs, keyed by (cloud, os): every fact that differs per target, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Cloud = Literal["local", "azure", "aws"]
Os = Literal["linux", "windows"]
#: how a node of the target is set up at first boot (the renderer of render/bootstrap.py for it)
Bootstrap = Literal["local", "cloud-init", "powershell"]
_TOKEN = re.compile(r"^[A-Za-z0-9_.:@{}$()/-]+$")


@dataclass(frozen=True)
class Platform:
    """What the operating system of the nodes decides: names, install paths, Python, launcher, shared path."""

    os: Os
    node_prefix: str
    install_dir: str
    python: tuple[str, ...]
    shared_path: str
    launcher: str

    @property
    def separator(self) -> str:
        """The path separator on the nodes."""
        return "\\" if self.os == "windows" else "/"

    def path(self, name: str) -> str:
        """A file in the install directory on the nodes."""
        return f"{self.install_dir}{self.separator}{name}"

    @property
    def runner(self) -> str:
        """The runner script on the head node."""
        return self.path("runner.py")

    def node_name(self, index: int) -> str:
        """Host name of node `index` (0 is the head node)."""
        return f"{self.node_prefix}{index}"


LINUX = Platform(os="linux", node_prefix="node", install_dir="/opt/mpicloud", python=("python3",),
                 shared_path="/shared", launcher="mpirun")
WINDOWS = Platform(os="windows", node_prefix="N", install_dir="C:\\ProgramData\\mpicloud",
                   python=("C:\\ProgramData\\mpicloud\\python\\python.exe",), shared_path="C:\\shared",
                   launcher="mpiexec")


@dataclass(frozen=True)
class Target:
    """One (cloud, os) pair: its platform, how nodes boot, how the cluster stops itself and how to attach it."""

    cloud: Cloud
    platform: Platform
    bootstrap: Bootstrap
    #: the runner's idle-shutdown command on the head node; None: the provider supplies one (local)
    stop_command: tuple[str, ...] | None
    #: what idle shutdown does, in words (docs, CLI)
    stop_action: str
    #: the spec section of the cloud's own options (None: the target has none)
    options: str | None

    @property
    def os(self) -> Os:
        """The operating system of the nodes."""
        return self.platform.os

    def attach_command(self, cluster: str, host: str, user: str, slots: int | str,
                       password_env: str | None = None) -> str:
        """The `mpicloud attach` line printed after a deployment; values may be template placeholders
        (`${Node0.PublicIp}`), never secrets (a password is only ever named by its environment variable)."""
        words = ["mpicloud", "attach", cluster, "--host", host, "--user", user, "--os", self.os,
                 "--slots", str(slots), *(["--password-env", password_env] if password_env else [])]
        for word in words:
            if not _TOKEN.match(word):
                raise ValueError(f"attach command word {word!r} is not a plain token")
        return " ".join(words)


def _deallocate(platform: Platform) -> tuple[str, ...]:
    if platform.os == "windows":
        return ("powershell.exe", "-NoProfile", "-ExecutionPolicy", "Bypass", "-File",
                platform.path("stop-cluster.ps1"))
    return (platform.path("stop-cluster.sh"), "deallocate")


def _halt(platform: Platform) -> tuple[str, ...]:
    if platform.os == "windows":
        return (*_deallocate(platform), "-Mode", "halt")
    return (platform.path("stop-cluster.sh"), "halt")


TARGETS: dict[tuple[Cloud, Os], Target] = {
    ("local", "linux"): Target("local", LINUX, "local", None, "mpicloud stop (the node processes end)", "local"),
    ("aws", "linux"): Target("aws", LINUX, "cloud-init", _halt(LINUX),
                             "every node halts; EC2 stops the instances (disks kept)", "aws"),
    ("aws", "windows"): Target("aws", WINDOWS, "powershell", _halt(WINDOWS),
                               "every node shuts down; EC2 stops the instances (disks kept)", "aws"),
    ("azure", "linux"): Target("azure", LINUX, "cloud-init", _deallocate(LINUX),
                               "the head node deallocates every VM with its managed identity", "azure"),
    ("azure", "windows"): Target("azure", WINDOWS, "powershell", _deallocate(WINDOWS),
                                 "the head node deallocates every VM with its managed identity", "azure"),
}


def target(cloud: str, os: str) -> Target:
    """The target of a (cloud, os) pair; ValueError naming the supported pairs otherwise."""
    found = TARGETS.get((cloud, os))  # type: ignore[arg-type]
    if found is None:
        known = ", ".join(f"{c}/{o}" for c, o in TARGETS)
        raise ValueError(f"cloud {cloud!r} does not run os {os!r} (targets: {known})")
    return found


def platform(os: str) -> Platform:
    """The platform of an OS (attach: a cluster made elsewhere, cloud unknown)."""
    for known in (LINUX, WINDOWS):
        if known.os == os:
            return known
    raise ValueError(f"os must be linux or windows, not {os!r}")
