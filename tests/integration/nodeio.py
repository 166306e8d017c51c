"""Run the node's object client (bucketio.py) as a node does: installed beside the protocol package, under the
nodes' own interpreter (Debian 12's /usr/bin/python3 with its python3-boto3 / python3-azure-storage)."""

from __future__ import annotations

import functools
import io
import subprocess
import tempfile
import zipfile
from pathlib import Path

from mpicloud.assets import install_runner
from tests.runnerlib import NODE_PYTHON


@functools.cache
def node_dir() -> Path:
    """The node's files laid out as a bootstrap installs them."""
    return install_runner(Path(tempfile.mkdtemp(prefix="mpicloud-node-"))).parent


def bucketio(env: dict[str, str], *args: str, part_mb: int = 5) -> subprocess.CompletedProcess[str]:
    """`bucketio.py ARGS` with env (by default 5 MiB S3 parts, so multipart shows with small files)."""
    return subprocess.run([NODE_PYTHON, str(node_dir() / "bucketio.py"), *args],
                          env={**env, "MPICLOUD_S3_PART_MB": str(part_mb)}, capture_output=True, text=True,
                          timeout=3600)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """An in-memory zip archive of files (an input a job unpacks)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()
