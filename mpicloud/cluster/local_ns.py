"""The local cluster's hooks for namespaced nodes and Slurm, so `local.py` only calls in at fixed points.

Namespaced mode: a host anchor process (root namespaces, for the idle-shutdown `down` run from node0),
the bridge and netns of `netns`, one holder per node that sshd and slurmd enter. Slurm: `slurm_local`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mpicloud.cluster import faults, netns, slurm_local
from mpicloud.cluster.processes import MARKER
from mpicloud.cluster.registry import ClusterRecord
from mpicloud.errors import ClusterError
from mpicloud.spec.model import ClusterSpec


def require(spec: ClusterSpec) -> None:
    """Fail before anything is made when the spec's network mode or scheduler cannot run here."""
    if spec.local_network == "namespaces":
        netns.require_namespaces()
    if spec.scheduler == "slurm":
        slurm_local.require_slurm()


def create_network(spec: ClusterSpec, cluster_id: str, names: list[str]) -> netns.Network | None:
    """The cluster's bridge and namespaces (namespaced mode), else None."""
    if spec.local_network != "namespaces":
        return None
    network = netns.create(netns.tag_of(cluster_id), names)
    faults.point("network")
    return network


def record_fields(spec: ClusterSpec, record_dir: str, cluster_id: str,
                  network: netns.Network | None) -> dict[str, object]:
    """What the cluster record keeps about the network and scheduler (read by `down` and the sessions)."""
    fields: dict[str, object] = {"network": spec.local_network, "scheduler": spec.scheduler}
    if network is not None:
        anchor = subprocess.Popen(["sleep", "infinity"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True,
                                  env={**os.environ, MARKER: cluster_id})
        fields.update(tag=network.tag, subnet=network.subnet, anchor=anchor.pid)
    if spec.scheduler == "slurm":
        fields["slurm_conf"] = str(slurm_layout(record_dir, cluster_id).conf)
    return fields


def run_dir(cluster_id: str) -> Path:
    """The cluster's directory under /run (Slurm's and munged's sockets), removed by `teardown`."""
    return Path("/run") / f"mpicloud-{netns.tag_of(cluster_id)}"


def slurm_layout(record_dir: str, cluster_id: str) -> slurm_local.SlurmLayout:
    """Where the cluster's Slurm files live."""
    return slurm_local.SlurmLayout(Path(record_dir) / "slurm", run_dir(cluster_id))


def host_prefix(record: ClusterRecord) -> list[str]:
    """Argv prefix that runs a command in the host's namespaces (where `down` can delete the bridge)."""
    anchor = record.local.get("anchor")
    return ["nsenter", "-t", str(anchor), "--net", "--uts", "--mount", "--"] if anchor else []


def session_env(record: ClusterRecord) -> dict[str, str]:
    """Variables every SSH session on a node gets (SLURM_CONF for Slurm's commands)."""
    conf = record.local.get("slurm_conf")
    return {"SLURM_CONF": conf} if conf else {}


def start_nodes(record: ClusterRecord, network: netns.Network | None) -> list[list[str] | None]:
    """Start each node's namespace holder; per node, the argv prefix that runs a command inside it."""
    if network is None:
        return [None] * len(record.nodes)
    holders = [netns.start_holder(network, i, record.dir / node.name, {MARKER: record.local["cluster_id"]})
               for i, node in enumerate(record.nodes)]
    record.local["holders"] = holders
    record.save()
    faults.point("holders")
    return [netns.enter(pid) for pid in holders]


def start_scheduler(spec: ClusterSpec, record: ClusterRecord) -> None:
    """Start Slurm (munged, slurmctld on node0, a slurmd per node) when the spec asks for it."""
    if spec.scheduler != "slurm":
        return
    layout = slurm_layout(str(record.dir), record.local["cluster_id"])
    slurm_local.write_config(layout, spec.name, record.nodes, spec.slots_per_node)
    enter = [netns.enter(pid) for pid in record.local["holders"]]
    slurm_local.start(layout, record.nodes, enter, {MARKER: record.local["cluster_id"]})
    faults.point("slurm")


def refuse_restart(record: ClusterRecord) -> None:
    """`start` of a stopped namespaced cluster is not built yet (its network and Slurm would be rebuilt)."""
    if record.local.get("network") == "namespaces":
        raise ClusterError(f"cluster {record.name!r} runs in namespaced mode, which `mpicloud start` cannot restart "
                           f"yet: `mpicloud down {record.name}` (removes its data) and `mpicloud up` again")


def teardown(cluster_id: str, strict: bool = False) -> None:
    """Delete the cluster's namespaces, interfaces (found by its tag) and /run directory; strict: fail if any
    namespace or interface is left."""
    shutil.rmtree(run_dir(cluster_id), ignore_errors=True)
    left = netns.teardown(netns.tag_of(cluster_id)) if os.geteuid() == 0 else []
    if left and strict:
        raise ClusterError(f"namespaces/interfaces {', '.join(left)} would not go away; delete them with "
                           "`ip netns del` / `ip link del`")
