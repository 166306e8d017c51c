"""The one rule for remote names: hostile names of both path flavours are refused, ordinary ones kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpicloud.protocol.paths import UnsafePath, check_name, safe_join

HOSTILE = [
    "", "/etc/passwd", "//home/user/.ssh/authorized_keys", "../x", "a/../../x", "a/./b", "a//b", "a/",
    "C:/Windows/x", "c:x", "\\\\host\\share\\x", "\\Windows\\x", "a\\..\\..\\x", "dir\\file",
    "CON", "nul.txt", "a/COM1", "lpt9.log", "trailing.", "trailing ", "a:b", "x|y", "what?", "star*",
    "new\nline", "nul\0byte", "esc\x1b[31m",
]
ORDINARY = ["result.txt", "out/step-001/field.vtk", ".hidden", "a b/c d.txt", "ünïcödé/数据.bin", "-big.bin",
            "--offset=0", "x.mpicloud-part", "console/x", "...txt"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafePath):
        check_name(name)
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, name)


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_stay_inside(name: str, tmp_path: Path) -> None:
    target = safe_join(tmp_path, name)
    assert tmp_path.resolve() in target.resolve().parents
    assert check_name(name).as_posix() == name


def test_a_symlinked_parent_cannot_redirect_a_write(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    base = tmp_path / "base"
    base.mkdir()
    os.symlink(outside, base / "link")
    with pytest.raises(UnsafePath, match="symbolic link"):
        safe_join(base, "link/x")
    os.symlink(outside / "f", base / "f")
    with pytest.raises(UnsafePath, match="symbolic link"):
        safe_join(base, "f")
