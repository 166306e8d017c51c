"""One rule for every name that comes from elsewhere (object keys, archive members, pack-stream and listing
names, --only names): a relative path that stays inside its directory on POSIX and on Windows alike."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path, PurePosixPath

#: device names Windows reserves in every directory, with or without an extension
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePath(ValueError):
    """A remote name that would land outside its directory (or cannot be written safely there)."""


def check_name(name: str) -> PurePosixPath:
    """The name as a relative POSIX path, or UnsafePath saying why it is refused.

    Refused on every OS, so that what one client accepts every other does too: empty names, NUL and other
    control characters, absolute paths, drive letters, UNC and rooted Windows paths, backslashes (a
    separator on Windows), empty, `.` and `..` components, and components Windows cannot hold (reserved
    device names, trailing dots or spaces, `<>:"|?*`)."""
    if not name:
        raise UnsafePath("empty name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise UnsafePath(f"{name!r}: control character in the name")
    if "\\" in name:
        raise UnsafePath(f"{name!r}: backslash in the name (a path separator on Windows)")
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafePath(f"{name!r}: absolute path")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"{name!r}: empty, '.' or '..' path component")
        if _RESERVED.match(part) or part.endswith((".", " ")) or any(ch in part for ch in '<>:"|?*'):
            raise UnsafePath(f"{name!r}: {part!r} is not a valid file name on Windows")
    return PurePosixPath(*parts)


def check_link(name: str, target: str) -> None:
    """UnsafePath unless `name -> target` is a safe name and a relative link that stays inside its directory by
    its text (no absolute, drive, UNC or backslash target, no `..` climbing out)."""
    check_name(name)
    if not target or target.startswith("/") or "\\" in target or ":" in target or "\0" in target:
        raise UnsafePath(f"{name!r}: link target {target!r} is not a relative path")
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if lexical in (".", "..") or lexical.startswith("../"):
        raise UnsafePath(f"{name!r}: link target {target!r} leads outside the directory")


def safe_join(base: Path, name: str) -> Path:
    """base/name after check_name; also refuses a path whose existing parents lead outside base through a
    symbolic link (so a crafted earlier entry cannot redirect a later one)."""
    relative = check_name(name)
    target = base.joinpath(*relative.parts)
    root = base.resolve()
    parent = target.parent.resolve()
    if parent != root and root not in parent.parents:
        raise UnsafePath(f"{name!r}: leads outside {base} through a symbolic link")
    if target.is_symlink():
        raise UnsafePath(f"{name!r}: is a symbolic link in {base}; refusing to write through it")
    return target
