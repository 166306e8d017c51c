"""Slurm on the local cluster (root): one munged for every node, slurmctld on node0, one slurmd per node.

Layout under `<cluster dir>/slurm/`: `slurm.conf`, `state/`, `slurmctld.log`, per node `<node>/slurmd.log`,
`jobcomp.txt`. What holds Unix sockets lives under `/run/mpicloud-<tag>/` (short paths: sun_path has 108
bytes; munged also demands a socket path every user may traverse, which a 0700 home is not):
`munge/` (socket, key, log) and per node `<node>/{spool,tmp}` (slurmd's and PMIx's sockets). Every Slurm command needs
`SLURM_CONF` (`client_env`); the nodes' sshds hand it to every session. Daemons carry the cluster's marker
variable, so `down` stops them with every other process of the cluster.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mpicloud.assets import provision_dir
from mpicloud.cluster.registry import Node
from mpicloud.errors import ClusterError
from mpicloud.render.templating import render_template

PROGRAMS = (("munged", "munge"), ("mungekey", "munge"), ("slurmctld", "slurmctld"), ("slurmd", "slurmd"),
            ("sbatch", "slurm-client"), ("scontrol", "slurm-client"), ("sinfo", "slurm-client"))


@dataclass(frozen=True)
class SlurmLayout:
    """Where one local cluster keeps its Slurm configuration, sockets, state and logs."""

    root: Path
    run: Path  # short-path directory for sockets: munge/, <node>/spool, <node>/tmp

    @property
    def munge_dir(self) -> Path:
        """munged's directory (mode 711, as munged demands)."""
        return self.run / "munge"

    @property
    def conf(self) -> Path:
        """slurm.conf (what SLURM_CONF names)."""
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        """The socket every node's Slurm daemons and commands authenticate through."""
        return self.munge_dir / "munge.socket"

    def client_env(self) -> dict[str, str]:
        """Environment that lets `sbatch`, `squeue`, `scontrol`, `srun` reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}


def require_slurm() -> None:
    """Fail with the Debian package to install when a Slurm or munge program or PMIx is missing."""
    if os.geteuid() != 0:
        raise ClusterError("scheduler: slurm on the local cluster runs Slurm's daemons as root; run as root")
    for program, package in PROGRAMS:
        if shutil.which(program) is None and not Path("/usr/sbin", program).is_file():
            raise ClusterError(f"scheduler: slurm needs {program}: apt-get install {package}")
    if not glob.glob("/usr/lib/*/libpmix.so") and not glob.glob("/usr/lib/libpmix.so"):
        raise ClusterError("scheduler: slurm needs libpmix.so (srun --mpi=pmix): apt-get install libpmix-dev")


def write_config(layout: SlurmLayout, cluster: str, controller: Node, nodes: Sequence[Node], cpus: int,
                 power: dict[str, object] | None = None) -> None:
    """Write slurm.conf (slurmctld on `controller`, `nodes` run jobs; `power`: Slurm's power saving, `power_conf`)
    and a fresh munge key."""
    for node in nodes:
        (layout.root / node.name).mkdir(parents=True, exist_ok=True)
        for sub in ("spool", "tmp"):
            (layout.run / node.name / sub).mkdir(parents=True, exist_ok=True)
    (layout.root / "state").mkdir(parents=True, exist_ok=True)
    prolog = layout.root / "task-prolog.sh"
    shutil.copyfile(provision_dir() / "slurm" / "task-prolog.sh", prolog)
    prolog.chmod(0o755)
    layout.conf.write_text(render_template(
        "local/slurm.conf.j2", cluster=cluster, controller=controller, nodes=list(nodes), cpus=cpus,
        root=layout.root, run=layout.run, munge_socket=layout.munge_socket, task_prolog=prolog, power=power))
    new_munge_key(layout)


def new_munge_key(layout: SlurmLayout) -> None:
    """munged's directory under /run (mode 711, as munged demands) with a fresh key: made by `up`, and again by
    `start` (a stopped cluster's /run directory is gone; every daemon starts anew with the new key)."""
    layout.munge_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    layout.munge_dir.chmod(0o711)
    _run(["mungekey", "--create", "--force", f"--keyfile={layout.munge_dir / 'munge.key'}"], {})


def configured_nodes(layout: SlurmLayout) -> set[str]:
    """The nodes slurm.conf lists (the ones that run jobs: an elastic cluster's head is not one)."""
    return {line.split()[0].removeprefix("NodeName=") for line in layout.conf.read_text().splitlines()
            if line.startswith("NodeName=")}


def start(layout: SlurmLayout, controller: list[str], nodes: Sequence[Node], enter: Sequence[list[str]],
          env: dict[str, str], timeout: float = 30.0, restarted: bool = False) -> None:
    """Start munged, slurmctld in the head (`controller` runs a command there), one slurmd per node (`enter[i]`
    runs a command in node i); return when every node is idle. `restarted` (a stopped cluster's `start`):
    slurmctld resumes its saved state (queued jobs stay queued), the jobs it still counts as running are
    cancelled (their processes ended with the stop) before any slurmd starts, each slurmd reports a fresh boot
    and is waited for until registered."""
    munge = layout.munge_dir
    _spawn(["munged", "-F", f"--socket={layout.munge_socket}", f"--key-file={munge / 'munge.key'}",
            f"--log-file={munge / 'munged.log'}", f"--pid-file={munge / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}"], munge / "munged.out", env)
    _until(lambda: layout.munge_socket.exists(), timeout, "munged did not create its socket", munge / "munged.out")
    start_controller(layout, controller, env, timeout)
    if restarted:  # every job that ran died with the stop: Slurm would count it running for good
        _run(["scancel", "--state=RUNNING"], layout.client_env())
    for node, prefix in zip(nodes, enter, strict=True):
        start_slurmd(layout, node.name, prefix, env, booted=restarted)
    names = {n.name for n in nodes}
    if restarted:
        for name in sorted(names):
            wait_registered(layout, name, timeout)
    elif names:
        _until(lambda: _idle(layout) >= names, timeout, "the slurmds did not register as idle",
               layout.root / nodes[-1].name / "slurmd.log")


def start_slurmd(layout: SlurmLayout, node: str, enter: list[str], env: dict[str, str], booted: bool = False) -> None:
    """Start a node's slurmd (`enter` runs a command in the node); it carries MPICLOUD_NODE like the node's sshd.
    `booted`: it reports a fresh boot (`-b`), which slurmctld needs to end a power-up (the node's namespaces share
    the host's kernel, whose boot time is older than the resume)."""
    (layout.root / node).mkdir(parents=True, exist_ok=True)
    for sub in ("spool", "tmp"):
        (layout.run / node / sub).mkdir(parents=True, exist_ok=True)
    _spawn([*enter, "slurmd", "-D", *(["-b"] if booted else []), "-N", node, "-f", str(layout.conf)],
           layout.root / node / "slurmd.out",
           {**env, **layout.client_env(), "MPICLOUD_NODE": node})


def wait_registered(layout: SlurmLayout, node: str, timeout: float = 30.0) -> None:
    """Return once slurmctld counts the node's slurmd as registered (no power-up `#`, powered-down `~` or
    not-responding `*` flag, not down)."""
    def registered() -> bool:
        state = _query(["sinfo", "-h", "-n", node, "-o", "%t"], layout).strip()
        return bool(state) and not set(state) & set("#~*%") and not state.startswith(("down", "unk"))
    _until(registered, timeout, f"the slurmd of {node} did not register with slurmctld",
           layout.root / node / "slurmd.log")


def start_controller(layout: SlurmLayout, enter: list[str], env: dict[str, str], timeout: float = 30.0) -> None:
    """Start slurmctld in node 0 (`enter` runs a command there) from its saved state; return once it answers."""
    _spawn([*enter, "slurmctld", "-D", "-f", str(layout.conf)], layout.root / "slurmctld.out",
           {**env, **layout.client_env()})
    _until(lambda: "is UP" in _query(["scontrol", "ping"], layout), timeout, "slurmctld did not answer",
           layout.root / "slurmctld.log")


def _idle(layout: SlurmLayout) -> set[str]:
    """Nodes Slurm shows idle (and powered up)."""
    rows = _query(["sinfo", "-h", "-N", "-o", "%N %t"], layout).split("\n")
    return {r.split()[0] for r in rows if r.strip() and r.split()[-1] == "idle"}


def _query(argv: list[str], layout: SlurmLayout) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **layout.client_env()},
                          timeout=10, check=False)
    return done.stdout


def _spawn(argv: list[str], log_path: Path, env: dict[str, str]) -> None:
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                     env={**os.environ, **env})
    log.close()


def _run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        raise ClusterError(f"`{argv[0]}` failed: {done.stderr.strip() or done.returncode}")


def _until(ready: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise ClusterError(f"{what} within {timeout:.0f} s" + (f": {tail[0]}" if tail else "")
                               + f" (logs in {log.parent})")
        time.sleep(0.05)
