"""Queue benchmarks: up time, submit latency, submit-to-start latency, 1,000 no-op jobs end to end.

Each figure is printed next to OpenSSH measured in the same run (`ssh host true` per job)."""

from __future__ import annotations

import sys
import time

from benchmarks.common import bench_cluster, median_ms, openssh, report, run_quiet, timed


def main(jobs: int = 1000) -> None:
    with bench_cluster(nodes=2, slots=2) as (cluster, up_seconds):
        print(f"mpicloud up, 2 nodes: {up_seconds:.2f} s", flush=True)
        queue = cluster.queue
        queue.prepare()
        ssh_true = openssh(cluster, "true")
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
        cluster.job(ids[-1]).wait(600)
        total = time.perf_counter() - started
        infos = {i.id: i for i in cluster.jobs()}
        ok = sum(1 for i in ids if infos[i].state == "succeeded")
        fresh = timed(lambda: run_quiet(ssh_true), 100)
        ssh_rate = len(fresh) / sum(fresh)
        print(f"{jobs} no-op jobs: submitted in {submitted:.1f} s, all done in {total:.1f} s, {ok} succeeded",
              flush=True)
        report("no-op jobs end to end (jobs/s)", jobs / total, ssh_rate, "jobs/s", "higher")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
