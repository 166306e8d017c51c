"""What each target's nodes run at first boot, by (cloud, Target.bootstrap): file name -> text, for `mpicloud
validate --boot-files` and the example tests. Adding a target means one entry here (and its renderer)."""

from __future__ import annotations

from collections.abc import Callable

from mpicloud.render.aws import cloud_init as aws_cloud_init
from mpicloud.render.aws import powershell as aws_powershell
from mpicloud.render.azure import cloud_init as azure_cloud_init
from mpicloud.render.runner_config import runner_config, runner_config_json
from mpicloud.render.windows_bootstrap import bootstrap_ps1
from mpicloud.spec.model import ClusterSpec

Renderer = Callable[[ClusterSpec], dict[str, str]]


def _local(spec: ClusterSpec) -> dict[str, str]:
    # the local provider starts real sshd nodes itself; what it writes from the spec is the runner configuration
    return {"runner.json": runner_config_json(runner_config(spec))}


def _cloud_init(render: Callable[[ClusterSpec, int | None], str]) -> Renderer:
    return lambda spec: {"node0.cloud-config.yaml": render(spec, 0), "worker.cloud-config.yaml": render(spec, None)}


RENDERERS: dict[tuple[str, str], Renderer] = {
    ("local", "local"): _local,
    ("aws", "cloud-init"): _cloud_init(aws_cloud_init.cloud_config),
    ("azure", "cloud-init"): _cloud_init(azure_cloud_init.cloud_config),
    ("azure", "powershell"): lambda spec: {"bootstrap.ps1": bootstrap_ps1(spec)},
    ("aws", "powershell"): lambda spec: {"bootstrap.ps1": bootstrap_ps1(spec),
                                         "ec2launch-user-data.yaml": aws_powershell.user_data(spec)},
}


def boot_files(spec: ClusterSpec) -> dict[str, str]:
    """The first-boot files of the spec's target (no secrets: every renderer refuses to embed one)."""
    return RENDERERS[(spec.cloud, spec.target.bootstrap)](spec)
