"""Rich progress bars (bytes, rate, ETA) for long transfers, on stderr when it is a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from mpicloud.cli.app import err


@contextmanager
def transfer_bar(label: str, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A callback (done, total) that drives one progress bar."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=err, disable=quiet or not err.is_terminal, transient=False)
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update
