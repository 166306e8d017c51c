"""The nodes' atomic file replacement (mpicloud/protocol/atomic.py): the old file or the new one, never a part
and no temporary file left behind; on Windows a replace refused while a reader holds the file is tried again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpicloud.protocol import atomic


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "status.json"
    atomic.write_text(target, "old")

    def refuse(src: Path, dst: Path) -> None:
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["status.json"]


@pytest.mark.parametrize(("windows", "refusals", "written"), [(True, 3, True), (False, 1, False)])
def test_a_replace_refused_by_a_reader_is_tried_again_on_windows_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows: bool, refusals: int, written: bool) -> None:
    target, real = tmp_path / "nodes.json", os.replace
    calls: list[Path] = []

    def held_open(src: Path, dst: Path) -> None:  # Windows: a client reading the file blocks its replacement
        calls.append(dst)
        if len(calls) <= refusals:
            raise PermissionError(13, "in use", str(dst))
        real(src, dst)
    monkeypatch.setattr(atomic, "WINDOWS", windows)
    monkeypatch.setattr(atomic.os, "replace", held_open)
    monkeypatch.setattr(atomic.time, "sleep", lambda seconds: None)
    if written:
        atomic.write_text(target, "new")
        assert target.read_text() == "new" and len(calls) == refusals + 1
    else:
        with pytest.raises(PermissionError):
            atomic.write_text(target, "new")
        assert not target.exists() and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
