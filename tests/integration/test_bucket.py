"""The customer's bucket end to end against a real moto server with IAM enforcement on.

A node's view: the rendered config/credentials pair read by boto3 and by the cluster's own client (bucketio.py),
and jobs on the real local cluster that pull s3:// inputs and push outputs with the nodes' credentials.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from mpicloud.api import Cluster
from mpicloud.jobs.query import read_log
from mpicloud.render.awsconfig import AccessKey, aws_files
from mpicloud.secret import Secret
from mpicloud.spec import spec_from_dict
from mpicloud.spec.model import Bucket
from tests.conftest import cli
from tests.integration.nodeio import bucketio, zip_bytes
from tests.integration.s3server import S3World, moto_world
from tests.integration.truncating import Cutter, truncating_relay

EXTERNAL_ID = "ext-7f3a9c"
BUCKET = "sim-data"


@pytest.fixture(scope="module")
def world() -> Iterator[S3World]:
    with moto_world(Bucket(name=BUCKET, external_id=EXTERNAL_ID, trusted_account_id="123456789012")) as w:
        yield w


def _spec(world: S3World, **bucket: Any) -> Any:
    return spec_from_dict({"name": "itest", "nodes": 2, "cloud": "local", "bucket": {
        "name": BUCKET, "region": "eu-west-1", "endpoint_url": world.endpoint, **bucket}})


def _profile_dir(tmp_path: Path, world: S3World, key: tuple[str, str], **bucket: Any) -> dict[str, str]:
    files = aws_files(_spec(world, **bucket), AccessKey(key[0], Secret(key[1])))
    (tmp_path / "config").write_text(files.config)
    (tmp_path / "credentials").write_text(files.credentials.reveal() if files.credentials else "")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**clean, "AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_PROFILE": "mpicloud",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials")}


def _node_s3(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    return boto3.Session(profile_name="mpicloud").client("s3")


def _denied(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return str(info.value.response["Error"]["Code"])


def test_iam_user_profile_matrix_with_boto3(world: S3World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = _node_s3(_profile_dir(tmp_path, world, world.user_key, grant="iam_user"), monkeypatch)
    assert s3.get_object(Bucket=BUCKET, Key="input/mesh.dat")["Body"].read() == b"mesh"
    assert _denied(s3.put_object, Bucket=BUCKET, Key="input/new.dat", Body=b"x") == "AccessDenied"
    assert _denied(s3.delete_object, Bucket=BUCKET, Key="input/mesh.dat") == "AccessDenied"
    s3.put_object(Bucket=BUCKET, Key="output/result.h5", Body=b"r")
    assert s3.get_object(Bucket=BUCKET, Key="output/result.h5")["Body"].read() == b"r"
    s3.delete_object(Bucket=BUCKET, Key="output/result.h5")
    assert _denied(s3.get_object, Bucket=BUCKET, Key="other/secret.txt") == "AccessDenied"
    assert _denied(s3.put_object, Bucket=BUCKET, Key="other/x", Body=b"x") == "AccessDenied"
    assert _denied(s3.put_bucket_policy, Bucket=BUCKET, Policy="{}") == "AccessDenied"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    multipart = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3.upload_file(str(big), BUCKET, "output/big.bin", Config=multipart)
    assert world.client("s3").head_object(Bucket=BUCKET, Key="output/big.bin")["ContentLength"] == 12 << 20
    with pytest.raises(Exception, match="AccessDenied"):
        s3.upload_file(str(big), BUCKET, "input/big.bin", Config=multipart)
    # moto does not evaluate s3:prefix conditions: the listing half is proven by tests/unit/test_iam.py
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="input/")["KeyCount"] == 1


def test_cross_account_role_needs_the_external_id(world: S3World, tmp_path: Path) -> None:
    env = _profile_dir(tmp_path, world, world.node_key, grant="cross_account_role", role_arn=world.role_arn,
                       external_id=EXTERNAL_ID, trusted_account_id="123456789012")
    got = bucketio(env, "get", f"s3://{BUCKET}/input/mesh.dat", str(tmp_path / "in"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "in" / "mesh.dat").read_bytes() == b"mesh"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "big.bin").write_bytes(os.urandom(11 * 1024 * 1024))   # multipart with 5 MiB parts
    put = bucketio(env, "put", str(tmp_path / "out"), f"s3://{BUCKET}/output/xacct/")
    assert put.returncode == 0, put.stderr
    stored = world.client("s3").get_object(Bucket=BUCKET, Key="output/xacct/big.bin")["Body"].read()
    assert stored == (tmp_path / "out" / "big.bin").read_bytes()
    denied = bucketio(env, "put", str(tmp_path / "out"), f"s3://{BUCKET}/input/xacct/")
    assert denied.returncode == 1 and "AccessDenied" in denied.stderr
    # the base key alone reaches nothing in the bucket
    base = {**env, "AWS_PROFILE": "mpicloud-base"}
    assert "AccessDenied" in bucketio(base, "get", f"s3://{BUCKET}/input/mesh.dat", str(tmp_path)).stderr
    (tmp_path / "w").mkdir()
    wrong = _profile_dir(tmp_path / "w", world, world.node_key, grant="cross_account_role",
                         role_arn=world.role_arn, external_id="guessed-id", trusted_account_id="123456789012")
    refused = bucketio(wrong, "get", f"s3://{BUCKET}/input/mesh.dat", str(tmp_path))
    assert refused.returncode == 1 and "AssumeRole" in refused.stderr and "AccessDenied" in refused.stderr


@pytest.fixture()
def profile_on_cluster(local_cluster: Cluster, cluster_home: Path, world: S3World,
                       tmp_path: Path) -> Iterator[Cluster]:
    """Install the iam_user profile on the session cluster with `mpicloud bucket install`; remove it after."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "itest", "nodes": 2, "cloud": "local", "bucket": {
        "name": BUCKET, "region": "eu-west-1", "endpoint_url": world.endpoint, "grant": "iam_user"}}))
    env = {"MPICLOUD_HOME": str(cluster_home), "NODE_KEY_ID": world.user_key[0], "NODE_SECRET": world.user_key[1]}
    done = cli("bucket", "install", "itest", str(spec), "--access-key-id-env", "NODE_KEY_ID",
               "--secret-access-key-env", "NODE_SECRET", env=env)
    assert done.returncode == 0, done.stderr
    assert world.user_key[1] not in done.stdout + done.stderr
    aws = cluster_home / "clusters" / "itest" / "shared" / ".mpicloud" / "aws"
    assert stat.S_IMODE((aws / "credentials").stat().st_mode) == 0o600
    yield local_cluster
    for name in ("config", "credentials"):
        (aws / name).unlink()


def test_job_pulls_input_from_and_pushes_outputs_to_the_bucket(profile_on_cluster: Cluster,
                                                               world: S3World) -> None:
    admin = world.client("s3")
    admin.put_object(Bucket=BUCKET, Key="input/case.zip", Body=zip_bytes({"case/params.txt": b"mach=0.8\n"}))
    script = ("import boto3, pathlib; p = pathlib.Path('case/params.txt').read_text();"
              "pathlib.Path('result.txt').write_text('solved ' + p);"
              # run scripts use the same profile directly (AWS_PROFILE / AWS_CONFIG_FILE set by the runner)
              f"print(boto3.client('s3').get_object(Bucket='{BUCKET}', Key='input/mesh.dat')['Body'].read())")
    job = profile_on_cluster.submit([sys.executable, "-c", script], inputs=[f"s3://{BUCKET}/input/case.zip"],
                                    output_to=f"s3://{BUCKET}/output/run1/")
    info = job.wait(120)
    assert info.state == "succeeded", (info.reason, job.stderr())
    assert "b'mesh'" in job.stdout()
    listing = admin.list_objects_v2(Bucket=BUCKET, Prefix="output/run1/")
    keys = sorted(o["Key"] for o in listing.get("Contents", []))
    assert keys == ["output/run1/result.txt"]        # staged inputs are not pushed back
    body = admin.get_object(Bucket=BUCKET, Key="output/run1/result.txt")["Body"].read()
    assert body == b"solved mach=0.8\n"


def test_output_to_a_read_only_prefix_fails_the_job(profile_on_cluster: Cluster, world: S3World) -> None:
    job = profile_on_cluster.submit(["sh", "-c", "echo x > out.txt"], output_to=f"s3://{BUCKET}/input/sneaky/")
    info = job.wait(120)
    assert info.state == "failed" and "upload to s3://sim-data/input/sneaky/ failed" in (info.reason or "")
    assert "AccessDenied" in read_log(profile_on_cluster.queue, job.id, "post").decode()
    assert "Contents" not in world.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="input/sneaky/")


def test_unreadable_input_fails_before_the_job_runs(profile_on_cluster: Cluster) -> None:
    job = profile_on_cluster.submit(["sh", "-c", "echo ran"], inputs=[f"s3://{BUCKET}/other/secret.txt"])
    info = job.wait(120)
    assert info.state == "failed" and "input staging failed" in (info.reason or "")
    assert "AccessDenied" in (info.reason or "") and job.stdout() == ""


def test_sweep_columns_with_s3_urls(profile_on_cluster: Cluster, world: S3World, tmp_path: Path) -> None:
    admin = world.client("s3")
    for case in ("a", "b"):
        admin.put_object(Bucket=BUCKET, Key=f"input/sweep/{case}.txt", Body=f"case {case}\n".encode())
    runs = tmp_path / "runs.csv"
    runs.write_text("case,s3_input,s3_output\n" + "".join(
        f"{c},s3://{BUCKET}/input/sweep/{c}.txt,s3://{BUCKET}/output/sweep/{c}/\n" for c in ("a", "b")))
    template = tmp_path / "run.sh.j2"
    template.write_text("tr a-z A-Z < {{ case }}.txt > {{ case }}.out\n")
    _, jobs = profile_on_cluster.sweep(runs, template)
    assert [j.wait(120).state for j in jobs] == ["succeeded", "succeeded"]
    for case in ("a", "b"):
        body = admin.get_object(Bucket=BUCKET, Key=f"output/sweep/{case}/{case}.out")["Body"].read()
        assert body == f"CASE {case.upper()}\n".encode()


def test_cli_render(world: S3World, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "itest", "nodes": 2, "cloud": "local", "bucket": {
        "name": BUCKET, "grant": "iam_user", "endpoint_url": world.endpoint}}))
    docs = json.loads(cli("render", "iam", str(spec)).stdout)
    assert docs["bucket-access-policy"]["Statement"][1]["Action"] == "s3:ListBucket"
    no_key = cli("render", "awsconfig", str(spec))
    assert no_key.returncode == 2 and "--access-key-id-env" in no_key.stderr and "Traceback" not in no_key.stderr
    env = {"K": "AKIAEXAMPLE", "S": "very-secret-value"}
    refused = cli("render", "awsconfig", str(spec), "--access-key-id-env", "K", "--secret-access-key-env", "S",
                  env=env)
    assert refused.returncode == 2 and "--out" in refused.stderr and "very-secret-value" not in refused.stdout
    made = cli("render", "awsconfig", str(spec), "--out", str(tmp_path / "aws"), "--access-key-id-env", "K",
               "--secret-access-key-env", "S", env=env)
    assert made.returncode == 0, made.stderr
    assert "very-secret-value" not in made.stdout
    assert stat.S_IMODE((tmp_path / "aws" / "credentials").stat().st_mode) == 0o600
    assert "very-secret-value" in (tmp_path / "aws" / "credentials").read_text()
    missing = cli("render", "awsconfig", str(spec), "--out", str(tmp_path / "x"), "--access-key-id-env", "NOPE1",
                  "--secret-access-key-env", "NOPE2")
    assert missing.returncode == 2 and "NOPE1" in missing.stderr


def test_prefix_input_arrives_as_a_folder(profile_on_cluster: Cluster) -> None:
    job = profile_on_cluster.submit(["sh", "-c", "cat input/mesh.dat"], inputs=[f"s3://{BUCKET}/input/"])
    info = job.wait(120)
    assert info.state == "succeeded", info.reason
    assert job.stdout() == "mesh"


@pytest.mark.parametrize(("option", "value"), [("--output-to", "s3://Bad_Bucket/x/"), ("--input", "s3://b")])
def test_bad_s3_urls_are_refused_before_anything_is_queued(profile_on_cluster: Cluster, cluster_home: Path,
                                                            option: str, value: str) -> None:
    before = len(profile_on_cluster.jobs())
    done = cli("submit", "itest", option, value, "--", "true", env={"MPICLOUD_HOME": str(cluster_home)})
    assert done.returncode == 2 and option in done.stderr and "Traceback" not in done.stderr
    assert len(profile_on_cluster.jobs()) == before


def test_keys_with_spaces_and_plus_signs(world: S3World, tmp_path: Path) -> None:
    world.client("s3").put_object(Bucket=BUCKET, Key="input/run 7/a+b c.txt", Body=b"odd name")
    env = _profile_dir(tmp_path, world, world.user_key, grant="iam_user")
    got = bucketio(env, "get", f"s3://{BUCKET}/input/run 7/", str(tmp_path / "in"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "in" / "run 7" / "a+b c.txt").read_bytes() == b"odd name"
    put = bucketio(env, "put", str(tmp_path / "in"), f"s3://{BUCKET}/output/odd names/")
    assert put.returncode == 0, put.stderr
    body = world.client("s3").get_object(Bucket=BUCKET, Key="output/odd names/run 7/a+b c.txt")["Body"].read()
    assert body == b"odd name"


def test_hostile_object_keys_never_write_outside_the_destination(world: S3World, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = {"abs": f"input/evil-abs//{outside}/escaped", "backslash": "input/evil-bs/..\\..\\escaped",
               "drive": "input/evil-drive/C:/escaped", "dotdot": "input/evil-dd/sub/../../../escaped"}
    s3 = world.client("s3")
    env = _profile_dir(tmp_path, world, world.user_key, grant="iam_user")
    try:
        for case, key in hostile.items():
            prefix = key.split("/", 2)[1]
            s3.put_object(Bucket=BUCKET, Key=f"input/{prefix}/aaa-ordinary.txt", Body=b"fine")
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"pwned")
            dest = tmp_path / f"in-{case}"
            got = bucketio(env, "get", f"s3://{BUCKET}/input/{prefix}/", str(dest))
            assert got.returncode == 1 and "refusing object key" in got.stderr, (case, got.stderr)
            assert not list(dest.rglob("*")), f"{case}: files written before the refusal"
        single = bucketio(env, "get", f"s3://{BUCKET}/input/evil-abs/..", str(tmp_path / "in-single"))
        assert single.returncode == 1 and "refusing object key" in single.stderr
        assert not list(outside.iterdir()) and not list(tmp_path.glob("escaped"))
    finally:
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="input/evil-").get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])


@pytest.mark.parametrize("times", [2, -1], ids=["retried", "never-whole"])
def test_cut_downloads_are_retried_and_never_renamed_into_place(world: S3World, tmp_path: Path, times: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    world.client("s3").put_object(Bucket=BUCKET, Key="input/cut/field.bin", Body=data)
    cutter = Cutter(suffix="/input/cut/field.bin", times=times)
    with truncating_relay(world.endpoint, cutter) as relay:
        env = _profile_dir(tmp_path, world, world.user_key, grant="iam_user", endpoint_url=relay.rstrip("/"))
        got = bucketio(env, "get", f"s3://{BUCKET}/input/cut/field.bin", str(tmp_path / "in"))
    target = tmp_path / "in" / "field.bin"
    if times > 0:
        assert got.returncode == 0, got.stderr
        assert target.read_bytes() == data and cutter.cut == 2 and cutter.gets == 3
    else:
        assert got.returncode == 1 and "s3://sim-data/input/cut/field.bin" in got.stderr, got.stderr
        assert cutter.cut >= 2 and not target.exists()
    assert not [p.name for p in tmp_path.glob("in/*") if p.name != "field.bin"]  # no part file left behind


#: (verb, key, allowed) through the node code with the iam_user grant's prefix policy
MATRIX = [("get", "input/mesh.dat", True), ("get", "input/", True), ("get", "other/secret.txt", False),
          ("put", "output/matrix/", True), ("put", "input/matrix/", False), ("put", "other/matrix/", False),
          ("put", "output-old/matrix/", False), ("get", "output/matrix/", True)]


@pytest.mark.parametrize(("verb", "key", "allowed"), MATRIX, ids=[f"{v}:{k}" for v, k, _ in MATRIX])
def test_prefix_policy_matrix_through_the_node_code(world: S3World, tmp_path: Path, verb: str, key: str,
                                                    allowed: bool) -> None:
    env = _profile_dir(tmp_path, world, world.user_key, grant="iam_user")
    if verb == "get":
        done = bucketio(env, "get", f"s3://{BUCKET}/{key}", str(tmp_path / "in"))
    else:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "small.txt").write_text("small")
        (tmp_path / "out" / "big.bin").write_bytes(os.urandom(11 * 1024 * 1024))  # multipart, 5 MiB parts
        done = bucketio(env, "put", str(tmp_path / "out"), f"s3://{BUCKET}/{key}")
    assert (done.returncode == 0) == allowed, done.stderr
    if not allowed:
        assert "AccessDenied" in done.stderr and "Traceback" not in done.stderr
    if verb == "put" and not allowed:  # nothing landed, not even part of a multipart upload
        listing = world.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=key)
        assert "Contents" not in listing
        assert not world.client("s3").list_multipart_uploads(Bucket=BUCKET).get("Uploads")
