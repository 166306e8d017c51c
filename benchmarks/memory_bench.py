"""Client memory during a large download: peak resident set of the downloading process, across an emulated
100 ms path (windows at their largest) and on loopback. `python -m benchmarks.memory_bench [MIB]`"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import wan as emulated
from benchmarks.common import bench_cluster
from benchmarks.wan_bench import across

CHILD = """
import resource, sys
from pathlib import Path
from mpicloud.api import Cluster
from mpicloud.jobs.transfer import download
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = download(Cluster.get(sys.argv[1]).queue, sys.argv[2], Path(sys.argv[3]), compress="none")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{summary.bytes >> 20} MiB downloaded; peak RSS {after / 1024:.0f} MiB ({before / 1024:.0f} MiB before it "
      "started)", flush=True)
"""


def main(mib: int = 2048) -> None:
    with bench_cluster(nodes=1, slots=2, base="127.0.95.1") as (cluster, _), \
            tempfile.TemporaryDirectory() as scratch:
        folder = Path(cluster.record.shared_path) / "memory"
        folder.mkdir()
        with open(folder / "large.bin", "wb") as handle:
            for _ in range(mib):
                handle.write(os.urandom(1 << 20))
        wan = emulated.WanProcess((cluster.record.head.host, cluster.record.head.port), 100, 1000)
        far = across(cluster, wan, "memory-far")
        try:
            for name in ("bench", far.name):
                print(f"{name}: ", end="", flush=True)
                subprocess.run([sys.executable, "-c", CHILD, name, str(folder), str(Path(scratch) / name)],
                               check=True)
        finally:
            far.down()
            wan.close()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
