"""Automatic download: fetch every ended job not fetched yet into DEST/<job>/, remembering what arrived.

The ledger (DEST/.mpicloud-watch.json) is kept per selection (the set of filters and excludes): a later
pass with a different selection revisits every job. Ended jobs do not change, so a job whose selection
matched nothing is recorded as fetched with `"empty": true` for that selection only."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpicloud.errors import JobError
from mpicloud.jobs import query
from mpicloud.jobs.fetch import GetOptions, NoWorkDir, fetch_job
from mpicloud.jobs.remote import QueueHandle
from mpicloud.jobs.transfer import Progress, Summary
from mpicloud.protocol.jobs import JobState

LEDGER = ".mpicloud-watch.json"
Fetched = Callable[[str, Summary], None]


def selection_key(filters: Sequence[str], excludes: Sequence[str]) -> str:
    """The ledger key of a selection (order and repeats do not matter)."""
    return json.dumps({"filters": sorted(set(filters)), "excludes": sorted(set(excludes))}, sort_keys=True)


def _ledger(dest: Path) -> dict[str, Any]:
    path = dest / LEDGER
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.setdefault("selections", {})
    return data


def _save(dest: Path, ledger: dict[str, Any]) -> None:
    tmp = dest / (LEDGER + ".tmp")
    tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(dest / LEDGER)


def watch_once(queue: QueueHandle, dest: Path, max_age_days: float | None = None, filters: Sequence[str] = (),
               delete_after_verify: bool = False, on_fetched: Fetched | None = None,
               progress: Progress | None = None, excludes: Sequence[str] = ()) -> list[str]:
    """One pass: download each ended job (succeeded or failed) not fetched before with this selection;
    returns their ids. With delete_after_verify, only the files that arrived verified are deleted on the
    cluster (and only those still unchanged there)."""
    dest.mkdir(parents=True, exist_ok=True)
    ledger = _ledger(dest)
    done = ledger["selections"].setdefault(selection_key(filters, excludes), {})
    oldest = time.time() - max_age_days * 86400 if max_age_days else 0.0
    fetched = []
    for info in query.list_jobs(queue):
        if info.state not in (JobState.SUCCEEDED, JobState.FAILED) or info.id in done:
            continue
        if (info.ended_at or 0) < oldest:
            continue
        try:
            summary = fetch_job(queue, info.id, dest / info.id, GetOptions(filters=filters, excludes=excludes),
                                progress)
        except NoWorkDir:
            continue  # nothing there, ever (it never started or was purged)
        done[info.id] = {"at": time.time(), "files": summary.files, "bytes": summary.bytes, "state": info.state,
                         "empty": not summary.verified and not summary.not_downloaded,
                         "not_downloaded": summary.not_downloaded}
        _save(dest, ledger)
        if delete_after_verify and summary.verified:
            _purge(queue, info.id, summary.verified)
        fetched.append(info.id)
        if on_fetched:
            on_fetched(info.id, summary)
    return fetched


def _purge(queue: QueueHandle, job_id: str, verified: list[dict[str, Any]]) -> None:
    result = queue.transport.run(queue.command("purge", job_id, "--listed"), stdin=json.dumps(verified).encode(),
                                 timeout=300)
    if result.exit_code != 0:
        raise JobError(f"could not delete job {job_id}'s outputs on cluster {queue.cluster!r}: "
                       f"{result.stderr.decode(errors='replace').strip()}")
