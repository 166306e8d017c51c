"""Linux on Azure: the custom data (cloud-init schema, no secret, size, RDMA settings) and its Azure node scripts run
for real against a loopback stand-in of IMDS, Key Vault and Resource Manager (tests/cloud/azure_fake.py)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from mpicloud.assets import provision_dir, runner_bundle, runner_files
from mpicloud.render.azure import cloud_init
from mpicloud.spec import ClusterSpec, load_spec, spec_from_dict
from tests.cloud.azure_fake import TOKEN, FakeAzure, serve
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
LINUX = provision_dir() / "linux"
TOP_LEVEL = {"hostname", "preserve_hostname", "manage_etc_hosts", "users", "package_update", "packages",
             "write_files", "runcmd"}


@pytest.fixture(scope="module")
def hpc() -> ClusterSpec:
    """examples/azure-linux.yaml: HB120rs_v3 with InfiniBand on the Ubuntu HPC image."""
    return load_spec(ROOT / "examples" / "azure-linux.yaml")


def plain(**fields: object) -> ClusterSpec:
    """The example on a size without RDMA and the plain Ubuntu image."""
    doc = yaml.safe_load((ROOT / "examples" / "azure-linux.yaml").read_text())
    doc.update(size="Standard_D4s_v5", azure={"linux_image": "ubuntu"}, **fields)
    return spec_from_dict(doc)


@pytest.mark.parametrize("index", [0, 1, None])
def test_custom_data_passes_cloud_init_schema(tmp_path: Path, hpc: ClusterSpec, index: int | None) -> None:
    program = require("cloud-init", "cloud-init")
    text = gzip.decompress(base64.b64decode(cloud_init.custom_data(hpc, index))).decode()
    assert text == cloud_init.cloud_config(hpc, index) and set(yaml.safe_load(text)) <= TOP_LEVEL
    path = tmp_path / "custom-data.yaml"
    path.write_text(text)
    done = subprocess.run([program, "schema", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_platform_creates_the_admin_and_nodes_boot_in_order(hpc: ClusterSpec) -> None:
    head = yaml.safe_load(cloud_init.cloud_config(hpc, 0))
    assert head["users"] == ["default"]  # the admin comes from osProfile with its SSH key, no password
    commands = [" ".join(c) for c in head["runcmd"]]
    assert commands[0] == "bash /opt/mpicloud/azure-node-env.sh"
    assert commands[1] == "bash /opt/mpicloud/cluster-secrets.sh head mpiadmin"
    assert any(c.startswith("bash /opt/mpicloud/azure-runner.sh ") for c in commands)
    assert commands[-1] == "systemctl enable --now mpicloud-runner.service"
    assert "shared-volume.sh" not in " ".join(commands) and "awscli" not in head["packages"]
    worker = yaml.safe_load(cloud_init.cloud_config(hpc, None))
    worker_commands = [" ".join(c) for c in worker["runcmd"]]
    assert not [c for c in worker_commands if "azure-runner.sh" in c or "systemctl" in c]
    assert any(c.startswith("bash /opt/mpicloud/cluster-files.sh auto mpiadmin /shared 10.0.0.10 ")
               for c in worker_commands)


def test_runner_config_deallocates(hpc: ClusterSpec) -> None:
    files = {f["path"]: f["content"] for f in yaml.safe_load(cloud_init.cloud_config(hpc, 0))["write_files"]}
    config = json.loads(files["/opt/mpicloud/runner.base.json"])
    assert config["stop_command"] == ["/opt/mpicloud/stop-cluster.sh", "deallocate"]
    assert config["launcher"] == "mpirun" and config["env"] == {} and config["nodes"] == []


@pytest.mark.parametrize(("devices", "expected"), [
    ([], {}),
    (["mlx5_ib0"], {"OMPI_MCA_pml": "ucx", "OMPI_MCA_osc": "ucx"}),
    (["efa_0"], {"FI_PROVIDER": "efa", "OMPI_MCA_pml": "cm", "OMPI_MCA_mtl": "ofi"}),
])
def test_mpi_uses_the_rdma_device_the_head_node_has(tmp_path: Path, hpc: ClusterSpec, devices: list[str],
                                                    expected: dict[str, str]) -> None:
    """cluster-files.sh, run for real: InfiniBand (Azure HB/HC/HX) gets UCX, EFA gets libfabric, else TCP."""
    root, shared = tmp_path / "root", tmp_path / "shared"
    (root / "etc" / "mpicloud").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("")
    (root / "etc" / "environment").write_text("")
    (root / "etc" / "mpicloud" / "node.env").write_text("MPICLOUD_COUNT=2\nMPICLOUD_SLOTS=4\nMPICLOUD_IDLE_MINUTES=0\n")
    files = {f["path"]: f["content"] for f in yaml.safe_load(cloud_init.cloud_config(hpc, 0))["write_files"]}
    (root / "opt" / "mpicloud").mkdir(parents=True)
    (root / "opt" / "mpicloud" / "runner.base.json").write_text(files["/opt/mpicloud/runner.base.json"])
    for device in devices:
        (root / "sys" / "class" / "infiniband" / device).mkdir(parents=True)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    done = _run("cluster-files.sh", "0", user, str(shared), "10.0.0.10", "10.0.0.11",
                env={"MPICLOUD_SYSROOT": str(root)})
    assert done.returncode == 0, done.stderr
    assert json.loads((shared / ".mpicloud" / "runner.json").read_text())["env"] == expected


def test_custom_data_holds_only_the_scripts_and_public_settings(hpc: ClusterSpec) -> None:
    """No secret can hide in the custom data: every file is a provision/ script verbatim or one of three rendered
    from public spec fields."""
    rendered = {"/opt/mpicloud/runner.base.json", "/opt/mpicloud/install-software.sh",
                "/etc/systemd/system/mpicloud-runner.service"}
    for index in (0, None):
        files = yaml.safe_load(cloud_init.cloud_config(hpc, index))["write_files"]
        for file in files:
            if file["path"] not in rendered:
                assert file["content"] == (LINUX / Path(file["path"]).name).read_text(), file["path"]
        assert len(cloud_init.custom_data(hpc, index)) <= cloud_init.DATA_LIMIT
    assert len(cloud_init.runner_user_data()) <= cloud_init.DATA_LIMIT


def test_images_follow_the_spec(hpc: ClusterSpec) -> None:
    assert cloud_init.image_reference(hpc)["offer"] == "ubuntu-hpc"
    assert cloud_init.image_reference(plain())["publisher"] == "Canonical"


def _run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LINUX / script), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def _compute(name: str) -> dict[str, object]:
    return {"name": name, "location": "westeurope", "subscriptionId": "sub-1", "resourceGroupName": "rg-1",
            "tagsList": [{"name": "mpicloud:nodes", "value": "3"}, {"name": "mpicloud:slots", "value": "120"},
                         {"name": "mpicloud:idle-minutes", "value": "60"},
                         {"name": "mpicloud:vault", "value": "mpiabc"}, {"name": "mpicloud:arm", "value": "ARM"}],
            "publicKeys": [{"keyData": "ssh-ed25519 AAAAkey you@laptop", "path": "/home/mpiadmin/.ssh/x"}]}


def test_node_env_comes_from_the_vm_tags_over_imds(tmp_path: Path) -> None:
    with serve(FakeAzure(_compute("hpcmpi-node1"), private_ip="10.0.0.11")) as fake:
        done = _run("azure-node-env.sh", env={"MPICLOUD_SYSROOT": str(tmp_path),
                                              "MPICLOUD_IMDS": f"{fake.url}/metadata"})
    assert done.returncode == 0, done.stderr
    etc = tmp_path / "etc" / "mpicloud"
    assert (etc / "node.env").read_text().splitlines() == [
        "MPICLOUD_COUNT=3", "MPICLOUD_SLOTS=120", "MPICLOUD_IDLE_MINUTES=60", "MPICLOUD_VAULT=mpiabc",
        "MPICLOUD_ARM=ARM", "MPICLOUD_REGION=westeurope", "MPICLOUD_PRIVATE_IP=10.0.0.11"]
    assert (etc / "admin.pub").read_text() == "ssh-ed25519 AAAAkey you@laptop\n"
    assert sorted(p.name for p in etc.iterdir()) == ["admin.pub", "node.env"]


def _node_root(tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A scratch root for cluster-secrets.sh: /etc/mpicloud and the current user's home under it."""
    root = tmp_path / name
    home = root / Path.home().relative_to("/")
    home.mkdir(parents=True)
    (root / "etc" / "mpicloud").mkdir(parents=True)
    (root / "etc" / "mpicloud" / "node.env").write_text("MPICLOUD_VAULT=mpiabc\n")
    (root / "etc" / "mpicloud" / "admin.pub").write_text("ssh-ed25519 AAAAkey you@laptop\n")
    return root, {"MPICLOUD_SYSROOT": str(root)}


def test_secrets_go_from_head_to_worker_through_the_key_vault(tmp_path: Path) -> None:
    require("ssh-keygen", "openssh-client")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    with serve(FakeAzure(_compute("hpcmpi-node0"))) as fake:
        urls = {"MPICLOUD_IMDS": f"{fake.url}/metadata", "MPICLOUD_VAULT_URL": f"{fake.url}/vault"}
        head, env = _node_root(tmp_path, "head")
        done = _run("cluster-secrets.sh", "head", user, env={**env, **urls})
        assert done.returncode == 0, done.stderr
        worker, env = _node_root(tmp_path, "worker")
        done = _run("cluster-secrets.sh", "worker", user, env={**env, **urls})
        assert done.returncode == 0, done.stderr
    assert set(fake.secrets) == {"ssh-key", "smb-password"}
    vault = [r for r in fake.requests if r[1].startswith("/vault/")]
    assert vault and all(auth == f"Bearer {TOKEN}" for _, _, auth in vault)
    key = Path.home().relative_to("/") / ".ssh" / "id_ed25519"
    assert (head / key).read_text() == (worker / key).read_text() == fake.secrets["ssh-key"]
    assert (worker / "etc" / "mpicloud" / "smb-password").read_text() == fake.secrets["smb-password"]
    assert oct((worker / "etc" / "mpicloud" / "smb-password").stat().st_mode & 0o777) == "0o600"


def test_the_head_unpacks_the_runner_from_user_data_when_its_hash_matches(tmp_path: Path, hpc: ClusterSpec) -> None:
    head = yaml.safe_load(cloud_init.cloud_config(hpc, 0))
    command = next(c for c in head["runcmd"] if c[1].endswith("azure-runner.sh"))
    fake = FakeAzure(_compute("hpcmpi-node0"), user_data=cloud_init.runner_user_data())
    with serve(fake):
        done = _run("azure-runner.sh", command[2], env={"MPICLOUD_SYSROOT": str(tmp_path),
                                                        "MPICLOUD_IMDS": f"{fake.url}/metadata"})
    assert done.returncode == 0, done.stderr
    for name, data in runner_files().items():
        assert (tmp_path / "opt" / "mpicloud" / name).read_bytes() == data
    with tarfile.open(fileobj=io.BytesIO(runner_bundle())) as tar:
        assert all(member.mtime == 0 for member in tar.getmembers())  # deterministic: same bytes every render


def test_idle_shutdown_deallocates_workers_then_the_head(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "mpicloud"
    etc.mkdir(parents=True)
    (etc / "hostfile").write_text("".join(f"node{i} slots=4\n" for i in range(3)))
    with serve(FakeAzure(_compute("hpcmpi-node0"))) as fake:
        (etc / "node.env").write_text(f"MPICLOUD_ARM={fake.url}/arm/\n")
        done = _run("stop-cluster.sh", "deallocate", env={"MPICLOUD_SYSROOT": str(tmp_path),
                                                          "MPICLOUD_IMDS": f"{fake.url}/metadata"})
    assert done.returncode == 0, done.stderr
    posts = [(path, auth) for method, path, auth in fake.requests if method == "POST"]
    group = "/arm/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Compute/virtualMachines"
    assert posts == [(f"{group}/hpcmpi-node{i}/deallocate", f"Bearer {TOKEN}") for i in (1, 2, 0)]
