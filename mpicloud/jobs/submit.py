"""Submit a job: inputs into the content-addressed store, job dir written in the spool, renamed into the queue."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mpicloud.errors import JobError, TransportError
from mpicloud.jobs import transfer
from mpicloud.jobs.remote import QueueHandle
from mpicloud.protocol import objects
from mpicloud.protocol.jobs import JOB_FILE, JOB_VERSION, QUEUE, SPOOL, STORE, InputEntry, JobDoc
from mpicloud.protocol.transfer import upload_mark
from mpicloud.transport.base import Stream

ARCHIVES = (".zip", ".tar.gz", ".tgz", ".tar", ".tar.zst", ".tzst")

InputEvent = Callable[[str, str], None]  # (name, "uploaded" | "reused")


#: a client-chosen job id (idempotency key): one plain file name, sorting and printing safely everywhere
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_job_id(job_id: str) -> str:
    """A client-chosen job id, or a JobError saying what a valid one looks like."""
    if not JOB_ID.match(job_id) or job_id.endswith("."):
        raise JobError(f"job id {job_id!r} is not valid: use 1-100 letters, digits, '.', '_' or '-', starting "
                       "with a letter or digit (e.g. run-2026-01-07-a)")
    return job_id


def new_job_id() -> str:
    """A unique id that sorts in submission time order."""
    stamp = time.time()
    micro = int((stamp % 1) * 1_000_000)
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(stamp))}-{micro:06d}-{secrets.token_hex(2)}"


@dataclass
class JobRequest:
    """What to run: argv, cores, MPI or not, inputs in overlay order, an optional post command."""

    argv: list[str]
    cores: int = 1
    mpi: bool = False
    inputs: Sequence[str | Path] = ()
    name: str | None = None
    post: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    output_to: str | None = None
    sweep: str | None = None
    extra_files: dict[str, bytes] = field(default_factory=dict)  # written into the job dir (e.g. run.sh)
    unpack: bool = True  # archive inputs (.zip, .tar*) are unpacked into the work dir; False: kept as files


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_files(item: Path) -> list[tuple[Path, str]]:
    if item.is_dir():
        return [(p, p.relative_to(item.parent).as_posix()) for p in sorted(item.rglob("*")) if p.is_file()]
    return [(item, item.name)]


def object_url(url: str, what: str) -> str:
    """An object URL (s3://, az:// or an https blob URL) in the form the cluster reads, or a JobError naming
    the option."""
    try:
        return str(objects.parse(url))
    except objects.BadObjectURL as exc:
        raise JobError(f"{what}: {exc}") from None


def upload_inputs(queue: QueueHandle, inputs: Sequence[str | Path], on_event: InputEvent | None = None,
                  progress: transfer.Progress | None = None, unpack: bool = True) -> list[InputEntry]:
    """Put each input into the store once (by SHA-256); return the job's input entries in order. Archives are
    unpacked into the work dir unless `unpack` is False (then they arrive as the files they are)."""
    entries: list[InputEntry] = []
    for raw in inputs:
        text = str(raw)
        if objects.is_object_url(text):
            url = objects.parse(text)
            entries.append({"source": "object", "url": str(url), "name": url.name,
                            "unpack": unpack and url.name.lower().endswith(ARCHIVES)})
            continue
        item = Path(text)
        if not item.exists() or not os.access(item, os.R_OK):
            raise JobError(f"input {text}: no such readable file or directory")
        for path, name in _local_files(item):
            digest = sha256_file(path)
            event = store_object(queue, path, digest, progress)
            if on_event:
                on_event(name, event)
            st = path.stat()
            entries.append({"source": "store", "sha256": digest, "name": name,
                            "unpack": unpack and item.is_file() and name.lower().endswith(ARCHIVES),
                            "mode": None if os.name == "nt" else stat.S_IMODE(st.st_mode) & 0o777,
                            "mtime": st.st_mtime_ns})
    return entries


def existing_job(queue: QueueHandle, job_id: str) -> bool:
    """True when the cluster already has this job id (submitted or accepted, in any state)."""
    return queue.transport.stat(queue.path(QUEUE, job_id)) is not None or \
        queue.transport.stat(queue.job_path(job_id)) is not None


def store_object(queue: QueueHandle, path: Path, digest: str, progress: transfer.Progress | None = None) -> str:
    """Make sure store/<digest> holds this file: "reused", "uploaded" or "resumed".

    A claim on the node (`transfer.py claim`, held as long as this stream is open) makes one uploader of an
    object at a time write its own part file; others wait and reuse its result. The node checks the whole
    object's SHA-256 before renaming it into the store, so a store object is always complete and right, and
    one that is there (a single stat) is reused without a claim."""
    size = path.stat().st_size
    existing = queue.transport.stat(queue.path(STORE, digest))
    if existing is not None and existing.size == size:  # only ever renamed in whole and verified
        return "reused"
    claim = queue.transport.open_stream(queue.helper("claim", queue.cluster_path(STORE), digest,
                                                     f"--length={size}"))
    lines = _Lines(claim)
    answer, sent = "", 0
    try:
        answer = lines.next()
        if answer == "wait":  # another uploader is sending it: its result, or the claim once it died
            answer = lines.next()
        if re.fullmatch(rf"part \.{digest}\.[0-9a-f]+\.part", answer):
            sent = transfer.upload(queue, path, queue.cluster_path(STORE, answer[5:]), progress=progress,
                                   mark=queue.cluster_path(STORE, upload_mark(digest)))
            claim.write(b"commit\n")
            answer = lines.next()
    finally:
        claim.close_input()
        code, err = claim.finish()
    if answer == "have":
        return "reused"
    if answer != "stored":
        detail = answer or err.decode(errors="replace").strip() or f"exit code {code}"
        raise TransportError(f"input {path} was not stored on cluster {queue.cluster!r}: {detail} (run the "
                             "command again; if this persists, update the runner on the cluster)")
    return "uploaded" if sent == size else "resumed"


class _Lines:
    """Lines of a stream's stdout, read as they come (the node answers one line at a time)."""

    def __init__(self, stream: Stream) -> None:
        self.stream, self.buffer = stream, b""

    def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.stream.read(4096)
            if not chunk:
                return self.buffer.decode(errors="replace").strip()
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace").strip()


def submit(queue: QueueHandle, request: JobRequest, on_event: InputEvent | None = None,
           job_id: str | None = None, preuploaded: Sequence[InputEntry] = ()) -> str:
    """Queue a job and return its id. A client-chosen job_id is an idempotency key: when the cluster already
    has that job (an earlier try of this submit got through), its id is returned and nothing is queued
    again. Refused before anything is written when the job needs more cores than the cluster has.
    `preuploaded` input entries go first."""
    if not request.argv:
        raise JobError("no command given: put it after `--`, e.g. `mpicloud submit NAME -- hostname`")
    if request.cores < 1:
        raise JobError(f"--cores must be at least 1, not {request.cores}")
    for item in request.inputs:
        if objects.is_object_url(str(item)) or str(item).startswith(("s3:", "az:")):
            object_url(str(item), "--input")
    output_to = object_url(request.output_to, "--output-to") if request.output_to else None
    if job_id is not None:
        check_job_id(job_id)
    queue.prepare()
    if queue.slots_total is not None and request.cores > queue.slots_total:
        raise JobError(f"the job needs {request.cores} cores, the cluster {queue.cluster!r} has "
                       f"{queue.slots_total}")
    if job_id is not None and existing_job(queue, job_id):
        return job_id
    inputs = [*preuploaded, *upload_inputs(queue, request.inputs, on_event, unpack=request.unpack)]
    job_id = job_id or new_job_id()
    job: JobDoc = {"version": JOB_VERSION, "id": job_id, "name": request.name, "argv": request.argv,
                   "cores": request.cores, "mpi": request.mpi, "inputs": inputs, "post": request.post,
                   "env": request.env, "output_to": output_to, "sweep": request.sweep,
                   "submitted_at": time.time()}
    spool = queue.path(SPOOL, job_id)
    queue.transport.makedirs(spool)
    for name, data in request.extra_files.items():
        queue.transport.write_bytes(f"{spool}/{name}", data)
    queue.transport.write_bytes(f"{spool}/{JOB_FILE}", json.dumps(job, indent=1).encode())
    try:
        queue.transport.rename(spool, queue.path(QUEUE, job_id))
    except TransportError:
        if not existing_job(queue, job_id):
            raise
    return job_id
