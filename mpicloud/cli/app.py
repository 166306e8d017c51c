"""The `mpicloud` typer app and its entry point: expected errors become one line and a non-zero exit."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mpicloud.cli import fastparams
from mpicloud.errors import MpicloudError, SpecError

if TYPE_CHECKING:
    from mpicloud.api import Cluster

fastparams.install()
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Stand up MPI clusters from one spec and push jobs through them over SSH.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_options = {"control": True}


@app.callback()
def _global(no_control: Annotated[bool, typer.Option(
        "--no-control", help="connect afresh instead of through the cluster's control socket (one SSH connection "
                             "kept for later calls, idle minutes: MPICLOUD_CONTROL_PERSIST seconds)")] = False) -> None:
    _options["control"] = not no_control


def cluster(name: str) -> Cluster:
    """A registered cluster, reached through its control socket unless --no-control was given."""
    from mpicloud.api import Cluster

    return Cluster.get(name, control=_options["control"])


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
