"""Parameter sweeps: a CSV of runs and a jinja2 run-script template, checked whole before anything is queued."""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mpicloud.errors import JobError
from mpicloud.jobs import query
from mpicloud.jobs.remote import QueueHandle
from mpicloud.jobs.submit import InputEvent, JobRequest, new_job_id, submit, upload_inputs
from mpicloud.protocol import objects
from mpicloud.protocol.jobs import SWEEPS, TERMINAL, JobState
from mpicloud.render.quoting import UnquotableValue, batch_quote, posix_quote, powershell_quote, python_quote

SWEEP_VERSION = 1
INTERPRETERS = {".sh": ["sh"], ".bash": ["bash"], ".py": ["python3"], ".ps1": ["powershell", "-NoProfile",
                "-ExecutionPolicy", "Bypass", "-File"], ".bat": ["cmd", "/c"], ".cmd": ["cmd", "/c"]}
#: how a value is written into a script of each language: as one literal word or string, never as code
QUOTERS: dict[str, Callable[[str], str]] = {".sh": posix_quote, ".bash": posix_quote, ".py": python_quote,
                                            ".ps1": powershell_quote, ".bat": batch_quote, ".cmd": batch_quote}
RESERVED = {"cores", "name", "s3_input", "s3_output", "input_url", "output_url"}
#: the columns naming a run's bucket input and output: (S3 only, any object URL)
URL_COLUMNS = {"input": ("s3_input", "input_url"), "output": ("s3_output", "output_url")}


class Raw(str):
    """Text a template marked `{{ value | raw }}`: inserted as it is, unquoted."""


def environment(quote: Callable[[str], str]) -> jinja2.Environment:
    """The sandboxed environment templates render in: no attribute access to Python internals, nothing
    mutable, every string an expression prints quoted for the script's language unless marked `| raw`
    (numbers from template arithmetic are printed as they are)."""

    def finalize(value: Any) -> Any:
        return quote(value) if isinstance(value, str) and not isinstance(value, Raw) else value

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                        autoescape=False, finalize=finalize)
    env.filters["raw"] = Raw
    return env


@dataclass(frozen=True)
class Run:
    """One CSV row made into a job: its variables, rendered script, cores, bucket input and output."""

    line: int
    values: dict[str, str]
    script: str
    cores: int
    input_url: str | None
    output_url: str | None


def read_runs(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs; JobError naming file and line for every CSV problem."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"{csv_path}: cannot read the runs file ({exc})") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise JobError(f"{csv_path}: the file is empty; it needs a header line and one line per run") from None
    header = [h.strip() for h in header]
    dupes = [h for h, n in Counter(header).items() if n > 1]
    if dupes:
        raise JobError(f"{csv_path}:1: duplicate column {dupes[0]!r} in the header")
    if any(not h.isidentifier() for h in header):
        bad = next(h for h in header if not h.isidentifier())
        raise JobError(f"{csv_path}:1: column {bad!r} is not a valid variable name (letters, digits, _)")
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise JobError(f"{csv_path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
        rows.append((reader.line_num, dict(zip(header, (c.strip() for c in row), strict=True))))
    if not rows:
        raise JobError(f"{csv_path}: no runs below the header")
    return header, rows


def plan(csv_path: Path, template_path: Path, cores_per_run: int = 1) -> list[Run]:
    """Render the template for every row; any problem is reported before anything is submitted."""
    script_name, _ = script_command(template_path)
    header, rows = read_runs(csv_path)
    try:
        source = template_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"{template_path}: cannot read the template ({exc})") from None
    env = environment(QUOTERS[Path(script_name).suffix.lower()])
    try:
        parsed = env.parse(source)
        template = env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise JobError(f"{template_path}:{exc.lineno}: template syntax error: {exc.message}") from None
    missing = sorted(meta.find_undeclared_variables(parsed) - set(header))
    if missing:
        raise JobError(f"{template_path}: uses {', '.join(repr(m) for m in missing)}, which {csv_path} has no "
                       f"column for (columns: {', '.join(header)})")
    runs = []
    for line, values in rows:
        try:
            script = template.render(**values)
        except (jinja2.TemplateError, UnquotableValue) as exc:
            raise JobError(f"{template_path}: rendering the run on {csv_path}:{line} failed: {exc}") from None
        cores = values.get("cores") or str(cores_per_run)
        if not cores.isdigit() or int(cores) < 1:
            raise JobError(f"{csv_path}:{line}: cores must be a whole number >= 1, not {cores!r}")
        urls = {role: _row_url(values, csv_path, line, *columns) for role, columns in URL_COLUMNS.items()}
        runs.append(Run(line=line, values=values, script=script, cores=int(cores),
                        input_url=urls["input"], output_url=urls["output"]))
    return runs


def _row_url(values: dict[str, str], csv_path: Path, line: int, s3_column: str, any_column: str) -> str | None:
    """The row's URL from its S3-only column or its any-store column (not both), checked; None when empty."""
    given = [(c, values[c]) for c in (s3_column, any_column) if values.get(c)]
    if len(given) > 1:
        raise JobError(f"{csv_path}:{line}: give {s3_column} or {any_column}, not both")
    if not given:
        return None
    column, text = given[0]
    try:
        url = objects.parse(text)
    except objects.BadObjectURL as exc:
        raise JobError(f"{csv_path}:{line}: {column}: {exc}") from None
    if column == s3_column and url.scheme != "s3":
        raise JobError(f"{csv_path}:{line}: {column} must be an s3:// URL, not {text!r} (use {any_column})")
    return str(url)


def script_command(template_path: Path) -> tuple[str, list[str]]:
    """The run script's file name (template name minus .j2) and the argv that runs it."""
    name = template_path.name.removesuffix(".j2")
    interpreter = INTERPRETERS.get(Path(name).suffix.lower())  # the keys of QUOTERS too
    if interpreter is None:
        raise JobError(f"{template_path}: name it *.sh.j2, *.py.j2, *.ps1.j2 or *.bat.j2 so the script's "
                       "interpreter is known")
    return name, [*interpreter, name]


def submit_sweep(queue: QueueHandle, csv_path: Path, template_path: Path, cores_per_run: int = 1,
                 inputs: Sequence[str | Path] = (), label: str | None = None,
                 on_event: InputEvent | None = None) -> tuple[str, list[str]]:
    """Queue one job per CSV row as one sweep; returns the sweep id and the job ids in row order."""
    runs = plan(csv_path, template_path, cores_per_run)
    script_name, argv = script_command(template_path)
    queue.prepare()
    shared_inputs = upload_inputs(queue, inputs, on_event)
    sweep_id = "s" + new_job_id()
    job_ids = [new_job_id() for _ in runs]
    record = {"version": SWEEP_VERSION, "id": sweep_id, "name": label or csv_path.stem, "created_at": time.time(),
              "runs_file": csv_path.name, "template": template_path.name, "jobs": job_ids,
              "rows": [r.values for r in runs]}
    queue.transport.write_bytes(queue.path(SWEEPS, f"{sweep_id}.json"), json.dumps(record, indent=1).encode())
    for run, job_id in zip(runs, job_ids, strict=True):
        request = JobRequest(argv=argv, cores=run.cores, name=f"{record['name']}:{run.line}", sweep=sweep_id,
                             inputs=[run.input_url] if run.input_url else [], output_to=run.output_url,
                             extra_files={script_name: run.script.encode()})
        submit(queue, request, job_id=job_id, preuploaded=[*shared_inputs,
               {"source": "jobdir", "name": script_name, "unpack": False}])
    return sweep_id, job_ids


def load_sweep(queue: QueueHandle, sweep_id: str) -> dict[str, Any]:
    """A sweep's record; JobError naming the cluster when it does not exist."""
    try:
        data: dict[str, Any] = json.loads(queue.transport.read_bytes(queue.path(SWEEPS, f"{sweep_id}.json")))
    except FileNotFoundError:
        raise JobError(f"cluster {queue.cluster!r} has no sweep {sweep_id!r}") from None
    return data


def sweep_status(queue: QueueHandle, sweep_id: str) -> dict[str, Any]:
    """Aggregated progress of a sweep: counts per state and the failed runs with their reasons."""
    record = load_sweep(queue, sweep_id)
    states = {info.id: info for info in query.list_jobs(queue) if info.sweep == sweep_id}
    counts: Counter[str] = Counter()
    failed = []
    for job_id, row in zip(record["jobs"], record["rows"], strict=True):
        info = states.get(job_id)
        state = info.state if info else "not submitted"
        counts[state] += 1
        if info and info.state == JobState.FAILED:
            failed.append({"job": job_id, "row": row, "exit_code": info.exit_code, "reason": info.reason})
    return {"id": sweep_id, "name": record["name"], "total": len(record["jobs"]), "counts": dict(counts),
            "done": sum(counts[s] for s in TERMINAL), "failed": failed}


def cancel_sweep(queue: QueueHandle, sweep_id: str) -> int:
    """Cancel every run of a sweep that has not ended; returns how many were asked to stop."""
    record = load_sweep(queue, sweep_id)
    ended = {i.id for i in query.list_jobs(queue) if i.sweep == sweep_id and i.done}
    pending = [j for j in record["jobs"] if j not in ended]
    for job_id in pending:
        query.cancel(queue, job_id)
    return len(pending)
