"""cloud-init user data (#cloud-config) for every node of a Linux Open MPI cluster on AWS (with Slurm when the spec
says scheduler: slurm)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import math
import re

from mpicloud.assets import provision_dir, runner_files
from mpicloud.errors import RenderError
from mpicloud.render.quoting import posix_join
from mpicloud.render.runner_config import (
    SHARE_MARKER,
    SHARE_PROBE,
    root_file,
    runner_config,
    runner_config_json,
    runner_root,
)
from mpicloud.render.templating import gzip_base64, render_template
from mpicloud.spec.model import ClusterSpec
from mpicloud.spec.targets import LINUX

#: host offset of node 0 in the subnet (AWS reserves the first four addresses; keep a little room)
FIRST_HOST = 10
OPT = LINUX.install_dir
SMB_PASSWORD_FILE = "/etc/mpicloud/smb-password"
_SCRIPTS = ("node-env.sh", "cluster-secrets.sh", "cluster-files.sh", "shared-storage.sh")
#: head node only: the shared directory's own EBS volume (outlives the instance)
_HEAD_SCRIPTS = ("fetch-runner.sh", "stop-cluster.sh", "shared-volume.sh")
#: EC2 user data limit (bytes, before base64)
USER_DATA_LIMIT = 16384
#: characters per SSM parameter holding a piece of the runner (standard tier: at most 4096)
RUNNER_CHUNK = 4000


def node_addresses(subnet_cidr: str, count: int) -> list[str]:
    """Fixed private IPs of nodes 0..count-1 (known before boot, so hostfile and mounts need no lookup)."""
    network = ipaddress.ip_network(subnet_cidr, strict=False)
    if FIRST_HOST + count > network.num_addresses - 2:
        raise RenderError(f"aws.subnet_cidr {subnet_cidr} is too small for {count} nodes from host .{FIRST_HOST}")
    return [str(network.network_address + FIRST_HOST + i) for i in range(count)]


def _file(path: str, content: str, mode: str = "0755") -> dict[str, str]:
    return {"path": path, "content": content, "mode": mode}


def runner_parameters(prefix: str) -> dict[str, str]:
    """SSM String parameters (name -> value) carrying the runner's files, gzip+base64 in chunks of
    RUNNER_CHUNK characters: together they exceed the 16 KB of EC2 user data; fetch-runner.sh joins them."""
    out = {}
    for name, packed in _runner_packed().items():
        for i in range(0, len(packed), RUNNER_CHUNK):
            out[f"{prefix}/runner/{name}/{i // RUNNER_CHUNK}"] = packed[i:i + RUNNER_CHUNK]
    return out


def _runner_packed() -> dict[str, str]:
    return {name: gzip_base64(data) for name, data in runner_files().items()}


def _fetch_runner_command() -> list[str]:
    items = []
    for name, packed in _runner_packed().items():
        digest = hashlib.sha256(runner_files()[name]).hexdigest()
        items.append(f"{name}:{math.ceil(len(packed) / RUNNER_CHUNK)}:{digest}")
    return ["bash", f"{OPT}/fetch-runner.sh", *items]


def _software_script(spec: ClusterSpec) -> str:
    installers = [posix_join([i.url, i.sha256, *i.args]) for i in spec.software.installers]
    return render_template("linux/install-software.sh.j2", pip=posix_join(spec.software.pip),
                           installers=installers)


def _files(spec: ClusterSpec, head: bool) -> list[dict[str, str]]:
    linux = provision_dir() / "linux"
    files = [_file(f"{OPT}/{name}", (linux / name).read_text(encoding="utf-8")) for name in _SCRIPTS]
    files.append(_file(f"{OPT}/install-software.sh", _software_script(spec)))
    if spec.scheduler == "slurm":
        prolog = f"{OPT}/slurm-task-prolog.sh"
        files += [_file(f"{OPT}/slurm-node.sh", (linux / "slurm-node.sh").read_text(encoding="utf-8")),
                  _file(prolog, (provision_dir() / "slurm" / "task-prolog.sh").read_text(encoding="utf-8")),
                  _file(f"{OPT}/slurm.conf.in", render_template("linux/slurm.conf.j2", cluster=spec.name,
                                                                 task_prolog=prolog), "0644")]
    if head:
        path = spec.shared_storage.path
        config = {**runner_config(spec), "share_marker": root_file(path, SHARE_MARKER),
                  "share_probe": SHARE_PROBE}
        root = runner_root(path)
        files += [_file(f"{OPT}/{name}", (linux / name).read_text(encoding="utf-8")) for name in _HEAD_SCRIPTS]
        files += [
            _file(f"{OPT}/runner.base.json", runner_config_json(config), "0644"),
            _file("/etc/systemd/system/mpicloud-runner.service", render_template(
                "linux/mpicloud-runner.service.j2", user=spec.admin.username, root=root), "0644"),
        ]
    return files


def _packages(spec: ClusterSpec, head: bool) -> list[str]:
    kind = spec.shared_storage.kind
    storage = {("smb", True): ["samba"], ("smb", False): ["cifs-utils"],
               ("nfs", True): ["nfs-kernel-server"], ("nfs", False): ["nfs-common"]}.get((kind, head), [])
    pip = ["python3-pip"] if spec.software.pip else []
    base = ["openmpi-bin", "libopenmpi-dev", "openssh-client", "python3", "awscli", "curl"]
    slurm = (["munge", "slurmd", "slurm-client", "libpmix-dev"] + (["slurmctld"] if head else [])) \
        if spec.scheduler == "slurm" else []
    return base + storage + pip + slurm + list(spec.software.packages)


def _storage_command(spec: ClusterSpec, head: bool) -> list[str]:
    shared = spec.shared_storage
    return ["bash", f"{OPT}/shared-storage.sh", "server" if head else "client", "--kind", shared.kind,
            "--path", shared.path, "--user", spec.admin.username, "--password-file", SMB_PASSWORD_FILE,
            "--server", "node0", "--clients", spec.aws_options.subnet_cidr]


def _commands(spec: ClusterSpec, index: int | None, ips: list[str]) -> list[list[str]]:
    head = index == 0
    user = spec.admin.username
    commands = [["bash", f"{OPT}/node-env.sh"]]
    if head and spec.shared_storage.kind != "local":
        # before anything writes to the shared directory; the volume id is an instance tag (node-env.sh)
        commands.append(["bash", f"{OPT}/shared-volume.sh", spec.shared_storage.path])
    slurm = spec.scheduler == "slurm"
    commands += [
        ["bash", f"{OPT}/cluster-secrets.sh", "head" if head else "worker", user, *(["munge"] if slurm else [])],
        ["bash", f"{OPT}/cluster-files.sh", "auto" if index is None else str(index), user, spec.shared_storage.path,
         *ips],
    ]
    if spec.shared_storage.kind != "local":
        commands.append(_storage_command(spec, head))
    if slurm:  # after the shared storage: jobs run in their work dirs there
        commands.append(["bash", f"{OPT}/slurm-node.sh", "head" if head else "worker"])
    commands.append(["bash", f"{OPT}/install-software.sh"])
    if head:
        commands += [_fetch_runner_command(), ["systemctl", "daemon-reload"],
                     ["systemctl", "enable", "--now", "mpicloud-runner.service"]]
    return commands


def cloud_config(spec: ClusterSpec, index: int | None, ips: list[str] | None = None) -> str:
    """The #cloud-config user data of node `index` (0 is the head node; None: any worker, which finds its index
    from its private address at boot); contains no secret.

    `ips` are the fixed private addresses of nodes 0.. (default: spec.nodes of them from aws.subnet_cidr); node
    count, slots, idle minutes and the SSM path come from instance tags (render.aws.node_tags) and the login key
    from the EC2 key pair, both over IMDS at boot, so one text serves Pulumi and CloudFormation.
    """
    if spec.os != "linux":
        raise RenderError("cloud-init user data is for os linux")
    if spec.shared_storage.kind == "local" and spec.nodes > 1:
        raise RenderError("shared.kind local gives every node its own directory; use smb or nfs with nodes > 1")
    if not re.match(r"^/[A-Za-z0-9._/-]*$", spec.shared_storage.path):
        raise RenderError(f"shared.path {spec.shared_storage.path!r} must be an absolute path of plain characters")
    ips = ips if ips is not None else node_addresses(spec.aws_options.subnet_cidr, spec.nodes)
    head = index == 0
    return render_template(
        "linux/cloud-config.yaml.j2", index=index, user=spec.admin.username, packages=_packages(spec, head),
        files=_files(spec, head), commands=_commands(spec, index, ips))


def user_data_base64(spec: ClusterSpec, index: int | None, ips: list[str] | None = None) -> str:
    """The cloud-config gzip-compressed (cloud-init unpacks it) and base64-encoded, within the EC2 16 KB limit."""
    packed = gzip.compress(cloud_config(spec, index, ips).encode("utf-8"), 9, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise RenderError(f"user data of node {'N' if index is None else index} is {len(packed)} bytes compressed; "
                          f"EC2 allows {USER_DATA_LIMIT}")
    return base64.b64encode(packed).decode("ascii")
