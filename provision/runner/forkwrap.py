"""Job wrappers forked from the runner (POSIX; Windows starts a new interpreter per wrapper): a job starts in
about a millisecond instead of an interpreter's start-up. Standard library only, beside runner.py."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path


def fork_wrapper(run: Callable[[list[str]], int], args: list[str], cwd: Path, log: Path, drop: str) -> int:
    """Fork a detached child that runs run(args) and exits with its code: its own session, stdin from
    /dev/null, stdout and stderr appended to log, none of the parent's other files (the runner's lock stays
    the runner's), the environment variable `drop` removed. Returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        os.chdir(cwd)
        os.environ.pop(drop, None)
        null, out = os.open(os.devnull, os.O_RDONLY), os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for fd, source in ((0, null), (1, out), (2, out)):
            os.dup2(source, fd)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        code = run(args)
    except BaseException:  # into the log, never back into the parent's code
        traceback.print_exc()
    finally:
        os._exit(code)


def ended(pid: int) -> bool:
    """Whether a forked child ended (it is reaped then)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True
