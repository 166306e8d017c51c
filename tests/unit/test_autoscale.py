"""The elastic pool's decisions (provision/runner/autoscale.py) with a fake clock: no sleeps, no processes."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from mpicloud.protocol.pool import NODE_STATES
from tests.runnerlib import node_module

autoscale = node_module("autoscale")
Limits, NodeView, decide = autoscale.Limits, autoscale.NodeView, autoscale.decide

LIMITS = Limits(min_nodes=0, max_nodes=4, idle_seconds=600)


def pool(*states: str, slots: int = 2) -> list[NodeView]:
    return [NodeView(f"node{i + 1}", slots, s, idle_since=0.0 if s == "up" else None) for i, s in enumerate(states)]


def test_an_empty_queue_starts_nothing() -> None:
    assert not decide([], pool("stopped", "stopped"), LIMITS, now=10.0)


def test_queued_cores_start_just_enough_nodes_in_order() -> None:
    plan = decide([1, 2], pool("stopped", "stopped", "stopped", "stopped"), LIMITS, now=0.0)
    assert plan.start == ["node1", "node2"]  # 3 cores, 2 slots each


def test_growth_stops_at_max_and_skips_jobs_bigger_than_max() -> None:
    nodes = pool("stopped", "stopped", "stopped", "stopped", "stopped")
    assert decide([2] * 10, nodes, LIMITS, now=0.0).start == ["node1", "node2", "node3", "node4"]
    assert not decide([9], nodes, LIMITS, now=0.0)  # 9 > 4 x 2: never fits, refused elsewhere


def test_nodes_coming_up_count_as_capacity() -> None:
    assert not decide([2], pool("starting", "stopped"), LIMITS, now=0.0)


def test_min_nodes_are_kept_up() -> None:
    limits = Limits(min_nodes=2, max_nodes=4, idle_seconds=60)
    assert decide([], pool("stopped", "stopped", "stopped"), limits, now=0.0).start == ["node1", "node2"]
    assert not decide([], pool("up", "up", "stopped"), limits, now=1e6)  # idle long, but at min


def test_an_idle_node_stops_only_after_the_limit() -> None:
    nodes = pool("up", "up")
    assert not decide([], nodes, LIMITS, now=599.0)
    assert decide([], nodes, LIMITS, now=600.0).stop == ["node2", "node1"]  # last-named first


def test_an_idle_node_the_queue_needs_stays_up() -> None:
    nodes = [NodeView("node1", 2, "up", idle_since=0.0), NodeView("node2", 2, "starting")]
    assert not decide([3], nodes, LIMITS, now=1e6)  # 3 cores need both


def test_a_busy_node_is_never_stopped_when_max_shrinks() -> None:
    nodes = [NodeView("node1", 2, "up", used=2), NodeView("node2", 2, "up", used=1),
             NodeView("node3", 2, "up", idle_since=5.0)]
    plan = decide([], nodes, Limits(0, 1, 600), now=6.0)
    assert plan.stop == ["node3"]
    assert plan.drain == ["node2"]  # the emptier busy node drains; node1 keeps running


def test_a_draining_node_stops_once_empty_and_is_taken_back_when_needed() -> None:
    empty = [NodeView("node1", 2, "up", used=2), NodeView("node2", 2, "draining")]
    assert decide([], empty, Limits(0, 1, 600), now=0.0).stop == ["node2"]
    busy = [NodeView("node1", 2, "up", used=2), NodeView("node2", 2, "draining", used=1)]
    assert not decide([], busy, Limits(0, 1, 600), now=0.0)
    assert decide([2], busy, Limits(0, 2, 600), now=0.0).start == ["node2"]


def test_pinned_nodes_stay() -> None:
    nodes = [replace(n, pinned=i == 0) for i, n in enumerate(pool("up", "up"))]
    assert decide([], nodes, Limits(0, 4, 1), now=1e6).stop == ["node2"]
    assert decide([], nodes, Limits(0, 0, 1), now=0.0).stop == ["node2"]


def test_a_broken_node_is_stopped_once_empty_and_another_starts_for_it() -> None:
    nodes = pool("up", "stopped")
    broken = [replace(nodes[0], broken=True), nodes[1]]
    assert decide([2], broken, LIMITS, now=0.0).start == ["node2"]  # no capacity: the queue needs a node
    assert decide([], broken, LIMITS, now=0.0).stop == ["node1"]  # at once, not after the idle limit
    busy = [replace(broken[0], used=1, idle_since=None), nodes[1]]
    assert "node1" not in decide([], busy, LIMITS, now=0.0).stop  # its job ends first (the runner stops it)
    kept = Limits(min_nodes=1, max_nodes=1, idle_seconds=600)
    assert decide([], [broken[0]], kept, now=0.0).stop == ["node1"]  # min counts working nodes only
    assert decide([], [replace(broken[0], state="stopped")], kept, now=0.0).start == ["node1"]  # started again
    assert not decide([], [replace(broken[0], pinned=True)], kept, now=0.0)  # the head is never stopped


def test_limits_refuse_min_above_max() -> None:
    with pytest.raises(ValueError, match="min 3 must be between 0 and max 2"):
        Limits(3, 2, 0)


def test_ready_nodes_are_the_up_ones() -> None:
    assert autoscale.ready(pool("up", "starting", "draining", "stopping", "stopped", "up")) == ["node1", "node6"]


class Sim:
    """A pool of 4 x 2-slot nodes driven by `decide`, with the queue's strict FIFO placement on ready nodes;
    nodes take 3 ticks to start and 2 to stop; every tick is 10 s of the fake clock."""

    def __init__(self, jobs: list[tuple[int, int]], limits: Limits) -> None:
        self.limits = limits
        self.jobs = list(enumerate(jobs))  # (id, (cores, ticks)) in FIFO order
        self.state = {f"node{i}": "stopped" for i in range(1, 5)}
        self.until: dict[str, int] = {}
        self.idle_since: dict[str, float] = {}
        self.running: dict[int, tuple[dict[str, int], int]] = {}  # id -> (cores per node, ends at tick)
        self.started: list[int] = []
        self.finished: list[int] = []
        self.up_seen: list[int] = []

    def used(self, node: str) -> int:
        return sum(hosts.get(node, 0) for hosts, _ in self.running.values())

    def view(self, t: float) -> list[NodeView]:
        return [NodeView(n, 2, s, self.used(n), None if self.used(n) else self.idle_since.get(n, t))
                for n, s in self.state.items()]

    def tick(self, i: int) -> None:
        t = i * 10.0
        for job, (hosts, end) in list(self.running.items()):
            if end <= i:
                del self.running[job]
                self.finished.append(job)
                for node in hosts:
                    if not self.used(node):
                        self.idle_since[node] = t
        for node, when in list(self.until.items()):
            if when <= i:
                del self.until[node]
                self.state[node] = "up" if self.state[node] == "starting" else "stopped"
                self.idle_since[node] = t
        self.place(i)
        plan = decide([c for _, (c, _) in self.jobs], self.view(t), self.limits, t)
        for node in plan.start:
            assert self.state[node] in ("stopped", "draining")
            self.state[node] = "up" if self.state[node] == "draining" else "starting"
            if self.state[node] == "starting":
                self.until[node] = i + 3
        for node in plan.drain:
            self.state[node] = "draining"
        for node in plan.stop:
            assert self.used(node) == 0, f"{node} stopped while a job runs on it"
            self.state[node] = "stopping"
            self.until[node] = i + 2
        self.up_seen.append(sum(s == "up" for s in self.state.values()))

    def place(self, i: int) -> None:
        while self.jobs:  # strict FIFO: the head starts or nothing does
            job, (cores, ticks) = self.jobs[0]
            hosts: dict[str, int] = {}
            need = cores
            for node in autoscale.ready(self.view(0.0)):
                take = min(2 - self.used(node), need)
                if take > 0:
                    hosts[node] = take
                    need -= take
            if need:
                return
            assert all(self.state[n] == "up" for n in hosts)
            self.jobs.pop(0)
            self.running[job] = (hosts, i + ticks)
            self.started.append(job)


def test_a_burst_takes_the_pool_from_0_to_4_and_back_to_0() -> None:
    rng = random.Random(16)
    jobs = [(rng.choice([1, 2, 3, 4, 8]), rng.randint(1, 6)) for _ in range(20)]
    sim = Sim(jobs, Limits(0, 4, idle_seconds=60))
    for i in range(300):
        sim.tick(i)
    assert sim.started == list(range(20))  # strict FIFO, each once
    assert sorted(sim.finished) == list(range(20))
    assert max(sim.up_seen) == 4
    assert sim.up_seen[0] == 0 and sim.up_seen[-1] == 0
    assert set(sim.state.values()) == {"stopped"}


@pytest.mark.parametrize("seed", range(20))
def test_random_views_never_stop_a_busy_node(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        nodes = [NodeView(f"node{i}", rng.randint(1, 4), state := rng.choice(NODE_STATES),
                          used=rng.choice([0, 0, 1, 2]) if state in ("up", "draining") else 0,
                          idle_since=rng.uniform(0, 100), pinned=i == 0 and rng.random() < 0.3)
                 for i in range(rng.randint(0, 6))]
        lo = rng.randint(0, 3)
        limits = Limits(lo, rng.randint(lo, 6), rng.uniform(0, 50))
        plan = decide([rng.randint(1, 6) for _ in range(rng.randint(0, 5))], nodes, limits, rng.uniform(0, 200))
        by_name = {n.name: n for n in nodes}
        for name in plan.stop:
            assert by_name[name].used == 0 and not by_name[name].pinned
            assert by_name[name].state in ("up", "draining")
        for name in plan.start:
            assert by_name[name].state in ("stopped", "draining")
        active = sum(n.state in ("up", "starting") for n in nodes)
        assert active + sum(by_name[n].state == "stopped" for n in plan.start) <= max(limits.max_nodes, active)
