"""Cluster commands: validate, up, down, clusters, attach, status."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer

from mpicloud.api import Cluster, describe_runner
from mpicloud.cli.app import app, out
from mpicloud.cli.safe_text import escape_text
from mpicloud.cluster.connect import AttachRequest
from mpicloud.cluster.registry import ProxySettings
from mpicloud.errors import MpicloudError
from mpicloud.spec import load_spec


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="cluster spec (YAML)")],
             boot_files: Annotated[Path | None, typer.Option(help="also write what the nodes run at first boot "
                                                                   "(cloud-init, PowerShell) into this directory")]
             = None) -> None:
    """Check a spec; report every problem with its field path."""
    parsed = load_spec(spec)
    out.print(f"{spec}: valid ({parsed.cloud}, {parsed.os}, {parsed.nodes} nodes x {parsed.slots_per_node} slots)")
    if parsed.idle_shutdown_minutes:
        out.print(f"idle shutdown after {parsed.idle_shutdown_minutes:g} minutes: {parsed.target.stop_action}",
                  markup=False)
    if boot_files is not None:
        from mpicloud.render.bootstrap import boot_files as render_boot  # renderers load only when asked
        boot_files.mkdir(parents=True, exist_ok=True)
        for name, text in render_boot(parsed).items():
            (boot_files / name).write_text(text, encoding="utf-8")
            out.print(f"wrote {boot_files / name}", markup=False)
    if parsed.password_only:
        out.print("note: no admin.ssh_public_key, so the cluster is password-only (SSH logins and mpicloud attach "
                  "use the admin password); add a key to log in with it")


@app.command()
def up(spec: Annotated[Path, typer.Argument(help="cluster spec with cloud: local")]) -> None:
    """Start a local cluster (real sshd nodes, Open MPI, Slurm with scheduler: slurm) and its job runner; a
    stopped cluster of the same spec starts again with its queue and data."""
    started = time.monotonic()
    cluster = Cluster.up(spec)
    record = cluster.record
    if cluster.outcome == "running":
        out.print(f"cluster {record.name} is already running; {describe_runner(cluster.runner_found)}", markup=False)
        return
    nodes = ", ".join(f"{n.name}={n.host}:{n.port}" for n in record.nodes)
    how = "up" if cluster.outcome == "created" else "started again (queue and data kept)"
    out.print(f"cluster {record.name} {how} in {time.monotonic() - started:.1f} s: {nodes}", markup=False)
    if record.idle_shutdown_minutes:
        out.print(f"idle shutdown after {record.idle_shutdown_minutes:g} min without jobs (stops it, keeps data)")
    out.print(f"stop with: mpicloud stop {record.name}; remove with its data: {record.teardown}", markup=False)


@app.command()
def down(name: str) -> None:
    """Stop a local cluster and every process it started and remove its data (or forget an attached cluster)."""
    report = Cluster.get(name).down()
    if report.still_running:
        out.print(f"cluster {name} forgotten locally; its machines are STILL RUNNING (and billing). Delete them "
                  f"with: {report.teardown}", markup=False)
        return
    out.print(f"cluster {name} is down; removed {report.jobs_removed} jobs' data at {', '.join(report.removed)}",
              markup=False)


@app.command()
def stop(name: str, reason: Annotated[str, typer.Option(help="recorded as why it stopped")] =
         "stopped by `mpicloud stop`") -> None:
    """Stop a local cluster's processes (running jobs end) and keep its queue, outputs and history."""
    Cluster.get(name).stop(reason)
    out.print(f"cluster {name} stopped; data kept. Start it with `mpicloud start {name}`, remove it with "
              f"`mpicloud down {name}`", markup=False)


@app.command()
def start(name: str) -> None:
    """Start a stopped local cluster again: queued jobs then run, finished jobs' outputs stay fetchable."""
    Cluster.get(name).start()
    out.print(f"cluster {name} started", markup=False)


IDLE_FLAG_SECONDS = 30 * 60


def _activity(cluster: Cluster) -> dict[str, object]:
    """State, idle time and a flag for a cluster that keeps running (billing) with no recent jobs."""
    try:
        status = cluster.status()
    except MpicloudError as exc:
        return {"state": "unreachable", "reachable": False, "flag": f"unreachable: {exc}"}
    if status["state"] == "stopped":
        return {"state": "stopped", "reachable": False,
                "flag": f"stopped ({status['reason']}); start: {status['start']}"}
    idle = float(status.get("idle_seconds", 0)) if status.get("alive") else None
    flag = ""
    if idle is None:
        flag = "runner not alive"
    elif idle >= IDLE_FLAG_SECONDS:
        flag = f"IDLE {_age(idle)} with no jobs: tear it down?"
    return {"state": "running", "reachable": True, "idle_seconds": idle, "flag": flag}


@app.command()
def clusters(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List registered clusters with uptime, idle time and the teardown command; flag idle ones."""
    rows = []
    known = Cluster.all()
    with ThreadPoolExecutor(max_workers=8) as pool:
        activity = list(pool.map(_activity, known))
    for cluster, active in zip(known, activity, strict=True):
        r = cluster.record
        rows.append({"name": r.name, "provider": r.provider, "os": r.os, "nodes": len(r.nodes),
                     "head": f"{r.head.host}:{r.head.port}", "uptime_seconds": round(time.time() - r.created_at),
                     "teardown": r.teardown, "idle_shutdown_minutes": r.idle_shutdown_minutes, **active})
    if as_json:
        out.print(json.dumps(rows, indent=1), markup=False)
        return
    if not rows:
        out.print("no clusters; start one with `mpicloud up examples/local.yaml`")
    for row in rows:
        out.print(f"{row['name']:<16} {row['provider']:<9} {row['state']:<11} {row['os']:<8} {row['nodes']} nodes  "
                  f"{row['head']:<22} up {_age(float(str(row['uptime_seconds'])))}  teardown: {row['teardown']}  "
                  f"{escape_text(str(row['flag']))}", markup=False)


@app.command()
def attach(
    name: str,
    host: Annotated[str, typer.Option(help="head node address or ~/.ssh/config alias")],
    user: Annotated[str | None, typer.Option(help="SSH user (default from ~/.ssh/config)")] = None,
    port: Annotated[int | None, typer.Option()] = None,
    key: Annotated[str | None, typer.Option(help="private key file")] = None,
    password_env: Annotated[str | None, typer.Option(help="environment variable holding the password")] = None,
    os: Annotated[str, typer.Option("--os", help="linux or windows")] = "linux",
    slots: Annotated[int, typer.Option(help="slots per node")] = 1,
    shared: Annotated[str | None, typer.Option(help="cluster-side shared path")] = None,
    host_key_fingerprint: Annotated[str | None, typer.Option(help="expected SHA256:... of the head node")] = None,
    jump: Annotated[str | None, typer.Option(help="jump host user@host:port")] = None,
    rekey: Annotated[bool, typer.Option(help="re-pin the host key of an already registered cluster")] = False,
    python: Annotated[str | None, typer.Option(help="Python on the head node (default per OS)")] = None,
    runner: Annotated[str | None, typer.Option(help="runner.py path on the head node (default per OS)")] = None,
    proxy: Annotated[str | None, typer.Option(help="http://host:port or socks5://host:port for every connection")]
    = None,
    proxy_user: Annotated[str | None, typer.Option(help="proxy user name")] = None,
    proxy_password_env: Annotated[str | None, typer.Option(help="environment variable holding the proxy "
                                                                "password")] = None,
    pac_url: Annotated[str | None, typer.Option(help="proxy auto-configuration file (file:// or http://)")] = None,
) -> None:
    """Register an existing cluster (made by `pulumi up` or a Deploy button) and pin its host key."""
    request = AttachRequest(name=name, host=host, user=user, port=port, key_file=key, password_env=password_env,
                            os=os, slots_per_node=slots, shared_path=shared,
                            host_key_fingerprint=host_key_fingerprint, jump=jump, rekey=rekey,
                            python=[python] if python else None, runner=runner, pac_url=pac_url,
                            proxy=ProxySettings(proxy, proxy_user, proxy_password_env) if proxy else None)
    cluster, notes = Cluster.attach(request)
    for note in notes:
        out.print(note, markup=False)
    out.print(f"cluster {cluster.name} attached", markup=False)


@app.command()
def status(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Slots busy/free, queue length, idle time and the runner's heartbeat."""
    cluster = Cluster.get(name)
    data = cluster.status()
    if as_json:
        out.print(json.dumps(data, indent=1), markup=False)
        return
    if data["state"] == "stopped":
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(data["stopped_at"])) if data["stopped_at"] else "?"
        out.print(f"cluster {name} is stopped since {since} ({escape_text(data['reason'])}); its queue and data "
                  f"are kept: start it with `{data['start']}`", markup=False)
        return
    if "restarted" in data:
        before = data["restarted"].get("heartbeat_age")
        seen = f"last heartbeat {_age(before)} ago" if before is not None else "no heartbeat ever"
        out.print(f"cluster {name}: the runner was not running ({seen}); restarted it (pid {data.get('pid')})",
                  markup=False)
    if not data.get("alive"):
        out.print(f"cluster {name}: runner not alive and could not be restarted; see runner.log on the head node",
                  markup=False)
        raise typer.Exit(1)
    lost = data.get("unreachable") or {}
    free = data["slots_total"] - data["slots_busy"] - int(data.get("slots_unreachable", 0))
    out.print(f"cluster {name}: {data['slots_busy']} slots busy, {free} free; {data['queued']} queued, "
              f"{data['running']} running; idle {_age(data['idle_seconds'])}; "
              f"heartbeat {float(data.get('heartbeat_age') or 0):.1f} s ago (runner pid {data.get('pid')}); "
              f"up {_age(time.time() - cluster.record.created_at)}; teardown: {cluster.record.teardown}",
              markup=False)
    for node in data.get("slurm_nodes") or []:
        out.print(f"  slurm node {node['name']}: {node['state']}, CPUs allocated/idle/other/total "
                  f"{node['cpus_alloc_idle_other_total']}", markup=False)
    for job_id, reason in (data.get("pending_reasons") or {}).items():
        out.print(f"  job {job_id} pending in Slurm: {escape_text(reason)}", markup=False)
    for node, since in sorted(lost.items()):
        gone = float(data["heartbeat"]) - float(since)  # both by the head node's clock
        out.print(f"  node {node} UNREACHABLE for {_age(gone)}: no new jobs go there; jobs on it fail",
                  markup=False)
