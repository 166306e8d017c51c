"""The Windows node bootstrap (PowerShell) and the command that runs it, shared by ARM and Pulumi."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from mpicloud.assets import provision_dir, runner_files
from mpicloud.errors import RenderError
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
DATA_DIR = WINDOWS.install_dir
SHARE_NAME = "shared"
LAUNCH_PORT = 8677
#: the script is the VM's userData, gzipped (updatable in place, unlike customData); the extension reads it from IMDS,
#: checks its SHA-256 against the one in its command (IMDS may briefly serve the previous version), runs it
USER_DATA_URL = "http://169.254.169.254/metadata/instance/compute/userData?api-version=2021-01-01&format=text"
SCRIPT = f"{DATA_DIR}\\bootstrap.ps1"
#: script parameters passed by the extension, in order (values must be digits or base64); never the password,
#: which the script reads from the extension's protected settings (PASSWORD_SETTING)
PARAMETERS = ("NodeIndex", "NodeCount", "SlotsPerNode", "IdleMinutes", "ArmEndpoint", "AdminUserB64",
              "VmPrefixB64", "AdminKeyB64", "PasswordSsh")
PASSWORD_SETTING = "adminPassword"
NO_KEY = "none"
_TOKEN = re.compile(r"^[A-Za-z0-9+/=.:_-]+$")


def _installers(spec: ClusterSpec) -> list[dict[str, str]]:
    out = []
    for index, inst in enumerate(spec.software.installers, start=1):
        name = f"installer-{index}-" + inst.url.rstrip("/").rsplit("/", 1)[-1]
        out.append({"url": powershell_quote(inst.url), "sha256": powershell_quote(inst.sha256),
                    "name": powershell_quote(name), "marker": powershell_quote(f"installed-{inst.sha256}"),
                    "args": ", ".join(powershell_quote(a) for a in inst.args)})
    return out


def _base_runner_config(spec: ClusterSpec) -> str:
    """runner.json without the node list and idle minutes, which the script fills in from its parameters;
    MPI jobs wait for the marker of working saved credentials (start-runner.ps1)."""
    config: dict[str, Any] = runner_config(spec)
    marker = {"path": root_file(spec.shared_storage.path, SAVECREDS_MARKER),
              "reason": "MS-MPI credentials are not saved and verified yet (mpiexec -savecreds, then a run without "
                        "-pwd; see C:\\ProgramData\\mpicloud\\runner-task.log on N0)"}
    return runner_config_json({**config, "nodes": [], "idle_shutdown_minutes": None, "require_files": [marker]})


def bootstrap_ps1(spec: ClusterSpec) -> str:
    """The bootstrap script for every node of `spec` (ASCII, no secrets; node specifics are parameters)."""
    if spec.os != "windows":
        raise RenderError(f"the Windows bootstrap needs os: windows, not {spec.os!r}")
    windows = provision_dir() / "windows"
    q = powershell_quote
    text = render_template(
        "windows/bootstrap.ps1.j2", cluster=spec.name, slots_per_node=spec.slots_per_node,
        idle_minutes=spec.idle_shutdown_minutes or 0, data_dir=q(DATA_DIR), shared=q(spec.shared_storage.path),
        share_name=q(SHARE_NAME), subnet_cidr=q(spec.azure_options.subnet_cidr),
        node_prefix=q(spec.target.platform.node_prefix), msmpi_version=MSMPI.version, msmpi_url=q(MSMPI.url),
        msmpi_sha256=q(MSMPI.sha256), python_version=PYTHON.version, python_url=q(PYTHON.url),
        python_sha256=q(PYTHON.sha256), launch_port=LAUNCH_PORT, installers=_installers(spec),
        openssh_msi=_openssh_msi(spec),
        runner_files=[(q(n), q(gzip_base64(data))) for n, data in runner_files("windows").items()],
        runner_config=q(_base_runner_config(spec)),
        stop_script=q(gzip_base64((windows / "stop-cluster.ps1").read_bytes())),
        start_script=q(gzip_base64((windows / "start-runner.ps1").read_bytes())))
    if not text.isascii():
        raise RenderError("the Windows bootstrap must be ASCII (PowerShell 5.1 reads BOM-less scripts as ANSI)")
    return text


def _openssh_msi(spec: ClusterSpec) -> dict[str, str]:
    msi = spec.azure_options.openssh_msi or OPENSSH_MSI
    return {"url": powershell_quote(msi.url), "sha256": powershell_quote(msi.sha256)}


def script_sha256(script: str) -> str:
    """SHA-256 (upper-case hex, as Get-FileHash prints it) of the script bytes in userData."""
    return hashlib.sha256(script.encode("ascii")).hexdigest().upper()


def script_version(script: str) -> int:
    """A stable integer derived from the script (CustomScriptExtension settings.timestamp: reruns on change)."""
    return int(hashlib.sha256(script.encode()).hexdigest()[:7], 16)


def force_update_tag(script: str) -> str:
    """The extension's forceUpdateTag: a new script makes the extension run again on the existing VM."""
    return script_sha256(script)[:16].lower()


#: Azure's limit for userData (base64 text)
USER_DATA_LIMIT = 65535


def user_data(script: str) -> str:
    """The VM's userData: the script, gzip then base64 (the runner files inside it would not fit in
    USER_DATA_LIMIT as plain base64); RenderError when even that is too large."""
    packed = gzip_base64(script.encode("ascii"))
    if len(packed) > USER_DATA_LIMIT:
        raise RenderError(f"the Windows bootstrap is {len(packed)} characters of userData; Azure takes at most "
                          f"{USER_DATA_LIMIT}")
    return packed


def command_pieces(values: dict[str, str], script: str) -> list[tuple[bool, str]]:
    """The extension's commandToExecute as (is_literal, text) pieces; values are inserted as they are.

    The command fetches the script from IMDS userData, retries until its SHA-256 is the one of `script`, and runs
    it. Pulumi joins the pieces with concrete values; ARM passes expressions as values and wraps them in concat().
    """
    missing = set(PARAMETERS) - set(values)
    if missing:
        raise RenderError(f"bootstrap command is missing {sorted(missing)}")
    sha = script_sha256(script)
    head = ('powershell.exe -NoProfile -ExecutionPolicy Bypass -Command "$ErrorActionPreference = \'Stop\'; '
            f"New-Item -ItemType Directory -Force -Path '{DATA_DIR}' | Out-Null; $h = ''; "
            "for ($i = 0; $i -lt 60 -and $h -ne '" + sha + "'; $i++) { try { "
            "$z = [IO.Compression.GZipStream]::new([IO.MemoryStream]::new([Convert]::FromBase64String("
            "(Invoke-RestMethod -UseBasicParsing -Headers @{ Metadata = 'true' } "
            f"-Uri '{USER_DATA_URL}'))), [IO.Compression.CompressionMode]::Decompress); "
            "$m = [IO.MemoryStream]::new(); $z.CopyTo($m); $b = $m.ToArray(); "
            "$h = (Get-FileHash -Algorithm SHA256 -InputStream ([IO.MemoryStream]::new($b))).Hash } catch { }; "
            "if ($h -ne '" + sha + "') { Start-Sleep -Seconds 10 } }; "
            "if ($h -ne '" + sha + "') { throw 'IMDS userData is not the expected bootstrap script' }; "
            f"[IO.File]::WriteAllBytes('{SCRIPT}', $b); & '{SCRIPT}'")
    pieces: list[tuple[bool, str]] = [(True, head)]
    for name in PARAMETERS:
        pieces += [(True, f" -{name} "), (False, values[name])]
    return [*pieces, (True, '"')]


def bootstrap_command(values: dict[str, str], script: str) -> str:
    """The concrete commandToExecute (Pulumi); every value must be a plain token (digits, base64, a URL)."""
    for name, value in values.items():
        if not _TOKEN.match(value):
            raise RenderError(f"bootstrap parameter {name} must be digits or base64, got an unsafe value")
    return "".join(text for _, text in command_pieces(values, script))


def b64(text: str) -> str:
    """UTF-8 then base64, how the extension passes the user name, cluster name and public key to the script."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def key_b64(key: str | None) -> str:
    """The AdminKeyB64 parameter: the public key base64, or NO_KEY."""
    return b64(key) if key else NO_KEY


def host_key_fingerprints(output: str) -> dict[str, list[str]]:
    """Host key fingerprints the bootstrap printed (`MPICLOUD-HOSTKEY N0 256 SHA256:... (ED25519)`), per node."""
    found: dict[str, list[str]] = {}
    for match in re.finditer(r"MPICLOUD-HOSTKEY (\S+) \d+ (SHA256:[A-Za-z0-9+/=]+) .*?\((\w+)\)", output):
        found.setdefault(match.group(1), []).append(f"{match.group(3)} {match.group(2)}")
    return found
