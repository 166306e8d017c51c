"""Job commands: submit, jobs, logs, wait, get, cancel."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from mpicloud.api import Cluster
from mpicloud.cli.app import app, err, out
from mpicloud.cli.progress import transfer_bar
from mpicloud.cli.safe_text import TerminalEscaper, escape_text
from mpicloud.errors import JobError
from mpicloud.jobs.query import LOG_STREAMS, JobInfo
from mpicloud.jobs.transfer import Summary


def _when(stamp: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp)) if stamp else "-"


@app.command()
def submit(
    name: str,
    command: Annotated[list[str], typer.Argument(help="the command, after --")],
    cores: Annotated[int, typer.Option(help="cores (MPI ranks) for the job")] = 1,
    mpi: Annotated[bool, typer.Option("--mpi", help="wrap with mpirun/mpiexec and a per-job hostfile")] = False,
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", help="file, dir, archive or object URL (s3://, az://)")] = None,
    label: Annotated[str | None, typer.Option("--name", help="a label for the job")] = None,
    post: Annotated[str | None, typer.Option(help="command run after the main one (exit code kept apart)")] = None,
    output_to: Annotated[str | None, typer.Option(
        help="s3://bucket/prefix/ or az://account/container/prefix/ the cluster uploads outputs to")] = None,
    job_id: Annotated[str | None, typer.Option("--id", help="your own job id: a retry with the same id returns "
                                                            "the existing job instead of queueing it again")] = None,
    no_unpack: Annotated[bool, typer.Option("--no-unpack", help="keep .zip/.tar* inputs as files")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Queue a job; prints the job id as the last line."""
    import shlex

    cluster = Cluster.get(name)

    def on_input(item: str, event: str) -> None:
        if not as_json:
            err.print(f"input {item}: {event}", markup=False)

    job = cluster.submit(command, cores=cores, mpi=mpi, inputs=inputs or [], name=label,
                         post=shlex.split(post) if post else None, output_to=output_to, on_input=on_input,
                         job_id=job_id, unpack=not no_unpack)
    out.print(json.dumps({"id": job.id, "cluster": name}) if as_json else job.id, markup=False)


@app.command()
def jobs(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every job in FIFO order: state, cores, submit/start/end times, exit code, name, and why it failed."""
    infos = Cluster.get(name).jobs()
    if as_json:
        out.print(json.dumps([i.as_dict() for i in infos], indent=1), markup=False)
        return
    out.print(f"{'ID':<30} {'STATE':<10} {'CORES':>5} {'SUBMIT':>8} {'START':>8} {'END':>8} {'EXIT':>4}  NAME",
              markup=False)
    for i in infos:
        code = "-" if i.exit_code is None else str(i.exit_code)
        why = f"  ({i.reason})" if i.reason and i.state != "succeeded" else ""
        out.print(f"{i.id:<30} {i.state:<10} {i.cores or '-':>5} {_when(i.submitted_at):>8} {_when(i.started_at):>8} "
                  f"{_when(i.ended_at):>8} {code:>4}  {escape_text(i.name or '')}{escape_text(why)}", markup=False)


class _Terminal:
    """Writes log chunks to stdout/stderr: raw bytes into a pipe or file, control characters escaped on a
    terminal (a job cannot move the cursor, retitle or reprogram it)."""

    def __init__(self) -> None:
        self._escapers: dict[str, TerminalEscaper] = {}

    def emit(self, stream: str, data: bytes) -> None:
        target = sys.stderr if stream == "stderr" else sys.stdout
        if target.isatty():
            data = self._escapers.setdefault(stream, TerminalEscaper()).feed(data)
        target.buffer.write(data)
        target.buffer.flush()

    def close(self) -> None:
        for stream, escaper in self._escapers.items():
            self.emit(stream, escaper.flush())


@app.command()
def logs(
    name: str, job: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="live until the job ends; exit status is the "
                                                                "job's")] = False,
    streams: Annotated[list[str] | None, typer.Option("--stream", help="stdout, stderr or post (the post command "
                                                                       "and bucket push); repeatable")] = None,
) -> None:
    """Print a job's output (stdout and stderr by default); with --follow, live until it ends."""
    chosen = tuple(streams or ("stdout", "stderr"))
    for stream in chosen:
        if stream not in LOG_STREAMS:
            raise JobError(f"--stream must be one of {', '.join(LOG_STREAMS)}, not {stream!r}")
    terminal = _Terminal()
    try:
        info = Cluster.get(name).job(job).logs(terminal.emit, follow=follow, streams=chosen)
    finally:
        terminal.close()
    if follow:
        raise typer.Exit(_exit_for(info))


def _exit_for(info: JobInfo) -> int:
    if info.state == "succeeded":
        return 0
    return info.exit_code if info.exit_code not in (None, 0) else 1


@app.command()
def wait(name: str, job: str, timeout: Annotated[float | None, typer.Option()] = None) -> None:
    """Wait for a job to end; the exit status is the job's."""
    info = Cluster.get(name).job(job).wait(timeout)
    err.print(f"job {job} {info.state}" + (f": {escape_text(info.reason)}" if info.reason else ""), markup=False)
    raise typer.Exit(_exit_for(info))


@app.command()
def cancel(name: str, job: str) -> None:
    """Cancel a queued or running job (every rank on every node)."""
    info = Cluster.get(name).job(job).cancel()
    out.print(f"job {job} was already {info.state}" if info.done else f"job {job}: cancel requested", markup=False)


def _report_skipped(summary: Summary) -> None:
    for item in summary.not_downloaded:
        err.print(f"not downloaded: {item['path']}: {item['reason']}", markup=False)


@app.command()
def purge(
    name: str,
    job_ids: Annotated[list[str] | None, typer.Argument(help="ended jobs (none: every ended job, with "
                                                             "--older-than)")] = None,
    older_than: Annotated[float | None, typer.Option(help="every job that ended more than this many days ago")]
    = None,
    logs: Annotated[bool, typer.Option("--logs", help="remove their logs too (the state stays)")] = False,
) -> None:
    """Delete ended jobs' outputs (work dirs) on the cluster, and with --logs their logs."""
    cluster = Cluster.get(name)
    chosen = list(job_ids or [])
    if older_than is not None:
        cutoff = time.time() - older_than * 86400
        chosen += [i.id for i in cluster.jobs() if i.done and (i.ended_at or 0) < cutoff and i.id not in chosen]
    elif not chosen:
        raise JobError("name the jobs to purge or give --older-than DAYS")
    cluster.purge(chosen, logs)
    what = "outputs and logs" if logs else "outputs"
    out.print(f"purged the {what} of {len(chosen)} jobs on cluster {name}", markup=False)


@app.command()
def get(
    name: str, job: str,
    dest: Annotated[Path, typer.Option(help="local directory (files land in DEST/JOB/)")] = Path("."),
    only: Annotated[list[str] | None, typer.Option("--only", help="fetch just this file (repeatable)")] = None,
    filters: Annotated[list[str] | None, typer.Option("--filter", help="paths containing this text")] = None,
    globs: Annotated[list[str] | None, typer.Option("--glob", help="paths or names matching this pattern")] = None,
    excludes: Annotated[list[str] | None, typer.Option("--exclude", help="leave out paths or names matching "
                                                                         "this pattern (repeatable)")] = None,
    no_inputs: Annotated[bool, typer.Option("--no-inputs", help="leave out staged inputs the job left "
                                                                "unchanged")] = False,
    partial: Annotated[bool, typer.Option("--partial", help="fetch from a job that is still running")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace local files changed since they were "
                                                                "downloaded")] = False,
    compress: Annotated[str, typer.Option(help="auto|none|zstd|gzip|bzip2 (compressed on the cluster)")] = "auto",
    streams: Annotated[int, typer.Option(help="parallel streams")] = 4,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Download a job's outputs: packed and compressed on the cluster, verified, resumable. Exit 1 when some
    selected file was not downloaded (each is named, with the reason)."""
    if compress not in ("auto", "none", "zstd", "gzip", "bzip2"):
        raise JobError(f"--compress must be auto, none, zstd, gzip or bzip2, not {compress!r}")
    with transfer_bar(f"job {job}", quiet=as_json) as bar:
        summary = Cluster.get(name).job(job).get(dest, only or [], globs or [], filters or [], compress, streams, bar,
                                                 exclude=excludes or [], no_inputs=no_inputs, partial=partial,
                                                 overwrite=overwrite)
    if as_json:
        out.print(json.dumps({"job": job, "dest": str(dest / job), **summary.as_dict()}), markup=False)
    else:
        _report_skipped(summary)
        codec = "/".join(sorted(set(summary.codecs))) or "-"
        out.print(f"{summary.files} files, {summary.links} links, {summary.bytes} bytes into {dest / job} in "
                  f"{summary.seconds:.1f} s ({summary.skipped} already there; wire {summary.wire_bytes} bytes, "
                  f"{codec})" + (" -- PARTIAL: the job is still running" if summary.partial else ""), markup=False)
    if summary.not_downloaded:
        raise typer.Exit(1)


@app.command("watch")
def watch_cmd(
    name: str,
    dest: Annotated[Path, typer.Option(help="local directory; each job lands in DEST/JOB/")],
    max_age_days: Annotated[float | None, typer.Option(help="skip jobs that ended longer ago")] = None,
    filters: Annotated[list[str] | None, typer.Option("--filter", help="only paths containing this text")] = None,
    excludes: Annotated[list[str] | None, typer.Option("--exclude", help="leave out paths or names matching "
                                                                         "this pattern (repeatable)")] = None,
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit")] = False,
    delete_after_verify: Annotated[bool, typer.Option(help="delete on the cluster the files that arrived "
                                                           "verified")] = False,
    interval: Annotated[float, typer.Option(help="seconds between passes")] = 10.0,
) -> None:
    """Download each finished job not downloaded yet with this selection (remembers what it fetched per
    selection; safe to stop and restart)."""
    cluster = Cluster.get(name)

    def fetched(job_id: str, summary: Summary) -> None:
        _report_skipped(summary)
        out.print(f"{job_id}: {summary.files} files, {summary.bytes} bytes -> {dest / job_id}", markup=False)

    while True:
        with transfer_bar(f"watch {name}") as bar:
            cluster.watch_once(dest, max_age_days, filters or [], delete_after_verify, fetched, bar, excludes or [])
        if once:
            return
        time.sleep(interval)
