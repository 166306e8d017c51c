"""Fetch what a job left in its work dir: everything, a filtered subset, or only named files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mpicloud.errors import JobError
from mpicloud.jobs import query, transfer
from mpicloud.jobs.remote import QueueHandle


def safe_target(dest: Path, rel: str) -> Path:
    """Local path for a remote relative path, refusing anything that escapes dest."""
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or ".." in parts or not parts:
        raise JobError(f"refusing to write {rel!r} outside {dest}")
    return dest.joinpath(*parts)


def fetch_job(queue: QueueHandle, job_id: str, dest: Path, only: Sequence[str] = (), globs: Sequence[str] = (),
              filters: Sequence[str] = (), compress: str = "auto", streams: int = 4,
              progress: transfer.Progress | None = None) -> transfer.Summary:
    """Download the job's work dir (all, by glob/substring, or only the named files) into dest, verified."""
    info = query.job_info(queue, job_id)
    if info.state in ("submitted", "queued"):
        raise JobError(f"job {job_id} has not started yet; nothing to fetch")
    if only:
        missing = [name for name in only if queue.transport.stat(queue.job_path(job_id, "work", name)) is None]
        if missing:
            raise JobError(f"job {job_id} has no file {missing[0]!r} in its work dir")
        globs = list(only)
    summary = transfer.download(queue, queue.cluster_path("jobs", job_id, "work"), dest, list(globs),
                                list(filters), compress, streams, progress)
    if only:
        for name in only:
            if not (dest / name).is_file():
                raise JobError(f"{name} did not arrive from job {job_id}")
    return summary
