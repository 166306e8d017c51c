"""The `mpicloud` typer app and its entry point: expected errors become one line and a non-zero exit."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from mpicloud.errors import MpicloudError, SpecError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Stand up MPI clusters from one spec and push jobs through them over SSH.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point."""
    from mpicloud.cli import bucket_cmds, cluster_cmds, job_cmds, sweep_cmds  # noqa: F401 - registers

    try:
        app()
    except SpecError as exc:
        err.print(f"[red]error:[/red] {escape(exc.source)} is not a valid spec:")
        for problem in exc.problems:
            err.print(f"  - {problem}", markup=False)
        sys.exit(2)
    except MpicloudError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
