"""Elastic node pool decisions: which compute nodes to start, drain and stop (pure, stdlib only, any OS).

The runner passes its queue view (queued jobs' cores in FIFO order, the cores each node runs now, each node's
state and since when it is idle) and the limits (min/max nodes up, idle minutes); `decide` answers what to do.
Rules: capacity follows demand (cores running + queued) between min and max; a node running a job is never
stopped (it is drained: no new jobs, stopped once empty); an idle node stops only after the idle limit, only
when the queue does not need its cores, never below min; pinned nodes (the head when it runs jobs) stay up.
A broken node (up, but unreachable for longer than the runner's grace) is no capacity: it is stopped once no job
runs on it, and a node is started in its place when demand or min asks for one (it may be the same node again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpicloud.protocol.pool import DRAINING, STARTING, STOPPED, UP

#: nodes whose slots count as capacity (up now, or coming up)
ACTIVE = (UP, STARTING)


@dataclass(frozen=True)
class Limits:
    """How many compute nodes may be up, and how long an empty node stays up."""

    min_nodes: int
    max_nodes: int
    idle_seconds: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"nodes: min {self.min_nodes} must be between 0 and max {self.max_nodes}")


@dataclass(frozen=True)
class NodeView:
    """One compute node as the runner sees it now."""

    name: str
    slots: int
    state: str
    used: int = 0  # cores of running jobs on it
    idle_since: float | None = None  # when it last became empty (None: it runs a job)
    pinned: bool = False  # never drained or stopped (the head node of a fixed cluster)
    broken: bool = False  # up, but unreachable past the grace: replaced

    @property
    def active(self) -> bool:
        """Its slots count as capacity: up or coming up, and not broken."""
        return self.state in ACTIVE and not self.broken


@dataclass(frozen=True)
class Plan:
    """What to do now: start (stopped nodes, or draining ones taken back), drain, stop (empty nodes only)."""

    start: list[str] = field(default_factory=list)
    drain: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.start or self.drain or self.stop)


def capacity(nodes: list[NodeView], limits: Limits) -> int:
    """Cores the pool provides at its largest (the `max` nodes with the most slots)."""
    return sum(sorted((n.slots for n in nodes), reverse=True)[:limits.max_nodes])


def demand(queued: list[int], nodes: list[NodeView], limits: Limits) -> int:
    """Cores wanted now: those running on active nodes plus every queued job that could ever fit."""
    most = capacity(nodes, limits)
    return sum(n.used for n in nodes if n.active) + sum(c for c in queued if c <= most)


def decide(queued: list[int], nodes: list[NodeView], limits: Limits, now: float) -> Plan:
    """The plan for this moment (see the module docstring); nodes are considered in the given order."""
    want = demand(queued, nodes, limits)
    active = [n for n in nodes if n.active]
    have = sum(n.slots for n in active)
    start: list[str] = []
    # grow: draining nodes first (they are up already), then stopped ones, in order
    for node in [n for n in nodes if n.state == DRAINING and not n.broken] + [n for n in nodes if n.state == STOPPED]:
        if len(active) + len(start) >= limits.max_nodes:
            break
        if have >= want and len(active) + len(start) >= limits.min_nodes:
            break
        start.append(node.name)
        have += node.slots
    if start:
        return Plan(start=start)
    return _shrink(nodes, limits, want, now)


def _shrink(nodes: list[NodeView], limits: Limits, want: int, now: float) -> Plan:
    """Drain what exceeds max; stop empty draining or broken nodes and idle nodes the queue does not need."""
    active = [n for n in nodes if n.active]
    removable = [n for n in reversed(active) if not n.pinned]
    excess = max(0, len(active) - limits.max_nodes)
    # leave the emptiest nodes first (idle ones before busy ones), the last-named first
    leaving = sorted(removable, key=lambda n: n.used > 0)[:excess]
    drain = [n.name for n in leaving if n.used > 0 or n.state == STARTING]
    stop = [n.name for n in leaving if n.used == 0 and n.state == UP]
    stop += [n.name for n in nodes if n.used == 0 and not n.pinned
             and (n.state == DRAINING or (n.state == UP and n.broken))]
    left = len(active) - len(leaving)
    have = sum(n.slots for n in active if n not in leaving)
    for node in removable:
        if node in leaving or node.state != UP or node.used or node.idle_since is None:
            continue
        if now - node.idle_since < limits.idle_seconds or left <= limits.min_nodes or have - node.slots < want:
            continue
        stop.append(node.name)
        left -= 1
        have -= node.slots
    return Plan(drain=drain, stop=stop)


def ready(nodes: list[NodeView]) -> list[str]:
    """The nodes a job may be placed on now: up, nowhere else (not starting, draining or stopping)."""
    return [n.name for n in nodes if n.state == UP]
