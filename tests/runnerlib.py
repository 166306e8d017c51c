"""Test helpers: the runner module itself, and a runner served from a temporary root without SSH."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from mpicloud.assets import install_runner

RUNNER = Path(__file__).resolve().parents[1] / "provision" / "runner" / "runner.py"
#: the interpreter the Linux cloud nodes run the runner with (Debian 12's python3, 3.11.2)
NODE_PYTHON = "/usr/bin/python3"
#: "other nodes" of a test root are this machine: `rsh NODE COMMAND` runs COMMAND here
LOCAL_RSH = ["sh", "-c", 'exec sh -c "$2"', "rsh"]


def runner_module() -> ModuleType:
    """Import provision/runner/runner.py as a module."""
    spec = importlib.util.spec_from_file_location("mpicloud_runner", RUNNER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `python runner.py` has it: the runner hands itself to its helpers
    spec.loader.exec_module(module)
    return module


def node_module(name: str) -> ModuleType:
    """Import a module of provision/runner/ by its plain name, as the runner beside it does."""
    folder = str(RUNNER.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


class LocalQueue:
    """A runner root on local disk, with the runner served as a real subprocess."""

    def __init__(self, root: Path, slots: list[int], python: str = NODE_PYTHON, log: Path | None = None,
                 **config: Any) -> None:
        self.root = root
        self.log = log or root.parent / f"{root.name}-runner.log"
        root.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.runner = install_runner(root.parent / f"{root.name}-runner")
        nodes = [{"name": f"n{i}", "slots": s} for i, s in enumerate(slots)]
        conf = {"version": 1, "cluster": "t", "os": "linux", "launcher": "mpirun", "nodes": nodes,
                "idle_shutdown_minutes": None, "stop_command": None, "env": {}, "rsh": LOCAL_RSH, **config}
        (root / "runner.json").write_text(json.dumps(conf))
        for name in ("queue", "spool"):
            (root / name).mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0

    def serve(self, crash_at: str | None = None) -> None:
        """Start the runner; with crash_at, it kills itself at that point (MPICLOUD_RUNNER_CRASH_AT)."""
        env = {k: v for k, v in os.environ.items() if k != "MPICLOUD_RUNNER_CRASH_AT"}
        if crash_at:
            env["MPICLOUD_RUNNER_CRASH_AT"] = crash_at
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.python, str(self.runner), "serve", "--root", str(self.root)],
                                         stderr=log, env=env)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.root / "stop-runner").touch()
            self.proc.wait(10)

    def submit(self, argv: list[str], cores: int = 1, **extra: Any) -> str:
        self.count += 1
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{self.count:06d}"
        extra.setdefault("submitted_at", time.time())
        spool = self.root / "spool" / job_id
        spool.mkdir()
        job = {"version": 2, "id": job_id, "argv": argv, "cores": cores, "mpi": False, "inputs": [],
               "post": None, **extra}
        (spool / "job.json").write_text(json.dumps(job))
        spool.rename(self.root / "queue" / job_id)
        return job_id

    def state(self, job_id: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.root / "jobs" / job_id / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "submitted"}
        return data

    def wait_running(self, job_id: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id))["state"] != "running":
            assert state["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline, state
            time.sleep(0.05)

    def wait(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(job_id)
            if state["state"] in ("succeeded", "failed", "cancelled"):
                return state
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish: {self.state(job_id)}")
