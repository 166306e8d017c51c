"""Automatic download: fetch every finished job not fetched yet into DEST/<job>/, remembering what arrived."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpicloud.errors import JobError
from mpicloud.jobs import query
from mpicloud.jobs.fetch import fetch_job
from mpicloud.jobs.remote import QueueHandle
from mpicloud.jobs.transfer import Progress, Summary

LEDGER = ".mpicloud-watch.json"
Fetched = Callable[[str, Summary], None]


def _ledger(dest: Path) -> dict[str, Any]:
    path = dest / LEDGER
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"fetched": {}}
    return data


def _save(dest: Path, ledger: dict[str, Any]) -> None:
    tmp = dest / (LEDGER + ".tmp")
    tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(dest / LEDGER)


def watch_once(queue: QueueHandle, dest: Path, max_age_days: float | None = None, filters: Sequence[str] = (),
               delete_after_verify: bool = False, on_fetched: Fetched | None = None,
               progress: Progress | None = None) -> list[str]:
    """One pass: download each ended job (succeeded or failed) not fetched before; returns their ids."""
    dest.mkdir(parents=True, exist_ok=True)
    ledger = _ledger(dest)
    oldest = time.time() - max_age_days * 86400 if max_age_days else 0.0
    fetched = []
    for info in query.list_jobs(queue):
        if info.state not in ("succeeded", "failed") or info.id in ledger["fetched"]:
            continue
        if (info.ended_at or 0) < oldest:
            continue
        try:
            summary = fetch_job(queue, info.id, dest / info.id, filters=filters,
                                progress=progress)
        except JobError as exc:
            if "no work dir" in str(exc) or "has not started" in str(exc):
                continue
            raise
        ledger["fetched"][info.id] = {"at": time.time(), "files": summary.files, "bytes": summary.bytes,
                                      "state": info.state}
        _save(dest, ledger)
        if delete_after_verify:
            query.purge_jobs(queue, [info.id])
        fetched.append(info.id)
        if on_fetched:
            on_fetched(info.id, summary)
    return fetched
