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


#: characters cmd.exe gives a meaning to on a command line (quotes toggle whether the others are special)
CMD_META = '()%!^"<>&|'


class UnquotableValue(ValueError):
    """A value that cannot be written safely into a command line or script of this language."""


def cmd_join(argv: Iterable[str]) -> str:
    """Join argv into one command line that passes through cmd.exe (what Windows' sshd runs commands with)
    unchanged: MSVC-quoted, then every cmd.exe metacharacter escaped with `^`, so `&`, `|`, `%VAR%` and
    quotes inside values are literal (cmd removes the carets and hands the rest to the program). A line
    break ends a cmd.exe command whatever precedes it: such values are refused (UnquotableValue)."""
    args = list(argv)
    for arg in args:
        if any(c in arg for c in "\r\n\0"):
            raise UnquotableValue(f"{arg!r}: a line break or NUL cannot pass through cmd.exe")
    return "".join(f"^{c}" if c in CMD_META else c for c in windows_join(args))


def batch_quote(value: str) -> str:
    """Quote one value for a line of a cmd.exe batch file: inside double quotes `& | < > ^ ( )` are literal and
    `%` is doubled; a double quote, `!` (delayed expansion), NUL or a line break cannot be made literal there,
    so such a value is refused (UnquotableValue)."""
    bad = [c for c in ('"', "!", "\0", "\r", "\n") if c in value]
    if bad:
        raise UnquotableValue(f"{value!r}: {bad[0]!r} cannot be quoted safely in a .bat/.cmd script; use a "
                              ".ps1 or .sh template, or `| raw` if the text is meant as code")
    return '"' + value.replace("%", "%%") + '"'


def python_quote(value: str) -> str:
    """A Python string literal holding the value."""
    return repr(value)
