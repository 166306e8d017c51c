"""Job state, listing, waiting, live logs and cancel, read from the runner's files on the cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mpicloud.errors import JobError, TransportError
from mpicloud.jobs.remote import QueueHandle
from mpicloud.protocol.jobs import CANCEL_FILE, QUEUE, STATE_FILE, TERMINAL, JobState


@dataclass(frozen=True)
class JobInfo:
    """A job's state as the runner recorded it."""

    id: str
    state: str
    cores: int | None = None
    name: str | None = None
    exit_code: int | None = None
    post_exit_code: int | None = None
    reason: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    sweep: str | None = None
    hosts: tuple[tuple[str, int], ...] = ()

    @property
    def done(self) -> bool:
        """True once the job reached a final state."""
        return self.state in TERMINAL

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> JobInfo:
        """Build from a state.json document."""
        fields = {k: data.get(k) for k in ("cores", "name", "exit_code", "post_exit_code", "reason",
                                            "submitted_at", "started_at", "ended_at", "sweep")}
        hosts = tuple((str(h), int(n)) for h, n in data.get("hosts") or [])
        return cls(id=data["id"], state=data["state"], hosts=hosts, **fields)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def job_info(queue: QueueHandle, job_id: str) -> JobInfo:
    """The current state of one job; JobError when the cluster has no such job."""
    try:
        return JobInfo.from_state(json.loads(queue.transport.read_bytes(queue.job_path(job_id, STATE_FILE))))
    except FileNotFoundError:
        pass
    if queue.transport.stat(queue.path(QUEUE, job_id)) is not None:
        return JobInfo(id=job_id, state=JobState.SUBMITTED)
    if queue.transport.stat(queue.job_path(job_id)) is not None:  # accepted, state being written
        return JobInfo(id=job_id, state=JobState.QUEUED)
    raise JobError(f"cluster {queue.cluster!r} has no job {job_id!r}; `mpicloud jobs {queue.cluster}` lists them")


def list_jobs(queue: QueueHandle) -> list[JobInfo]:
    """Every job in FIFO order (one command on the head node, after making sure a runner serves them)."""
    queue.prepare()
    return [JobInfo.from_state(d) for d in queue.runner_json("list")]


def runner_status(queue: QueueHandle) -> dict[str, Any]:
    """Slots busy/free, queue length, idle time, heartbeat age, unreachable nodes; a dead runner is restarted
    and `restarted` says so (the dead runner's pid and heartbeat age)."""
    data: dict[str, Any] = queue.runner_json("status")
    if not data.get("alive"):
        started = queue.ensure_runner()
        data = {**queue.runner_json("status"), "restarted": started.get("previous") or {}}
    return data


#: how often a long wait makes sure the runner still serves the queue
RUNNER_CHECK_SECONDS = 30.0


def wait(queue: QueueHandle, job_id: str, timeout: float | None = None, poll: float = 0.2) -> JobInfo:
    """Block until the job ends, restarting a dead runner on the way; JobError on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    queue.prepare()
    checked = time.monotonic()
    while True:
        info = job_info(queue, job_id)
        if info.done:
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise JobError(f"job {job_id} still {info.state} after {timeout:.0f} s")
        if time.monotonic() - checked > RUNNER_CHECK_SECONDS:
            queue.ensure_runner()
            checked = time.monotonic()
        time.sleep(poll)


#: the logs of a job: its command's stdout and stderr, and the post step's (post command, bucket push)
LOG_STREAMS = ("stdout", "stderr", "post")
LOG_CHUNK = 1 << 20


def read_log(queue: QueueHandle, job_id: str, stream: str = "stdout", offset: int = 0,
             limit: int | None = None) -> bytes:
    """Bytes of a job log from offset, at most limit (to its end when None); only those bytes are read from the
    cluster. Empty when the log does not exist (yet)."""
    if stream not in LOG_STREAMS:
        raise JobError(f"no log stream {stream!r}; streams are {', '.join(LOG_STREAMS)}")
    path = queue.job_path(job_id, f"{stream}.log")
    parts: list[bytes] = []
    want = LOG_CHUNK if limit is None else limit
    try:
        while want > 0 and (chunk := queue.transport.read_range(path, offset, min(want, LOG_CHUNK))):
            parts.append(chunk)
            offset += len(chunk)
            want = LOG_CHUNK if limit is None else want - len(chunk)
    except FileNotFoundError:
        pass
    return b"".join(parts)


def follow_logs(queue: QueueHandle, job_id: str, emit: Callable[[str, bytes], None], follow: bool = True,
                poll: float = 0.3, streams: tuple[str, ...] = ("stdout", "stderr")) -> JobInfo:
    """Emit the streams' new bytes in chunks as they grow (bounded memory, each byte read once); with follow,
    until the job ends."""
    offsets = dict.fromkeys(streams, 0)
    while True:
        info = job_info(queue, job_id)
        for stream in offsets:
            while chunk := read_log(queue, job_id, stream, offsets[stream], LOG_CHUNK):
                offsets[stream] += len(chunk)
                emit(stream, chunk)
        if not follow or info.done:
            return info
        time.sleep(poll)


def cancel(queue: QueueHandle, job_id: str) -> JobInfo:
    """Ask the runner to cancel a queued or running job (every process on every node; the job ends
    `cancelled` once they are gone). The request goes into the job's directory wherever it is now: a
    submission not accepted yet carries it along into jobs/."""
    queue.prepare()
    for _ in range(20):
        info = job_info(queue, job_id)
        if info.done:
            return info
        where = queue.path(QUEUE, job_id) if info.state == JobState.SUBMITTED else queue.job_path(job_id)
        try:
            queue.transport.write_bytes(f"{where}/{CANCEL_FILE}", b"cancel\n")
        except (FileNotFoundError, TransportError):
            time.sleep(0.05)  # moved from queue/ into jobs/ meanwhile: write it there
            continue
        return info
    raise JobError(f"could not deliver the cancel request for job {job_id}: it keeps moving; try again")


def purge_jobs(queue: QueueHandle, job_ids: list[str], logs: bool = False) -> None:
    """Delete ended jobs' work dirs on the cluster (and, with logs, their logs); JobError naming the jobs the
    runner refused (not ended)."""
    if not job_ids:
        return
    result = queue.transport.run(queue.command("purge", *job_ids, *(["--logs"] if logs else [])), timeout=300)
    if result.exit_code != 0:
        raise JobError(f"could not purge on cluster {queue.cluster!r}: "
                       f"{result.stderr.decode(errors='replace').strip()}")
