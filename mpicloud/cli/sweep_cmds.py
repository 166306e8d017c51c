"""`mpicloud sweep NAME --runs CSV --template T`, `sweep status NAME SWEEP`, `sweep cancel NAME SWEEP`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mpicloud.cli.app import app, cluster, err, out
from mpicloud.cli.safe_text import escape_text
from mpicloud.errors import JobError


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def sweep(
    args: Annotated[list[str], typer.Argument(help="NAME | status NAME SWEEP | cancel NAME SWEEP")],
    runs: Annotated[Path | None, typer.Option(help="CSV: one run per line, columns are template variables")] = None,
    template: Annotated[Path | None, typer.Option(help="jinja2 run script, e.g. run.sh.j2")] = None,
    cores_per_run: Annotated[int, typer.Option(help="cores per run (a 'cores' column overrides)")] = 1,
    inputs: Annotated[list[str] | None, typer.Option("--input", help="input shared by every run")] = None,
    label: Annotated[str | None, typer.Option("--name")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Parameter sweeps: queue one job per CSV row; aggregated status; bulk cancel."""
    if args[0] in ("status", "cancel"):
        if len(args) != 3:
            raise JobError(f"usage: mpicloud sweep {args[0]} NAME SWEEP")
        target = cluster(args[1])
        if args[0] == "cancel":
            out.print(f"sweep {args[2]}: cancel requested for {target.cancel_sweep(args[2])} runs", markup=False)
            return
        _print_status(target.sweep_status(args[2]), as_json)
        return
    if len(args) != 1 or runs is None or template is None:
        raise JobError("usage: mpicloud sweep NAME --runs runs.csv --template run.sh.j2 [--cores-per-run N]")
    target = cluster(args[0])

    def on_input(item: str, event: str) -> None:
        err.print(f"input {item}: {event}", markup=False)

    sweep_id, jobs = target.sweep(runs, template, cores_per_run, inputs or [], label, on_input)
    if as_json:
        out.print(json.dumps({"sweep": sweep_id, "jobs": [j.id for j in jobs]}), markup=False)
        return
    out.print(f"{len(jobs)} runs queued as sweep", markup=False)
    out.print(sweep_id, markup=False)


def _print_status(status: dict[str, object], as_json: bool) -> None:
    if as_json:
        out.print(json.dumps(status, indent=1), markup=False)
        return
    counts = status["counts"]
    assert isinstance(counts, dict)
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.print(f"sweep {status['id']} ({escape_text(str(status['name']))}): {status['done']}/{status['total']} done; "
              f"{parts}",
              markup=False)
    failed = status["failed"]
    assert isinstance(failed, list)
    for item in failed:
        out.print(f"  failed {item['job']} exit {item['exit_code']}: {escape_text(str(item['reason']))}  "
                  f"row {item['row']}",
                  markup=False)
