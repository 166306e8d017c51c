"""The elastic Slurm cluster's pool, decisions only: what `scontrol` it asks for from a given `sinfo` (a stub) and
the recorded limits, never a node action of its own; a resize survives a runner restart (the real Slurm run is
tests/integration/test_elastic_slurm.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpicloud.protocol.pool import RESIZE_FILE, RESUME_FAILED, RESUME_TIMED_OUT, resize_request
from tests.runnerlib import node_module

rt = node_module("runner")
slurm_pool = node_module("slurm_pool")


class FakeRunner:
    """What SlurmPool uses of the runner: its root, config, log, running jobs and the backend's `command`."""

    def __init__(self, root: Path, low: int = 0, high: int = 2) -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        self.config = {"scheduler": "slurm", "nodes": [{"name": "node0", "slots": 0}],
                       "pool": {"min": low, "max": high, "idle_minutes": 1, "slots_per_node": 1,
                                "head_runs_jobs": False, "resume_command": ["never"], "suspend_command": ["never"]}}
        self.commands: list[str] = []
        self.argvs: list[list[str]] = []
        self.backend = self
        self.env: dict[str, str] = {}
        self.running: dict[str, dict[str, Any]] = {}
        self.stopping: dict[str, Any] = {}
        self.stopped: list[tuple[str, str | None]] = []

    def command(self, argv: list[str]) -> str:
        self.argvs.append(argv)
        self.commands.append(" ".join(argv[argv.index("update") + 1:]))
        return ""

    def log(self, message: str) -> None:
        """Nothing kept."""

    def refresh_nodes(self) -> None:
        """Nothing to refresh."""

    def jobdir(self, job_id: str) -> Path:
        (self.root / "jobs" / job_id).mkdir(parents=True, exist_ok=True)
        return self.root / "jobs" / job_id

    def stop(self, job_id: str, state: dict[str, Any], reason: str | None) -> None:
        self.stopped.append((job_id, reason))
        self.stopping[job_id] = reason


class Sinfo:
    """`sinfo -N -o %N|%t|%E` as the test sets it."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, str]] = {}

    def step(self) -> tuple[bool, str]:
        return True, "".join(f"{n}|{s}|{r}\n" for n, (s, r) in self.rows.items())


def pool_of(runner: FakeRunner, sinfo: Sinfo) -> Any:
    pool = slurm_pool.SlurmPool(runner, rt)
    pool.sinfo = sinfo
    return pool


def test_min_nodes_are_powered_up_and_states_recorded(tmp_path: Path) -> None:
    runner, sinfo = FakeRunner(tmp_path / "root", low=1), Sinfo()
    pool = pool_of(runner, sinfo)
    sinfo.rows = {"node1": ("idle~", ""), "node2": ("idle~", "")}
    pool.step([], {})
    assert runner.commands == ["NodeName=node1 State=POWER_UP"]
    pool.step([], {})
    assert runner.commands == ["NodeName=node1 State=POWER_UP"]  # not asked again within ASK_AGAIN s
    sinfo.rows["node1"] = ("idle#", "")
    pool.step([], {})
    sinfo.rows["node2"] = ("alloc", "")  # Slurm powered node2 up for a job: the pool only records it
    pool.step([], {})
    report = pool.status()["pool"]
    assert report["nodes"] == {"node1": "starting", "node2": "up"} and report["most"] == 2
    assert json.loads((runner.root / "nodes.json").read_text())["nodes"]["node2"]["state"] == "up"


def test_a_cloud_head_changes_node_states_as_slurm_user(tmp_path: Path) -> None:
    """runner.json `slurm_admin` (a cloud head, whose runner is the cluster's user): before every `scontrol`."""
    runner, sinfo = FakeRunner(tmp_path / "root", low=1), Sinfo()
    runner.config["slurm_admin"] = ["sudo", "-n", "-u", "slurm"]
    pool = pool_of(runner, sinfo)
    sinfo.rows = {"node1": ("idle~", ""), "node2": ("idle~", "")}
    pool.step([], {})
    assert runner.argvs == [["sudo", "-n", "-u", "slurm", "scontrol", "update", "NodeName=node1", "State=POWER_UP"]]


def test_resize_drains_leaving_nodes_keeps_them_out_and_auto_undrains(tmp_path: Path) -> None:
    runner, sinfo = FakeRunner(tmp_path / "root"), Sinfo()
    pool = pool_of(runner, sinfo)
    sinfo.rows = {"node1": ("idle", ""), "node2": ("alloc", "")}
    pool.step([], {"node2": 1})
    (runner.root / RESIZE_FILE).write_bytes(resize_request(1, False))
    pool.step([], {"node2": 1})
    assert runner.commands == ["NodeName=node2 State=POWER_DOWN_ASAP"] and not runner.stopped
    restarted = pool_of(runner, sinfo)  # a runner killed after taking the request: the limits were saved
    restarted.step([], {"node2": 1})
    assert runner.commands[-1] == "NodeName=node2 State=POWER_DOWN_ASAP"
    sinfo.rows["node2"] = ("idle~", "")
    restarted.step([], {})
    assert runner.commands[-1] == f"NodeName=node2 State=DRAIN Reason={slurm_pool.RESIZE_REASON}"
    sinfo.rows["node2"] = ("drain~", slurm_pool.RESIZE_REASON)
    restarted.step([], {})
    assert restarted.status()["pool"]["nodes"] == {"node1": "up", "node2": "stopped"}
    (runner.root / RESIZE_FILE).write_bytes(resize_request(None, False))
    restarted.step([], {})
    assert runner.commands[-1] == "NodeName=node2 State=UNDRAIN"


def test_resize_force_cancels_the_jobs_with_the_reason_before_powering_down(tmp_path: Path) -> None:
    runner, sinfo = FakeRunner(tmp_path / "root"), Sinfo()
    pool = pool_of(runner, sinfo)
    runner.running = {"j1": {"hosts": [["node1", 1], ["node2", 1]]}, "j2": {"hosts": [["node1", 1]]}}
    sinfo.rows = {"node1": ("alloc", ""), "node2": ("alloc", "")}
    (runner.root / RESIZE_FILE).write_bytes(resize_request(1, True))
    pool.step([], {"node1": 2, "node2": 1})
    reason = "cancelled by resize --force: node node2 leaves the cluster"
    assert runner.stopped == [("j1", reason)]
    assert (runner.root / "jobs" / "j1" / rt.CANCEL_FILE).read_text() == reason + "\n"  # written first
    assert runner.commands == [f"NodeName=node2 State=DRAIN Reason={slurm_pool.RESIZE_REASON}"]  # still powered
    sinfo.rows["node2"] = ("drng", slurm_pool.RESIZE_REASON)
    pool.step([], {"node1": 2, "node2": 1})
    assert runner.stopped == [("j1", reason)] and len(runner.commands) == 1  # not cancelled twice, not powered down
    del runner.running["j1"], runner.stopping["j1"]  # the runner saw j1's processes end
    pool.step([], {"node1": 1})
    assert runner.commands[-1] == "NodeName=node2 State=POWER_DOWN_FORCE"



def test_a_node_whose_power_up_failed_or_that_stopped_answering_is_resumed_after_the_retry_delay(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed power-up leaves the node DOWN and powered down, which Slurm never powers up again by itself: after
    retry_failed_seconds (fake clock) the pool resumes it once; another reason (an admin's DOWN) is left alone."""
    clock = [1000.0]
    monkeypatch.setattr(rt, "now", lambda: clock[0])
    runner, sinfo = FakeRunner(tmp_path / "root"), Sinfo()
    runner.config["pool"]["retry_failed_seconds"] = 60
    pool = pool_of(runner, sinfo)
    failed = f"{RESUME_FAILED} (exit 1, see /shared/.mpicloud/slurm/power.log)"
    sinfo.rows = {"node1": ("down#", failed), "node2": ("down~", "disk replaced, keep out"),
                  "node3": ("down*", "Not responding")}  # still counted powered up: Slurm's own business
    pool.step([], {})
    assert pool.status()["pool"]["nodes"]["node1"] == "stopping"  # still counted powering up: takes no jobs
    sinfo.rows["node1"] = ("down~", failed)  # POWER_DOWN_FORCE done
    pool.step([], {})
    clock[0] += 59
    pool.step([], {})
    assert runner.commands == []
    clock[0] += 1
    pool.step([], {})
    assert runner.commands == ["NodeName=node1 State=RESUME"]
    sinfo.rows["node1"] = ("idle~", "")  # resumed: Slurm may power it up for a job
    pool.step([], {})
    sinfo.rows["node1"] = ("down~", RESUME_TIMED_OUT)  # tried again, did not register in time: Slurm's reason
    clock[0] += 30
    pool.step([], {})
    assert runner.commands == ["NodeName=node1 State=RESUME"]  # a new failure: its own delay
    clock[0] += 60
    pool.step([], {})
    assert runner.commands == ["NodeName=node1 State=RESUME"] * 2
    sinfo.rows["node1"] = ("idle~", "")
    sinfo.rows["node3"] = ("down~", "Not responding")  # halted behind Slurm's back, then powered down as idle
    pool.step([], {})
    clock[0] += 60
    pool.step([], {})
    assert runner.commands[-1] == "NodeName=node3 State=RESUME" and len(runner.commands) == 3


def test_a_runner_restarted_while_a_failed_node_waits_retries_it_one_delay_after_the_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry timer lives in the runner's memory: a runner killed while it waits starts the delay again (the
    retry comes at most one delay late, never never), and the new runner resumes the node once."""
    clock = [1000.0]
    monkeypatch.setattr(rt, "now", lambda: clock[0])
    runner, sinfo = FakeRunner(tmp_path / "root"), Sinfo()
    runner.config["pool"]["retry_failed_seconds"] = 60
    sinfo.rows = {"node1": ("down~", RESUME_TIMED_OUT)}
    pool_of(runner, sinfo).step([], {})
    clock[0] += 50  # killed here, 10 s before its retry
    restarted = pool_of(runner, sinfo)
    restarted.step([], {})
    clock[0] += 59
    restarted.step([], {})
    assert runner.commands == []
    clock[0] += 1
    restarted.step([], {})
    restarted.step([], {})
    assert runner.commands == ["NodeName=node1 State=RESUME"]
