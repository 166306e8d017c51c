"""Spec validation: every problem reported with its field path, "did you mean", examples valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mpicloud.errors import SpecError
from mpicloud.secret import Secret
from mpicloud.spec import load_spec, parse_spec, spec_from_dict
from mpicloud.spec.model import SPEC_VERSION
from mpicloud.spec.versions import upgrade
from tests.conftest import cli
from tests.specdata import PUBKEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")))
def test_examples_validate(example: Path) -> None:
    spec = load_spec(example)
    assert spec.name and spec.node_count >= 1 and spec.total_slots >= 1


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "s.yaml")
    return caught.value.problems


def test_every_problem_has_its_field_path_and_did_you_mean() -> None:
    found = problems("name: ok1\ncloud: local\nnodes: 0\nnodez: 3\nadmin: {usernme: a}\n")
    assert "nodes: Input should be greater than or equal to 1" in found
    assert "nodez: unknown field; did you mean 'nodes'?" in found
    assert "admin.usernme: unknown field; did you mean 'username'?" in found


def test_unknown_key_without_close_match_lists_known_fields() -> None:
    found = problems("name: ok1\ncloud: local\nnodes: 1\nlocal: {zzz: 1}\n")
    assert found[0].startswith("local.zzz: unknown field; known fields: address_base, port")


@pytest.mark.parametrize(("text", "expected"), [
    ("name: a1\ncloud: gcp\nnodes: 1\n", "cloud: Input should be 'local', 'azure' or 'aws'"),
    ("name: a1\ncloud: local\nos: windows\nnodes: 1\n", "cloud 'local' does not run os 'windows'"),
    ("name: a1\ncloud: aws\nnodes: 1\nregion: y\nadmin: {ssh_public_key: 'ssh-ed25519 AAAA'}\n", "size: cloud 'aws'"),
    ("name: a1\ncloud: azure\nos: windows\nnodes: 1\nsize: x\nregion: y\n", "needs admin.password"),
    ("name: a1\ncloud: local\nnodes: 1\nadmin: {password: hunter2}\n", "admin.password: Input should be"),
    ("name: a1\ncloud: local\nnodes: 1\naccess: {allowed_cidrs: [10.0.0.0/33]}\n", "allowed_cidrs"),
    ("name: A_1\ncloud: local\nnodes: 1\n", "name: must be 2-32 lower-case"),
    ("name: a1\ncloud: local\nnodes: 1\nlocal: {address_base: 10.0.0.1}\n", "must be a loopback address"),
    ("name: a1\ncloud: local\nnodes: 1\nbucket: {name: b-1, input_prefix: data/, output_prefix: data/out/}\n",
     "must not contain one another"),
    ("name: a1\ncloud: local\nnodes: 1\nversion: 9\n", "version: 9 is newer than this mpicloud"),
    ("- just a list\n", "must be a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_bad_specs_name_the_field(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


LINUX_KEY = f"admin: {{ssh_public_key: '{PUBKEY}'}}\n"
WINDOWS_PASSWORD = "admin: {password: {env: MPICLOUD_ADMIN_PASSWORD}}\n"


@pytest.mark.parametrize(("cloud", "os", "size", "admin", "names", "launcher"), [
    ("local", "linux", None, "", "node0", "mpirun"),
    ("aws", "linux", "c5n.large", LINUX_KEY, "node0", "mpirun"),
    ("aws", "windows", "c5.xlarge", WINDOWS_PASSWORD, "N0", "mpiexec"),
    ("azure", "linux", "Standard_D4s_v5", LINUX_KEY, "node0", "mpirun"),
    ("azure", "windows", "Standard_D4s_v5", WINDOWS_PASSWORD, "N0", "mpiexec"),
])
def test_every_cloud_runs_every_os(cloud: str, os: str, size: str | None, admin: str, names: str,
                                   launcher: str) -> None:
    where = f"size: {size}\nregion: r1\n" if size else ""
    spec = parse_spec(f"name: a1\ncloud: {cloud}\nos: {os}\nnodes: 2\n{where}{admin}")
    assert (spec.target.cloud, spec.target.os) == (cloud, os)
    assert spec.node_names == [names, names[:-1] + "1"] and spec.target.platform.launcher == launcher
    assert spec.shared_storage.path == {"local": "shared", "linux": "/shared", "windows": "C:\\shared"}[
        "local" if cloud == "local" else os]


@pytest.mark.parametrize(("cloud", "os", "extra", "expected"), [
    ("aws", "linux", "azure: {linux_image: ubuntu-hpc}\n", "azure: this section is only allowed with cloud: azure"),
    ("azure", "linux", "aws: {efa: true}\n", "aws: this section is only allowed with cloud: aws"),
    ("azure", "linux", "azure: {windows_version: '2025'}\n", "azure.windows_version: only for os windows, not "
                                                               "os linux"),
    ("azure", "windows", "azure: {linux_image: ubuntu}\n", "azure.linux_image: only for os linux, not os windows"),
    ("azure", "linux", "azure: {rdma: true}\n", "azure.rdma: size 'Standard_D4s_v5' has no InfiniBand"),
    ("aws", "linux", "aws: {efa: true}\n", "aws.efa: instance type 'c5n.large' has no EFA"),
    ("aws", "windows", "aws: {efa: true}\n", "aws.efa: only for os linux, not os windows"),
    ("azure", "linux", "size: Standard_HB120rs_v3\nazure: {rdma: true, linux_image: ubuntu}\n",
     "azure.linux_image: azure.rdma on Linux needs ubuntu-hpc"),
])
def test_options_of_another_target_or_size_are_rejected_by_field(cloud: str, os: str, extra: str,
                                                                  expected: str) -> None:
    size = "c5n.large" if cloud == "aws" else "Standard_D4s_v5"
    admin = LINUX_KEY if os == "linux" else WINDOWS_PASSWORD
    found = problems(f"name: a1\ncloud: {cloud}\nos: {os}\nnodes: 1\nsize: {size}\nregion: r\n{admin}{extra}")
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(("cloud", "os", "size", "extra"), [
    ("azure", "linux", "Standard_HB120rs_v3", "azure: {rdma: true, linux_image: ubuntu-hpc}\n"),
    ("azure", "windows", "Standard_HC44rs", "azure: {rdma: true, windows_version: '2022'}\n"),
    ("aws", "linux", "c5n.18xlarge", "aws: {efa: true}\n"),
    ("aws", "windows", "hpc7a.96xlarge", "aws: {placement_group: true}\n"),
])
def test_rdma_on_a_size_that_has_it(cloud: str, os: str, size: str, extra: str) -> None:
    admin = LINUX_KEY if os == "linux" else WINDOWS_PASSWORD
    parse_spec(f"name: a1\ncloud: {cloud}\nos: {os}\nnodes: 2\nsize: {size}\nregion: r\n{admin}{extra}")


def test_the_ami_parameter_follows_the_os() -> None:
    base = "name: a1\ncloud: aws\nnodes: 1\nsize: c5.large\nregion: r\n"
    assert "debian" in parse_spec(base + LINUX_KEY).ami_parameter
    assert "Windows_Server-2022" in parse_spec(base + "os: windows\n" + WINDOWS_PASSWORD).ami_parameter
    pinned = parse_spec(base + LINUX_KEY + "aws: {ami_ssm_parameter: /my/ami}\n")
    assert pinned.ami_parameter == "/my/ami"


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the file"):
        load_spec(tmp_path / "nope.yaml")


def test_password_is_a_reference_never_a_value() -> None:
    spec = spec_from_dict({"name": "w1", "cloud": "azure", "os": "windows", "nodes": 2, "size": "x",
                           "region": "y", "admin": {"password": {"env": "PW_VAR"}}})
    assert spec.admin.password is not None and spec.admin.password.env == "PW_VAR"
    assert str(Secret("hunter2")) == "***" and "hunter2" not in repr(Secret("hunter2"))


def test_defaults_per_cloud() -> None:
    local = spec_from_dict({"name": "l1", "cloud": "local", "nodes": 1})
    assert local.shared_storage.kind == "local"
    win = load_spec(ROOT / "examples" / "azure-windows.yaml")
    assert win.shared_storage.path == "C:\\shared" and win.bucket_grant is None
    aws = load_spec(ROOT / "examples" / "aws-linux.yaml")
    assert aws.bucket_grant == "instance_role" and aws.total_slots == 32


def test_version_chain_applies_each_step_in_order() -> None:
    chain = {1: lambda d: {**d, "a": 1}, 2: lambda d: {**d, "b": d["a"] + 1}}
    assert upgrade({"version": 1}, chain, current=3) == {"version": 3, "a": 1, "b": 2}
    with pytest.raises(ValueError, match="newer"):
        upgrade({"version": 4}, chain, current=3)


AWS = {"name": "c1", "cloud": "aws", "nodes": 2, "size": "c5n.large", "region": "eu-west-1",
       "admin": {"ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9r me"}}


@pytest.mark.parametrize("key", ["cost center", "team/a", "..", "_index"])
def test_aws_tag_keys_must_be_readable_over_instance_metadata(key: str) -> None:
    with pytest.raises(SpecError, match="instance metadata"):
        spec_from_dict({**AWS, "tags": {key: "x"}})
    assert spec_from_dict({**AWS, "tags": {"cost-center:team@a": "x"}}).tags


def test_windows_without_a_key_is_password_only_and_key_only_needs_a_key() -> None:
    base = {"name": "w1", "cloud": "azure", "os": "windows", "nodes": 1, "size": "Standard_D4s_v5",
            "region": "westeurope", "admin": {"password": {"env": "PW"}}}
    assert spec_from_dict(base).password_only
    with pytest.raises(SpecError, match="password_ssh"):
        spec_from_dict({**base, "azure": {"password_ssh": False}})
    keyed = spec_from_dict({**base, "admin": {**base["admin"], "ssh_public_key": AWS["admin"]["ssh_public_key"]},
                            "azure": {"password_ssh": False}})
    assert not keyed.password_only


def test_validate_says_when_a_cluster_is_password_only(tmp_path: Path) -> None:
    spec = tmp_path / "w.yaml"
    spec.write_text("name: w1\ncloud: azure\nos: windows\nnodes: 1\nsize: Standard_D4s_v5\nregion: westeurope\n"
                    "admin: {password: {env: PW}}\n")
    done = cli("validate", str(spec))
    assert done.returncode == 0 and "password-only" in done.stdout, done.stderr
    spec.write_text(spec.read_text().replace("{password: {env: PW}}", f"{{password: {{env: PW}}, ssh_public_key: "
                                             f"'{PUBKEY}'}}"))
    keyed = cli("validate", str(spec))
    assert keyed.returncode == 0 and "password-only" not in keyed.stdout, keyed.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("name: a1\ncloud: azure\nos: windows\nnodes: 1\nsize: x\nregion: y\nscheduler: slurm\n"
     "admin: {password: {env: P}}\n", "scheduler: slurm runs on Linux clusters only"),
    ("name: a1\ncloud: local\nnodes: 1\nscheduler: slurm\nlocal: {network: loopback}\n",
     "scheduler: slurm on the local cluster needs local.network: namespaces"),
    ("name: a1\ncloud: local\nnodes: 1\nscheduler: pbs\n", "scheduler: Input should be 'builtin' or 'slurm'"),
    ("name: a1\ncloud: local\nnodes: 1\nlocal: {network: bridge}\n",
     "local.network: Input should be 'loopback' or 'namespaces'"),
])
def test_scheduler_is_checked_against_os_cloud_and_network(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_local_network_defaults_follow_the_scheduler() -> None:
    base = {"name": "a1", "cloud": "local", "nodes": 2}
    assert spec_from_dict(base).scheduler == "builtin"
    assert spec_from_dict(base).local_network == "loopback"
    assert spec_from_dict({**base, "scheduler": "slurm"}).local_network == "namespaces"
    assert spec_from_dict({**base, "local": {"network": "namespaces"}}).local_network == "namespaces"


def test_version_1_bucket_becomes_s3_and_blob_containers_are_their_own_kind() -> None:
    old = spec_from_dict({"version": 1, "name": "ab", "cloud": "local", "nodes": 1, "bucket": {"name": "sim-data"}})
    assert old.version == SPEC_VERSION and old.s3_bucket is not None and old.s3_bucket.name == "sim-data"
    blob = spec_from_dict({"name": "ab", "cloud": "azure", "os": "windows", "nodes": 1, "size": "Standard_D2s_v5",
                           "region": "westeurope", "admin": {"password": {"env": "X"}},
                           "bucket": {"kind": "azure_blob", "account": "simdata", "container": "runs"}})
    assert blob.blob_container is not None and blob.s3_bucket is None
    assert blob.bucket_grant == "managed_identity"


@pytest.mark.parametrize(("field", "value"), [("account", "Sim_Data"), ("container", "a--b"),
                                              ("input_prefix", "../up/"), ("output_prefix", "x\\y/"),
                                              ("endpoint_url", "ftp://127.0.0.1")])
def test_blob_container_fields_are_checked_by_name(field: str, value: str) -> None:
    bucket = {"kind": "azure_blob", "account": "simdata", "container": "runs", field: value}
    with pytest.raises(SpecError, match=field):
        spec_from_dict({"name": "ab", "cloud": "local", "nodes": 1, "bucket": bucket})


def test_nodes_is_a_count_or_an_elastic_range() -> None:
    fixed = parse_spec("name: ok1\ncloud: local\nnodes: 3\n")
    assert fixed.elastic is None and fixed.node_count == 3 and fixed.total_slots == 3
    elastic = parse_spec("name: ok1\ncloud: local\nslots_per_node: 2\nnodes: {min: 0, max: 4}\n"
                         "scale_down_idle_minutes: 5\n")
    assert elastic.elastic is not None and (elastic.elastic.min, elastic.elastic.max) == (0, 4)
    assert elastic.node_count == 5 and elastic.total_slots == 8  # the head runs no jobs
    assert parse_spec("version: 2\nname: ok1\ncloud: local\nnodes: 3\n").nodes == 3  # upgraded unchanged


@pytest.mark.parametrize(("text", "expected"), [
    ("nodes: {min: 5, max: 2}", "nodes: min (5) must not exceed max (2)"),
    ("nodes: {min: -1, max: 2}", "nodes.min: Input should be greater than or equal to 0"),
    ("nodes: {min: 0}", "nodes.max: Field required"),
    ("nodes: {min: 0, max: 2, maximum: 3}", "nodes.maximum: unknown field"),
    ("nodes: 3\nscale_down_idle_minutes: 5", "scale_down_idle_minutes needs an elastic cluster"),
    ("nodes: {min: 0, max: 2}\nscale_down_idle_minutes: 0", "scale_down_idle_minutes: Input should be greater"),
    ("nodes: {min: 0, max: 2}\nscheduler: slurm\nlocal: {network: loopback}", "needs local.network: namespaces"),
])
def test_bad_elastic_specs_name_the_field(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(f"name: ok1\ncloud: local\n{text}\n")), problems(
        f"name: ok1\ncloud: local\n{text}\n")


def test_elastic_runs_with_slurm_and_on_namespaced_nodes() -> None:
    for extra in ("scheduler: slurm\n", "local: {network: namespaces}\n"):
        spec = parse_spec(f"name: ok1\ncloud: local\nnodes: {{min: 0, max: 2}}\n{extra}")
        assert spec.elastic is not None and spec.local_network == "namespaces"


def test_elastic_is_accepted_on_aws_windows_and_with_slurm_on_the_linux_clouds() -> None:
    text = (ROOT / "examples" / "aws-windows.yaml").read_text(encoding="utf-8")
    spec = parse_spec(re.sub(r"(?m)^nodes: .*$", "nodes: {min: 0, max: 2}", text))
    assert spec.cloud == "aws" and spec.os == "windows" and spec.elastic is not None and spec.node_count == 3
    for cloud in ("aws", "azure"):
        text = (ROOT / "examples" / f"{cloud}-linux-elastic.yaml").read_text(encoding="utf-8")
        spec = parse_spec(text + "scheduler: slurm\n")
        assert spec.scheduler == "slurm" and spec.elastic is not None
    with pytest.raises(SpecError, match=r"scheduler: slurm runs on Linux clusters only"):
        parse_spec((ROOT / "examples" / "azure-windows-elastic.yaml").read_text(encoding="utf-8") +
                   "scheduler: slurm\n")


@pytest.mark.parametrize("example", ["azure-linux-elastic.yaml", "azure-windows-elastic.yaml"])
def test_elastic_is_accepted_on_azure_linux_and_windows(example: str) -> None:
    spec = load_spec(ROOT / "examples" / example)
    assert spec.cloud == "azure" and spec.elastic is not None and spec.scheduler == "builtin"
    assert spec.node_count == spec.elastic.max + 1  # every compute VM is created up front


def test_elastic_on_aws_linux_with_the_builtin_queue_or_slurm() -> None:
    from tests.specdata import aws_doc

    spec = spec_from_dict(aws_doc(name="demo", nodes={"min": 0, "max": 2}, aws={"suspend": "terminate"}))
    assert spec.elastic is not None and spec.node_count == 3 and spec.aws_options.suspend == "terminate"
    assert spec_from_dict(aws_doc(name="demo", nodes={"min": 0, "max": 2})).aws_options.suspend == "stop"
    slurm = spec_from_dict(aws_doc(name="demo", nodes={"min": 1, "max": 2}, scheduler="slurm"))
    assert slurm.elastic is not None and slurm.scheduler == "slurm" and slurm.node_count == 3
    with pytest.raises(SpecError, match=r"aws\.suspend: Input should be 'stop' or 'terminate'"):
        spec_from_dict(aws_doc(name="demo", nodes={"min": 0, "max": 2}, aws={"suspend": "hibernate"}))


def test_managed_identity_blob_grant_needs_azure() -> None:
    with pytest.raises(SpecError, match=r"bucket\.grant: managed_identity needs cloud: azure"):
        spec_from_dict({"name": "ab", "cloud": "local", "nodes": 1, "bucket": {
            "kind": "azure_blob", "account": "simdata", "container": "runs", "grant": "managed_identity"}})
