"""Build-once regression workflow through the Python API (runs against any registered cluster).

1. upload a base build once (content-addressed: a second run says "reused"),
2. overlay a small delta archive on top of it, in order,
3. fan out test cases with different core counts (MPI),
4. compare each result with its reference ON the cluster (--post), exit code kept apart,
5. fetch only the logs.

Usage: python examples/regression/regression.py CLUSTER [OUTDIR]
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
import tempfile
from pathlib import Path

from mpicloud.api import Cluster

SOLVER = """#!/bin/sh
# a stand-in solver: every rank reports, rank 0 writes the case result
mpirun --hostfile "$MPICLOUD_HOSTFILE" -np "$MPICLOUD_NP" sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $MPICLOUD_NODE"'
echo "case $1 version $(cat build/VERSION) np $MPICLOUD_NP" > result.txt
echo "solver finished case $1" > solver.log
"""


def archive(path: Path, files: dict[str, str]) -> Path:
    """A reproducible .tar.gz with the given text files (same bytes every run, so uploads are reused)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def main(cluster_name: str, outdir: Path) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        return run(Cluster.get(cluster_name), Path(scratch), outdir)


def run(cluster: Cluster, work: Path, outdir: Path) -> int:
    """Upload, overlay, fan out, compare on the cluster, fetch only the logs; 1 if any case failed."""
    base = archive(work / "base-build.tar.gz", {"build/solver.sh": SOLVER, "build/VERSION": "1.0\n"})
    delta = archive(work / "delta.tar.gz", {"build/VERSION": "1.1\n"})
    cases = {"small": 1, "medium": 2, "large": 4}
    jobs = {}
    for case, cores in cases.items():
        reference = archive(work / f"ref-{case}.tar.gz",
                            {f"ref/{case}.txt": f"case {case} version 1.1 np {cores}\n"})
        job = cluster.submit(["sh", "build/solver.sh", case], cores=cores, name=f"regression-{case}",
                             inputs=[base, delta, reference], post=["cmp", "result.txt", f"ref/{case}.txt"],
                             on_input=lambda name, event: print(f"  input {name}: {event}"))
        jobs[case] = job
    failures = 0
    for case, job in jobs.items():
        info = job.wait()
        verdict = "PASS" if info.exit_code == 0 and info.post_exit_code == 0 else "FAIL"
        failures += verdict == "FAIL"
        print(f"{case:<8} job {job.id} {info.state} exit {info.exit_code} compare {info.post_exit_code} {verdict}")
        job.get(outdir / case, only=["solver.log"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "regression-logs")))
