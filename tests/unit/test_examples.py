"""Every example spec validates, and renders what its target's nodes run at first boot (one per (cloud, os) pair)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpicloud.render.bootstrap import RENDERERS, boot_files
from mpicloud.spec import load_spec
from mpicloud.spec.targets import TARGETS
from tests.conftest import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"local.yaml": ("local", "linux"), "aws-linux.yaml": ("aws", "linux"),
            "aws-linux-elastic.yaml": ("aws", "linux"), "aws-linux-elastic-slurm.yaml": ("aws", "linux"),
            "aws-windows.yaml": ("aws", "windows"), "aws-windows-elastic.yaml": ("aws", "windows"),
            "azure-linux.yaml": ("azure", "linux"),
            "azure-windows.yaml": ("azure", "windows"), "azure-linux-elastic.yaml": ("azure", "linux"),
            "azure-windows-elastic.yaml": ("azure", "windows"),
            "azure-linux-elastic-slurm.yaml": ("azure", "linux")}


def test_every_target_has_an_example_and_a_boot_renderer() -> None:
    assert set(EXAMPLES.values()) == set(TARGETS)
    assert {(t.cloud, t.bootstrap) for t in TARGETS.values()} == set(RENDERERS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_validates_and_renders(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPICLOUD_ADMIN_PASSWORD", "not-in-any-file-42")
    spec = load_spec(ROOT / "examples" / name)
    assert (spec.cloud, spec.os) == EXAMPLES[name]
    files = boot_files(spec)
    assert files and all(text.strip() for text in files.values())
    assert not any("not-in-any-file-42" in text for text in files.values())
    # an elastic cluster's head runs the pool's node actions (its cloud's); a fixed one has none
    actions = {"azure": "azure_nodes.py", "aws": "ec2_nodes.py"}.get(spec.cloud)
    assert any("resume_command" in text and str(actions) in text for text in files.values()) == bool(spec.elastic)


def test_validate_writes_the_boot_files(tmp_path: Path) -> None:
    done = cli("validate", str(ROOT / "examples" / "azure-linux.yaml"), "--boot-files", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "idle shutdown after 60 minutes: the head node deallocates every VM" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node0.cloud-config.yaml", "worker.cloud-config.yaml"]
    assert (tmp_path / "node0.cloud-config.yaml").read_text().startswith("#cloud-config\n")


def test_the_aws_elastic_example_renders_its_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import yaml

    from mpicloud.render.aws.cloud_init import cloud_config
    from mpicloud.render.cloudformation import cluster_template

    spec = load_spec(ROOT / "examples" / "aws-linux-elastic.yaml")
    assert spec.elastic is not None and (spec.elastic.min, spec.elastic.max) == (0, 8)
    files = {f["path"]: f["content"] for f in yaml.safe_load(cloud_config(spec, 0))["write_files"]}
    pool = json.loads(files["/opt/mpicloud/runner.base.json"])["pool"]
    assert (pool["max"], pool["idle_minutes"], pool["aws"]["suspend"]) == (8, 15.0, "stop")
    assert sorted(pool["aws"]["addresses"]) == sorted(f"node{i}" for i in range(1, 9))
    assert "python3-boto3" in yaml.safe_load(cloud_config(spec, 0))["packages"]
    resources = cluster_template(spec)["Resources"]
    assert "ComputeLaunchTemplate" in resources and "Node1" not in resources
