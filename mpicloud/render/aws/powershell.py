"""How the Windows bootstrap reaches an EC2 instance: EC2Launch v2 user data (a short PowerShell task) names the node
after its index tag, joins the bootstrap from SSM String parameters (it is far larger than the 16 KB of user data),
checks its SHA-256 and runs it with the node values from the instance tags; the password stays in Secrets Manager."""

from __future__ import annotations

import base64
import math

from mpicloud.errors import RenderError
from mpicloud.render.aws import TAG_IDLE, TAG_INDEX, TAG_NODES, TAG_SECRET, TAG_SLOTS, TAG_SSM_PREFIX
from mpicloud.render.aws.cloud_init import RUNNER_CHUNK, USER_DATA_LIMIT
from mpicloud.render.quoting import powershell_quote
from mpicloud.render.templating import gzip_base64
from mpicloud.render.windows_bootstrap import DATA_DIR, bootstrap_ps1, script_sha256
from mpicloud.spec.model import ClusterSpec

SCRIPT = f"{DATA_DIR}\\bootstrap.ps1"
#: EC2Launch v2 reboots and runs the task again when a script exits with this code (the rename needs a reboot)
REBOOT = 3010


def script_parameters(prefix: str, script: str) -> dict[str, str]:
    """SSM String parameters (name -> value) holding the gzipped bootstrap in pieces of RUNNER_CHUNK characters."""
    packed = gzip_base64(script.encode("ascii"))
    return {f"{prefix}/bootstrap/{i // RUNNER_CHUNK}": packed[i:i + RUNNER_CHUNK]
            for i in range(0, len(packed), RUNNER_CHUNK)}


def _task(spec: ClusterSpec, script: str) -> str:
    q = powershell_quote
    pieces = math.ceil(len(gzip_base64(script.encode("ascii"))) / RUNNER_CHUNK)
    key = spec.admin.ssh_public_key
    return "\n".join([
        "$ErrorActionPreference = 'Stop'",
        "$imds = 'http://169.254.169.254/latest'",
        "$token = Invoke-RestMethod -Method Put -Uri \"$imds/api/token\" "
        "-Headers @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '300' }",
        "function Get-Md([string]$Path) { Invoke-RestMethod -Uri \"$imds/meta-data/$Path\" "
        "-Headers @{ 'X-aws-ec2-metadata-token' = $token } }",
        f"$index = [int](Get-Md {q('tags/instance/' + TAG_INDEX)})",
        f"$name = {q(spec.target.platform.node_prefix)} + $index",
        f"if ($env:COMPUTERNAME -ne $name) {{ Rename-Computer -NewName $name -Force; exit {REBOOT} }}",
        "$region = Get-Md 'placement/region'",
        f"$prefix = Get-Md {q('tags/instance/' + TAG_SSM_PREFIX)}",
        f"$packed = -join (0..{pieces - 1} | ForEach-Object {{ "
        "(Get-SSMParameter -Region $region -Name \"$prefix/bootstrap/$_\").Value })",
        "$zip = [IO.Compression.GZipStream]::new([IO.MemoryStream]::new([Convert]::FromBase64String($packed)), "
        "[IO.Compression.CompressionMode]::Decompress)",
        "$out = [IO.MemoryStream]::new(); $zip.CopyTo($out); $bytes = $out.ToArray()",
        "$hash = (Get-FileHash -Algorithm SHA256 -InputStream ([IO.MemoryStream]::new($bytes))).Hash",
        f"if ($hash -ne {q(script_sha256(script))}) {{ throw 'the bootstrap in SSM is not the expected script' }}",
        f"New-Item -ItemType Directory -Force -Path {q(DATA_DIR)} | Out-Null",
        f"[IO.File]::WriteAllBytes({q(SCRIPT)}, $bytes)",
        f"& {q(SCRIPT)} -NodeIndex $index -NodeCount ([int](Get-Md {q('tags/instance/' + TAG_NODES)})) "
        f"-SlotsPerNode ([int](Get-Md {q('tags/instance/' + TAG_SLOTS)})) "
        f"-IdleMinutes ([double](Get-Md {q('tags/instance/' + TAG_IDLE)})) "
        f"-AdminUserB64 {q(_b64(spec.admin.username))} -VmPrefixB64 {q(_b64(spec.name))} "
        f"-AdminKeyB64 {q(_b64(key) if key else 'none')} "
        f"-SecretId (Get-Md {q('tags/instance/' + TAG_SECRET)}) -Region $region",
    ])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def user_data(spec: ClusterSpec, script: str | None = None) -> str:
    """The EC2Launch v2 user data (YAML; the same for every node, which reads its index from its tags): no secret."""
    script = script if script is not None else bootstrap_ps1(spec)
    content = "\n".join("          " + line for line in _task(spec, script).splitlines())
    text = ("version: 1.0\ntasks:\n  - task: executeScript\n    inputs:\n      - frequency: always\n"
            "        type: powershell\n        runAs: localSystem\n        content: |-\n" + content + "\n")
    if len(text.encode("ascii")) > USER_DATA_LIMIT:
        raise RenderError(f"the EC2Launch v2 user data is {len(text)} bytes; EC2 allows {USER_DATA_LIMIT}")
    return text
