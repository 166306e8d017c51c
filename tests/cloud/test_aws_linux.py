"""The Linux cloud-init user data: cloud-init schema, shell syntax, size limit, no secrets, node roles."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from mpicloud.assets import provision_dir, runner_files
from mpicloud.errors import RenderError
from mpicloud.render.aws.cloud_init import (
    USER_DATA_LIMIT,
    cloud_config,
    node_addresses,
    runner_parameters,
    user_data_base64,
)
from mpicloud.render.runner_config import runner_config
from mpicloud.spec import ClusterSpec
from tests.conftest import require
from tests.specdata import aws_spec

#: cloud-init's schema reports a misspelled top-level key as valid, so the keys are whitelisted here
TOP_LEVEL = {"hostname", "preserve_hostname", "manage_etc_hosts", "users", "package_update", "packages",
             "write_files", "runcmd"}
SPECS = {
    "smb": aws_spec(),
    "nfs": aws_spec(shared={"kind": "nfs", "path": "/shared"}),
    # an elastic Slurm cluster: power saving programs, the sudoers rule (head), CLOUD nodes
    "elastic-slurm": aws_spec(scheduler="slurm", nodes={"min": 1, "max": 3}),
    "software": aws_spec(software={"packages": ["gfortran"], "pip": ["numpy==2.1.0"], "installers": [
        {"url": "https://example.com/tool's installer.sh", "sha256": "ab" * 32, "args": ["--prefix", "/opt/x y"]}]}),
}


def _files(text: str) -> dict[str, str]:
    return {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("index", [0, 1])
def test_user_data_passes_cloud_init_schema(tmp_path: Path, name: str, index: int) -> None:
    program = require("cloud-init", "cloud-init")
    text = cloud_config(SPECS[name], index)
    assert text.startswith("#cloud-config\n")
    assert set(yaml.safe_load(text)) <= TOP_LEVEL
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    done = subprocess.run([program, "schema", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cloud_init_schema_rejects_a_broken_document(tmp_path: Path) -> None:
    """The validator really validates: a string where a list belongs fails."""
    path = tmp_path / "bad.yaml"
    path.write_text(cloud_config(SPECS["smb"], 1).replace("packages: [", "packages: x\nbad: [", 1))
    program = require("cloud-init", "cloud-init")
    done = subprocess.run([program, "schema", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_shell_script_parses(tmp_path: Path, name: str) -> None:
    for path, content in _files(cloud_config(SPECS[name], 0)).items():
        if not path.endswith(".sh"):
            continue
        script = tmp_path / Path(path).name
        script.write_text(content)
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{path}: {done.stderr}"


def test_installers_are_quoted_and_checked_before_running() -> None:
    script = _files(cloud_config(SPECS["software"], 1))["/opt/mpicloud/install-software.sh"]
    assert "install_one 'https://example.com/tool'\"'\"'s installer.sh' " + "ab" * 32 + " --prefix '/opt/x y'" \
        in script
    assert "sha256sum -c" in script.split("install_one() {")[1].split("}")[0]
    assert "python3 -m pip install --break-system-packages numpy==2.1.0" in script


def test_head_runs_runner_workers_mount(spec: ClusterSpec) -> None:
    head, worker = yaml.safe_load(cloud_config(spec, 0)), yaml.safe_load(cloud_config(spec, 1))
    head_files, worker_files = _files(cloud_config(spec, 0)), _files(cloud_config(spec, 1))
    assert "/opt/mpicloud/fetch-runner.sh" in head_files and "/opt/mpicloud/fetch-runner.sh" not in worker_files
    fetch = next(c for c in head["runcmd"] if "/opt/mpicloud/fetch-runner.sh" in c)
    digest = hashlib.sha256((provision_dir() / "runner" / "runner.py").read_bytes()).hexdigest()
    assert fetch[2].startswith("runner.py:") and fetch[2].endswith(f":{digest}")
    assert head["runcmd"].index(fetch) < head["runcmd"].index(["systemctl", "daemon-reload"])
    assert json.loads(head_files["/opt/mpicloud/runner.base.json"]) == {
        **runner_config(spec), "nodes": [], "idle_shutdown_minutes": None,  # filled in at boot (cluster-files.sh)
        "share_marker": "/shared/.mpicloud/share-marker",
        "share_probe": ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]}
    ips = node_addresses(spec.aws_options.subnet_cidr, 8)  # with the template's addresses, resizing keeps it:
    assert cloud_config(spec, 0, ips) == cloud_config(spec.model_copy(update={"nodes": 7}), 0, ips)
    # the head mounts its own /shared volume before anything writes there
    volume = ["bash", "/opt/mpicloud/shared-volume.sh", "/shared"]
    assert head["runcmd"].index(volume) < head["runcmd"].index(next(c for c in head["runcmd"] if "cluster-files.sh"
                                                                    in c[1]))
    assert volume not in worker["runcmd"] and "/opt/mpicloud/shared-volume.sh" in head_files
    service = head_files["/etc/systemd/system/mpicloud-runner.service"]
    assert "User=mpiadmin" in service and "serve --wait-lock --root /shared/.mpicloud" in service
    # restarted whatever killed it; stopping or restarting it spares the job wrappers in its cgroup
    assert "Restart=on-failure" in service and "KillMode=process" in service
    assert "samba" in head["packages"] and "cifs-utils" in worker["packages"]
    # the runner's object transfers run on boto3 from Debian (the versions the bucket tests run under)
    assert "python3-boto3" in head["packages"] and "python3-boto3" not in worker["packages"]
    assert ["systemctl", "enable", "--now", "mpicloud-runner.service"] in head["runcmd"]
    mount = [c for c in worker["runcmd"] if "/opt/mpicloud/shared-storage.sh" in c]
    assert mount and mount[0][2] == "client" and "node0" in mount[0]
    assert ["bash", "/opt/mpicloud/cluster-files.sh", "1", "mpiadmin", "/shared",
            "10.0.0.10", "10.0.0.11", "10.0.0.12"] in worker["runcmd"]
    assert "ssh_authorized_keys" not in head["users"][1]  # the key pair key comes over IMDS


def test_runner_parameters_reassemble_to_the_runner() -> None:
    parts = runner_parameters("/mpicloud/demo")
    assert all(len(v) <= 4096 for v in parts.values())
    for name, data in runner_files().items():
        keys = sorted((k for k in parts if k.startswith(f"/mpicloud/demo/runner/{name}/")),
                      key=lambda k: int(k.rsplit("/", 1)[1]))
        joined = base64.b64decode("".join(parts[k] for k in keys))
        assert gzip.decompress(joined) == data


def test_user_data_holds_no_secret(spec: ClusterSpec) -> None:
    for index in (0, 1):
        text = gzip.decompress(base64.b64decode(user_data_base64(spec, index))).decode()
        assert text == cloud_config(spec, index)
        for marker in ("PRIVATE KEY-----", "aws_secret_access_key", "AKIA", "sessiontoken"):
            assert marker not in text


def test_user_data_fits_the_ec2_limit_and_is_deterministic(spec: ClusterSpec) -> None:
    packed = base64.b64decode(user_data_base64(spec, 0))
    assert len(packed) <= USER_DATA_LIMIT
    assert user_data_base64(spec, 0) == user_data_base64(aws_spec(), 0)


def test_fixed_addresses_and_limits() -> None:
    assert node_addresses("10.1.2.0/24", 2) == ["10.1.2.10", "10.1.2.11"]
    with pytest.raises(RenderError, match="too small"):
        node_addresses("10.0.0.0/28", 8)
    with pytest.raises(RenderError, match="own directory"):
        cloud_config(aws_spec(shared={"kind": "local", "path": "/shared"}), 0)
    assert "shared-storage.sh" not in cloud_config(aws_spec(nodes=1, shared={"kind": "local", "path": "/x"}), 0) \
        .split("runcmd:")[1]
    with pytest.raises(RenderError, match=r"shared\.path"):
        cloud_config(aws_spec(shared={"kind": "smb", "path": "/sh ared"}), 0)


def test_the_example_spec_renders_for_every_node() -> None:
    from mpicloud.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "aws-linux.yaml")
    sizes = [len(base64.b64decode(user_data_base64(spec, i))) for i in range(spec.node_count)]
    assert all(size <= USER_DATA_LIMIT for size in sizes) and sizes[0] > sizes[1]
    assert "python3-numpy" in yaml.safe_load(cloud_config(spec, 1))["packages"]


def test_any_worker_user_data_is_index_free(spec: ClusterSpec) -> None:
    any_worker = yaml.safe_load(cloud_config(spec, None))
    assert "hostname" not in any_worker
    assert ["bash", "/opt/mpicloud/cluster-files.sh", "auto", "mpiadmin", "/shared",
            "10.0.0.10", "10.0.0.11", "10.0.0.12"] in any_worker["runcmd"]
    assert cloud_config(spec, None).replace("auto", "1") != cloud_config(spec, 1)  # node 1 names itself
