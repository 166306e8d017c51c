"""The job contract between the client and the runner (stdlib only; shipped to the nodes beside runner.py).

Directories under the runner root, the files of a job, the documents in them (typed), the states a job goes
through, and the version gate: the client writes `JOB_VERSION`, the runner upgrades older descriptions
through `upgrade_job`, and `version_problem` says when a runner is too old for a client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypedDict

#: the job.json format the client writes and the runner reads (older ones are upgraded by the runner)
JOB_VERSION = 3

#: directories under the runner root: submissions being written, submitted, accepted, input objects, sweeps
SPOOL, QUEUE, JOBS, STORE, SWEEPS = "spool", "queue", "jobs", "store", "sweeps"
ROOT_DIRS = (SPOOL, QUEUE, JOBS, STORE, SWEEPS)
#: files of a job dir: its description, its state (the runner's), its result (its wrapper's), a cancel request
JOB_FILE, STATE_FILE, RESULT_FILE, CANCEL_FILE = "job.json", "state.json", "result.json", "cancel"


class JobState(StrEnum):
    """Where a job is. `submitted` is the client's name for a job in queue/ the runner has not accepted yet;
    the runner writes every other one into state.json. Members are equal to their strings."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: the states a job ends in; nothing changes a job once it is in one of them
TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class InputEntry(TypedDict, total=False):
    """One input of a job, staged into its work dir in order: from the store (by SHA-256), a bucket or the job
    dir (v1); archives with `unpack` are overlaid; `mode` (permission bits) and `mtime` (ns) as uploaded."""

    source: str  # "store" | "object" (an s3:// or az:// URL) | "jobdir"
    name: str
    sha256: str
    url: str
    unpack: bool
    mode: int | None
    mtime: int


class JobDoc(TypedDict, total=False):
    """job.json, written once by the client."""

    version: int
    id: str
    name: str | None
    argv: list[str]
    cores: int
    mpi: bool
    inputs: list[InputEntry]
    post: list[str] | None
    env: dict[str, str]
    output_to: str | None
    sweep: str | None
    submitted_at: float


class StateDoc(TypedDict, total=False):
    """state.json, written only by the runner (atomically)."""

    id: str
    version: int
    state: str
    cores: int
    name: str | None
    sweep: str | None
    hosts: list[list[Any]]  # [[node, slots], ...]
    exit_code: int | None
    post_exit_code: int | None
    reason: str | None
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    launch: str | None
    pid: int | None
    pid_token: str | None


class ResultDoc(TypedDict):
    """result.json, written once by the job's own wrapper process when its command and post step ended."""

    exit_code: int | None
    post_exit_code: int | None
    reason: str | None
    ended_at: float


def _v1_to_v2(job: dict[str, Any]) -> dict[str, Any]:
    """v1 (first cut): inputs were plain file names in the job dir; no post, sweep or output_to."""
    job["inputs"] = [{"name": n, "source": "jobdir", "unpack": False} for n in job.get("inputs", [])]
    job.setdefault("post", None)
    job.setdefault("sweep", None)
    job.setdefault("output_to", None)
    return job


def _v2_to_v3(job: dict[str, Any]) -> dict[str, Any]:
    """v2: object inputs were S3 only (source "s3"); v3 names any object URL (source "object")."""
    job["inputs"] = [{**item, "source": "object"} if item.get("source") == "s3" else item
                     for item in job.get("inputs", [])]
    return job


UPGRADES = {1: _v1_to_v2, 2: _v2_to_v3}


def upgrade_job(job: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a job description to JOB_VERSION through the transform chain; ValueError if too new."""
    version = int(job.get("version", 1))
    if version > JOB_VERSION:
        raise ValueError(f"job format v{version} is newer than this runner understands (v{JOB_VERSION}); "
                         "update the runner on the cluster (`mpicloud up` or re-attach)")
    return apply_chain(job, UPGRADES, version, JOB_VERSION)


def apply_chain(document: dict[str, Any], chain: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]],
                version: int, current: int) -> dict[str, Any]:
    """Run a versioned document through its transforms (chain[v] turns v into v+1) up to `current`; the
    caller's document is left as it was. Used for job descriptions here and for specs (mpicloud.spec)."""
    while version < current:
        document = chain[version](dict(document))
        version += 1
        document["version"] = version
    return document


def version_problem(runner_job_version: int, cluster: str) -> str | None:
    """Why a client writing JOB_VERSION must not submit to a runner that reads `runner_job_version`; None when
    it may (a newer runner upgrades what this client writes)."""
    if runner_job_version >= JOB_VERSION:
        return None
    return (f"the runner on cluster {cluster!r} reads job format v{runner_job_version}, this mpicloud writes "
            f"v{JOB_VERSION}: update the runner on the cluster (`mpicloud up` for local clusters, re-run the "
            "bootstrap or re-deploy for cloud clusters)")
