"""The local cluster's hooks for namespaced nodes and Slurm, so `local.py` only calls in at fixed points.

Namespaced mode: a host anchor process (root namespaces, for the idle-shutdown `down` run from node0),
the bridge and netns of `netns`, one holder per node that sshd and slurmd enter. Slurm: `slurm_local`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from mpicloud.cluster import faults, netns, slurm_local
from mpicloud.cluster.processes import MARKER
from mpicloud.cluster.registry import ClusterRecord, Node
from mpicloud.errors import ClusterError
from mpicloud.protocol.atomic import write_text
from mpicloud.render.runner_config import power_conf, power_wrapper, runner_config_json
from mpicloud.spec.model import ClusterSpec


def require(spec: ClusterSpec) -> None:
    """Fail before anything is made when the spec's network mode or scheduler cannot run here."""
    if spec.local_network == "namespaces":
        netns.require_namespaces()
    if spec.scheduler == "slurm":
        slurm_local.require_slurm()


def create_network(spec: ClusterSpec, cluster_id: str, names: list[str]) -> netns.Network | None:
    """The cluster's bridge and the namespaces of the nodes it starts with (namespaced mode), else None; every
    node the spec may have is in the nodes' /etc/hosts."""
    if spec.local_network != "namespaces":
        return None
    network = netns.create(netns.tag_of(cluster_id), spec.node_names, built=len(names))
    faults.point("network")
    return network


def record_fields(spec: ClusterSpec, record_dir: str, cluster_id: str,
                  network: netns.Network | None) -> dict[str, object]:
    """What the cluster record keeps about the network and scheduler (read by `down` and the sessions)."""
    fields: dict[str, object] = {"network": spec.local_network, "scheduler": spec.scheduler}
    if network is not None:
        fields.update(tag=network.tag, subnet=network.subnet, anchor=_start_anchor(cluster_id),
                      hosts=list(network.nodes))
    if spec.scheduler == "slurm":
        fields["slurm_conf"] = str(slurm_layout(record_dir, cluster_id).conf)
    return fields


def _start_anchor(cluster_id: str) -> int:
    """A process that stays in the host's namespaces while the cluster runs: node0's runner enters it to run
    `mpicloud` there (`host_prefix`)."""
    anchor = subprocess.Popen(["sleep", "infinity"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, MARKER: cluster_id})
    return anchor.pid


def run_dir(cluster_id: str) -> Path:
    """The cluster's directory under /run (Slurm's and munged's sockets), removed by `teardown`."""
    return Path("/run") / f"mpicloud-{netns.tag_of(cluster_id)}"


def slurm_layout(record_dir: str, cluster_id: str) -> slurm_local.SlurmLayout:
    """Where the cluster's Slurm files live."""
    return slurm_local.SlurmLayout(Path(record_dir) / "slurm", run_dir(cluster_id))


#: the argv prefix that runs a command in the namespaces of the anchor process, around its PID
ENTER_ANCHOR = (["nsenter", "-t"], ["--net", "--uts", "--mount", "--"])


def host_prefix(record: ClusterRecord) -> list[str]:
    """Argv prefix that runs a command in the host's namespaces (where `down` can delete the bridge)."""
    anchor = record.local.get("anchor")
    return [*ENTER_ANCHOR[0], str(anchor), *ENTER_ANCHOR[1]] if anchor else []


def session_env(record: ClusterRecord) -> dict[str, str]:
    """Variables every SSH session on a node gets (SLURM_CONF for Slurm's commands)."""
    conf = record.local.get("slurm_conf")
    return {"SLURM_CONF": conf} if conf else {}


def start_nodes(record: ClusterRecord, network: netns.Network | None) -> list[list[str] | None]:
    """Start each node's namespace holder; per node, the argv prefix that runs a command inside it."""
    if network is None:
        return [None] * len(record.nodes)
    holders = {node.name: netns.start_holder(network, i, record.dir / node.name, {MARKER: record.local["cluster_id"]})
               for i, node in enumerate(record.nodes)}
    record.local["holders"] = holders
    record.save()
    faults.point("holders")
    return [netns.enter(pid) for pid in holders.values()]


def network_of(record: ClusterRecord, index: int) -> netns.Network:
    """A namespaced cluster's network as `up` made it (host names: the spec's nodes, and node `index`)."""
    hosts = list(record.local["hosts"])
    hosts += [f"node{i}" for i in range(len(hosts), index + 1)]
    return netns.Network(tag=record.local["tag"], subnet=record.local["subnet"], nodes=tuple(hosts))


def node_index(node: str) -> int:
    """A local node's index in its cluster's network (node<i>)."""
    return int(node.removeprefix("node"))


def start_node(record: ClusterRecord, node: str) -> list[str]:
    """Make a compute node's netns, veth and holder (recorded before anything else runs in it); the argv prefix
    that runs a command inside it."""
    index = node_index(node)
    network = network_of(record, index)
    netns.add_node(network, index)
    pid = netns.start_holder(network, index, record.dir / node, {MARKER: record.local["cluster_id"],
                                                                  "MPICLOUD_NODE": node})
    record.local.setdefault("holders", {})[node] = pid
    record.save()
    return netns.enter(pid)


def node_processes(record: ClusterRecord, node: str) -> list[int]:
    """Every process inside a namespaced node (its holder, sshd, slurmd, sessions, jobs)."""
    index = node_index(node)
    return netns.members(network_of(record, index), index)


def members(record: ClusterRecord) -> list[int]:
    """Every process inside any node namespace of the cluster, also those that carry no marker (a Slurm job's
    slurmstepd, which slurmd starts with an environment of its own and leaves to init)."""
    if record.local.get("network") != "namespaces":
        return []
    return [pid for index in range(len(record.local["hosts"])) for pid in node_processes(record, f"node{index}")]


def remove_node(record: ClusterRecord, node: str) -> None:
    """Delete a stopped compute node's netns and veth and forget its holder."""
    index = node_index(node)
    netns.remove_node(network_of(record, index), index)
    if record.local.get("holders", {}).pop(node, None) is not None:
        record.save()


def start_scheduler(spec: ClusterSpec, record: ClusterRecord) -> None:
    """Start Slurm (munged, slurmctld on node0, a slurmd per running node) when the spec asks for it. An elastic
    cluster's compute nodes are Slurm CLOUD nodes, powered up and down by Slurm through `power_programs`; its head
    runs slurmctld and no jobs."""
    if spec.scheduler != "slurm":
        return
    layout = slurm_layout(str(record.dir), record.local["cluster_id"])
    holders = record.local["holders"]
    head, nodes, power = record.nodes[0], list(record.nodes), None
    if spec.elastic:
        network = network_of(record, spec.elastic.max)
        nodes = [Node(f"node{i}", network.address(i), head.port) for i in range(1, spec.elastic.max + 1)]
        power = power_config(spec, record, layout)
    slurm_local.write_config(layout, spec.name, head, nodes, spec.slots_per_node, power)
    running = [n for n in nodes if n.name in holders]
    slurm_local.start(layout, netns.enter(holders[head.name]), running,
                      [netns.enter(holders[n.name]) for n in running], {MARKER: record.local["cluster_id"]})
    faults.point("slurm")


#: Slurm power saving on the local cluster: seconds a node may take to register after its resume (a local node
#: starts in about a second), and to stop after its suspend (before Slurm may resume it again)
RESUME_TIMEOUT, SUSPEND_TIMEOUT = 60, 10
#: seconds a local node whose power-up failed waits before Slurm may try it again (a cloud's default: 300)
RETRY_FAILED_SECONDS = 10


def power_config(spec: ClusterSpec, record: ClusterRecord, layout: slurm_local.SlurmLayout) -> dict[str, object]:
    """slurm.conf's power saving for an elastic spec: wrappers that run slurm_power.py (beside the runner) on the
    runner root, the idle limit in whole seconds (Slurm's unit), `min` nodes kept from being powered down."""
    assert spec.elastic is not None
    script = Path(record.runner).parent / "slurm_power.py"
    programs = {}
    for action in ("resume", "suspend", "prolog"):
        wrapper = layout.root / action
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        wrapper.write_text(power_wrapper([record.python[0], str(script), "--root", record.runner_root], action))
        wrapper.chmod(0o755)
        programs[action] = str(wrapper)
    return power_conf(spec, programs, RESUME_TIMEOUT, SUSPEND_TIMEOUT, str(spec.elastic.max))


def start_node_scheduler(record: ClusterRecord, node: Node, enter: list[str]) -> None:
    """Start a node's slurmd (Slurm clusters)."""
    if record.local.get("slurm_conf"):
        layout = slurm_layout(str(record.dir), record.local["cluster_id"])
        slurm_local.start_slurmd(layout, node.name, enter, {MARKER: record.local["cluster_id"]}, booted=True)


def wait_node_scheduler(record: ClusterRecord, node: Node) -> None:
    """Return once the node's slurmd registered with slurmctld (Slurm clusters)."""
    if record.local.get("slurm_conf"):
        slurm_local.wait_registered(slurm_layout(str(record.dir), record.local["cluster_id"]), node.name)


def restart_nodes(record: ClusterRecord, nodes: list[Node]) -> list[list[str] | None]:
    """A stopped namespaced cluster's network made again as `up` made it (tag, subnet: every node keeps its
    address), a new host anchor (runner.json's commands that entered the old one enter it), a netns and holder
    for each of `nodes`; per node, the argv prefix that runs a command inside it (None: not namespaced)."""
    if record.local.get("network") != "namespaces":
        return [None] * len(nodes)
    netns.create(record.local["tag"], list(record.local["hosts"]), built=0, subnet=record.local["subnet"])
    faults.point("restart.network")
    record.local.update(anchor=_start_anchor(record.local["cluster_id"]), holders={})
    record.save()
    faults.point("restart.anchor")
    _rebase_commands(Path(record.runner_root) / "runner.json", host_prefix(record))
    return [start_node(record, node.name) for node in nodes]


def _rebase_commands(path: Path, new: list[str]) -> None:
    """Rewrite runner.json (atomically) so that every command that entered an anchor (any PID: an earlier
    `start` may have died between recording its anchor and this) begins with `new`."""
    before, after = ENTER_ANCHOR
    size = len(before) + 1 + len(after)

    def rebased(value: Any) -> Any:
        if isinstance(value, list) and value[:len(before)] == before and value[len(before) + 1:size] == after:
            return new + value[size:]
        if isinstance(value, list):
            return [rebased(v) for v in value]
        if isinstance(value, dict):
            return {k: rebased(v) for k, v in value.items()}
        return value
    write_text(path, runner_config_json(rebased(json.loads(path.read_text(encoding="utf-8")))), owner_of=path)


def restart_scheduler(record: ClusterRecord, nodes: list[Node], enters: list[list[str] | None]) -> None:
    """Slurm clusters: munged with a new key, slurmctld in node0 from its saved state, a slurmd in each of
    `nodes` that slurm.conf lists (`slurm_local.start`, restarted)."""
    if not record.local.get("slurm_conf"):
        return
    layout = slurm_layout(str(record.dir), record.local["cluster_id"])
    slurm_local.new_munge_key(layout)
    listed = slurm_local.configured_nodes(layout)
    started = [(n, e) for n, e in zip(nodes, enters, strict=True) if n.name in listed and e is not None]
    head = enters[0]
    assert head is not None  # a Slurm cluster is namespaced
    slurm_local.start(layout, head, [n for n, _ in started], [e for _, e in started],
                      {MARKER: record.local["cluster_id"]}, restarted=True)
    faults.point("restart.slurm")


def teardown(cluster_id: str, strict: bool = False) -> None:
    """Delete the cluster's namespaces, interfaces (found by its tag) and /run directory; strict: fail if any
    namespace or interface is left."""
    shutil.rmtree(run_dir(cluster_id), ignore_errors=True)
    left = netns.teardown(netns.tag_of(cluster_id)) if os.geteuid() == 0 else []
    if left and strict:
        raise ClusterError(f"namespaces/interfaces {', '.join(left)} would not go away; delete them with "
                           "`ip netns del` / `ip link del`")
