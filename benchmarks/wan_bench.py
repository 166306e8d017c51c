"""Transfers across an emulated WAN (benchmarks/wan.py) next to OpenSSH `sftp` through the same path, same run:
one large incompressible file down and up, and many 64 KiB files down, at each round-trip time.

`python -m benchmarks.wan_bench [MIB] [FILES] [MBIT] [RTT_MS...]` (defaults: 256 MiB, 200 files, 1000 Mbit/s,
20 100 200 ms)."""

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
from mpicloud.jobs.transfer import download, upload


def sftp_via(cluster: Cluster, port: int, script: str) -> float:
    """Seconds for an OpenSSH sftp batch to the head node through the emulated path on `port`."""
    r = cluster.record
    started = time.perf_counter()
    subprocess.run(["sftp", "-q", "-F", r.local["ssh_config"], "-o", "HostName=127.0.0.1", "-o", f"Port={port}",
                    "-o", f"HostKeyAlias={r.head.name}", "-b", "-", r.head.name], input=script.encode(), check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def across(cluster: Cluster, wan: emulated.WanProcess, name: str) -> Cluster:
    """The cluster attached again under `name`, reached through the emulated path."""
    r = cluster.record
    far, _ = Cluster.attach(AttachRequest(name=name, host="127.0.0.1", port=wan.port, user=r.user,
                                          key_file=r.key_file, shared_path=r.shared_path, python=r.python,
                                          runner=r.runner))
    return far


def at_rtt(cluster: Cluster, scratch: Path, rtt: float, mbit: float, local: Path, many: Path) -> None:
    wan = emulated.WanProcess((cluster.record.head.host, cluster.record.head.port), rtt, mbit)
    far = across(cluster, wan, f"wan-{int(rtt)}")
    shared = Path(cluster.record.shared_path)
    mib = local.stat().st_size >> 20
    label = f"{rtt:g} ms RTT, {mbit:g} Mbit/s"
    try:
        queue = far.queue
        queue.prepare()
        started = time.perf_counter()
        download(queue, str(shared / "wan-large"), scratch / f"down-{rtt}", compress="none")
        ours = time.perf_counter() - started
        theirs = sftp_via(cluster, wan.port, f"get {shared}/wan-large/large.bin {scratch}/sftp-{rtt}.bin\n")
        report(f"{label}: download {mib} MiB (MiB/s)", mib / ours, mib / theirs, "MiB/s", "higher")
        started = time.perf_counter()
        upload(queue, local, str(shared / f"wan-up-{rtt}.bin"))
        ours = time.perf_counter() - started
        theirs = sftp_via(cluster, wan.port, f"put {local} {shared}/wan-sftp-up-{rtt}.bin\n")
        report(f"{label}: upload {mib} MiB (MiB/s)", mib / ours, mib / theirs, "MiB/s", "higher")
        count = len(list(many.iterdir()))
        started = time.perf_counter()
        download(queue, str(many), scratch / f"many-{rtt}", compress="none")
        ours = time.perf_counter() - started
        (scratch / f"sftp-many-{rtt}").mkdir()
        theirs = sftp_via(cluster, wan.port, f"get -r {many} {scratch}/sftp-many-{rtt}\n")
        report(f"{label}: {count} files of 64 KiB (s)", ours, theirs, "s", "lower")
    finally:
        far.down()
        wan.close()
        for leftover in shared.glob(f"wan-*up-{rtt}.bin"):
            leftover.unlink()


def main(mib: int = 256, files: int = 200, mbit: float = 1000.0, rtts: tuple[float, ...] = (20, 100, 200)) -> None:
    with bench_cluster(nodes=1, slots=2, base="127.0.97.1") as (cluster, _), \
            tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        shared = Path(cluster.record.shared_path)
        (shared / "wan-large").mkdir()
        local = scratch / "large.bin"
        with open(local, "wb") as handle:
            for _ in range(mib):
                handle.write(os.urandom(1 << 20))
        shutil.copyfile(local, shared / "wan-large" / "large.bin")
        many = shared / "wan-many"
        many.mkdir()
        for i in range(files):
            (many / f"f{i:04d}.bin").write_bytes(os.urandom(64 << 10))
        for rtt in rtts:
            at_rtt(cluster, scratch, rtt, mbit, local, many)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(int(a) for a in args[:2]), *(float(a) for a in args[2:3]), *([tuple(float(a) for a in args[3:])]
                                                                         if args[3:] else []))
