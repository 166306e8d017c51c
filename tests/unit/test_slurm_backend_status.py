"""The Slurm backend's status: a pending job's reason is Slurm's own, never the placeholder of a job that `sbatch`
accepted and `squeue` has not listed yet (the real Slurm run is tests/integration/test_slurm_queue.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.runnerlib import node_module

rt = node_module("runner")
slurm_backend = node_module("slurm_backend")


class FakeRunner:
    """What SlurmBackend's submit bookkeeping and status use of the runner."""

    def __init__(self, root: Path) -> None:
        self.root, self.config = root, {"scheduler": "slurm"}
        self.queue: list[str] = []
        self.running: dict[str, dict[str, Any]] = {}

    def set_state(self, job_id: str, **fields: Any) -> dict[str, Any]:
        return {"id": job_id, **fields}

    def log(self, message: str) -> None:
        """Nothing kept."""


class Sinfo:
    """`sinfo -N -o %N|%t|%C`, answered at once."""

    def step(self) -> tuple[bool, str]:
        return True, "node1|mix|2/0/0/2\n"


def test_a_job_squeue_has_not_listed_yet_has_no_pending_reason(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    backend = slurm_backend.SlurmBackend(runner, rt)
    backend.sinfo = Sinfo()
    backend.jobs = {"7": ("RUNNING", "None")}
    backend.submitting = {"j2": None}
    backend.submitted(["j2"], "8\n")  # `sbatch` answered; squeue's last answer predates it
    status = backend.status()
    assert (status["queued"], status["pending_reasons"]) == (1, {})
    backend.jobs["8"] = ("PENDING", "Resources")  # the next squeue lists it
    assert backend.status()["pending_reasons"] == {"j2": "Resources"}
    assert backend.status()["slurm_nodes"] == [{"name": "node1", "state": "mix",
                                                "cpus_alloc_idle_other_total": "2/0/0/2"}]
