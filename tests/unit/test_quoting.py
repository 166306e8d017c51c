"""Quoting per shell round-trips hostile values."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from mpicloud.render.quoting import (
    CMD_META,
    UnquotableValue,
    batch_quote,
    cmd_join,
    posix_join,
    powershell_quote,
    windows_join,
)

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


CMD_HOSTILE = [v for v in HOSTILE if "\n" not in v] + [
    "a & calc", "x | y", "%PATH%", "%OS%x%TEMP%", "^caret^", "(paren)", "!x!", '"a & b"', 'q"&"q', "<in >out",
    "C:\\Program Files\\x\\", "trail\\\\", '\\"', "%", "^%PATH^%"]


def cmd_unescape(line: str) -> str:
    """What cmd.exe hands to the program, asserting it would give nothing a meaning: outside quotes a `^`
    makes the next character literal; an unescaped metacharacter (a quote that starts a quoted region, `&`,
    `|`, `<`, `>`, parentheses, `!`) or a `%` that could start a variable reference fails the check."""
    out: list[str] = []
    i = 0
    while i < len(line):
        char = line[i]
        if char == "^":
            out.append(line[i + 1])
            i += 2
            continue
        assert char not in CMD_META, f"unescaped {char!r} at {i} in {line!r}"
        out.append(char)
        i += 1
    return "".join(out)


@pytest.mark.parametrize("value", CMD_HOSTILE)
def test_cmd_join_passes_through_cmd_exe_literally(value: str) -> None:
    argv = ["C:\\mpicloud\\python\\python.exe", "runner.py", value, "--root", "C:\\shared\\.mpicloud"]
    line = cmd_join(argv)
    assert msvc_split(cmd_unescape(line)) == argv
    # %NAME% can only expand when both percent signs are unescaped: none is
    assert all(line[i - 1] == "^" for i, c in enumerate(line) if c == "%")


@pytest.mark.parametrize("value", ["new\nline", "cr\rhere", "nul\0"])
def test_cmd_join_refuses_line_breaks(value: str) -> None:
    with pytest.raises(UnquotableValue):
        cmd_join(["x", value])


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", '"plain"'), ("a & b | c > d", '"a & b | c > d"'), ("%PATH%", '"%%PATH%%"'), ("50%", '"50%%"'),
])
def test_batch_quote(value: str, expected: str) -> None:
    assert batch_quote(value) == expected


@pytest.mark.parametrize("value", ['say "hi', "!x!", "two\nlines", "cr\r"])
def test_batch_quote_refuses_what_a_batch_line_cannot_hold(value: str) -> None:
    with pytest.raises(UnquotableValue):
        batch_quote(value)
