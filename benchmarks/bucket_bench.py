"""The node's object client moving one large object: pulled from the store and pushed back, S3 (moto server)
and Azure Blob (Azurite), against the SDKs called directly (what `aws s3 cp` / azcopy-style code does) and, for
S3, the hand-written stdlib client the node used before (taken from git history), all in the same run.

`python -m benchmarks.bucket_bench [MiB]` (default 1024). Every figure is MiB/s (higher is better)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from benchmarks.common import report
from mpicloud.render.awsconfig import AccessKey, aws_files
from mpicloud.secret import Secret
from mpicloud.spec import spec_from_dict
from mpicloud.spec.model import Bucket
from tests.integration.azurite import ACCOUNT, BlobWorld, azurite_world
from tests.integration.nodeio import bucketio, node_dir
from tests.integration.s3server import S3World, moto_world

BUCKET = "bench-data"
#: S3 part size for the node code and the direct SDK calls alike (the node's default)
PART_MB = 64
#: the last commit with the stdlib SigV4 client (provision/runner/bucketio.py before the SDKs)
STDLIB_CLIENT = "5657829:provision/runner/bucketio.py"


def _rate(size: int, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return size / (1 << 20) / (time.perf_counter() - started)


def _checked(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise SystemExit(f"transfer failed: {done.stderr.strip()}")


def _stdlib_client() -> Path | None:
    """The old client beside the node files, or None without git history (a release tarball)."""
    try:
        text = subprocess.run(["git", "show", STDLIB_CLIENT], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = node_dir() / "bucketio_stdlib.py"
    path.write_text(text)
    return path


def _s3(world: S3World, work: Path, data: Path, size: int) -> None:
    spec = spec_from_dict({"name": "bench", "cloud": "local", "nodes": 1, "bucket": {
        "name": BUCKET, "region": "eu-west-1", "endpoint_url": world.endpoint, "grant": "iam_user"}})
    files = aws_files(spec, AccessKey(world.user_key[0], Secret(world.user_key[1])))
    (work / "config").write_text(files.config)
    (work / "credentials").write_text(files.credentials.reveal() if files.credentials else "")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "AWS_PROFILE": "mpicloud",
           "AWS_CONFIG_FILE": str(work / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(work / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    (work / "up").mkdir()
    os.link(data, work / "up" / "big.bin")
    world.client("s3").upload_file(str(data), BUCKET, "input/big.bin")
    sdk = world.client("s3", world.user_key)
    direct = TransferConfig(multipart_threshold=PART_MB << 20, multipart_chunksize=PART_MB << 20)
    theirs_get = _rate(size, lambda: sdk.download_file(BUCKET, "input/big.bin", str(work / "sdk.bin"),
                                                       Config=direct))
    theirs_put = _rate(size, lambda: sdk.upload_file(str(data), BUCKET, "output/sdk/big.bin", Config=direct))
    ours_get = _rate(size, lambda: _checked(bucketio(env, "get", f"s3://{BUCKET}/input/big.bin", str(work / "n"),
                                                         part_mb=PART_MB)))
    ours_put = _rate(size, lambda: _checked(bucketio(env, "put", str(work / "up"), f"s3://{BUCKET}/output/node/",
                                                         part_mb=PART_MB)))
    report("S3 get (node, boto3) vs boto3 direct", ours_get, theirs_get, "MiB/s", "higher", "SDK")
    report("S3 put (node, boto3) vs boto3 direct", ours_put, theirs_put, "MiB/s", "higher", "SDK")
    old = _stdlib_client()
    if old is None:
        print("S3 vs the old stdlib client: skipped (no git history to take it from)", flush=True)
        return
    run = [sys.executable, str(old)]  # the old client is stdlib-only: any Python 3.11+
    old_get = _rate(size, lambda: _checked(subprocess.run([*run, "get", f"s3://{BUCKET}/input/big.bin",
                                                           str(work / "o")], env=env, capture_output=True, text=True)))
    old_put = _rate(size, lambda: _checked(subprocess.run([*run, "put", str(work / "up"), f"s3://{BUCKET}/output/old/"],
                                                          env=env, capture_output=True, text=True)))
    report("S3 get (node, boto3) vs old stdlib client", ours_get, old_get, "MiB/s", "higher", "stdlib")
    report("S3 put (node, boto3) vs old stdlib client", ours_put, old_put, "MiB/s", "higher", "stdlib")


def _blob(world: BlobWorld, work: Path, data: Path, size: int) -> None:
    runs = world.container("bench")
    runs.create_container()
    with open(data, "rb") as source:
        runs.upload_blob("input/big.bin", source, length=size, max_concurrency=4)
    config = work / "blob.json"
    config.write_text(json.dumps({"account": ACCOUNT, "endpoint": world.endpoint, "sas": world.sas("bench")}))
    env = {**os.environ, "MPICLOUD_BLOB_CONFIG": str(config)}

    def sdk_get() -> None:
        with open(work / "sdk-blob.bin", "wb") as sink:
            runs.download_blob("input/big.bin", max_concurrency=4).readinto(sink)

    def sdk_put() -> None:
        with open(data, "rb") as source:
            runs.upload_blob("output/sdk/big.bin", source, length=size, overwrite=True, max_concurrency=4)
    theirs_get, theirs_put = _rate(size, sdk_get), _rate(size, sdk_put)
    url = f"az://{ACCOUNT}/bench"
    ours_get = _rate(size, lambda: _checked(bucketio(env, "get", f"{url}/input/big.bin", str(work / "nb"))))
    ours_put = _rate(size, lambda: _checked(bucketio(env, "put", str(work / "up"), f"{url}/output/node/")))
    report("Blob get (node, azure-storage-blob) vs SDK direct", ours_get, theirs_get, "MiB/s", "higher", "SDK")
    report("Blob put (node, azure-storage-blob) vs SDK direct", ours_put, theirs_put, "MiB/s", "higher", "SDK")


def main(mib: int = 1024) -> None:
    size = mib << 20
    with tempfile.TemporaryDirectory(prefix="bucket-bench-") as tmp:
        work = Path(tmp)
        data = work / "big.bin"
        with open(data, "wb") as sink:
            for _ in range(mib):
                sink.write(os.urandom(1 << 20))
        print(f"one {mib} MiB object, node code under {os.path.realpath('/usr/bin/python3')} (Debian's SDKs)",
              flush=True)
        with moto_world(Bucket(name=BUCKET, external_id="bench", trusted_account_id="123456789012")) as s3:
            (work / "s3").mkdir()
            _s3(s3, work / "s3", data, size)
        with azurite_world() as blob:
            (work / "blob").mkdir()
            (work / "blob" / "up").mkdir()
            os.link(data, work / "blob" / "up" / "big.bin")
            _blob(blob, work / "blob", data, size)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024)
