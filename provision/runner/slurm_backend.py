"""The runner's Slurm backend (Linux only; runner.py imports it when runner.json says `"scheduler": "slurm"`).

Slurm holds the queue: each job is an `sbatch` allocation whose script runs `runner.py exec JOB --launch TOKEN`
(the built-in wrapper: inputs, post step, bucket push, result.json), a sweep's rows one `sbatch --array`.
Standard library only, like runner.py, whose helpers it uses through the module handed to SlurmBackend (`rt`:
runner.py may run as __main__).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from queue import SimpleQueue
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mpicloud.protocol.jobs import JOB_FILE, SWEEPS

if TYPE_CHECKING:
    from runner import Runner

#: Slurm backend: seconds between two `squeue` calls, two `sinfo` calls, after a failed `sbatch`; seconds a
#: sweep's rows are waited for after the last accepted job; most tasks in one array (Slurm's MaxArraySize 1001)
SLURM_POLL, SLURM_INFO, SLURM_RETRY, SWEEP_HOLD, ARRAY_MAX = 0.5, 5.0, 2.0, 5.0, 1000
#: the Slurm backend's own: `sbatch` answered, its Slurm id not recorded yet
SLURM_CRASH_POINTS = ("slurm.after_sbatch",)


class Background:
    """A command run in the background, at most every `every` s, so that a Slurm controller that does not
    answer (its commands then take ~9 s each) never stalls the runner's loop or its heartbeat."""

    def __init__(self, argv: list[str], env: dict[str, str], every: float, clock: Callable[[], float]) -> None:
        self.argv, self.env, self.every, self.clock = argv, env, every, clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.out: Any = None
        self.started = -every

    def step(self) -> tuple[bool, str | None]:
        """Start the command when due; (True, stdout) once it ended (stdout None when it failed)."""
        if self.proc is None:
            if self.clock() - self.started >= self.every:
                self.started = self.clock()
                self.out = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the command ends
                self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self.out,
                                             stderr=subprocess.DEVNULL)
            return False, None
        if self.proc.poll() is None and self.clock() - self.started < 60:
            return False, None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.out.seek(0)
        text = self.out.read().decode(errors="replace")
        self.out.close()
        self.proc = None
        return True, text if code == 0 else None


class SlurmBackend:
    """Slurm holds the queue: every accepted job is submitted at once, in FIFO order (`sbatch`, a sweep's rows
    as one `--array`); Slurm keeps that order (sched/builtin, priority/basic). A launch lives while `squeue`
    lists its Slurm job (one call for all jobs, at most every SLURM_POLL s; while Slurm does not answer,
    every launch counts as alive). The wrapper records its allocation in allocation.json."""

    def __init__(self, runner: Runner, rt: ModuleType) -> None:
        self.runner, self.rt = runner, rt
        self.env = {k: v for k, v in os.environ.items() if k != self.rt.CRASH_VAR}
        self.env.update({str(k): str(v) for k, v in (runner.config.get("slurm_env") or {}).items()})
        self.jobs: dict[str, tuple[str, str]] | None = None  # Slurm id -> (state, reason); None: unknown
        self.comments: dict[str, list[str]] = {}  # --comment -> Slurm ids
        self.fresh: dict[str, float] = {}  # Slurm id -> when submitted (a running squeue may not list it yet)
        self.unresolved: dict[str, None] = {}  # launches cut short by a crash, not yet looked up (FIFO order)
        self.meta: dict[str, tuple[str | None, int]] = {}  # job id -> (sweep, cores)
        self.squeue = Background(["squeue", "-h", "-r", "-o", "%i|%T|%k|%r"], self.env, SLURM_POLL, rt.now)
        self.sinfo = Background(["sinfo", "-h", "-N", "-o", "%N|%t|%C"], self.env, SLURM_INFO, rt.now)
        self.scancels: list[subprocess.Popen[bytes]] = []
        self.submitting: dict[str, None] = {}  # jobs whose `sbatch` is queued or running in the submitter
        self.inbox: SimpleQueue[tuple[list[str], list[str]]] = SimpleQueue()
        self.outbox: SimpleQueue[tuple[list[str], str | None]] = SimpleQueue()
        self.halted = threading.Event()  # an sbatch failed: the rest are not tried until SLURM_RETRY s passed
        self.requeued = 0
        self.retry_at = 0.0
        self.nodes: list[dict[str, str]] = []
        (runner.root / "slurm").mkdir(exist_ok=True)
        threading.Thread(target=self.submitter, daemon=True).start()

    def command(self, argv: list[str]) -> str | None:
        """Run a Slurm command; its stdout, or None (logged) when it failed or Slurm did not answer."""
        try:
            done = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.runner.log(f"{argv[0]}: {exc}")
            return None
        if done.returncode != 0:
            self.runner.log(f"{argv[0]} failed: {done.stderr.strip() or done.returncode}")
            return None
        return done.stdout

    # -- placing: Slurm does it; the head of the queue goes at once, a sweep as one array
    def job_meta(self, job_id: str) -> tuple[str | None, int]:
        if job_id not in self.meta:
            state = self.runner.state(job_id)
            self.meta[job_id] = (state.get("sweep"), int(state["cores"]))
        return self.meta[job_id]

    def batch(self, queue: list[str], cores: int) -> list[str]:
        """The head of the queue, or its sweep's queued rows of the same size (ARRAY_MAX at most), once every
        row of the sweep's record is accepted or SWEEP_HOLD s passed without an accepted job."""
        sweep = self.job_meta(queue[0])[0]
        if not sweep:
            return queue[:1]
        rows = [j for j in queue if self.job_meta(j) == (sweep, cores)][:ARRAY_MAX]
        recent = self.rt.now() - self.runner.last_accepted < SWEEP_HOLD
        if len(rows) < ARRAY_MAX and recent and self.rows_missing(sweep, rows):
            return []
        return rows

    def rows_missing(self, sweep: str, rows: list[str]) -> bool:
        try:
            listed = self.rt.read_json(self.runner.root / SWEEPS / f"{sweep}.json")["jobs"]
        except (OSError, ValueError, KeyError):
            return False
        queued = set(rows)
        return any(j not in queued and not (self.runner.jobdir(j) / JOB_FILE).exists() for j in listed)

    def place(self, cores: int) -> list[tuple[str, int]] | None:
        """[] while Slurm answers (its last `squeue` did) and no `sbatch` failed in the last SLURM_RETRY s."""
        if self.halted.is_set() and not self.submitting and self.rt.now() >= self.retry_at:
            self.halted.clear()
        if not self.submitting:
            self.requeued = 0
        return None if self.jobs is None or self.halted.is_set() else []

    def launch(self, batch: list[str], launches: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Queue one `sbatch` for the batch (an array when it has several jobs) to the submitter thread, which
        runs them one after the other in FIFO order (the loop never waits for Slurm); the jobs stay `starting`
        until it answers (submitted)."""
        root, group = self.runner.root, launches[batch[0]]
        program = [sys.executable, str(Path(str(self.rt.__file__)).resolve()), "exec"]
        if len(batch) == 1:
            jobdir = self.runner.jobdir(batch[0])
            script = shlex.join([*program, batch[0], "--launch", group, "--root", str(root)])
            where = [f"--job-name=mpicloud-{batch[0]}", f"--output={jobdir / 'slurm.out'}", f"--chdir={jobdir}"]
        else:
            listing = root / "slurm" / f"{group}.list"
            self.rt.write_text(listing, "".join(f"{j} {launches[j]}\n" for j in batch))
            script = (f'set -- $(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(listing))}) && exec '
                      f'{shlex.join(program)} "$1" --launch "$2" --root {shlex.quote(str(root))}')
            where = [f"--job-name=mpicloud-{self.job_meta(batch[0])[0]}", f"--array=0-{len(batch) - 1}",
                     f"--output={root / 'slurm' / group}-%a.out", f"--chdir={root}"]
        self.inbox.put((batch, ["sbatch", "--parsable", f"--comment=mpicloud:{group}",
                                f"--ntasks={self.job_meta(batch[0])[1]}", *where, "--wrap", script]))
        self.submitting.update(dict.fromkeys(batch))
        return {job_id: {"slurm_id": None} for job_id in batch}

    def submitter(self) -> None:
        """The submitter thread: each queued `sbatch` in order; after a failure the rest are not tried."""
        while True:
            batch, argv = self.inbox.get()
            out = None if self.halted.is_set() else self.command(argv)
            if out is None:
                self.halted.set()
            self.outbox.put((batch, out))

    def submitted(self, batch: list[str], out: str | None) -> None:
        """Record what `sbatch` answered: the Slurm ids, or (it failed) the jobs back to the head of the queue
        with their launches given up, so that a submission that went through after all runs nothing."""
        for job_id in batch:
            del self.submitting[job_id]
        if out is None:
            self.retry_at = self.rt.now() + SLURM_RETRY
            for job_id in batch:
                if self.runner.give_up(job_id, self.runner.state(job_id), self.requeued):
                    self.requeued += 1
                    del self.runner.running[job_id]
                else:  # its wrapper claimed the launch: submitted after all
                    self.unresolved[job_id] = None
            return
        self.rt.crash_point("slurm.after_sbatch")
        base = out.strip().split(";")[0]
        for i, job_id in enumerate(batch):
            sid = base if len(batch) == 1 else f"{base}_{i}"
            self.fresh[sid] = self.rt.now()
            if self.jobs is not None:
                self.jobs[sid] = ("PENDING", "")
            self.runner.running[job_id] = self.runner.set_state(job_id, state="queued", slurm_id=sid)

    # -- crash recovery: find a submission again by its comment; never submit it twice
    def resume(self, job_id: str, state: dict[str, Any]) -> None:
        """Tracked as alive until the next `squeue` answer says where it is (resolve)."""
        self.runner.running[job_id] = state
        self.unresolved[job_id] = None

    def resolve(self, job_id: str, position: int) -> bool:
        """A launch cut short between `starting` and its Slurm id being recorded: in Slurm, record its id;
        not there and never started, back to the queue at `position` (True); not there and started, it ended
        (the reaper finishes it)."""
        state = self.runner.state(job_id)
        found = self.comments.get(f"mpicloud:{state['group']}", [])
        array = (self.runner.root / "slurm" / f"{state['group']}.list").exists()
        sids = [s for s in found if s.endswith(f"_{state['index']}")] if array else found
        del self.unresolved[job_id]
        if sids:
            self.runner.running[job_id] = self.runner.set_state(job_id, state="queued", slurm_id=sids[0])
            return False
        if not self.runner.give_up(job_id, state, position):
            return False
        del self.runner.running[job_id]
        return True

    # -- tracking
    def poll(self) -> None:
        """One `squeue` for every job (in the background, every SLURM_POLL s); with its answer: resolve
        crashed launches, record started jobs. Jobs submitted since that squeue started count as listed."""
        self.scancels = [p for p in self.scancels if p.poll() is None]
        while not self.outbox.empty():
            self.submitted(*self.outbox.get())
        asked = self.squeue.started
        done, out = self.squeue.step()
        if not done:
            return
        if out is None:
            self.jobs = None
            self.runner.log("squeue failed: Slurm does not answer; every launch counts as alive meanwhile")
            return
        self.jobs, self.comments = {}, {}
        for line in out.splitlines():
            sid, slurm_state, comment, reason = [*line.split("|", 3), "", "", ""][:4]
            self.jobs[sid] = (slurm_state, reason)
            self.comments.setdefault(comment, []).append(sid)
        self.fresh = {sid: at for sid, at in self.fresh.items() if at >= asked}
        for sid in self.fresh:
            self.jobs.setdefault(sid, ("PENDING", ""))
        requeued = 0
        for job_id in list(self.unresolved):
            requeued += self.resolve(job_id, requeued)
        self.record_starts()

    def record_starts(self) -> None:
        """Jobs Slurm no longer holds pending whose wrapper recorded its allocation become `running`."""
        assert self.jobs is not None
        for job_id, state in list(self.runner.running.items()):
            if state["state"] != "queued" or self.jobs.get(state.get("slurm_id") or "", ("",))[0] == "PENDING":
                continue
            try:
                allocation = self.rt.read_json(self.runner.jobdir(job_id) / "allocation.json")
            except (OSError, ValueError):
                continue
            self.runner.running[job_id] = self.runner.set_state(
                job_id, state="running", hosts=allocation["hosts"], started_at=allocation["started_at"])

    def alive(self, job_id: str, state: dict[str, Any]) -> bool:
        if self.jobs is None or job_id in self.unresolved or job_id in self.submitting:
            return True
        return bool(state.get("slurm_id")) and state["slurm_id"] in self.jobs

    def describe(self, job_id: str, state: dict[str, Any]) -> str:
        return f"slurm:{state.get('slurm_id')}"

    def lost(self, job_id: str, state: dict[str, Any]) -> str:
        """The Slurm state the job ended in (`scontrol`, while Slurm remembers it: MinJobAge)."""
        sid = state.get("slurm_id")
        shown = self.command(["scontrol", "-o", "show", "job", sid]) if sid else None
        fields = dict(f.split("=", 1) for f in (shown or "").split() if "=" in f)
        if "JobState" in fields:
            return f"Slurm job {sid} ended {fields['JobState']} (reason {fields.get('Reason', 'None')})"
        return f"Slurm job {sid} left Slurm's queue"

    def cancel(self, job_id: str, state: dict[str, Any], sig: int) -> None:
        """`scancel` in the background (the queue's marked-process kill does not wait for it)."""
        if state.get("slurm_id"):
            argv = ["scancel", *(["--signal=KILL"] if sig == self.rt.SIGKILL else []), state["slurm_id"]]
            self.scancels.append(subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def busy(self) -> bool:
        """Slurm holds jobs (anyone's, e.g. `sbatch` on node0), or its last `squeue` did not answer."""
        return self.jobs is None or bool(self.jobs)

    def status(self) -> dict[str, Any]:
        """Slurm's view: its nodes and their states (`sinfo`, every SLURM_INFO s), pending reasons."""
        done, out = self.sinfo.step()
        if done:
            rows = [line.split("|") for line in (out or "").splitlines() if line.count("|") == 2]
            self.nodes = [{"name": n, "state": t, "cpus_alloc_idle_other_total": c} for n, t, c in rows]
        pending = {job_id: state.get("slurm_id") or ""
                   for job_id, state in self.runner.running.items() if state["state"] == "queued"}
        listed = self.jobs or {}  # a job just submitted has no reason ("") until squeue lists it
        reasons = {job_id: reason for job_id, sid in pending.items() if (reason := listed.get(sid, ("", ""))[1])}
        return {"scheduler": "slurm", "slurm_nodes": self.nodes, "slurm_answers": self.jobs is not None,
                "queued": len(self.runner.queue) + len(pending), "running": len(self.runner.running) - len(pending),
                "pending_reasons": dict(list(reasons.items())[:20])}
