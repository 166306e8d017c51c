"""How the Windows bootstrap reaches an Azure VM: the script as the VM's userData, run by a CustomScriptExtension
whose command checks its SHA-256 (the password only in the extension's protected settings)."""

from __future__ import annotations

import base64
import hashlib
import re

from mpicloud.errors import RenderError
from mpicloud.render.templating import gzip_base64
from mpicloud.render.windows_bootstrap import DATA_DIR, script_sha256

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
