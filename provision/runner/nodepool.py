"""The runner's compute node pool: node states in nodes.json, start/stop actions, resize requests, node-hours.

runner.json's `pool` says how many compute nodes may be up (`min`, `max`, `idle_minutes`), their slots, whether
node0 (the head) is one of them (`head_runs_jobs`: a fixed-size cluster) and the cluster's node actions
(`resume_command`/`suspend_command`, each run with a node name appended; idempotent). Every change is first
written to nodes.json (atomically), then acted on: a runner killed at any point finds `starting`/`stopping`
nodes and runs their action again. Only `up` nodes take new jobs; a node is stopped only when no job runs on it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import autoscale

from mpicloud.protocol.pool import DRAINING, MAX_NODES, POOL_FILE, RESIZE_FILE, STARTING, STOPPED, STOPPING, UP

#: the runner's kill points in the pool (MPICLOUD_RUNNER_CRASH_AT, for tests)
POOL_CRASH_POINTS = ("pool.after_plan", "pool.after_resume", "pool.after_suspend")
#: seconds before a failed start or stop is tried again
RETRY_SECONDS = 30.0
#: seconds an up node may stay unreachable before it is replaced (stopped, and a node started for it)
REPLACE_AFTER_SECONDS = 120.0


class Pool:
    """Compute nodes and their states, for one runner (`rt`: the runner module, for its file helpers)."""

    def __init__(self, runner: Any, rt: Any) -> None:
        self.runner = runner
        self.rt = rt
        self.path: Path = runner.root / POOL_FILE
        config: dict[str, Any] = runner.config.get("pool") or {}
        nodes = runner.config["nodes"]
        self.head_runs_jobs = bool(config.get("head_runs_jobs", "pool" not in runner.config))
        self.slots = int(config.get("slots_per_node", nodes[-1]["slots"]))
        count = len(nodes) - (0 if self.head_runs_jobs else 1)
        self.spec_limits = (int(config.get("min", count)), int(config.get("max", count)))
        self.idle_seconds = float(config.get("idle_minutes") or 0) * 60 or float("inf")
        self.resume = [str(a) for a in config.get("resume_command") or []]
        self.suspend = [str(a) for a in config.get("suspend_command") or []]
        self.replace_after = float(config.get("replace_unreachable_seconds", REPLACE_AFTER_SECONDS))
        self.actions: dict[str, tuple[subprocess.Popen[bytes], str]] = {}  # node -> (process, kind)
        # the cluster's stop takes every node down (Azure deallocates every VM) and its start brings back the head
        # only: after a pause, nodes that were up run their (idempotent) start again before they take jobs
        self.resume_after_pause = bool(config.get("resume_after_pause"))
        self.data = self._load(nodes)

    # -- nodes.json
    def _load(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            data: dict[str, Any] = self.rt.read_json(self.path)
        except (OSError, ValueError):
            at = self.rt.now()  # first start: every node runner.json lists is up (the cluster made them)
            data = {"version": 1, "started_at": at, "limits": None, "force": False, "head_seconds": 0.0,
                    "head_since": at, "nodes": {str(n["name"]): self._entry(UP, at) for n in nodes}}
            self.rt.write_json(self.path, data)
        at = self.rt.now()
        paused = bool(data.get("paused"))
        for name, entry in data["nodes"].items():  # idle times are not recorded on every pass: count them anew
            entry["idle_since"] = at
            if paused and entry["state"] in (UP, DRAINING) and self.resume_after_pause and name != self.head:
                entry.update(state=STARTING, since=at, retry_at=0.0)
            elif paused and entry["state"] in (UP, DRAINING):
                entry["up_since"] = at
        if data.pop("paused", False):
            data["head_since"] = at
            self.rt.write_json(self.path, data)
        return data

    def pause(self) -> None:
        """The runner stops on purpose (the cluster stops): up-time stops counting until the next start."""
        at = self.rt.now()
        for entry in self.data["nodes"].values():
            if entry["up_since"] is not None:
                entry["up_seconds"] += at - entry["up_since"]
                entry["up_since"] = None
        self.data.update(head_seconds=self._head_seconds(at), head_since=None, paused=True)
        self.save()

    def _head_seconds(self, at: float) -> float:
        since = self.data.get("head_since", self.data["started_at"])
        return float(self.data.get("head_seconds", 0.0)) + (at - float(since) if since is not None else 0.0)

    @staticmethod
    def _entry(state: str, at: float) -> dict[str, Any]:
        return {"state": state, "since": at, "up_since": at if state == UP else None,
                "up_seconds": 0.0, "idle_since": at, "retry_at": 0.0}

    def save(self) -> None:
        self.rt.write_json(self.path, self.data)

    @property
    def head(self) -> str:
        return str(self.runner.config["nodes"][0]["name"])

    def limits(self) -> autoscale.Limits:
        low, high = self.data["limits"] or self.spec_limits
        return autoscale.Limits(int(low), int(high), self.idle_seconds)

    def names(self) -> list[str]:
        """Compute nodes in order: those known, then the names `max` adds (node<i>)."""
        known = [n for n in self.data["nodes"] if n != self.head or self.head_runs_jobs]
        prefix = self.head.rstrip("0123456789")
        first = 0 if self.head_runs_jobs else 1
        wanted = [f"{prefix}{i}" for i in range(first, first + self.limits().max_nodes)]
        return sorted(set(known) | set(wanted), key=lambda n: (len(n), n))

    def state(self, name: str) -> str:
        entry = self.data["nodes"].get(name)
        return str(entry["state"]) if entry else STOPPED

    # -- what the queue sees
    def node_list(self) -> list[dict[str, Any]]:
        """runner.nodes: the head, then compute nodes that are up or draining (they have processes to probe)."""
        if not self.resume:
            return list(self.runner.config["nodes"])
        out = [] if self.head_runs_jobs else [{"name": self.head, "slots": 0}]
        return out + [{"name": n, "slots": self.slots} for n in self.names()
                      if self.state(n) in (UP, DRAINING)]

    def ready(self, name: str) -> bool:
        return (name == self.head and not self.head_runs_jobs) or self.state(name) == UP

    def capacity(self) -> int:
        """Cores the cluster may have: the spec's, or more after a resize that grew it."""
        return max(int(self.rt.capacity(self.runner.config)), self.limits().max_nodes * self.slots)

    # -- one pass of the runner's loop
    def step(self, queued: list[int], used: dict[str, int]) -> None:
        """Finish actions, take a resize request, decide and act (each change recorded before it is acted on)."""
        if not self.resume:
            return  # no node actions: a fixed cluster, nodes.json only counts its node-hours
        self._reap_actions()
        self._take_resize()
        at = self.rt.now()
        for name in self.names():
            entry = self.data["nodes"].get(name)
            if entry and entry["state"] in (STARTING, STOPPING) and name not in self.actions \
                    and at >= entry["retry_at"]:
                self._act(name, "resume" if entry["state"] == STARTING else "suspend")
            if entry and used.get(name):
                entry["idle_since"] = None
            elif entry and entry["idle_since"] is None:
                entry["idle_since"] = at
        views = [autoscale.NodeView(n, self.slots, self.state(n), used.get(n, 0),
                                    (self.data["nodes"].get(n) or {}).get("idle_since"), pinned=n == self.head,
                                    broken=self._broken(n, at))
                 for n in self.names()]
        plan = autoscale.decide(queued, views, self.limits(), at)
        busy = set(self.actions)  # a node whose action still runs is left alone until it ends
        plan = autoscale.Plan(*([n for n in names if n not in busy] for names in (plan.start, plan.drain, plan.stop)))
        if plan:
            self._apply(plan, at)
        if self.data.get("force"):
            self._force_out(used)

    def _broken(self, name: str, at: float) -> bool:
        """Unreachable for longer than the grace: the runner's probes failed all that time."""
        since = self.runner.unreachable.get(name)
        return since is not None and at - since >= self.replace_after

    def _apply(self, plan: autoscale.Plan, at: float) -> None:
        for name in plan.start:
            self._set(name, UP if self.state(name) == DRAINING else STARTING, at)
        for name in plan.drain:
            self._set(name, DRAINING, at)
        for name in plan.stop:
            self._set(name, STOPPING, at)
        self.save()
        self.rt.crash_point("pool.after_plan")
        for name in plan.start:
            if self.state(name) == STARTING:
                self._act(name, "resume")
        for name in plan.stop:
            if self._broken(name, at):
                self.runner.log(f"node {name} has been unreachable for {at - self.runner.unreachable[name]:.0f} s: "
                                "replacing it (stop, then start a node in its place)")
            self.runner.keep_connection(name, False)
            self._act(name, "suspend")
        self.runner.refresh_nodes()

    def _set(self, name: str, state: str, at: float) -> None:
        """Record a node's new state; its up-time counts while it is up or draining."""
        entry = self.data["nodes"].setdefault(name, self._entry(STOPPED, at))
        counts = state in (UP, DRAINING)
        if not counts and entry["up_since"] is not None:
            entry["up_seconds"] += at - entry["up_since"]
            entry["up_since"] = None
        elif counts and entry["up_since"] is None:
            entry["up_since"] = at
        entry.update(state=state, since=at)
        self.runner.log(f"node {name}: {state}")

    def _act(self, name: str, kind: str) -> None:
        argv = (self.resume if kind == "resume" else self.suspend) + [name]
        log = self.runner.root / "nodes.log"
        self.actions[name] = (self.rt.spawn_detached(argv, self.runner.root, log), kind)

    def _reap_actions(self) -> None:
        for name, (proc, kind) in list(self.actions.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.actions[name]
            at = self.rt.now()
            entry = self.data["nodes"][name]
            if code != 0:
                entry["retry_at"] = at + RETRY_SECONDS
                self.runner.log(f"node {name}: {kind} failed with exit code {code} (nodes.log); retrying in "
                                f"{RETRY_SECONDS:.0f} s")
                self.save()
                continue
            drained = kind == "resume" and entry["state"] == DRAINING  # drained while it started
            self._set(name, STOPPED if kind == "suspend" else entry["state"] if drained else UP, at)
            entry["idle_since"] = at
            self.save()
            self.rt.crash_point(f"pool.after_{kind}")
            self.runner.refresh_nodes()

    # -- resize requests
    def _take_resize(self) -> None:
        request_file = self.runner.root / RESIZE_FILE
        if not request_file.exists():
            return
        try:
            request = self.rt.read_json(request_file)
        except OSError:
            return  # next pass
        except ValueError:
            request = None
        count = request.get("nodes") if isinstance(request, dict) else -1
        if count is not None and not (type(count) is int and 0 <= count <= MAX_NODES):
            request_file.unlink(missing_ok=True)
            self.runner.log(f"resize: {count!r} is not a node count (0..{MAX_NODES}); request ignored")
            return
        self.data["limits"] = None if count is None else [count, count]
        self.data["force"] = bool(request.get("force")) if isinstance(request, dict) else False
        self.save()
        request_file.unlink(missing_ok=True)  # after the save: a crash in between takes it again, the same way
        self.runner.log(f"resize: {'the spec limits' if count is None else f'{count} nodes'}"
                        f"{' (forced)' if self.data['force'] else ''}")

    def _force_out(self, used: dict[str, int]) -> None:
        """resize --force: cancel the jobs running on draining nodes, each with the reason."""
        leaving = {n for n in self.names() if self.state(n) == DRAINING and used.get(n)}
        if not leaving:
            if not any(self.state(n) == DRAINING for n in self.names()):
                self.data["force"] = False
                self.save()
            return
        self.cancel_jobs_on(leaving)

    def cancel_jobs_on(self, leaving: set[str]) -> None:
        """Cancel the running jobs that use any of the leaving nodes, each with the reason (written first)."""
        for job_id, state in list(self.runner.running.items()):
            hit = sorted(leaving & {str(h) for h, _ in state.get("hosts") or []})
            if hit and job_id not in self.runner.stopping:
                reason = f"cancelled by resize --force: node {', '.join(hit)} leaves the cluster"
                self.rt.write_text(self.runner.jobdir(job_id) / self.rt.CANCEL_FILE, reason + "\n")
                self.runner.stop(job_id, state, reason)

    # -- reports
    def status(self) -> dict[str, Any]:
        """status.json's `pool`: each node's state, the limits, node-hours since the cluster started."""
        at = self.rt.now()
        nodes = {n: self.state(n) for n in self.names()}
        compute = sum(e["up_seconds"] + (at - e["up_since"] if e["up_since"] is not None else 0.0)
                      for n, e in self.data["nodes"].items() if n != self.head)
        head = self._head_seconds(at)  # the head is up as long as the cluster
        limits = self.limits()
        return {"pool": {"nodes": nodes, "min": limits.min_nodes, "max": limits.max_nodes,
                         "resized": self.data["limits"] is not None, "resizable": bool(self.resume),
                         "head_runs_jobs": self.head_runs_jobs,
                         "slots_up": sum(self.slots for n in self.names() if self.ready(n)),
                         "node_hours": round((compute + head) / 3600, 4),
                         "compute_node_hours": round(compute / 3600, 4), "since": self.data["started_at"]}}
