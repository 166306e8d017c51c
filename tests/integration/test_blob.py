"""The customer's Azure Blob container end to end against a real Azurite: jobs on the real local cluster pull
az:// inputs and push outputs through the node code (bucketio.py + blobstore.py under the node's Python), with
the SAS `mpicloud bucket install` delivered; SAS limits (permissions, container, expiry) enforced by Azurite."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpicloud.api import Cluster
from mpicloud.jobs.query import read_log
from tests.conftest import cli
from tests.integration.azurite import ACCOUNT, KEY, BlobWorld, azurite_world
from tests.integration.nodeio import bucketio, zip_bytes
from tests.integration.truncating import Cutter, truncating_relay

CONTAINER, OTHER = "runs", "elsewhere"
URL = f"az://{ACCOUNT}/{CONTAINER}"


@pytest.fixture(scope="module")
def world() -> Iterator[BlobWorld]:
    with azurite_world() as w:
        for name in (CONTAINER, OTHER):
            w.container(name).create_container()
        w.container(CONTAINER).upload_blob("input/mesh.dat", b"mesh")
        w.container(OTHER).upload_blob("input/mesh.dat", b"other mesh")
        yield w


def _spec_file(tmp_path: Path, world: BlobWorld) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "itest", "nodes": 2, "cloud": "local", "bucket": {
        "kind": "azure_blob", "account": ACCOUNT, "container": CONTAINER, "endpoint_url": world.endpoint}}))
    return spec


def _install(cluster_home: Path, spec: Path, **env: str) -> subprocess.CompletedProcess[str]:
    option = ["--account-key-env", "AZ_KEY"] if "AZ_KEY" in env else ["--sas-env", "AZ_SAS"]
    return cli("bucket", "install", "itest", str(spec), *option, env={"MPICLOUD_HOME": str(cluster_home), **env})


def _blob_json(cluster_home: Path) -> Path:
    return cluster_home / "clusters" / "itest" / "shared" / ".mpicloud" / "azure" / "blob.json"


@pytest.fixture()
def blob_cluster(local_cluster: Cluster, cluster_home: Path, world: BlobWorld, tmp_path: Path) -> Iterator[Cluster]:
    """The session cluster with a SAS made from the account key by `mpicloud bucket install`; removed after."""
    done = _install(cluster_home, _spec_file(tmp_path, world), AZ_KEY=KEY)
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout + done.stderr
    config = _blob_json(cluster_home)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert KEY not in config.read_text() and "sig=" in json.loads(config.read_text())["sas"]
    yield local_cluster
    config.unlink()


@pytest.fixture()
def sas_cluster(local_cluster: Cluster, cluster_home: Path, world: BlobWorld,
                tmp_path: Path) -> Iterator[Any]:
    """Install a given SAS with `--sas-env` (returns the installer); removed after."""
    def install(sas: str) -> Cluster:
        done = _install(cluster_home, _spec_file(tmp_path, world), AZ_SAS=sas)
        assert done.returncode == 0 and sas not in done.stdout + done.stderr, done.stderr
        return local_cluster
    yield install
    _blob_json(cluster_home).unlink(missing_ok=True)


def _names(world: BlobWorld, prefix: str, container: str = CONTAINER) -> list[str]:
    return sorted(b.name for b in world.container(container).list_blobs(name_starts_with=prefix))


def test_job_pulls_input_from_and_pushes_outputs_to_blob(blob_cluster: Cluster, world: BlobWorld) -> None:
    runs = world.container(CONTAINER)
    runs.upload_blob("input/case.zip", zip_bytes({"case/params.txt": b"mach=0.8\n"}), overwrite=True)
    size = 20 * 1024 * 1024 + 3  # several blocks, uploaded in parallel
    job = blob_cluster.submit(
        ["sh", "-c", f"cat case/params.txt > result.txt && head -c {size} /dev/urandom > big.bin "
         "&& sha256sum big.bin > big.sha"], inputs=[f"{URL}/input/case.zip"], output_to=f"{URL}/output/run1/")
    info = job.wait(180)
    assert info.state == "succeeded", (info.reason, read_log(blob_cluster.queue, job.id, "post"))
    # staged inputs are not pushed back; what the job made is
    assert _names(world, "output/run1/") == ["output/run1/big.bin", "output/run1/big.sha", "output/run1/result.txt"]
    assert runs.download_blob("output/run1/result.txt").readall() == b"mach=0.8\n"
    pushed = runs.download_blob("output/run1/big.bin").readall()
    assert runs.download_blob("output/run1/big.sha").readall().decode().split()[0] == hashlib.sha256(
        pushed).hexdigest() and len(pushed) == size


def test_https_form_and_prefix_inputs(blob_cluster: Cluster, world: BlobWorld) -> None:
    world.container(CONTAINER).upload_blob("input/run 7/a+b c.txt", b"odd name", overwrite=True)
    https = f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/input/run%207/"
    job = blob_cluster.submit(["sh", "-c", "cat 'run 7/a+b c.txt' input/mesh.dat"],
                              inputs=[https, f"{URL}/input/"])
    info = job.wait(120)
    assert info.state == "succeeded", info.reason
    assert job.stdout().startswith("odd name") and job.stdout().endswith("mesh")


def test_sas_without_write_permission_fails_the_push_naming_the_object(sas_cluster: Any, world: BlobWorld) -> None:
    cluster = sas_cluster(world.sas(CONTAINER, "rl"))
    job = cluster.submit(["sh", "-c", "echo x > out.txt"], output_to=f"{URL}/output/denied/")
    info = job.wait(120)
    assert info.state == "failed", info.reason
    reason = info.reason or ""
    assert f"upload to {URL}/output/denied/ failed" in reason and f"{URL}/output/denied/out.txt" in reason
    assert "AuthorizationPermissionMismatch" in reason or "403" in reason
    assert _names(world, "output/denied/") == []


def test_sas_for_another_container_is_refused(sas_cluster: Any, world: BlobWorld) -> None:
    cluster = sas_cluster(world.sas(OTHER))
    job = cluster.submit(["sh", "-c", "echo ran"], inputs=[f"{URL}/input/mesh.dat"])
    info = job.wait(120)
    assert info.state == "failed" and "input staging failed" in (info.reason or "")
    assert f"{URL}/input/mesh.dat" in (info.reason or "") and job.stdout() == ""


def test_expired_sas_is_refused_and_said_so(sas_cluster: Any, world: BlobWorld) -> None:
    cluster = sas_cluster(world.sas(CONTAINER, hours=-1))
    job = cluster.submit(["sh", "-c", "echo ran"], inputs=[f"{URL}/input/mesh.dat"])
    info = job.wait(120)
    assert info.state == "failed" and "the SAS expired at" in (info.reason or ""), info.reason


def test_doe_sweep_reads_input_and_writes_output_per_case(blob_cluster: Cluster, world: BlobWorld,
                                                          tmp_path: Path) -> None:
    runs = world.container(CONTAINER)
    cases = ("a", "b", "c")
    for case in cases:
        runs.upload_blob(f"input/doe/{case}.txt", f"case {case}\n".encode(), overwrite=True)
    table = tmp_path / "runs.csv"
    table.write_text("case,input_url,output_url\n" + "".join(
        f"{c},{URL}/input/doe/{c}.txt,{URL}/output/{c}/\n" for c in cases))
    template = tmp_path / "run.sh.j2"
    template.write_text("tr a-z A-Z < {{ case }}.txt > {{ case }}.out\n")
    _, jobs = blob_cluster.sweep(table, template)
    assert [j.wait(180).state for j in jobs] == ["succeeded"] * len(cases)
    for case in cases:
        assert _names(world, f"output/{case}/") == [f"output/{case}/{case}.out"]
        assert runs.download_blob(f"output/{case}/{case}.out").readall() == f"CASE {case.upper()}\n".encode()


def test_install_needs_exactly_one_credential(cluster_home: Path, world: BlobWorld, tmp_path: Path,
                                              local_cluster: Cluster) -> None:
    spec = _spec_file(tmp_path, world)
    done = cli("bucket", "install", "itest", str(spec), env={"MPICLOUD_HOME": str(cluster_home)})
    assert done.returncode == 2 and "--sas-env or --account-key-env" in done.stderr
    assert "Traceback" not in done.stderr and not _blob_json(cluster_home).exists()


def _config_env(tmp_path: Path, endpoint: str, sas: str) -> dict[str, str]:
    config = tmp_path / "blob.json"
    config.write_text(json.dumps({"account": ACCOUNT, "endpoint": endpoint, "sas": sas}))
    return {**os.environ, "MPICLOUD_BLOB_CONFIG": str(config)}


@pytest.mark.parametrize("times", [2, -1], ids=["retried", "never-whole"])
def test_cut_downloads_are_retried_and_never_renamed_into_place(world: BlobWorld, tmp_path: Path,
                                                                times: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    world.container(CONTAINER).upload_blob("input/cut/field.bin", data, overwrite=True)
    cutter = Cutter(suffix="/input/cut/field.bin", times=times)
    with truncating_relay(world.endpoint, cutter) as relay:
        got = bucketio(_config_env(tmp_path, relay, world.sas(CONTAINER)), "get", f"{URL}/input/cut/field.bin",
                       str(tmp_path / "in"))
    target = tmp_path / "in" / "field.bin"
    if times > 0:
        assert got.returncode == 0, got.stderr
        assert target.read_bytes() == data and cutter.cut == 2
    else:
        assert got.returncode == 1 and f"{URL}/input/cut/field.bin" in got.stderr, got.stderr
        assert cutter.cut >= 2 and not target.exists()
    assert not [p.name for p in tmp_path.glob("in/*") if p.name != "field.bin"]  # no part file left behind
