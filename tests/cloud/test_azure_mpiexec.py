"""Data-driven MS-MPI launcher cases: runner.launch_argv plus the Windows command-line quoting it travels through."""

from __future__ import annotations

import pytest

from mpicloud.render.quoting import windows_arg, windows_join
from tests.runnerlib import runner_module

runner = runner_module()

CASES = [
    pytest.param([("N0", 4)], {}, ["app.exe"],
                 ["mpiexec", "-hosts", "1", "N0", "4", "-wdir", "W", "app.exe"], id="one-node"),
    pytest.param([("N0", 2), ("N1", 2), ("N2", 1)], {"B": "2", "A": "1"}, ["C:\\shared\\a b\\app.exe", "-x"],
                 ["mpiexec", "-hosts", "3", "N0", "2", "N1", "2", "N2", "1", "-wdir", "W", "-env", "A", "1",
                  "-env", "B", "2", "C:\\shared\\a b\\app.exe", "-x"], id="env-sorted-spaces"),
    pytest.param([("N1", 1)], {"MSG": 'say "hi"'}, ["app.exe", "it's", ""],
                 ["mpiexec", "-hosts", "1", "N1", "1", "-wdir", "W", "-env", "MSG", 'say "hi"', "app.exe", "it's",
                  ""], id="quotes-and-empty"),
    pytest.param([("N0", 1)], {"P": "C:\\dir\\"}, ["app.exe", "trailing\\"],
                 ["mpiexec", "-hosts", "1", "N0", "1", "-wdir", "W", "-env", "P", "C:\\dir\\", "app.exe",
                  "trailing\\"], id="trailing-backslashes"),
]


@pytest.mark.parametrize(("hosts", "env", "argv", "expected"), CASES)
def test_mpiexec_argv(hosts: list[tuple[str, int]], env: dict[str, str], argv: list[str],
                      expected: list[str]) -> None:
    out = runner.launch_argv("mpiexec", hosts, sum(n for _, n in hosts), "unused", "W", env, argv)
    assert out == expected
    assert "-pwd" not in out, "the password is never on a job's command line (saved with -savecreds once)"


def _split(line: str) -> list[str]:
    """CommandLineToArgvW, the parser mpiexec.exe and the C runtime apply (reference implementation)."""
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        arg, quoted = [], False
        while i < n and (quoted or line[i] not in " \t"):
            slashes = 0
            while i < n and line[i] == "\\":
                slashes += 1
                i += 1
            if i < n and line[i] == '"':
                arg.append("\\" * (slashes // 2))
                if slashes % 2:
                    arg.append('"')
                else:
                    quoted = not quoted
                i += 1
            else:
                arg.append("\\" * slashes)
                if i < n and (quoted or line[i] not in " \t"):
                    arg.append(line[i])
                    i += 1
        out.append("".join(arg))
    return out


@pytest.mark.parametrize(("hosts", "env", "argv", "expected"), CASES)
def test_windows_command_line_round_trips(hosts: list[tuple[str, int]], env: dict[str, str], argv: list[str],
                                          expected: list[str]) -> None:
    assert _split(windows_join(expected)) == expected


@pytest.mark.parametrize(("value", "quoted"), [
    ("plain", "plain"), ("a b", '"a b"'), ("", '""'), ('a"b', '"a\\"b"'), ("C:\\x y\\", '"C:\\x y\\\\"'),
])
def test_windows_arg(value: str, quoted: str) -> None:
    assert windows_arg(value) == quoted
