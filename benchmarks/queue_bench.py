"""Queue benchmarks: up time, submit latency, submit-to-start latency, 1,000 no-op jobs end to end, and the
chaos run: 1,000 jobs from 4 concurrent submitters while the runner is killed (kill -9 by its PID) 50 times.

Each figure is printed next to OpenSSH measured in the same run (`ssh host true` per job).
`python -m benchmarks.queue_bench [JOBS] [chaos|steady]` (only the chaos run, or everything but it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import bench_cluster, median_ms, openssh, report, run_quiet, timed
from mpicloud.api import Cluster, JobInfo

SUBMITTER = """
import sys
from mpicloud.api import Cluster, JobInfo
cluster = Cluster.get("bench")
for i in range(int(sys.argv[2])):
    job_id = f"{sys.argv[1]}-{i:05d}"
    cluster.submit(["sh", "-c", 'echo "$MPICLOUD_JOB_ID" >> ' + sys.argv[3]], job_id=job_id)
"""


def main(jobs: int = 1000, only_chaos: bool = False, only_steady: bool = False) -> None:
    with bench_cluster(nodes=2, slots=2) as (cluster, up_seconds):
        print(f"mpicloud up, 2 nodes: {up_seconds:.2f} s", flush=True)
        queue = cluster.queue
        queue.prepare()
        ssh_true = openssh(cluster, "true")
        fresh = timed(lambda: run_quiet(ssh_true), 100)
        ssh_rate = len(fresh) / sum(fresh)
        if not only_chaos:
            steady(cluster, jobs, ssh_true, ssh_rate)
        if not only_steady:
            chaos(cluster, jobs, ssh_rate)


def steady(cluster: Cluster, jobs: int, ssh_true: list[str], ssh_rate: float) -> None:
    """Latencies and throughput with nothing failing."""
    ssh_times = timed(lambda: run_quiet(ssh_true), 20)
    submit_times = timed(lambda: cluster.submit(["true"]), 50)
    report("submit latency (median of 50 / 20)", median_ms(submit_times), median_ms(ssh_times), "ms")
    for job in cluster.jobs():
        cluster.job(job.id).wait(60)
    latencies = []
    for _ in range(20):
        job = cluster.submit(["true"])
        info = job.wait(30)
        assert info.started_at and info.submitted_at
        latencies.append(info.started_at - info.submitted_at)
    report("submit-to-start, idle cluster (median of 20)", median_ms(latencies), median_ms(ssh_times), "ms")
    started = time.perf_counter()
    ids = [cluster.submit(["true"]).id for _ in range(jobs)]
    submitted = time.perf_counter() - started
    infos = _all_done(cluster, ids)
    total = time.perf_counter() - started
    ok = sum(1 for i in ids if infos[i].state == "succeeded")
    print(f"{jobs} no-op jobs: submitted in {submitted:.1f} s, all done in {total:.1f} s, {ok} succeeded",
          flush=True)
    report("no-op jobs end to end (jobs/s)", jobs / total, ssh_rate, "jobs/s", "higher")
    started = time.perf_counter()
    many = cluster.submit_many([["true"]] * jobs)
    submitted = time.perf_counter() - started
    infos = _all_done(cluster, [j.id for j in many])
    total = time.perf_counter() - started
    ok = sum(1 for j in many if infos[j.id].state == "succeeded")
    print(f"{jobs} no-op jobs with submit_many: submitted in {submitted:.2f} s, all done in {total:.1f} s, {ok} "
          f"succeeded (load {os.getloadavg()[0]:.2f})", flush=True)
    report("no-op jobs end to end, submit_many (jobs/s)", jobs / total, ssh_rate, "jobs/s", "higher")


def _all_done(cluster: Cluster, ids: list[str]) -> dict[str, JobInfo]:
    """Wait until every job of ids ended (the last one may end before others); their infos."""
    cluster.job(ids[-1]).wait(600)
    while True:
        infos = {i.id: i for i in cluster.jobs()}
        if all(infos[i].done for i in ids):
            return infos
        time.sleep(0.05)


def _runner_pid(status_file: Path) -> tuple[int, float]:
    data = json.loads(status_file.read_text())
    return int(data["pid"]), float(data["heartbeat"])


def chaos(cluster: Cluster, jobs: int, ssh_rate: float, submitters: int = 4, kills: int = 50) -> None:
    """`jobs` jobs from `submitters` processes while the runner is SIGKILLed `kills` times (each time as soon
    as its successor has a fresh heartbeat, + 0.3 s); each job appends its id to a file: count them."""
    shared = Path(cluster.record.shared_path)
    runs = shared / f"chaos-{int(time.time())}.txt"
    status_file = shared / ".mpicloud" / "status.json"
    per = jobs // submitters
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, f"chaos{n}", str(per), str(runs)])
             for n in range(submitters)]
    ids = {f"chaos{n}-{i:05d}" for n in range(submitters) for i in range(per)}
    done_kills, last_pid, killed_at, restarts = 0, 0, 0.0, []
    while done_kills < kills:
        try:
            pid, beat = _runner_pid(status_file)
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
            continue
        if pid == last_pid or time.time() - beat > 2:
            time.sleep(0.05)
            continue
        if last_pid:
            restarts.append(time.perf_counter() - killed_at)
        time.sleep(0.3)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed_at, last_pid = time.perf_counter(), pid
        done_kills += 1
    for proc in procs:
        assert proc.wait(900) == 0, "a submitter failed"
    submitted = time.perf_counter() - started
    deadline = time.monotonic() + 900
    while True:
        infos = {i.id: i for i in cluster.jobs() if i.id in ids}
        if len(infos) == len(ids) and all(i.done for i in infos.values()):
            break
        assert time.monotonic() < deadline, "chaos jobs did not finish"
        time.sleep(0.5)
    total = time.perf_counter() - started
    states: dict[str, int] = {}
    for info in infos.values():
        states[info.state] = states.get(info.state, 0) + 1
    ran = runs.read_text().split() if runs.exists() else []
    twice = len(ran) - len(set(ran))
    never = len(ids - set(ran))
    print(f"chaos: {len(ids)} jobs from {submitters} submitters, runner killed {done_kills} times (kill -9): "
          f"submitted in {submitted:.1f} s, all done in {total:.1f} s; states {states}; ran {len(ran)} times "
          f"for {len(ids)} jobs: {twice} ran twice, {never} never ran; runner back after a kill in "
          f"{median_ms(restarts):.0f} ms (median)", flush=True)
    report("chaos: jobs end to end, 50 kills (jobs/s)", len(ids) / total, ssh_rate, "jobs/s", "higher")
    assert twice == 0 and never == 0 and states == {"succeeded": len(ids)}, "chaos run lost or repeated jobs"


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args and args[0].isdigit() else 1000, "chaos" in args, "steady" in args)
