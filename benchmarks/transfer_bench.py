"""Transfer benchmarks against OpenSSH `sftp` in the same run:

1. one large incompressible file (512 MiB by default), upload and download, and the same as a new job input
   (store claim, upload, whole-object SHA-256 on the node);
2. 1,000 files of 64 KiB, download (OpenSSH: `sftp get -r`);
3. CFD-like output (>= 4x compressible) over an emulated 100 Mbit/s link (benchmarks/wan.py):
   compressed on the cluster vs sent uncompressed, both through mpicloud.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import wan as emulated
from benchmarks.common import bench_cluster, report
from mpicloud.api import Cluster
from mpicloud.cluster.connect import AttachRequest
from mpicloud.jobs.submit import sha256_file, store_object
from mpicloud.jobs.transfer import download, upload


def sftp(cluster: Cluster, script: str) -> float:
    """Seconds for an OpenSSH sftp batch against the head node."""
    r = cluster.record
    started = time.perf_counter()
    subprocess.run(["sftp", "-q", "-F", r.local["ssh_config"], "-b", "-", r.head.name], input=script.encode(),
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def large_file(cluster: Cluster, scratch: Path, mib: int) -> None:
    local = scratch / "large.bin"
    with open(local, "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(1 << 20))
    remote_dir = Path(cluster.record.shared_path) / "bench-large"
    remote_dir.mkdir(exist_ok=True)
    queue = cluster.queue
    started = time.perf_counter()
    upload(queue, local, str(remote_dir / "up.bin"))
    ours_up = time.perf_counter() - started
    theirs_up = sftp(cluster, f"put {local} {remote_dir}/sftp.bin\n")
    report(f"upload {mib} MiB incompressible (MB/s)", mib / ours_up, mib / theirs_up, "MiB/s", "higher")
    queue.prepare()
    digest = sha256_file(local)
    started = time.perf_counter()
    store_object(queue, local, digest)  # claim, upload into a part file, whole-object SHA-256 on the node
    ours_store = time.perf_counter() - started
    report(f"new {mib} MiB input, node-verified (MB/s)", mib / ours_store, mib / theirs_up, "MiB/s", "higher")
    (Path(cluster.record.shared_path) / ".mpicloud" / "store" / digest).unlink()
    started = time.perf_counter()
    download(queue, str(remote_dir), scratch / "down", globs=["up.bin"], compress="auto")
    ours_down = time.perf_counter() - started
    theirs_down = sftp(cluster, f"get {remote_dir}/sftp.bin {scratch}/sftp.bin\n")
    report(f"download {mib} MiB incompressible (MB/s)", mib / ours_down, mib / theirs_down, "MiB/s", "higher")
    shutil.rmtree(remote_dir)


def many_files(cluster: Cluster, scratch: Path, count: int) -> None:
    remote_dir = Path(cluster.record.shared_path) / "bench-many"
    remote_dir.mkdir(exist_ok=True)
    for i in range(count):
        (remote_dir / f"f{i:04d}.bin").write_bytes(os.urandom(64 << 10))
    started = time.perf_counter()
    download(cluster.queue, str(remote_dir), scratch / "many", compress="auto")
    ours = time.perf_counter() - started
    (scratch / "sftp-many").mkdir()
    theirs = sftp(cluster, f"get -r {remote_dir} {scratch}/sftp-many\n")
    report(f"{count} files of 64 KiB, download (s)", ours, theirs, "s", "lower")
    shutil.rmtree(remote_dir)


def slow_link(cluster: Cluster, scratch: Path, grid: int, mbit: float) -> None:
    remote_dir = Path(cluster.record.shared_path) / "bench-cfd"
    subprocess.run([sys.executable, str(Path(__file__).with_name("cfd_like.py")), str(remote_dir), str(grid)],
                   check=True)
    size = sum(p.stat().st_size for p in remote_dir.iterdir())
    relay = emulated.WanProcess((cluster.record.head.host, cluster.record.head.port), rtt_ms=0, mbit=mbit)
    r = cluster.record
    slow, _ = Cluster.attach(AttachRequest(name="bench-slow", host="127.0.0.1", port=relay.port, user=r.user,
                                           key_file=r.key_file, shared_path=r.shared_path, python=r.python,
                                           runner=r.runner))
    try:
        times = {}
        for codec in ("zstd", "none"):
            started = time.perf_counter()
            summary = download(slow.queue, str(remote_dir), scratch / f"cfd-{codec}", compress=codec)
            times[codec] = time.perf_counter() - started
            print(f"  {codec}: {size / 1e6:.0f} MB in {times[codec]:.1f} s, {summary.wire_bytes / 1e6:.1f} MB on "
                  f"the wire (ratio {summary.ratio:.1f}x)", flush=True)
        print(f"{'CFD-like output at ' + str(mbit) + ' Mbit/s':<44} compressed/uncompressed time "
              f"{times['zstd'] / times['none']:.2f}x (target <= 0.35x)", flush=True)
    finally:
        slow.down()
        relay.close()
        shutil.rmtree(remote_dir)


def main(mib: int = 512, files: int = 1000, grid: int = 200, mbit: float = 100.0) -> None:
    with bench_cluster(nodes=1, slots=2, base="127.0.99.1") as (cluster, _), \
            tempfile.TemporaryDirectory() as scratch:
        large_file(cluster, Path(scratch), mib)
        many_files(cluster, Path(scratch), files)
        slow_link(cluster, Path(scratch), grid, mbit)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
