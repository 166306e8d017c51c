"""Quoting per shell: user values are quoted by a function, never formatted into commands."""

from __future__ import annotations

import shlex
from collections.abc import Iterable


def posix_quote(value: str) -> str:
    """Quote one word for a POSIX shell."""
    return shlex.quote(value)


def posix_join(argv: Iterable[str]) -> str:
    """Join argv into one POSIX shell command line."""
    return " ".join(shlex.quote(a) for a in argv)


def powershell_quote(value: str) -> str:
    """Quote one word as a PowerShell single-quoted string (single quotes doubled)."""
    for quote in ("\u2018", "\u2019", "\u201a", "\u201b"):
        value = value.replace(quote, quote * 2)
    return "'" + value.replace("'", "''") + "'"


def powershell_join(argv: Iterable[str]) -> str:
    """Join argv into a PowerShell invocation (`& 'exe' 'arg' ...`)."""
    return "& " + " ".join(powershell_quote(a) for a in argv)


def windows_arg(value: str) -> str:
    """Quote one argument by the MSVC runtime rules (CommandLineToArgvW), as subprocess.list2cmdline does."""
    if value and not any(c in value for c in ' \t\n"'):
        return value
    out = ['"']
    backslashes = 0
    for char in value:
        if char == "\\":
            backslashes += 1
            continue
        if char == '"':
            out.append("\\" * (2 * backslashes + 1) + '"')
        else:
            out.append("\\" * backslashes + char)
        backslashes = 0
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)


def windows_join(argv: Iterable[str]) -> str:
    """Join argv into one Windows command line."""
    return " ".join(windows_arg(a) for a in argv)
