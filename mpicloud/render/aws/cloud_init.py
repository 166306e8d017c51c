"""cloud-init user data (#cloud-config) for every node of a Linux Open MPI cluster on AWS (with Slurm when the spec
says scheduler: slurm): the shared Linux setup (render/cloud_config.py) plus instance tags, SSM and EBS."""

from __future__ import annotations

import base64
import gzip
import hashlib
import math
from typing import Any

from mpicloud.assets import runner_files
from mpicloud.errors import RenderError
from mpicloud.render import cloud_config as linux
from mpicloud.render.cloud_config import OPT, CloudParts
from mpicloud.render.runner_config import NODE_PYTHON, pool_config, runner_root
from mpicloud.render.templating import gzip_base64
from mpicloud.spec.model import ClusterSpec

#: EC2 user data limit (bytes, before base64)
USER_DATA_LIMIT = 16384
#: characters per SSM parameter holding a piece of the runner (standard tier: at most 4096)
RUNNER_CHUNK = 4000


def node_addresses(subnet_cidr: str, count: int) -> list[str]:
    """Fixed private IPs of nodes 0..count-1 in the AWS subnet."""
    return linux.node_addresses(subnet_cidr, count, "aws")


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


def pool(spec: ClusterSpec, ready_ports: tuple[int, ...] = (), index_tag: str | None = None) -> dict[str, Any] | None:
    """runner.json's `pool` of an elastic cluster: the head's ec2_nodes.py as node actions, and `aws` with what
    the spec knows (suspend, every compute node's fixed address). The head fills in at boot what only the
    deployment knows, from its instance tags (Linux: cluster-files.sh; Windows: the bootstrap): region,
    launch_template_id, cluster. Windows: `ready_ports` (a node is usable once each answers) and `index_tag`
    (launched with the node's index, which its bootstrap reads)."""
    if spec.elastic is None:
        return None
    root, ips = runner_root(spec.shared_storage.path), node_addresses(spec.aws_options.subnet_cidr, spec.node_count)
    script = [NODE_PYTHON[spec.os], spec.target.platform.path("ec2_nodes.py")]
    settings: dict[str, Any] = {
        "region": None, "launch_template_id": None, "cluster": None,
        # the launch template puts the nodes in the placement group
        "placement_group": None, "suspend": spec.aws_options.suspend,
        "addresses": dict(zip(spec.node_names[1:], ips[1:], strict=True)),
        **({"ready_ports": list(ready_ports)} if ready_ports else {}),
        **({"node_tags": {n: {index_tag: str(i)} for i, n in enumerate(spec.node_names) if i}} if index_tag else {})}
    return {**pool_config(spec, [*script, "resume", "--root", root], [*script, "suspend", "--root", root]),
            "aws": settings}


def parts(spec: ClusterSpec) -> CloudParts:
    """What AWS adds: node values from instance tags, secrets in SSM, the runner from SSM, the head's EBS volume;
    an elastic head also its node actions (boto3)."""
    elastic = spec.elastic is not None
    return CloudParts(
        subnet_cidr=spec.aws_options.subnet_cidr, node_env="node-env.sh", packages=("awscli",),
        head_scripts=("fetch-runner.sh", "shared-volume.sh"),
        # before anything writes to the shared directory; the volume id is an instance tag (node-env.sh)
        head_setup=(("bash", f"{OPT}/shared-volume.sh", spec.shared_storage.path),),
        runner_install=(tuple(_fetch_runner_command()),),
        head_packages=("python3-boto3",) if elastic else (), pool=pool(spec))


def cloud_config(spec: ClusterSpec, index: int | None, ips: list[str] | None = None) -> str:
    """The #cloud-config user data of node `index` (0 is the head node; None: any worker, which finds its index
    from its private address at boot); contains no secret.

    `ips` are the fixed private addresses of nodes 0.. (default: spec.node_count of them from aws.subnet_cidr); node
    count, slots, idle minutes and the SSM path come from instance tags (render.aws.node_tags) and the login key
    from the EC2 key pair, both over IMDS at boot, so one text serves Pulumi and CloudFormation.
    """
    ips = ips if ips is not None else node_addresses(spec.aws_options.subnet_cidr, spec.node_count)
    return linux.cloud_config(spec, index, ips, parts(spec))


def user_data_base64(spec: ClusterSpec, index: int | None, ips: list[str] | None = None) -> str:
    """The cloud-config gzip-compressed (cloud-init unpacks it) and base64-encoded, within the EC2 16 KB limit."""
    packed = gzip.compress(cloud_config(spec, index, ips).encode("utf-8"), 9, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise RenderError(f"user data of node {'N' if index is None else index} is {len(packed)} bytes compressed; "
                          f"EC2 allows {USER_DATA_LIMIT}")
    return base64.b64encode(packed).decode("ascii")
