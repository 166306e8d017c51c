"""Fetch what a job left in its work dir: everything, a filtered subset, or only named files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mpicloud.errors import JobError
from mpicloud.jobs import query, transfer
from mpicloud.jobs.remote import QueueHandle
from mpicloud.protocol.jobs import JOBS, TERMINAL, JobState
from mpicloud.protocol.paths import UnsafePath, check_name


class NoWorkDir(JobError):
    """The job has no work dir to fetch from: it never started, or its outputs were purged."""


@dataclass(frozen=True)
class GetOptions:
    """What to fetch and how: `only` names, globs, substrings, exclude globs, `no_inputs` (leave out staged
    inputs the job did not change), `partial` (allow a job that has not ended), `overwrite` (replace local
    files changed since they were downloaded)."""

    only: Sequence[str] = ()
    globs: Sequence[str] = ()
    filters: Sequence[str] = ()
    excludes: Sequence[str] = ()
    no_inputs: bool = False
    partial: bool = False
    overwrite: bool = False
    compress: str = "auto"
    streams: int = 4


def fetch_job(queue: QueueHandle, job_id: str, dest: Path, options: GetOptions = GetOptions(),
              progress: transfer.Progress | None = None) -> transfer.Summary:
    """Download the job's work dir (all, or the selection in options) into dest, verified.

    A job that has not ended is refused unless options.partial (its outputs may still change)."""
    info = query.job_info(queue, job_id)
    if info.state in (JobState.SUBMITTED, JobState.QUEUED):
        raise NoWorkDir(f"job {job_id} has not started yet; nothing to fetch")
    running = info.state not in TERMINAL
    if running and not options.partial:
        raise JobError(f"job {job_id} is {info.state}: its outputs are not final; wait for it to end, or fetch "
                       "what is there now with --partial")
    if queue.transport.stat(queue.job_path(job_id, "work")) is None:
        raise NoWorkDir(f"job {job_id} has no work dir on the cluster: it never started, or its outputs were "
                        "purged; nothing to fetch")
    globs = list(options.globs)
    if options.only:
        for name in options.only:
            try:
                check_name(name)
            except UnsafePath as exc:
                raise JobError(f"--only {exc}") from None
        missing = [name for name in options.only if queue.transport.stat(queue.job_path(job_id, "work", name)) is None]
        if missing:
            raise JobError(f"job {job_id} has no file {missing[0]!r} in its work dir")
        globs = list(options.only)
    selection = transfer.Selection(tuple(globs), tuple(options.filters), tuple(options.excludes),
                                   queue.cluster_path(JOBS, job_id, "inputs.json") if options.no_inputs else None)
    summary = transfer.download(queue, queue.cluster_path(JOBS, job_id, "work"), dest, compress=options.compress,
                                streams=options.streams, progress=progress, selection=selection,
                                overwrite=options.overwrite)
    summary.partial = running
    if options.only:
        arrived = {entry["path"] for entry in summary.verified}
        for name in options.only:
            if name not in arrived:
                reasons = [p["reason"] for p in summary.not_downloaded if p["path"] == name]
                raise JobError(f"{name} did not arrive from job {job_id}" + (f": {reasons[0]}" if reasons else ""))
    return summary
