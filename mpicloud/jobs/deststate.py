"""What a download already put in its destination, kept in DEST/.mpicloud/ (out of the user's namespace):
`transfer.json` records each file that arrived verified, part files and range progress live in `parts/`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from mpicloud.protocol.transfer import BOOKKEEPING

STATE = "transfer.json"


class DestState:
    """Verified files {path: [size, remote mtime_ns, sha256, local mtime_ns]} and finished ranges of large
    files {path: [size, mtime_ns, [index, ...]]}; saved atomically, often enough that a killed download
    loses at most half a second of small files (ranges are saved as each finishes)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.dir = dest / BOOKKEEPING
        self.path = self.dir / STATE
        self.parts = self.dir / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {"files": {}, "ranges": {}}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded.get("files"), dict) and isinstance(loaded.get("ranges"), dict):
                self.data = loaded
        self.saved = time.monotonic()

    def local(self, rel: str, target: Path) -> str:
        """`absent`, `verified` (exactly as downloaded), `edited` (changed since), or `foreign` (there, but
        not downloaded by mpicloud as far as the state knows)."""
        try:
            st = target.lstat()
        except FileNotFoundError:
            return "absent"
        entry = self.data["files"].get(rel)
        if entry is None:
            return "foreign"
        return "verified" if st.st_size == entry[0] and st.st_mtime_ns == entry[3] and target.is_file() \
            and not target.is_symlink() else "edited"

    def record(self, rel: str) -> list[Any] | None:
        """The state's entry for a file, if any."""
        entry: list[Any] | None = self.data["files"].get(rel)
        return entry

    def part(self, rel: str) -> Path:
        """Where a file is written before it is moved into place (a name that cannot collide)."""
        return self.parts / (hashlib.sha256(rel.encode()).hexdigest()[:40] + ".part")

    def ranges(self, rel: str, size: int, mtime: int) -> set[int]:
        """Finished ranges of a large file in the version (size, mtime) being fetched."""
        entry = self.data["ranges"].get(rel)
        return set(entry[2]) if entry and entry[:2] == [size, mtime] else set()

    def started(self, rel: str, size: int, mtime: int) -> bool:
        """Whether ranges of this version of the file were already being fetched (its part file is ours)."""
        entry = self.data["ranges"].get(rel)
        return bool(entry and entry[:2] == [size, mtime])

    def start_ranges(self, rel: str, size: int, mtime: int) -> None:
        with self.lock:
            self.data["ranges"][rel] = [size, mtime, []]
            self.save()

    def mark_range(self, rel: str, size: int, mtime: int, index: int) -> None:
        with self.lock:
            entry = self.data["ranges"].setdefault(rel, [size, mtime, []])
            if entry[:2] != [size, mtime]:
                entry[:] = [size, mtime, []]
            entry[2].append(index)
            self.save()

    def forget_ranges(self, rel: str) -> None:
        with self.lock:
            self.data["ranges"].pop(rel, None)

    def mark_file(self, rel: str, size: int, mtime: int, sha: str, local_mtime: int, force: bool = False) -> None:
        with self.lock:
            self.data["files"][rel] = [size, mtime, sha, local_mtime]
            self.data["ranges"].pop(rel, None)
            if force or time.monotonic() - self.saved > 0.5:
                self.save()

    def save(self) -> None:
        """Write the state atomically (callers hold the lock, or are the only thread left)."""
        tmp = self.path.with_name(STATE + ".tmp")
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        os.replace(tmp, self.path)
        self.saved = time.monotonic()
