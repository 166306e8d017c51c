"""The Windows node bootstrap (PowerShell): OpenSSH + SFTP, MS-MPI, C:\\shared on N0 over SMB and the runner task,
the same script on Azure and AWS (how it arrives and where the password comes from differ per cloud)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from mpicloud.assets import provision_dir, runner_bundle
from mpicloud.errors import RenderError
from mpicloud.protocol.pool import CLUSTER_TAG
from mpicloud.render import azure
from mpicloud.render.aws import TAG_INDEX, TAG_LAUNCH_TEMPLATE
from mpicloud.render.aws import cloud_init as aws_cloud_init
from mpicloud.render.cloud_config import node_addresses
from mpicloud.render.quoting import powershell_quote
from mpicloud.render.runner_config import (
    SAVECREDS_MARKER,
    root_file,
    runner_config,
    runner_config_json,
)
from mpicloud.render.templating import gzip_base64, render_template
from mpicloud.spec.model import ClusterSpec
from mpicloud.spec.targets import WINDOWS


@dataclass(frozen=True)
class Download:
    """A pinned download: the bootstrap refuses to run it unless its SHA-256 matches."""

    version: str
    url: str
    sha256: str


#: MS-MPI 10.1.3 redistributable (reference azure-windows-msmpi.md section 2.1)
MSMPI = Download("10.1.3", "https://download.microsoft.com/download/7/2/7/72731ebb-b63c-4170-ade7-836966263a8f/"
                 "msmpisetup.exe", "47443829114d8d8670f77af98939fe876d33eceb35d0ce4e0e85efeec4d87213")
#: CPython embeddable package for the runner (3.12.10 is the last 3.12 release with Windows binaries)
PYTHON = Download("3.12.10", "https://www.python.org/ftp/python/3.12.10/python-3.12.10-embed-amd64.zip",
                  "4acbed6dd1c744b0376e3b1cf57ce906f9dc9e95e68824584c8099a63025a3c3")
#: Win32-OpenSSH MSI, the fallback when Add-WindowsCapability keeps failing (`azure.openssh_msi` replaces it); the
#: pin is the one Google's compute-image-windows OpenSSH package uses for this file, not verified here: a wrong pin
#: fails closed (Get-Verified refuses the download)
OPENSSH_MSI = Download("8.9.1.0", "https://github.com/PowerShell/Win32-OpenSSH/releases/download/v8.9.1.0p1-Beta/"
                       "OpenSSH-Win64-v8.9.1.0.msi", "f4b9808d0fa29bfc50feb4bd4611ee852458638480dc63ad97380b10abd9aa39")
#: pip itself (a wheel runs as `python pip.whl/pip`), for the storage SDKs below; the embeddable Python has no pip
PIP = Download("24.3.1", "https://files.pythonhosted.org/packages/py3/p/pip/pip-24.3.1-py3-none-any.whl",
               "3790624780082365f47549d032f3770eeb2b1e8bd1f7b2e02dace1afa361b4ed")
#: the SDKs the node's bucketio.py moves objects with, installed (wheels only) when the spec has a bucket
OBJECT_SDKS = ("boto3==1.35.99", "azure-storage-blob==12.24.0", "azure-identity==1.19.0")
DATA_DIR = WINDOWS.install_dir
#: where those SDKs go (pip --target); the runner passes it to bucketio.py as MPICLOUD_OBJECT_LIBS
OBJECT_LIBS = f"{DATA_DIR}\\objlibs"
SHARE_NAME = "shared"
LAUNCH_PORT = 8677


def _installers(spec: ClusterSpec) -> list[dict[str, str]]:
    out = []
    for index, inst in enumerate(spec.software.installers, start=1):
        name = f"installer-{index}-" + inst.url.rstrip("/").rsplit("/", 1)[-1]
        out.append({"url": powershell_quote(inst.url), "sha256": powershell_quote(inst.sha256),
                    "name": powershell_quote(name), "marker": powershell_quote(f"installed-{inst.sha256}"),
                    "args": ", ".join(powershell_quote(a) for a in inst.args)})
    return out


def _pool(spec: ClusterSpec) -> dict[str, Any] | None:
    """An elastic cluster's pool; a started node is up once sshd and MS-MPI's launch service answer (on AWS a
    launched node also gets its index tag, which its bootstrap reads)."""
    ready = (22, LAUNCH_PORT)
    return azure.node_pool(spec, ready) if spec.cloud == "azure" else aws_cloud_init.pool(spec, ready, TAG_INDEX)


def _configure_pool(spec: ClusterSpec) -> str | None:
    """Azure: the PowerShell command the head runs after writing runner.json: azure_nodes.py configure (its --arm
    is the script's $ArmEndpoint); AWS fills pool.aws in the script itself (`aws_pool`)."""
    if spec.cloud != "azure" or _pool(spec) is None:
        return None
    return "& " + " ".join(powershell_quote(a) for a in azure.configure_command(spec)) + " --arm $ArmEndpoint"


def _base_runner_config(spec: ClusterSpec) -> str:
    """runner.json without the node list (an elastic AWS head: the head only) and idle minutes, which the script
    fills in from its parameters; MPI jobs wait for the marker of working saved credentials (start-runner.ps1)."""
    config: dict[str, Any] = runner_config(spec, pool=_pool(spec))
    marker = {"path": root_file(spec.shared_storage.path, SAVECREDS_MARKER),
              "reason": "MS-MPI credentials are not saved and verified yet (mpiexec -savecreds, then a run without "
                        "-pwd; see C:\\ProgramData\\mpicloud\\runner-task.log on N0)"}
    libs = {"object_libs": OBJECT_LIBS} if _object_sdks(spec) else {}
    # an elastic AWS head lists itself only (no slots): its pool launches the compute nodes; else the script lists
    # the nodes
    nodes = config["nodes"][:1] if spec.cloud == "aws" and spec.elastic else []
    return runner_config_json({**config, "nodes": nodes, "idle_shutdown_minutes": None, "require_files": [marker],
                               **libs})


def bootstrap_ps1(spec: ClusterSpec) -> str:
    """The bootstrap script for every node of `spec` (ASCII, no secrets; node specifics are parameters)."""
    if spec.os != "windows":
        raise RenderError(f"the Windows bootstrap needs os: windows, not {spec.os!r}")
    windows = provision_dir() / "windows"
    q = powershell_quote
    subnet = spec.aws_options.subnet_cidr if spec.cloud == "aws" else spec.azure_options.subnet_cidr
    # AWS: fixed addresses in the hosts file (Azure's VNet resolves the computer names itself)
    node_ips = ", ".join(q(ip) for ip in node_addresses(subnet, spec.node_count, spec.cloud)) if spec.cloud == "aws" \
        else ""
    text = render_template(
        "windows/bootstrap.ps1.j2", cloud=spec.cloud, node_ips=node_ips, cluster=spec.name,
        slots_per_node=spec.slots_per_node, idle_minutes=spec.idle_shutdown_minutes or 0, data_dir=q(DATA_DIR),
        shared=q(spec.shared_storage.path), share_name=q(SHARE_NAME), subnet_cidr=q(subnet),
        node_prefix=q(spec.target.platform.node_prefix), msmpi_version=MSMPI.version, msmpi_url=q(MSMPI.url),
        msmpi_sha256=q(MSMPI.sha256), python_version=PYTHON.version, python_url=q(PYTHON.url),
        python_sha256=q(PYTHON.sha256), launch_port=LAUNCH_PORT, installers=_installers(spec),
        object_sdks={"libs": q(OBJECT_LIBS), "pip_url": q(PIP.url), "pip_sha256": q(PIP.sha256),
                     "packages": " ".join(q(p) for p in OBJECT_SDKS),
                     "head_only": spec.bucket is None} if _object_sdks(spec) else None,
        openssh_msi=_openssh_msi(spec), configure_pool=_configure_pool(spec),
        aws_pool={"launch_template": q(f"tags/instance/{TAG_LAUNCH_TEMPLATE}"),
                  "cluster": q(f"tags/instance/{CLUSTER_TAG}")} if spec.cloud == "aws" and spec.elastic else None,
        runner_bundle=q(gzip_base64(runner_bundle("windows", compact=True, cloud=spec.cloud))),
        runner_config=q(_base_runner_config(spec)),
        stop_script=q(gzip_base64((windows / "stop-cluster.ps1").read_bytes())),
        start_script=q(gzip_base64((windows / "start-runner.ps1").read_bytes())))
    if not text.isascii():
        raise RenderError("the Windows bootstrap must be ASCII (PowerShell 5.1 reads BOM-less scripts as ANSI)")
    return text


def _object_sdks(spec: ClusterSpec) -> bool:
    """Whether the node installs the SDK wheels: for the bucket, and on an elastic AWS head for boto3 (its node
    actions, ec2_nodes.py)."""
    return spec.bucket is not None or (spec.cloud == "aws" and spec.elastic is not None)


def _openssh_msi(spec: ClusterSpec) -> dict[str, str]:
    msi = spec.azure_options.openssh_msi or OPENSSH_MSI
    return {"url": powershell_quote(msi.url), "sha256": powershell_quote(msi.sha256)}


def script_sha256(script: str) -> str:
    """SHA-256 (upper-case hex, as Get-FileHash prints it) of the script bytes in userData."""
    return hashlib.sha256(script.encode("ascii")).hexdigest().upper()


