"""The client's downloader against a node that sends hostile names: nothing lands outside the destination.

The node's own transfer helper never lists such names (tests/unit/test_transfer_helper.py); this stands in
for a compromised or buggy node, which only the client can defend against."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mpicloud.errors import TransportError
from mpicloud.jobs.transfer import download
from mpicloud.protocol.transfer import FRAME, MANIFEST

HOSTILE_FILES = ("../escape.txt", "sub/../../up.txt", "C:/drive.txt", "a\\b.txt", "con.txt", "sub/./dot.txt")
HOSTILE_LINKS = {"l-abs": "/etc/passwd", "l-up": "../../outside", "sub/l-up": "../../x", "l-drive": "C:\\Windows",
                 "l-unc": "\\\\host\\share", "../l-out": "ok.txt"}
SAFE_LINKS = {"sub/l-ok": "../ok.txt", "l-ok": "ok.txt"}


def _frame(name: str, data: bytes) -> bytes:
    encoded = name.encode()
    return struct.pack(FRAME, len(encoded), len(data)) + encoded + data + hashlib.sha256(data).digest()


def _stream(files: dict[str, bytes], links: dict[str, str], sent: dict[str, bytes]) -> bytes:
    manifest = {"files": [{"path": p, "size": len(d), "mtime": 1_700_000_000_000_000_000, "mode": 0o644}
                          for p, d in files.items()],
                "links": [{"path": p, "target": t} for p, t in links.items()], "skipped": []}
    body = _frame(MANIFEST, json.dumps(manifest).encode())
    return body + b"".join(_frame(p, d) for p, d in sent.items()) + struct.pack(FRAME, 0, 0)


class _Stream:
    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def write(self, data: bytes) -> None:
        pass

    def close_input(self) -> None:
        pass

    def read(self, size: int) -> bytes:
        return self.data.read(size)

    def finish(self) -> tuple[int, bytes]:
        return 0, b""

    def abort(self) -> None:
        pass


def _node(data: bytes) -> Any:
    """A queue handle whose cluster answers the pack command with data."""
    return SimpleNamespace(cluster="hostile", helper=lambda *args: "pack",
                           transport=SimpleNamespace(open_stream=lambda command: _Stream(data)))


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_names_and_link_targets_are_reported_and_nothing_lands_outside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    files = {**dict.fromkeys(HOSTILE_FILES, b"evil\n"), "ok.txt": b"fine\n"}
    before = _everything(tmp_path)
    summary = download(_node(_stream(files, {**HOSTILE_LINKS, **SAFE_LINKS}, {"ok.txt": b"fine\n"})),
                       "/work", dest)
    reported = {p["path"] for p in summary.not_downloaded}
    assert reported == set(HOSTILE_FILES) | set(HOSTILE_LINKS)
    assert (dest / "ok.txt").read_bytes() == b"fine\n"
    assert {n: str((dest / n).readlink()) for n in SAFE_LINKS} == SAFE_LINKS
    written = _everything(tmp_path) - before
    assert {w for w in written if not w.startswith("dest/.mpicloud")} == \
        {"dest", "dest/ok.txt", "dest/sub", "dest/sub/l-ok", "dest/l-ok"}


def test_a_file_the_client_did_not_ask_for_breaks_the_transfer_off(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    data = _stream({"ok.txt": b"fine\n"}, {}, {"ok.txt": b"fine\n", "../escape.txt": b"evil\n"})
    with pytest.raises(TransportError, match="not asked for"):
        download(_node(data), "/work", dest)
    assert not (tmp_path / "escape.txt").exists()
