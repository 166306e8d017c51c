"""cloud-init custom data for every node of a Linux Open MPI cluster on Azure: the shared Linux setup
(render/cloud_config.py) plus VM tags over IMDS, Key Vault secrets, the runner in the head's userData and idle
shutdown by deallocation."""

from __future__ import annotations

import base64
import hashlib
from typing import TypeVar

from mpicloud.assets import runner_bundle
from mpicloud.errors import RenderError
from mpicloud.render import azure
from mpicloud.render import cloud_config as linux
from mpicloud.render.aws import TAG_IDLE, TAG_NODES, TAG_SLOTS
from mpicloud.render.cloud_config import OPT, CloudParts
from mpicloud.render.templating import gzip_base64
from mpicloud.spec.model import ClusterSpec

#: Azure's limit for customData and userData (base64 text)
DATA_LIMIT = 65535
TAG_VAULT, TAG_ARM = "mpicloud:vault", "mpicloud:arm"
#: Linux marketplace images per azure.linux_image (Gen2; `version: latest`)
IMAGES = {"ubuntu-hpc": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204"},
          "ubuntu": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts-gen2"}}
T = TypeVar("T")


def node_tags(count: T, slots: T, idle: T, vault: T, arm: T) -> dict[str, T]:
    """VM tags the nodes read over IMDS (azure-node-env.sh): literals (Pulumi) or expressions (ARM)."""
    return {TAG_NODES: count, TAG_SLOTS: slots, TAG_IDLE: idle, TAG_VAULT: vault, TAG_ARM: arm}


def node_addresses(subnet_cidr: str, count: int) -> list[str]:
    """Fixed private IPs of nodes 0..count-1 in the Azure subnet (static NIC addresses)."""
    return linux.node_addresses(subnet_cidr, count, "azure")


def runner_user_data() -> str:
    """The VM userData carrying the runner bundle (gzip + base64; updatable in place, unlike custom data)."""
    return _fits(gzip_base64(runner_bundle("linux", compact=True)), "the runner bundle (userData)")


def _runner_sha256() -> str:
    """SHA-256 of the gzipped bundle (what azure-runner.sh checks after base64-decoding userData)."""
    return hashlib.sha256(base64.b64decode(runner_user_data())).hexdigest()


def parts(spec: ClusterSpec) -> CloudParts:
    """What Azure adds: node values from VM tags, secrets in the cluster's Key Vault, the runner from userData,
    idle shutdown by deallocation, an elastic cluster's pool (its deployment values from the head's metadata); the
    platform creates the admin user (InfiniBand: cluster-files.sh finds it)."""
    pool = azure.node_pool(spec)
    configure = (tuple(azure.configure_command(spec)),) if pool else ()
    return CloudParts(
        subnet_cidr=spec.azure_options.subnet_cidr, node_env="azure-node-env.sh", head_scripts=("azure-runner.sh",),
        runner_install=(("bash", f"{OPT}/azure-runner.sh", _runner_sha256()), *configure),
        create_user=False, pool=pool)


def cloud_config(spec: ClusterSpec, index: int | None, ips: list[str] | None = None) -> str:
    """The #cloud-config of node `index` (None: any worker, which finds its index from its private address);
    contains no secret: count, slots, idle minutes and the vault come from the VM's tags over IMDS."""
    ips = ips if ips is not None else node_addresses(spec.azure_options.subnet_cidr, spec.node_count)
    return linux.cloud_config(spec, index, ips, parts(spec))


def custom_data(spec: ClusterSpec, index: int | None, ips: list[str] | None = None) -> str:
    """The VM's customData: the cloud-config gzip-compressed (cloud-init unpacks it) and base64-encoded."""
    return _fits(gzip_base64(cloud_config(spec, index, ips).encode("utf-8")), f"custom data of node {index}")


def _fits(packed: str, what: str) -> str:
    if len(packed) > DATA_LIMIT:
        raise RenderError(f"{what} is {len(packed)} characters; Azure takes at most {DATA_LIMIT}")
    return packed


def image_reference(spec: ClusterSpec) -> dict[str, str]:
    """The marketplace image of the spec's azure.linux_image."""
    return {**IMAGES[spec.azure_options.linux_image], "version": "latest"}
