"""The transport interface jobs talk to: run a command, and file operations on the cluster."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

OutputCallback = Callable[[bytes], None]
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RunResult:
    """Outcome of a remote command."""

    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """Stdout decoded as UTF-8 (replacement for invalid bytes)."""
        return self.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class FileStat:
    """What the cluster says about a path."""

    size: int
    mtime: float
    is_dir: bool


class Stream(Protocol):
    """A running remote command with binary stdin/stdout, for bulk transfers."""

    def read(self, size: int) -> bytes:
        """Up to size bytes of stdout; b"" at the end."""
        ...

    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin."""
        ...

    def close_input(self) -> None:
        """Signal end of stdin."""
        ...

    def finish(self) -> tuple[int, bytes]:
        """Wait for the command; its exit code and stderr."""
        ...

    def abort(self) -> None:
        """Close the stream at once (the remote command sees a broken pipe)."""
        ...


class Transport(Protocol):
    """A connection to one cluster node: commands plus SFTP-style file access (POSIX-style paths)."""

    @property
    def alive(self) -> bool:
        """True while the connection is up."""
        ...

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None) -> RunResult:
        """Run a shell command on the node; stream output to the callbacks; return exit code and output."""
        ...

    def open_stream(self, command: str) -> Stream:
        """Start a command whose stdin/stdout carry bulk data."""
        ...

    def read_bytes(self, path: str) -> bytes:
        """Read a whole remote file."""
        ...

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to size bytes of a remote file from offset (b"" past its end); FileNotFoundError if missing."""
        ...

    def write_bytes(self, path: str, data: bytes, *, mode: int | None = None) -> None:
        """Write a whole remote file, with permissions `mode` set before any data (not atomic: rename after)."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Rename atomically on the cluster (POSIX rename semantics where the server offers them)."""
        ...

    def makedirs(self, path: str) -> None:
        """Create a directory and its parents; no error if it exists."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Names in a remote directory."""
        ...

    def walk(self, path: str) -> list[tuple[str, int]]:
        """(relative path, size) of every file below a remote directory; FileNotFoundError if missing."""
        ...

    def stat(self, path: str) -> FileStat | None:
        """Stat a remote path; None when it does not exist."""
        ...

    def remove(self, path: str) -> None:
        """Remove a remote file."""
        ...

    def put(self, local: Path, remote: str, progress: ProgressCallback | None = None) -> None:
        """Upload a local file."""
        ...

    def get(self, remote: str, local: Path, progress: ProgressCallback | None = None) -> None:
        """Download a remote file."""
        ...

    def rtt(self) -> float:
        """The connection's round-trip time in seconds (measured once)."""
        ...

    def ask(self, command: str, request: bytes) -> bytes:
        """Send one line to a long-running command of this connection (started on first use, kept as long as
        the connection) and return its one-line answer; b"" when the command ended instead."""
        ...

    def recall(self, key: str) -> Any:
        """A fact remembered on this connection (shared by every user of it, across processes through a control
        master); None when nothing was."""
        ...

    def remember(self, key: str, value: Any) -> None:
        """Remember a JSON-able fact for as long as this connection lives."""
        ...

    def reopen(self) -> Callable[[], Transport]:
        """A picklable recipe for another connection to the same node (worker processes use it)."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...
