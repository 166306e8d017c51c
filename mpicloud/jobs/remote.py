"""How the job layer reaches a cluster's queue: a transport plus where the runner lives."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from mpicloud.errors import JobError
from mpicloud.protocol.jobs import HEARTBEAT_STALE, JOB_VERSION, JOBS, ROOT_DIRS, STATUS_FILE, version_problem
from mpicloud.render.quoting import cmd_join, posix_join
from mpicloud.transport.base import Transport


def sftp_path(os_name: str, path: str) -> str:
    r"""The SFTP form of a cluster path (`C:\shared` -> `/C:/shared` on Windows)."""
    if os_name == "windows":
        path = path.replace("\\", "/")
        return path if path.startswith("/") else "/" + path
    return path


@dataclass
class QueueHandle:
    """A cluster's queue as the job layer sees it."""

    transport: Transport
    os: str
    root: str  # cluster-side path of the runner root
    python: list[str]
    runner: str
    cluster: str
    _prepared: bool = field(default=False, repr=False)
    #: what the last ensure_runner() found and did (the runner's `start` answer)
    runner_start: dict[str, Any] = field(default_factory=dict, repr=False)
    slots_total: int | None = field(default=None, repr=False)

    def prepare(self) -> None:
        """Once per handle: make sure a runner serves the queue (restarting a dead one), refuse a runner too
        old for this client, make sure the queue directories exist. A connection that did all this before (a
        control master's, for every CLI call it serves) only reads the heartbeat: while the same runner beats,
        nothing else is run on the head node."""
        if self._prepared:
            return
        key = f"prepared:{self.root}"
        fact = self.transport.recall(key)
        if fact is not None and self._same_runner_beating(fact):
            self.slots_total = fact["slots_total"]
            self._prepared = True
            return
        asked = time.time()
        status = self.ensure_runner()
        problem = version_problem(int(status.get("job_version", JOB_VERSION)), self.cluster)
        if problem:
            raise JobError(problem)
        for name in ROOT_DIRS:
            self.transport.makedirs(self.path(name))
        self._prepared = True
        if status.get("heartbeat") is not None and status.get("heartbeat_age") is not None:
            head_now = float(status["heartbeat"]) + float(status["heartbeat_age"])
            self.transport.remember(key, {"pid": status.get("pid"), "slots_total": self.slots_total,
                                          "clock_offset": head_now - (asked + time.time()) / 2})

    def _same_runner_beating(self, fact: dict[str, Any]) -> bool:
        """The runner prepare() found still writes its heartbeat (by the head node's clock, from the offset
        measured then; half the stale limit, so a runner the head node would call dead never passes)."""
        try:
            status = json.loads(self.transport.read_bytes(self.path(STATUS_FILE)))
        except (FileNotFoundError, ValueError):
            return False
        age = time.time() + float(fact["clock_offset"]) - float(status.get("heartbeat", 0))
        return status.get("pid") == fact["pid"] and age < HEARTBEAT_STALE / 2

    @property
    def sroot(self) -> str:
        """SFTP path of the runner root."""
        return sftp_path(self.os, self.root)

    def path(self, *parts: str) -> str:
        """SFTP path below the runner root."""
        return "/".join([self.sroot, *parts])

    def job_path(self, job_id: str, *parts: str) -> str:
        """SFTP path inside an accepted job's directory."""
        return self.path(JOBS, job_id, *parts)

    @property
    def sep(self) -> str:
        """The cluster's path separator."""
        return "\\" if self.os == "windows" else "/"

    def cluster_path(self, *parts: str) -> str:
        """Cluster-side path below the runner root (what commands on the node take)."""
        return self.sep.join([self.root, *parts])

    def command(self, *args: str) -> str:
        """A runner command line for the cluster's shell."""
        return self._join([*self.python, self.runner, *args, "--root", self.root])

    def helper(self, *args: str) -> str:
        """A transfer-helper command line (transfer.py beside runner.py)."""
        folder = self.runner.rsplit(self.sep, 1)[0]
        return self._join([*self.python, f"{folder}{self.sep}transfer.py", *args])

    def _join(self, argv: list[str]) -> str:
        return cmd_join(argv) if self.os == "windows" else posix_join(argv)  # Windows: sshd runs cmd.exe

    def runner_json(self, report: str) -> Any:
        """A runner report (list, status, start), from the runner's request helper this connection keeps on the
        head node (one round trip); from a command of its own when the helper does not answer (older runners)."""
        answer = self.transport.ask(self.command("requests"), json.dumps([report]).encode())
        if answer:
            data = json.loads(answer)
            if "error" in data:
                raise JobError(f"the runner on cluster {self.cluster!r} failed to answer `{report}`: {data['error']}")
            return data["ok"]
        result = self.transport.run(self.command(report), timeout=120)
        if result.exit_code != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            raise JobError(f"the runner on cluster {self.cluster!r} failed to answer `{report}`"
                           + (f": {detail[-1]}" if detail else ""))
        return json.loads(result.stdout) if result.stdout.strip() else {}

    def ensure_runner(self) -> dict[str, Any]:
        """Make sure a runner serves the queue: the head node starts a supervised one when the heartbeat is
        stale (safe to repeat from any client: one runner holds a lock). Returns what it found and did
        (`action`: none, started or failed; `previous`: the dead runner's pid and heartbeat age)."""
        answer: dict[str, Any] = self.runner_json("start")
        if answer.get("action") == "failed":
            raise JobError(f"the runner on cluster {self.cluster!r} is not running and did not start; see "
                           f"{self.cluster_path('runner.log')} on the head node")
        self.runner_start = answer
        self.slots_total = int(answer["slots_total"]) if "slots_total" in answer else None
        return answer
