"""cluster.submit_many against the real local cluster: one request for many jobs, FIFO order, idempotency keys,
everything checked before anything is queued."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mpicloud.api import Cluster
from mpicloud.errors import JobError


def test_submit_many_runs_each_once_in_order(local_cluster: Cluster) -> None:
    runs = Path(local_cluster.record.shared_path) / f"many-{time.time_ns()}.txt"
    record = ["sh", "-c", f'echo "$MPICLOUD_JOB_ID" >> {runs}']
    key = f"many-key-{time.time_ns()}"
    jobs = local_cluster.submit_many([record, {"argv": record, "job_id": key, "name": "keyed"}, record])
    assert [j.id for j in jobs][1] == key
    assert [j.wait(60).state for j in jobs] == ["succeeded"] * 3
    again = local_cluster.submit_many([{"argv": record, "job_id": key}])  # a retry of the keyed job
    assert [j.id for j in again] == [key]
    time.sleep(1.0)
    assert sorted(runs.read_text().split()) == sorted(j.id for j in jobs)
    listed = [i.id for i in local_cluster.jobs()]
    positions = [listed.index(j.id) for j in jobs if not j.id.startswith("many-key")]
    assert positions == sorted(positions) and listed.count(key) == 1
    assert local_cluster.job(key).info().name == "keyed"


def test_submit_many_checks_everything_first(local_cluster: Cluster) -> None:
    before = len(local_cluster.jobs())
    with pytest.raises(JobError, match="needs 99 cores"):
        local_cluster.submit_many([["true"], {"argv": ["true"], "cores": 99}])
    with pytest.raises(JobError, match="not valid"):
        local_cluster.submit_many([["true"], {"argv": ["true"], "job_id": "../x"}])
    assert len(local_cluster.jobs()) == before
