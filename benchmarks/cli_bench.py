"""CLI latency: wall time of whole `mpicloud` calls (median of N) against a running local cluster, through the
control socket (a warm master) and with --no-control, next to OpenSSH in the same run: a fresh `ssh host
true`, and `ssh host true` over an OpenSSH ControlMaster (the remote exec floor: the login shell starting).

`python -m benchmarks.cli_bench [N]`"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import bench_cluster, openssh, report, run_quiet


def wall(argv: list[str], repeat: int) -> float:
    """Median wall seconds of a command (which must succeed)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(repeat: int = 10) -> None:
    mpicloud = [sys.executable, "-m", "mpicloud.cli"]
    with bench_cluster(nodes=1, slots=2, base="127.0.96.1") as (cluster, _), \
            tempfile.TemporaryDirectory() as scratch:
        job = cluster.submit(["echo", "hello"])
        job.wait(60)
        fresh = wall(openssh(cluster, "true"), repeat)
        socket = str(Path(scratch) / "mux")
        run_quiet(openssh(cluster, "-o", "ControlMaster=yes", "-o", f"ControlPath={socket}", "-o",
                          "ControlPersist=60", "true"))
        muxed = wall(openssh(cluster, "-o", f"ControlPath={socket}", "true"), repeat)
        print(f"OpenSSH: fresh `ssh host true` {fresh * 1000:.0f} ms, over a ControlMaster {muxed * 1000:.0f} ms "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)
        report("mpicloud --help (ms)", wall([*mpicloud, "--help"], repeat) * 1000, fresh * 1000, "ms",
               against="ssh true")
        commands = {"jobs": ["jobs", "bench"], "status": ["status", "bench"],
                    "submit": ["submit", "bench", "--", "true"], "logs": ["logs", "bench", job.id]}
        for name, args in commands.items():
            wall([*mpicloud, *args], 1)  # the master is up from here on
            warm = wall([*mpicloud, *args], repeat)
            cold = wall([*mpicloud, "--no-control", *args], repeat)
            report(f"mpicloud {name}, control socket (ms)", warm * 1000, muxed * 1000, "ms", against="ssh -S true")
            report(f"mpicloud {name}, --no-control (ms)", cold * 1000, fresh * 1000, "ms", against="ssh true")
        run_quiet(openssh(cluster, "-o", f"ControlPath={socket}", "-O", "exit"))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
