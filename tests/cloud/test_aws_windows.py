"""Windows on AWS, offline: the AWS variant of the bootstrap and its EC2Launch v2 user data parse, hold no secret,
fit EC2's limit, and the SSM pieces are exactly the script the user data checks."""

from __future__ import annotations

import base64
import gzip
import re
from pathlib import Path

import pytest
import yaml

from mpicloud.render import windows_bootstrap
from mpicloud.render.aws import powershell
from mpicloud.render.aws.cloud_init import USER_DATA_LIMIT
from mpicloud.spec import ClusterSpec, load_spec
from tests.cloud.powershell import syntax_problems

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Aws'Only\"Secret-77!"


@pytest.fixture(params=["aws-windows.yaml", "aws-windows-elastic.yaml"])
def spec(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> ClusterSpec:
    monkeypatch.setenv("MPICLOUD_ADMIN_PASSWORD", PASSWORD)
    return load_spec(ROOT / "examples" / request.param)


def _task(text: str) -> str:
    doc = yaml.safe_load(text)
    assert doc["version"] == 1.0 and len(doc["tasks"]) == 1
    task = doc["tasks"][0]
    assert task["task"] == "executeScript"
    step = task["inputs"][0]
    assert (step["type"], step["runAs"], step["frequency"]) == ("powershell", "localSystem", "always")
    content: str = step["content"]
    return content


def _parsable(task: str) -> str:
    """tree-sitter's grammar rejects parameter names with digits (-AdminUserB64), which PowerShell accepts."""
    return re.sub(r"-(\w+)B64\b", r"-\1Base", task)


def test_bootstrap_and_user_data_parse(spec: ClusterSpec) -> None:
    assert syntax_problems(windows_bootstrap.bootstrap_ps1(spec)) == []
    assert syntax_problems(_parsable(_task(powershell.user_data(spec)))) == []
    assert syntax_problems(_parsable(_task(powershell.user_data(spec))) + "\nif ($x -eq {") != []


def test_no_secret_and_within_ec2_limits(spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(spec)
    text = powershell.user_data(spec, script)
    for where in (script, text, *powershell.script_parameters("/mpicloud/x/n", script).values()):
        assert PASSWORD not in where and base64.b64encode(PASSWORD.encode()).decode() not in where
    assert len(text.encode()) <= USER_DATA_LIMIT
    assert "Get-SECSecretValue -SecretId $SecretId" in script and "$AdminPassword = Get-AdminPassword" in script


def test_ssm_pieces_are_the_script_the_user_data_checks(spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(spec)
    pieces = powershell.script_parameters("/mpicloud/winaws/nonce", script)
    names = sorted(pieces, key=lambda n: int(n.rsplit("/", 1)[-1]))
    assert all(len(v) <= 4096 for v in pieces.values())
    joined = gzip.decompress(base64.b64decode("".join(pieces[n] for n in names))).decode("ascii")
    assert joined == script
    task = _task(powershell.user_data(spec, script))
    assert f"0..{len(pieces) - 1} |" in task and windows_bootstrap.script_sha256(script) in task


def test_nodes_rename_then_reboot_and_get_fixed_names(spec: ClusterSpec) -> None:
    task = _task(powershell.user_data(spec))
    assert "Rename-Computer -NewName $name -Force; exit 3010" in task
    script = windows_bootstrap.bootstrap_ps1(spec)
    ips = ", ".join(f"'10.0.0.{10 + i}'" for i in range(spec.node_count))  # elastic: the head and every compute node
    assert f"$NodeIps = @({ips})" in script and spec.node_count in (4, 9)
    assert "Add-LocalGroupMember -SID 'S-1-5-32-544' -Member $AdminUser" in script


def test_idle_shutdown_halts_on_aws(spec: ClusterSpec) -> None:
    assert spec.target.stop_command is not None and spec.target.stop_command[-2:] == ("-Mode", "halt")
    assert syntax_problems((ROOT / "provision" / "windows" / "stop-cluster.ps1").read_text()) == []
