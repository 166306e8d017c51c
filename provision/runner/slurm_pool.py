"""The node pool of an elastic Slurm cluster (Linux; runner.py uses it when runner.json has `"scheduler": "slurm"`
and a `pool`): Slurm decides power, the runner only reports and resizes.

Slurm's power saving starts compute nodes for its queued jobs (ResumeProgram) and stops idle ones (SuspendProgram,
after SuspendTime); both run runner.json's pool commands through slurm_power.py, never the runner. This pool reads
the nodes' states from `sinfo` (power flags ~ # % !) into nodes.json and status.json as the built-in pool does
(node-hours included), and turns the limits into Slurm commands: fewer than `min` nodes up, `POWER_UP`; a resize
to N nodes keeps N up and the others out of use (`POWER_DOWN_ASAP`: running jobs finish; with --force, the jobs
are drained and cancelled with the reason, `POWER_DOWN_FORCE` once the runner saw them end; then `DRAIN` with
RESIZE_REASON so that Slurm does not power them up again), `--auto` undrains them. Every command is idempotent
and follows the recorded limits, so a runner killed anywhere repeats what was missing.

A node whose power-up failed (slurm_power.py's RESUME_FAILED, or Slurm's RESUME_TIMED_OUT) is DOWN and powered
down: Slurm never powers it up again by itself, so a job that needs it would wait forever. The same holds for a node
Slurm set DOWN as not responding and then powered down as idle (a compute VM halted behind its back, e.g. by the
whole cluster's idle shutdown). Once such a node has been so for `pool.retry_failed_seconds` (a cloud's capacity
or a boot may be back), the pool resumes it (`State=RESUME`: idle and powered down), and Slurm tries it again for
the jobs that wait. A node DOWN for any other reason (an admin's) is left alone.
"""

from __future__ import annotations

from typing import Any

import nodepool
from slurm_backend import Background

from mpicloud.protocol.pool import DRAINING, RESUME_FAILED, RESUME_TIMED_OUT, STARTING, STOPPED, STOPPING, UP

#: seconds between two `sinfo` calls of the pool; seconds before a node is asked again for the same change
POOL_INFO, ASK_AGAIN = 1.0, 10.0
#: seconds a node whose power-up failed stays out of use before Slurm may try it again (runner.json's pool may say)
RETRY_FAILED_SECONDS = 300.0
#: the reasons of a DOWN, powered-down node that the pool tries again: a failed power-up, or Slurm's own for a node
#: whose slurmd stopped answering
RETRIED = (RESUME_FAILED, RESUME_TIMED_OUT, "Not responding")
#: the reason Slurm shows for a node a resize keeps out of use
RESIZE_REASON = "mpicloud resize: not in the cluster's node count"


def pool_state(slurm: str) -> str:
    """A pool state from sinfo's compact state (`%t`): ~ powered down, # powering up, % powering down, ! to be
    powered down once its jobs end; a DOWN node (e.g. a failed resume: `down#` until ResumeTimeout) takes no jobs
    and waits to be suspended."""
    if "~" in slurm:
        return STOPPED
    if "%" in slurm or slurm.startswith("down"):
        return STOPPING
    if "#" in slurm:
        return STARTING
    if "!" in slurm or slurm.startswith(("drng", "drain")):
        return DRAINING
    return UP


class SlurmPool(nodepool.Pool):
    """nodepool.Pool's record, reports and resize requests; Slurm's power saving acts on the nodes."""

    def __init__(self, runner: Any, rt: Any) -> None:
        super().__init__(runner, rt)
        self.env = runner.backend.env
        self.sinfo = Background(["sinfo", "-h", "-N", "-o", "%N|%t|%E"], self.env, POOL_INFO, rt.now)
        self.asked: dict[tuple[str, str], float] = {}  # (node, command) -> when
        self.failed: dict[str, float] = {}  # node whose power-up failed -> when the pool first saw it powered down
        self.retry_after = float(runner.config["pool"].get("retry_failed_seconds", RETRY_FAILED_SECONDS))

    def names(self) -> list[str]:
        """Every compute node slurm.conf lists (node1..node<spec max>), also while a resize keeps fewer up."""
        prefix = self.head.rstrip("0123456789")
        listed = {f"{prefix}{i}" for i in range(1, self.spec_limits[1] + 1)}
        return sorted(set(super().names()) | listed, key=lambda n: (len(n), n))

    def status(self) -> dict[str, Any]:
        """nodepool.Pool's report; `most`: a resize may not ask for more nodes than slurm.conf lists."""
        report = super().status()
        report["pool"]["most"] = self.spec_limits[1]
        return report

    def step(self, queued: list[int], used: dict[str, int]) -> None:
        """Take a resize request; with a fresh `sinfo`: record the nodes' states, then bring Slurm to the limits."""
        self._take_resize()
        done, out = self.sinfo.step()
        if not done or out is None:
            return
        rows = {}
        for line in out.splitlines():
            name, state, reason = [*line.split("|", 2), "", ""][:3]
            rows[name] = (state.strip(), reason.strip())
        at = self.rt.now()
        changed = False
        for name in self.names():
            if name in rows and pool_state(rows[name][0]) != self.state(name):
                self._set(name, pool_state(rows[name][0]), at)
                changed = True
        if changed:
            self.save()
            self.runner.refresh_nodes()
        self._retry_failed(rows, at)
        self._enforce(rows, used, at)

    def _retry_failed(self, rows: dict[str, tuple[str, str]], at: float) -> None:
        """Resume the nodes whose power-up failed once they have been down and powered down for retry_after s."""
        failed = {n for n, (state, reason) in rows.items() if state.startswith("down") and "~" in state
                  and reason.startswith(RETRIED)}
        self.failed = {n: self.failed.get(n, at) for n in failed}
        due = sorted(n for n, since in self.failed.items() if at - since >= self.retry_after)
        if due:
            why = "; ".join(f"{n}: {rows[n][1]}" for n in due)
            self.runner.log(f"nodes {','.join(due)}: DOWN and powered down for {self.retry_after:.0f} s ({why}), "
                            "trying again")
            self._ask(due, "RESUME", at)

    def _enforce(self, rows: dict[str, tuple[str, str]], used: dict[str, int], at: float) -> None:
        limits = self.limits()
        names = [n for n in self.names() if n in rows]
        ours = {n for n in names if rows[n][1] == RESIZE_REASON}
        powered = [n for n in names if self.state(n) in (UP, STARTING, DRAINING)]
        if self.data["limits"] is None:
            self._ask(sorted(ours), "UNDRAIN", at)
            keep = names
        else:
            live = [n for n in powered if n not in ours]
            keep = (live + [n for n in names if n not in live])[:limits.max_nodes]
            self._ask(sorted(ours & set(keep)), "UNDRAIN", at)
        leaving = [n for n in powered if n not in keep]
        kept_up = [n for n in keep if self.state(n) in (UP, STARTING)]
        usable = [n for n in keep if self.state(n) == STOPPED and not rows[n][0].startswith(("down", "drain", "drng"))]
        self._ask(usable[:max(0, limits.min_nodes - len(kept_up))], "POWER_UP", at)
        if self.data.get("force"):
            self._force(leaving, used, at)
        else:
            self._ask(leaving, "POWER_DOWN_ASAP", at)
        self._ask([n for n in names if n not in keep and n not in ours and self.state(n) == STOPPED], "DRAIN", at)

    def _force(self, leaving: list[str], used: dict[str, int], at: float) -> None:
        """resize --force: the leaving nodes are drained (not powered down yet: the runner checks that its cancelled
        jobs left no process there), the runner's jobs on them cancelled with the reason; once none is left,
        POWER_DOWN_FORCE ends anything else (e.g. a native `sbatch` job)."""
        if not leaving:
            self.data["force"] = False
            self.save()
            return
        self._ask(leaving, "DRAIN", at)
        self.cancel_jobs_on({n for n in leaving if used.get(n)})
        if not any(used.get(n) for n in leaving):
            self._ask(leaving, "POWER_DOWN_FORCE", at)

    def _ask(self, nodes: list[str], state: str, at: float) -> None:
        """`scontrol update NodeName=... State=...` for the nodes not asked the same within ASK_AGAIN s."""
        due = [n for n in nodes if at - self.asked.get((n, state), -ASK_AGAIN) >= ASK_AGAIN]
        if not due:
            return
        for name in due:
            self.asked[(name, state)] = at
        reason = [f"Reason={RESIZE_REASON}"] if state == "DRAIN" else []
        self.runner.log(f"nodes {','.join(due)}: scontrol {state}")
        # runner.json `slurm_admin` (a cloud head: sudo to SlurmUser): who may change node states
        admin = [str(a) for a in self.runner.config.get("slurm_admin") or []]
        self.runner.backend.command([*admin, "scontrol", "update", f"NodeName={','.join(due)}", f"State={state}",
                                     *reason])
