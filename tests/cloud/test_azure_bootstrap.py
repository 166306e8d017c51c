"""The Windows bootstrap: PowerShell syntax, pinned downloads, embedded runner, no secrets, the CSE command."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile

import pytest

from mpicloud.assets import provision_dir, runner_files, without_docstrings
from mpicloud.errors import RenderError
from mpicloud.render import windows_bootstrap
from mpicloud.render.azure import powershell
from mpicloud.render.windows_bootstrap import MSMPI, OPENSSH_MSI
from mpicloud.spec import ClusterSpec, spec_from_dict
from tests.cloud.powershell import syntax_problems

PASSWORD = "Sup3r'Secret\"pw;$x"


def _packed(script: str) -> dict[str, bytes]:
    found = re.findall(r"Write-Packed \(Join-Path \$Data '([^']+)'\) '([A-Za-z0-9+/=]+)'", script)
    return {name: gzip.decompress(base64.b64decode(data)) for name, data in found}


def test_rendered_bootstrap_parses(azure_spec: ClusterSpec) -> None:
    assert syntax_problems(windows_bootstrap.bootstrap_ps1(azure_spec)) == []


@pytest.mark.parametrize("name", ["start-runner.ps1", "stop-cluster.ps1"])
def test_helper_scripts_parse(name: str) -> None:
    assert syntax_problems((provision_dir() / "windows" / name).read_text()) == []


def test_parser_reports_a_broken_script(azure_spec: ClusterSpec) -> None:
    broken = windows_bootstrap.bootstrap_ps1(azure_spec).replace("} else {", "else {", 1)
    assert syntax_problems(broken)


def test_installers_with_quotes_are_quoted_and_parse(azure_spec: ClusterSpec) -> None:
    doc = azure_spec.model_dump(mode="json", exclude_none=True)
    doc["software"] = {"installers": [{"url": "https://example.org/it's.msi", "sha256": "A" * 64,
                                       "args": ["/quiet", "DIR=C:\\Program Files\\x'y", "$(evil)"]}]}
    script = windows_bootstrap.bootstrap_ps1(spec_from_dict(doc))
    assert syntax_problems(script) == []
    assert "'https://example.org/it''s.msi'" in script and "'" + "a" * 64 + "'" in script
    assert "@('/quiet', 'DIR=C:\\Program Files\\x''y', '$(evil)')" in script


def test_downloads_are_pinned_and_verified_before_use(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    assert f"Get-Verified '{MSMPI.url}' '{MSMPI.sha256}'" in script
    assert f"Get-Verified '{windows_bootstrap.PYTHON.url}' '{windows_bootstrap.PYTHON.sha256}'" in script
    assert script.index("Get-Verified '" + MSMPI.url) < script.index("'-unattend', '-force'")
    assert "msmpisetup" in MSMPI.url and "/10.1.3/" not in MSMPI.url  # the 10.1.3 download id
    assert re.search(r"Set-Service -Name MsMpiLaunchSvc -StartupType Automatic\nStart-Service -Name MsMpiLaunchSvc",
                     script)


def test_every_step_is_guarded(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    for guard in ("if (-not (Get-Service -Name sshd", "if (-not (Test-Path $mpiexec))",
                  "if (Get-NetFirewallRule -Name $Name", "if (-not (Get-SmbShare -Name $ShareName",
                  "elseif (-not (Test-Path $Shared))", "if (-not (Test-Path $python))", "-notcontains $msmpiBin"):
        assert guard in script
    assert "Register-ScheduledTask -TaskName 'mpicloud-runner'" in script and " -Force " in script


def test_script_embeds_the_runner_and_helpers_exactly(azure_spec: ClusterSpec) -> None:
    files = _packed(windows_bootstrap.bootstrap_ps1(azure_spec))
    with tarfile.open(fileobj=io.BytesIO(files["runner.tar"])) as tar:
        members = tar.getmembers()
        bundled = {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    assert all(m.isfile() and m.mode == 0o755 and m.mtime == 0 for m in members)
    expected = runner_files("windows", "azure")
    assert bundled == {n: without_docstrings(d) if n.endswith(".py") else d for n, d in expected.items()}
    assert "slurm_backend.py" not in bundled  # Linux only
    for name in ("start-runner.ps1", "stop-cluster.ps1"):
        assert files[name] == (provision_dir() / "windows" / name).read_bytes()


def test_runner_config_template(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    text = re.search(r"\$config = '(.*?)' \| ConvertFrom-Json", script, re.S)
    assert text
    config = json.loads(text.group(1).replace("''", "'"))
    assert config["launcher"] == "mpiexec" and config["os"] == "windows" and config["nodes"] == []
    assert config["stop_command"] == list(azure_spec.target.stop_command or ())
    assert config["stop_command"][-1].endswith("stop-cluster.ps1")
    assert "[double]$IdleMinutes = 60" in script and "[int]$SlotsPerNode = 4" in script


def test_no_secret_and_ascii_and_fits_custom_data(azure_spec: ClusterSpec,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPICLOUD_ADMIN_PASSWORD", PASSWORD)
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    assert PASSWORD not in script and powershell.b64(PASSWORD) not in script
    assert script.isascii()
    assert len(powershell.user_data(script)) <= 65535, "userData is limited to 64 KiB of base64"


def test_linux_spec_is_refused() -> None:
    spec = spec_from_dict({"name": "x1", "cloud": "local", "nodes": 1})
    with pytest.raises(RenderError, match="os: windows"):
        windows_bootstrap.bootstrap_ps1(spec)


def _values(**over: str) -> dict[str, str]:
    return {"NodeIndex": "1", "NodeCount": "4", "SlotsPerNode": "4", "IdleMinutes": "60",
            "ArmEndpoint": "https://management.example/", "AdminUserB64": powershell.b64("mpiadmin"),
            "VmPrefixB64": powershell.b64("mpi"), "AdminKeyB64": powershell.NO_KEY, "PasswordSsh": "1", **over}


def test_command_runs_the_userdata_script_only_with_the_expected_hash(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    command = powershell.bootstrap_command(_values(), script)
    assert command.startswith("powershell.exe -NoProfile -ExecutionPolicy Bypass -Command \"")
    assert powershell.USER_DATA_URL in command and "CustomData" not in command
    sha = hashlib.sha256(script.encode()).hexdigest().upper()
    assert command.count(f"'{sha}'") == 3  # the loop condition, the retry test and the final check
    assert command.endswith(f"& '{powershell.SCRIPT}' -NodeIndex 1 -NodeCount 4 -SlotsPerNode 4 -IdleMinutes 60 "
                            "-ArmEndpoint https://management.example/ -AdminUserB64 bXBpYWRtaW4= -VmPrefixB64 bXBp "
                            "-AdminKeyB64 none -PasswordSsh 1\"")
    # the prologue parses (tree-sitter's grammar rejects parameter names with digits such as -AdminUserB64,
    # which PowerShell accepts, so the call's arguments are left out)
    assert syntax_problems(command.split(' -Command "', 1)[1].split(" -NodeIndex ")[0]) == []
    assert gzip.decompress(base64.b64decode(powershell.user_data(script))) == script.encode()
    other = windows_bootstrap.bootstrap_ps1(spec_from_dict({**azure_spec.model_dump(mode="json", exclude_none=True),
                                                  "slots_per_node": 8}))
    assert powershell.force_update_tag(other) != powershell.force_update_tag(script)


@pytest.mark.parametrize("bad", ["1; Remove-Item C:\\", "1\" & calc", "x y", ""])
def test_command_rejects_values_that_are_not_tokens(bad: str, azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    with pytest.raises(RenderError, match="NodeIndex"):
        powershell.bootstrap_command(_values(NodeIndex=bad), script)
    with pytest.raises(RenderError, match="missing"):
        powershell.bootstrap_command({"NodeIndex": "0"}, script)


def password_forms(password: str) -> list[str]:
    """Every encoding in which a password could leak: plain, base64 of UTF-8 and of UTF-16LE (-EncodedCommand)."""
    return [password, base64.b64encode(password.encode()).decode(),
            base64.b64encode(password.encode("utf-16-le")).decode()]


def test_no_form_of_the_password_in_the_command_or_script(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    text = powershell.bootstrap_command(_values(), script) + script + powershell.user_data(script)
    for form in password_forms(PASSWORD):
        assert form not in text
    assert "AdminPassword" not in "".join(powershell.PARAMETERS)


def test_script_logs_to_its_own_acl_file_and_never_the_password(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    assert "Transcript" not in script.replace("instead of Start-Transcript", "")
    assert "icacls.exe $Log /inheritance:r /grant:r '*S-1-5-32-544:F' '*S-1-5-18:F'" in script
    logging = [line for line in script.splitlines() if re.search(r"Write-(Step|Output|Host)|Add-Content|Out-File",
                                                                 line)]
    assert logging and not [line for line in logging if "Password" in line or "$secret" in line]
    assert "$AdminPassword = Get-AdminPassword" in script and "$AdminPassword = $null" in script
    assert "'adminPassword'" not in script and f"$settings.{powershell.PASSWORD_SETTING}" in script


def test_downloads_and_openssh_are_retried_with_backoff(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    assert 'Invoke-WithRetry "download of $Url" { Invoke-WebRequest' in script
    assert "Invoke-WithRetry 'Add-WindowsCapability OpenSSH.Server'" in script
    assert "[Math]::Pow(2, $try)" in script
    assert f"Get-Verified '{OPENSSH_MSI.url}' '{OPENSSH_MSI.sha256}' 'openssh.msi'" in script
    order = [script.index(s) for s in ("Add-WindowsCapability -Online", "msiexec.exe", "Set-Service -Name sshd")]
    assert order == sorted(order)
    doc = azure_spec.model_dump(mode="json", exclude_none=True)
    doc["azure"] = {**doc.get("azure", {}), "openssh_msi": {"url": "https://example.org/OpenSSH-Win64.msi",
                                                            "sha256": "B" * 64}}
    pinned = windows_bootstrap.bootstrap_ps1(spec_from_dict(doc))
    assert syntax_problems(pinned) == []
    assert "Get-Verified 'https://example.org/OpenSSH-Win64.msi' '" + "b" * 64 + "' 'openssh.msi'" in pinned


def test_ssh_key_goes_to_administrators_authorized_keys(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    assert "$keys = Join-Path $sshData 'administrators_authorized_keys'" in script
    assert "icacls.exe $keys /inheritance:r /grant:r '*S-1-5-32-544:F' '*S-1-5-18:F'" in script
    assert "if ($PasswordSsh -eq 0 -and (Test-Path $sshdConfig))" in script
    assert powershell.key_b64(None) == powershell.NO_KEY and powershell.key_b64("ssh-ed25519 AAAA x") == powershell.b64(
        "ssh-ed25519 AAAA x")


def test_mpi_jobs_wait_for_verified_saved_credentials(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    config = json.loads(re.search(r"\$config = '(.*?)' \| ConvertFrom-Json", script,
                                  re.S).group(1).replace("''", "'"))  # type: ignore[union-attr]
    assert config["require_files"][0]["path"] == "C:\\shared\\.mpicloud\\savecreds.ok"
    start = (provision_dir() / "windows" / "start-runner.ps1").read_text()
    saved, verified = start.index("-pwd $secret -savecreds"), start.index("& $mpiexec @hosts cmd.exe /c exit 0")
    assert saved < verified < start.index("[IO.File]::WriteAllText($marker")
    assert "if ($saved -eq 0 -and $verified -eq 0)" in start


def test_host_key_fingerprints_from_extension_output() -> None:
    out = ("noise\nMPICLOUD-HOSTKEY N0 256 SHA256:abc+/9= root@N0 (ED25519)\n"
           "MPICLOUD-HOSTKEY N0 3072 SHA256:Zz0 root@N0 (RSA)\nMPICLOUD-HOSTKEY N1 256 SHA256:q1 x (ECDSA)\n")
    assert powershell.host_key_fingerprints(out) == {"N0": ["ED25519 SHA256:abc+/9=", "RSA SHA256:Zz0"],
                                                  "N1": ["ECDSA SHA256:q1"]}


def test_start_runner_uses_the_password_only_for_savecreds_and_logs_none_of_it() -> None:
    """The one place the password is on a command line (MS-MPI offers no other way to save credentials): the
    -savecreds run. Nothing written to the log mentions it, and it is dropped right after."""
    script = (provision_dir() / "windows" / "start-runner.ps1").read_text(encoding="utf-8")
    uses = [line.strip() for line in script.splitlines() if "$secret" in line or "$plain" in line]
    assert uses == [
        "$plain = [Security.Cryptography.ProtectedData]::Unprotect([IO.File]::ReadAllBytes($blob), $null, "
        "'LocalMachine')",
        "$secret = [Text.Encoding]::UTF8.GetString($plain)",
        "& $mpiexec @hosts -pwd $secret -savecreds cmd.exe /c exit 0 2>&1 | Out-File -Append -FilePath $log",
        "$secret = $null"]
    logged = [line for line in script.splitlines() if "Out-File" in line and "-pwd" not in line]
    assert logged and not any("$secret" in line or "$plain" in line or "$blob" in line for line in logged)
    assert "Start-Transcript" not in script and "Remove-Item -Force -Path $blob" in script


def test_a_bucket_installs_the_storage_sdks_into_the_runners_python(azure_spec: ClusterSpec) -> None:
    doc = azure_spec.model_dump(mode="json", exclude_none=True)
    doc["bucket"] = {"kind": "azure_blob", "account": "simdata", "container": "runs"}
    script = windows_bootstrap.bootstrap_ps1(spec_from_dict(doc))
    assert syntax_problems(script) == []
    # pip itself is a pinned, verified download; the SDKs are wheels only, pinned, into OBJECT_LIBS
    assert f"Get-Verified '{windows_bootstrap.PIP.url}' '{windows_bootstrap.PIP.sha256}'" in script
    assert "--only-binary ':all:' --target $libs " + " ".join(f"'{p}'" for p in windows_bootstrap.OBJECT_SDKS) in script
    assert script.index("installed.ok") < script.index("Write-Packed (Join-Path $Data 'runner.tar')")
    config = re.search(r"\$config = '(.*?)' \| ConvertFrom-Json", script, re.S)
    assert config and json.loads(config.group(1).replace("''", "'"))["object_libs"] == windows_bootstrap.OBJECT_LIBS
    plain = windows_bootstrap.bootstrap_ps1(azure_spec)  # no bucket: no SDKs, no download of pip
    assert windows_bootstrap.PIP.url not in plain and "object_libs" not in plain
