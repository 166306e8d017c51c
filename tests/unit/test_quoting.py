"""Quoting per shell round-trips hostile values."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from mpicloud.render.quoting import posix_join, powershell_quote, windows_join

HOSTILE = ["plain", "with space", "it's", 'dq"x', "$(rm -rf /)", "`id`", "a;b|c&d", "", "back\\slash\\", "*?[]",
           "tab\there", "new\nline", "uni\u2019code"]


@pytest.mark.parametrize("value", HOSTILE)
def test_posix_round_trip_through_a_real_shell(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf %s {shlex.quote(value)}"], capture_output=True, text=True, check=True)
    assert out.stdout == value
    assert shlex.split(posix_join(["echo", value])) == ["echo", value]


@pytest.mark.parametrize(("value", "expected"), [
    ("abc", "'abc'"), ("it's", "'it''s'"), ("$env:PATH", "'$env:PATH'"), ("a\u2019b", "'a\u2019\u2019b'"),
])
def test_powershell_single_quotes(value: str, expected: str) -> None:
    assert powershell_quote(value) == expected


def msvc_split(line: str) -> list[str]:
    """Reference decoder of the MSVC runtime argument rules (CommandLineToArgvW, post-2008)."""
    args: list[str] = []
    current: list[str] = []
    quoted = started = False
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\\":
            j = i
            while j < len(line) and line[j] == "\\":
                j += 1
            count = j - i
            if j < len(line) and line[j] == '"':
                current.append("\\" * (count // 2))
                if count % 2:
                    current.append('"')
                    j += 1
                i = j
            else:
                current.append("\\" * count)
                i = j
            started = True
            continue
        if char == '"':
            quoted = not quoted
            started = True
        elif char in " \t" and not quoted:
            if started:
                args.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
        i += 1
    if started:
        args.append("".join(current))
    return args


@pytest.mark.parametrize("value", HOSTILE)
def test_windows_args_round_trip_through_the_msvc_rules(value: str) -> None:
    assert msvc_split(windows_join(["prog.exe", value, "tail"])) == ["prog.exe", value, "tail"]
