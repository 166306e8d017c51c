"""The Windows bootstrap: PowerShell syntax, pinned downloads, embedded runner, no secrets, the CSE command."""

from __future__ import annotations

import base64
import gzip
import json
import re

import pytest

from mpicloud.assets import provision_dir, runner_files
from mpicloud.errors import RenderError
from mpicloud.render import windows
from mpicloud.spec import ClusterSpec, spec_from_dict
from tests.cloud.powershell import syntax_problems

PASSWORD = "Sup3r'Secret\"pw;$x"


def _packed(script: str) -> dict[str, bytes]:
    found = re.findall(r"Write-Packed \(Join-Path \$Data '([^']+)'\) '([A-Za-z0-9+/=]+)'", script)
    return {name: gzip.decompress(base64.b64decode(data)) for name, data in found}


def test_rendered_bootstrap_parses(azure_spec: ClusterSpec) -> None:
    assert syntax_problems(windows.bootstrap_ps1(azure_spec)) == []


@pytest.mark.parametrize("name", ["start-runner.ps1", "stop-cluster.ps1"])
def test_helper_scripts_parse(name: str) -> None:
    assert syntax_problems((provision_dir() / "windows" / name).read_text()) == []


def test_parser_reports_a_broken_script(azure_spec: ClusterSpec) -> None:
    broken = windows.bootstrap_ps1(azure_spec).replace("} else {", "else {", 1)
    assert syntax_problems(broken)


def test_installers_with_quotes_are_quoted_and_parse(azure_spec: ClusterSpec) -> None:
    doc = azure_spec.model_dump(mode="json", exclude_none=True)
    doc["software"] = {"installers": [{"url": "https://example.org/it's.msi", "sha256": "A" * 64,
                                       "args": ["/quiet", "DIR=C:\\Program Files\\x'y", "$(evil)"]}]}
    script = windows.bootstrap_ps1(spec_from_dict(doc))
    assert syntax_problems(script) == []
    assert "'https://example.org/it''s.msi'" in script and "'" + "a" * 64 + "'" in script
    assert "@('/quiet', 'DIR=C:\\Program Files\\x''y', '$(evil)')" in script


def test_downloads_are_pinned_and_verified_before_use(azure_spec: ClusterSpec) -> None:
    script = windows.bootstrap_ps1(azure_spec)
    assert f"Get-Verified '{windows.MSMPI.url}' '{windows.MSMPI.sha256}'" in script
    assert f"Get-Verified '{windows.PYTHON.url}' '{windows.PYTHON.sha256}'" in script
    assert script.index("Get-Verified '" + windows.MSMPI.url) < script.index("'-unattend', '-force'")
    assert "msmpisetup" in windows.MSMPI.url and "/10.1.3/" not in windows.MSMPI.url  # the 10.1.3 download id
    assert re.search(r"Set-Service -Name MsMpiLaunchSvc -StartupType Automatic\nStart-Service -Name MsMpiLaunchSvc",
                     script)


def test_every_step_is_guarded(azure_spec: ClusterSpec) -> None:
    script = windows.bootstrap_ps1(azure_spec)
    for guard in ("if (-not (Get-Service -Name sshd", "if (-not (Test-Path $mpiexec))",
                  "if (Get-NetFirewallRule -Name $Name", "if (-not (Get-SmbShare -Name $ShareName",
                  "elseif (-not (Test-Path $Shared))", "if (-not (Test-Path $python))", "-notcontains $msmpiBin"):
        assert guard in script
    assert "Register-ScheduledTask -TaskName 'mpicloud-runner'" in script and " -Force " in script


def test_script_embeds_the_runner_and_helpers_exactly(azure_spec: ClusterSpec) -> None:
    files = _packed(windows.bootstrap_ps1(azure_spec))
    for name, data in runner_files().items():
        assert files[name] == data
    for name in ("start-runner.ps1", "stop-cluster.ps1"):
        assert files[name] == (provision_dir() / "windows" / name).read_bytes()


def test_runner_config_template(azure_spec: ClusterSpec) -> None:
    script = windows.bootstrap_ps1(azure_spec)
    text = re.search(r"\$config = '(.*?)' \| ConvertFrom-Json", script, re.S)
    assert text
    config = json.loads(text.group(1).replace("''", "'"))
    assert config["launcher"] == "mpiexec" and config["os"] == "windows" and config["nodes"] == []
    assert config["stop_command"] == windows.stop_command()
    assert "[double]$IdleMinutes = 60" in script and "[int]$SlotsPerNode = 4" in script


def test_no_secret_and_ascii_and_fits_custom_data(azure_spec: ClusterSpec,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPICLOUD_ADMIN_PASSWORD", PASSWORD)
    script = windows.bootstrap_ps1(azure_spec)
    assert PASSWORD not in script and windows.b64(PASSWORD) not in script
    assert script.isascii()
    assert len(base64.b64encode(script.encode())) <= 65535, "osProfile.customData is limited to 64 KiB base64"


def test_linux_spec_is_refused() -> None:
    spec = spec_from_dict({"name": "x1", "cloud": "local", "nodes": 1})
    with pytest.raises(RenderError, match="os: windows"):
        windows.bootstrap_ps1(spec)


def _values(**over: str) -> dict[str, str]:
    return {"NodeIndex": "1", "NodeCount": "4", "SlotsPerNode": "4", "IdleMinutes": "60",
            "ArmEndpoint": "https://management.example/", "AdminUserB64": windows.b64("mpiadmin"),
            "AdminPasswordB64": windows.b64(PASSWORD), **over}


def test_command_passes_the_password_as_a_base64_parameter() -> None:
    command = windows.bootstrap_command(_values())
    assert command.startswith("powershell.exe -NoProfile -ExecutionPolicy Bypass -Command \"Copy-Item -Force "
                              "C:\\AzureData\\CustomData.bin C:\\AzureData\\mpicloud-bootstrap.ps1; & ")
    assert f"-AdminPasswordB64 {windows.b64(PASSWORD)}\"" in command and PASSWORD not in command
    assert [t for lit, t in windows.command_pieces(_values()) if not lit] == list(_values().values())


@pytest.mark.parametrize("bad", ["1; Remove-Item C:\\", "1\" & calc", "x y", ""])
def test_command_rejects_values_that_are_not_tokens(bad: str) -> None:
    with pytest.raises(RenderError, match="NodeIndex"):
        windows.bootstrap_command(_values(NodeIndex=bad))
    with pytest.raises(RenderError, match="missing"):
        windows.bootstrap_command({"NodeIndex": "0"})


def test_host_key_fingerprints_from_extension_output() -> None:
    out = ("noise\nMPICLOUD-HOSTKEY N0 256 SHA256:abc+/9= root@N0 (ED25519)\n"
           "MPICLOUD-HOSTKEY N0 3072 SHA256:Zz0 root@N0 (RSA)\nMPICLOUD-HOSTKEY N1 256 SHA256:q1 x (ECDSA)\n")
    assert windows.host_key_fingerprints(out) == {"N0": ["ED25519 SHA256:abc+/9=", "RSA SHA256:Zz0"],
                                                  "N1": ["ECDSA SHA256:q1"]}
