"""Atomic file replacement on the nodes (stdlib only; shipped beside the runner): a reader sees the old file or
the new one, never a part, and a writer killed at any instruction leaves the old one in place."""

from __future__ import annotations

import os
import time
from pathlib import Path

WINDOWS = os.name == "nt"


def write_text(path: Path, text: str, owner_of: Path | None = None) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path` and replace `path` with it; `owner_of`: the new file
    gets that file's owner and group first (a root bootstrap rewriting the runner's own file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        if owner_of is not None and hasattr(os, "chown"):
            owner = owner_of.stat()
            os.chown(tmp, owner.st_uid, owner.st_gid)
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace(src: Path, dst: Path, tries: int = 50) -> None:
    """os.replace; on Windows, where a file another process has open cannot be replaced (PermissionError while a
    client reads status.json or nodes.json), tried again for up to about 5 s."""
    for attempt in range(tries):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if not WINDOWS or attempt == tries - 1:
                raise
            time.sleep(0.1)
