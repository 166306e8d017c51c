"""The #cloud-config of a Linux node on any cloud: the provision/linux scripts, packages and boot commands every
Linux cluster shares, plus what its cloud adds (CloudParts)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from mpicloud.assets import provision_dir
from mpicloud.errors import RenderError
from mpicloud.render.quoting import posix_join
from mpicloud.render.runner_config import (
    NODE_PYTHON,
    SHARE_MARKER,
    SHARE_PROBE,
    power_conf,
    power_wrapper,
    root_file,
    runner_config,
    runner_config_json,
    runner_root,
)
from mpicloud.render.templating import render_template
from mpicloud.spec.model import ClusterSpec
from mpicloud.spec.targets import LINUX

OPT = LINUX.install_dir
SMB_PASSWORD_FILE = "/etc/mpicloud/smb-password"
#: host offset of node 0 in the subnet (AWS and Azure reserve the first addresses; keep a little room)
FIRST_HOST = 10
_SCRIPTS = ("cluster-secrets.sh", "cluster-files.sh", "shared-storage.sh")
_HEAD_SCRIPTS = ("stop-cluster.sh",)
_BASE_PACKAGES = ("openmpi-bin", "libopenmpi-dev", "openssh-client", "python3", "curl")
File = dict[str, str]
Command = list[str]


@dataclass(frozen=True)
class CloudParts:
    """What one cloud adds to the shared Linux node setup."""

    #: the option section holding subnet_cidr (NFS clients, node addresses)
    subnet_cidr: str
    #: provision/linux scripts that write /etc/mpicloud/node.env and admin.pub (first command on every node)
    node_env: str
    packages: tuple[str, ...] = ()
    #: provision/linux scripts only the head node needs
    head_scripts: tuple[str, ...] = ()
    #: head node commands before anything writes to the shared directory (AWS: its own EBS volume)
    head_setup: tuple[tuple[str, ...], ...] = ()
    #: head node commands that install the runner in OPT
    runner_install: tuple[tuple[str, ...], ...] = ()
    #: create the admin user (AWS); on Azure the platform creates it with its key from the VM's osProfile
    create_user: bool = True
    #: packages only the head node needs (AWS elastic: the SDK of its node actions)
    head_packages: tuple[str, ...] = ()
    #: runner.json's `pool` of an elastic cluster (render.runner_config.pool_config plus the cloud's settings)
    pool: dict[str, Any] | None = None


def node_addresses(subnet_cidr: str, count: int, section: str) -> list[str]:
    """Fixed private IPs of nodes 0..count-1 (known before boot, so hostfile and mounts need no lookup)."""
    network = ipaddress.ip_network(subnet_cidr, strict=False)
    if FIRST_HOST + count > network.num_addresses - 2:
        raise RenderError(f"{section}.subnet_cidr {subnet_cidr} is too small for {count} nodes from host "
                          f".{FIRST_HOST}")
    return [str(network.network_address + FIRST_HOST + i) for i in range(count)]


#: Slurm power saving on a cloud: seconds a compute node may take from ResumeProgram until its slurmd registers
#: (a launch from the launch template or a VM start, then its first boot: cloud-init installs the packages, fetches
#: the secrets, mounts /shared and starts slurmd: many minutes on a fresh launch; the head's ec2_nodes.py waits as
#: long for its share probe), and from SuspendProgram until the node may be powered up again (a stopping instance
#: or deallocating VM takes a minute or two; a terminated AWS instance holds its fixed address while shutting down)
CLOUD_RESUME_TIMEOUT, CLOUD_SUSPEND_TIMEOUT = 1800, 300
#: what slurmctld (SlurmUser slurm) runs: wrappers that run slurm_power.py as the cluster's user (sudoers rule
#: below), whose SSH key and runner root the pool's node actions use
POWER_PROGRAMS = {action: f"{OPT}/slurm-{action}" for action in ("resume", "suspend", "prolog")}
#: how the runner and slurm_power.py (the cluster's user) run `scontrol update` on a node: Slurm lets only root and
#: SlurmUser change node states when there is no accounting database (the cluster's user has sudo)
SLURM_ADMIN = ["sudo", "-n", "-u", "slurm"]


def _power(spec: ClusterSpec) -> dict[str, object] | None:
    """slurm.conf's power saving on a cloud (elastic Slurm clusters): node1..node<count-1> (@LAST@, filled in at
    boot) are CLOUD nodes; `min` of them kept from being powered down."""
    if spec.scheduler != "slurm" or spec.elastic is None:
        return None
    return power_conf(spec, POWER_PROGRAMS, CLOUD_RESUME_TIMEOUT, CLOUD_SUSPEND_TIMEOUT, "@LAST@")


def _power_files(spec: ClusterSpec) -> list[File]:
    """The head's ResumeProgram/SuspendProgram/PrologSlurmctld wrappers (root-owned, as slurmctld requires) and the
    sudoers rule letting SlurmUser run exactly slurm_power.py's three actions as the cluster's user: `--` ends
    the options, so Slurm's hostlist can be nothing else (argparse refuses a second --root or more arguments)."""
    user = spec.admin.username
    command = [NODE_PYTHON["linux"], f"{OPT}/slurm_power.py", "--root", runner_root(spec.shared_storage.path)]
    sudo = ["/usr/bin/sudo", "-n", "-u", user, *command]  # slurmctld gives its programs no PATH
    files = [_file(path, power_wrapper(sudo, action, '-- "$SLURM_JOB_NODELIST"' if action == "prolog" else
                                       '-- "$@"')) for action, path in POWER_PROGRAMS.items()]
    allowed = ", ".join(f"{' '.join(command)} {action} -- *" for action in POWER_PROGRAMS)
    rule = f"# mpicloud: slurmctld's power saving programs run the pool's node actions as {user}\n" \
           f"slurm ALL=({user}) NOPASSWD: {allowed}\n"
    return [*files, _file("/etc/sudoers.d/mpicloud-slurm-power", rule, "0440")]


def _file(path: str, content: str, mode: str = "0755") -> File:
    return {"path": path, "content": content, "mode": mode}


def _script(name: str) -> File:
    return _file(f"{OPT}/{name}", (provision_dir() / "linux" / name).read_text(encoding="utf-8"))


def _software_script(spec: ClusterSpec) -> str:
    installers = [posix_join([i.url, i.sha256, *i.args]) for i in spec.software.installers]
    return render_template("linux/install-software.sh.j2", pip=posix_join(spec.software.pip),
                           installers=installers)


def _files(spec: ClusterSpec, head: bool, parts: CloudParts) -> list[File]:
    files = [_script(name) for name in (parts.node_env, *_SCRIPTS)]
    power = _power(spec)
    files.append(_file(f"{OPT}/install-software.sh", _software_script(spec)))
    if spec.scheduler == "slurm":
        prolog = f"{OPT}/slurm-task-prolog.sh"
        files += [_script("slurm-node.sh"),
                  _file(prolog, (provision_dir() / "slurm" / "task-prolog.sh").read_text(encoding="utf-8")),
                  _file(f"{OPT}/slurm.conf.in", render_template("linux/slurm.conf.j2", cluster=spec.name,
                                                                 task_prolog=prolog, power=power), "0644")]
    if head:
        path = spec.shared_storage.path
        # nodes and idle minutes come from the cloud's metadata at boot (cluster-files.sh): the user data stays the
        # same whatever the node count, so resizing a cluster never changes (or replaces) its nodes' user data
        # (an elastic head's nodes are itself alone, whatever the pool does)
        config = {**runner_config(spec, pool=parts.pool), "idle_shutdown_minutes": None,
                  **({"slurm_admin": SLURM_ADMIN} if power else {}),
                  **({} if parts.pool else {"nodes": []}),
                  "share_marker": root_file(path, SHARE_MARKER), "share_probe": SHARE_PROBE}
        files += [_script(name) for name in (*_HEAD_SCRIPTS, *parts.head_scripts)]
        files += _power_files(spec) if power else []
        files += [
            _file(f"{OPT}/runner.base.json", runner_config_json(config), "0644"),
            _file("/etc/systemd/system/mpicloud-runner.service", render_template(
                "linux/mpicloud-runner.service.j2", user=spec.admin.username, root=runner_root(path)), "0644"),
        ]
    return files


#: Debian 12 packages of the SDKs the node's bucketio.py runs on, by bucket kind (tested under /usr/bin/python3)
OBJECT_SDK_PACKAGES = {"s3": "python3-boto3", "azure_blob": "python3-azure-storage"}


def _packages(spec: ClusterSpec, head: bool, parts: CloudParts) -> list[str]:
    kind = spec.shared_storage.kind
    storage = {("smb", True): ["samba"], ("smb", False): ["cifs-utils"],
               ("nfs", True): ["nfs-kernel-server"], ("nfs", False): ["nfs-common"]}.get((kind, head), [])
    pip = ["python3-pip"] if spec.software.pip else []
    slurm = (["munge", "slurmd", "slurm-client", "libpmix-dev"] + (["slurmctld"] if head else [])) \
        if spec.scheduler == "slurm" else []
    # the storage SDK bucketio.py uses, where the runner moves objects (the head)
    sdk = [OBJECT_SDK_PACKAGES[spec.bucket.kind]] if spec.bucket is not None and head else []
    own = parts.head_packages if head else ()
    return [*_BASE_PACKAGES, *parts.packages, *own, *storage, *pip, *slurm, *sdk, *spec.software.packages]


def _commands(spec: ClusterSpec, index: int | None, ips: list[str], parts: CloudParts) -> list[Command]:
    head = index == 0
    user, shared = spec.admin.username, spec.shared_storage
    commands: list[Command] = [["bash", f"{OPT}/{parts.node_env}"]]
    if head and shared.kind != "local":
        commands += [list(c) for c in parts.head_setup]
    slurm = spec.scheduler == "slurm"
    commands += [
        ["bash", f"{OPT}/cluster-secrets.sh", "head" if head else "worker", user, *(["munge"] if slurm else [])],
        ["bash", f"{OPT}/cluster-files.sh", "auto" if index is None else str(index), user, shared.path, *ips],
    ]
    if shared.kind != "local":
        commands.append(["bash", f"{OPT}/shared-storage.sh", "server" if head else "client", "--kind", shared.kind,
                         "--path", shared.path, "--user", user, "--password-file", SMB_PASSWORD_FILE,
                         "--server", "node0", "--clients", parts.subnet_cidr])
    if slurm:  # after the shared storage: jobs run in their work dirs there
        commands.append(["bash", f"{OPT}/slurm-node.sh", "head" if head else "worker"])
    commands.append(["bash", f"{OPT}/install-software.sh"])
    if head:
        commands += [*(list(c) for c in parts.runner_install), ["systemctl", "daemon-reload"],
                     ["systemctl", "enable", "--now", "mpicloud-runner.service"]]
    return commands


def cloud_config(spec: ClusterSpec, index: int | None, ips: list[str], parts: CloudParts) -> str:
    """The #cloud-config of node `index` (0 is the head node; None: any worker, which finds its index from its
    private address at boot); contains no secret: node specifics come from the cloud's metadata (node_env)."""
    if spec.os != "linux":
        raise RenderError("cloud-init user data is for os linux")
    if spec.shared_storage.kind == "local" and spec.node_count > 1:
        raise RenderError("shared.kind local gives every node its own directory; use smb or nfs with nodes > 1")
    if not re.match(r"^/[A-Za-z0-9._/-]*$", spec.shared_storage.path):
        raise RenderError(f"shared.path {spec.shared_storage.path!r} must be an absolute path of plain characters")
    head = index == 0
    return render_template(
        "linux/cloud-config.yaml.j2", index=index, user=spec.admin.username, create_user=parts.create_user,
        packages=_packages(spec, head, parts), files=_files(spec, head, parts),
        commands=_commands(spec, index, ips, parts))
