"""Cluster commands: validate, up, down, clusters, attach, status, resize (and the local node actions)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer

from mpicloud.api import Cluster, describe_runner
from mpicloud.cli.app import app, cluster, out
from mpicloud.cli.safe_text import escape_text
from mpicloud.cluster.registry import ProxySettings
from mpicloud.errors import MpicloudError


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="cluster spec (YAML)")],
             boot_files: Annotated[Path | None, typer.Option(help="also write what the nodes run at first boot "
                                                                   "(cloud-init, PowerShell) into this directory")]
             = None) -> None:
    """Check a spec; report every problem with its field path."""
    from mpicloud.spec import load_spec

    parsed = load_spec(spec)
    elastic = parsed.elastic
    nodes = f"head + {elastic.min}..{elastic.max} compute nodes" if elastic else f"{parsed.nodes} nodes"
    out.print(f"{spec}: valid ({parsed.cloud}, {parsed.os}, {nodes} x {parsed.slots_per_node} slots)")
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
    started_cluster = Cluster.up(spec)
    record = started_cluster.record
    if started_cluster.outcome == "running":
        out.print(f"cluster {record.name} is already running; {describe_runner(started_cluster.runner_found)}",
                  markup=False)
        return
    nodes = ", ".join(f"{n.name}={n.host}:{n.port}" for n in record.nodes)
    how = "up" if started_cluster.outcome == "created" else "started again (queue and data kept)"
    out.print(f"cluster {record.name} {how} in {time.monotonic() - started:.1f} s: {nodes}", markup=False)
    if record.idle_shutdown_minutes:
        out.print(f"idle shutdown after {record.idle_shutdown_minutes:g} min without jobs (stops it, keeps data)")
    out.print(f"stop with: mpicloud stop {record.name}; remove with its data: {record.teardown}", markup=False)


@app.command()
def down(name: str) -> None:
    """Stop a local cluster and every process it started and remove its data (or forget an attached cluster)."""
    report = cluster(name).down()
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
    cluster(name).stop(reason)
    out.print(f"cluster {name} stopped; data kept. Start it with `mpicloud start {name}`, remove it with "
              f"`mpicloud down {name}`", markup=False)


@app.command()
def start(name: str) -> None:
    """Start a stopped local cluster again: queued jobs then run, finished jobs' outputs stay fetchable."""
    cluster(name).start()
    out.print(f"cluster {name} started", markup=False)


IDLE_FLAG_SECONDS = 30 * 60


def _node_summary(states: dict[str, str]) -> str:
    """`2 up, 1 starting, 1 stopped` (compute nodes by state) and the nodes that are not up or stopped."""
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    moving = [f"{n} {s}" for n, s in sorted(states.items()) if s not in ("up", "stopped")]
    summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return summary + (f" ({', '.join(moving)})" if moving else "")


@app.command()
def resize(
    name: str,
    nodes: Annotated[int | None, typer.Option(help="compute nodes to run (a fixed cluster counts node0)")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="back to the spec's min/max (autoscaling)")] = False,
    force: Annotated[bool, typer.Option(help="cancel the jobs of leaving nodes instead of letting them finish")]
    = False,
    timeout: Annotated[float | None, typer.Option(help="give up waiting after this many seconds")] = None,
) -> None:
    """Grow or shrink a running cluster: new nodes join the shared storage, hostfile and slots; leaving nodes
    drain first (running jobs finish, or --force cancels them) and nothing is lost."""
    if (nodes is None) == (not auto):
        raise typer.BadParameter("give either --nodes N or --auto")
    pool = cluster(name).resize(None if auto else nodes, force, timeout)
    out.print(f"cluster {name}: {_node_summary(pool['nodes'])} (min {pool['min']}, max {pool['max']})", markup=False)


node_app = typer.Typer(help="Start or stop one node of a running local cluster (the runner's node actions).")
app.add_typer(node_app, name="node", hidden=True)


@node_app.command("start")
def node_start(name: str, node: str) -> None:
    """Start a compute node (made first when it never existed); returns once its sshd answers."""
    from mpicloud.cluster import local_nodes

    local_nodes.start_node(name, node)


@node_app.command("stop")
def node_stop(name: str, node: str) -> None:
    """Stop a compute node's sshd and sessions; its files are kept."""
    from mpicloud.cluster import local_nodes

    local_nodes.stop_node(name, node)


def _activity(known: Cluster) -> dict[str, object]:
    """State, idle time and a flag for a cluster that keeps running (billing) with no recent jobs."""
    try:
        status = known.status()
    except MpicloudError as exc:
        return {"state": "unreachable", "reachable": False, "flag": f"unreachable: {exc}"}
    if status["state"] == "stopped":
        return {"state": "stopped", "reachable": False,
                "flag": f"stopped ({status['reason']}); start: {status['start']}"}
    idle = float(status.get("idle_seconds", 0)) if status.get("alive") else None
    pool = status.get("pool") or {}
    flag = ""
    if idle is None:
        flag = "runner not alive"
    elif idle >= IDLE_FLAG_SECONDS:
        flag = f"IDLE {_age(idle)} with no jobs: tear it down?"
    return {"state": "running", "reachable": True, "idle_seconds": idle, "flag": flag,
            "node_states": pool.get("nodes"), "node_hours": pool.get("node_hours")}


@app.command()
def clusters(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List registered clusters with uptime, idle time and the teardown command; flag idle ones."""
    rows = []
    known = Cluster.all()
    with ThreadPoolExecutor(max_workers=8) as pool:
        activity = list(pool.map(_activity, known))
    for each, active in zip(known, activity, strict=True):
        r = each.record
        rows.append({"name": r.name, "provider": r.provider, "os": r.os, "nodes": len(r.nodes),
                     "head": f"{r.head.host}:{r.head.port}", "uptime_seconds": round(time.time() - r.created_at),
                     "teardown": r.teardown, "idle_shutdown_minutes": r.idle_shutdown_minutes, **active})
    if as_json:
        out.print(json.dumps(rows, indent=1), markup=False)
        return
    if not rows:
        out.print("no clusters; start one with `mpicloud up examples/local.yaml`")
    for row in rows:
        states = row.get("node_states")
        nodes = _node_summary(states) if isinstance(states, dict) else f"{row['nodes']} nodes"
        hours = f"{row['node_hours']:.2f} node-h  " if row.get("node_hours") is not None else ""
        out.print(f"{row['name']:<16} {row['provider']:<9} {row['state']:<11} {row['os']:<8} {nodes}  {hours}"
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
    from mpicloud.cluster.connect import AttachRequest

    request = AttachRequest(name=name, host=host, user=user, port=port, key_file=key, password_env=password_env,
                            os=os, slots_per_node=slots, shared_path=shared,
                            host_key_fingerprint=host_key_fingerprint, jump=jump, rekey=rekey,
                            python=[python] if python else None, runner=runner, pac_url=pac_url,
                            proxy=ProxySettings(proxy, proxy_user, proxy_password_env) if proxy else None)
    attached, notes = Cluster.attach(request)
    for note in notes:
        out.print(note, markup=False)
    out.print(f"cluster {attached.name} attached", markup=False)


@app.command()
def status(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Slots busy/free, queue length, idle time and the runner's heartbeat."""
    target = cluster(name)
    data = target.status()
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
    pool = data.get("pool") or {}
    up_slots = int(pool.get("slots_up", data["slots_total"]))
    free = up_slots - data["slots_busy"] - int(data.get("slots_unreachable", 0))
    out.print(f"cluster {name}: {data['slots_busy']} slots busy, {free} free; {data['queued']} queued, "
              f"{data['running']} running; idle {_age(data['idle_seconds'])}; "
              f"heartbeat {float(data.get('heartbeat_age') or 0):.1f} s ago (runner pid {data.get('pid')}); "
              f"up {_age(time.time() - target.record.created_at)}; teardown: {target.record.teardown}",
              markup=False)
    if pool:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(pool["since"])))
        how = "resized by hand (`mpicloud resize --auto` returns to the spec)" if pool["resized"] else "the spec's"
        out.print(f"  nodes: {_node_summary(pool['nodes'])}; min {pool['min']}, max {pool['max']} ({how}); "
                  f"{pool['node_hours']:.2f} node-hours since {since} (head included)", markup=False)
    for node in data.get("slurm_nodes") or []:
        out.print(f"  slurm node {node['name']}: {node['state']}, CPUs allocated/idle/other/total "
                  f"{node['cpus_alloc_idle_other_total']}", markup=False)
    for job_id, reason in (data.get("pending_reasons") or {}).items():
        out.print(f"  job {job_id} pending in Slurm: {escape_text(reason)}", markup=False)
    for node, since in sorted(lost.items()):
        gone = float(data["heartbeat"]) - float(since)  # both by the head node's clock
        out.print(f"  node {node} UNREACHABLE for {_age(gone)}: no new jobs go there; jobs on it fail",
                  markup=False)
