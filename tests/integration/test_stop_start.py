"""Stopping a local cluster keeps its data (idle shutdown included); start/up resume it; only down removes data."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from mpicloud.api import Cluster
from tests.conftest import cli


def _ps() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def _stopped(home: Path, name: str) -> bool:
    record = json.loads((home / "clusters" / name / "cluster.json").read_text())
    return record.get("stopped_at") is not None


def test_idle_shutdown_stops_and_keeps_data_then_up_resumes(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "idle.yaml"
    spec.write_text("name: idler\ncloud: local\nnodes: 1\nidle_shutdown_minutes: 0.5\n"
                    "local: {address_base: 127.0.131.1}\n")
    up = cli("up", str(spec))
    assert up.returncode == 0, up.stderr
    assert "idle shutdown after 0.5 min" in up.stdout
    job = Cluster.get("idler").submit(["sh", "-c", "echo kept > result.txt; echo done"])
    assert job.wait(60).state == "succeeded"
    job_id = job.id
    directory = home / "clusters" / "idler"
    deadline = time.monotonic() + 60
    while not _stopped(home, "idler"):
        assert time.monotonic() < deadline, "idle shutdown did not fire"
        time.sleep(0.2)
    assert str(directory) not in _ps()
    root = directory / "shared" / ".mpicloud"
    shutdown = json.loads((root / "shutdown.json").read_text())
    assert shutdown["reason"] == "idle for 0.5 min"
    assert (root / "jobs" / job_id / "work" / "result.txt").read_text() == "kept\n"
    assert not list(root.glob(".status.json.*.tmp")), "the runner was killed while writing its status"
    assert "runner stopped: idle shutdown" in (root / "runner.log").read_text()  # it ended on its own
    listing = json.loads(cli("clusters", "--json").stdout)
    assert [(r["name"], r["state"]) for r in listing] == [("idler", "stopped")]
    status = cli("status", "idler")
    assert status.returncode == 0 and "is stopped" in status.stdout and "idle shutdown" in status.stdout
    assert "`mpicloud start idler`" in status.stdout
    refused = cli("submit", "idler", "--", "true")
    assert refused.returncode == 2 and "mpicloud start idler" in refused.stderr and "Traceback" not in refused.stderr
    again = cli("up", str(spec))
    assert again.returncode == 0 and "started again" in again.stdout, again.stderr
    busy = cli("submit", "idler", "--", "sleep", "120")  # keeps the restarted cluster from idling off again
    assert busy.returncode == 0, busy.stderr
    fetched = cli("get", "idler", job_id, "--dest", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / job_id / "result.txt").read_text() == "kept\n"
    logs = cli("logs", "idler", job_id)
    assert logs.stdout == "done\n", logs.stderr
    down = cli("down", "idler")
    assert down.returncode == 0 and f"removed 2 jobs' data at {directory}" in down.stdout, down.stdout
    assert not directory.exists()


def test_stop_keeps_the_queue_and_start_runs_it(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: pauser\ncloud: local\nnodes: 1\nslots_per_node: 1\nlocal: {address_base: 127.0.132.1}\n")
    assert cli("up", str(spec)).returncode == 0
    first = cli("submit", "pauser", "--", "sh", "-c", "echo first").stdout.split()[-1]
    assert cli("wait", "pauser", first).returncode == 0
    blocker = cli("submit", "pauser", "--", "sleep", "300").stdout.split()[-1]
    queued = cli("submit", "pauser", "--", "sh", "-c", "echo later").stdout.split()[-1]
    running = cli("up", str(spec))
    assert running.returncode == 0 and "already running" in running.stdout
    changed = tmp_path / "changed.yaml"
    changed.write_text(spec.read_text().replace("slots_per_node: 1", "slots_per_node: 2"))
    refused = cli("up", str(changed))
    assert refused.returncode == 2 and "different spec" in refused.stderr and "mpicloud start pauser" in refused.stderr
    stopped = cli("stop", "pauser")
    assert stopped.returncode == 0, stopped.stderr
    directory = home / "clusters" / "pauser"
    assert str(directory) not in _ps()
    assert "pauser" in cli("clusters").stdout and "stopped" in cli("clusters").stdout
    started = cli("start", "pauser")
    assert started.returncode == 0, started.stderr
    assert cli("wait", "pauser", queued, "--timeout", "60").returncode == 0
    assert cli("logs", "pauser", queued).stdout == "later\n"
    assert cli("logs", "pauser", first).stdout == "first\n"
    states = {r["id"]: r["state"] for r in json.loads(cli("jobs", "pauser", "--json").stdout)}
    assert states[first] == "succeeded" and states[queued] == "succeeded" and states[blocker] == "failed"
    again = cli("start", "pauser")
    assert again.returncode == 2 and "already running" in again.stderr
    down = cli("down", "pauser")
    assert down.returncode == 0 and "removed 3 jobs' data" in down.stdout
    assert not directory.exists() and str(directory) not in _ps()
    # the CLI's control masters (one per version of the record: stop and start change it) are gone with it
    assert "mpicloud.cluster.control pauser " not in _ps()
