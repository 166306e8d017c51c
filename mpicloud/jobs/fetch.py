"""Fetch what a job left in its work dir: everything, or only named files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mpicloud.errors import JobError
from mpicloud.jobs.remote import QueueHandle
from mpicloud.transport.base import ProgressCallback


def remote_files(queue: QueueHandle, job_id: str) -> list[tuple[str, int]]:
    """(relative path, size) of every file in the job's work dir."""
    try:
        return queue.transport.walk(queue.job_path(job_id, "work"))
    except FileNotFoundError:
        raise JobError(f"job {job_id} has no work dir on cluster {queue.cluster!r} (not started yet?)") \
            from None


def safe_target(dest: Path, rel: str) -> Path:
    """Local path for a remote relative path, refusing anything that escapes dest."""
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or ".." in parts:
        raise JobError(f"refusing to write {rel!r} outside {dest}")
    return dest.joinpath(*parts)


def get_files(queue: QueueHandle, job_id: str, dest: Path, only: Sequence[str] = (),
              progress: ProgressCallback | None = None) -> list[Path]:
    """Download the job's work dir (or only the named files) into dest."""
    available = dict(remote_files(queue, job_id))
    wanted = list(only) or list(available)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise JobError(f"job {job_id} has no file {missing[0]!r} in its work dir "
                       f"(it has: {', '.join(sorted(available)[:10]) or 'nothing'})")
    written = []
    for rel in wanted:
        target = safe_target(dest, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        queue.transport.get(queue.job_path(job_id, "work", rel), target, progress)
        written.append(target)
    return written
