"""A running local cluster's compute nodes started and stopped one at a time (the runner's or Slurm's node actions).

`start_node` makes a node that never existed (address, host key, sshd config, the nodes' ssh_config and
known_hosts) and starts its sshd; `stop_node` ends its sshd and every session on it and keeps its files, so a
node started again is the same node. A namespaced node also gets its netns, veth into the cluster's bridge and
holder (recorded in the cluster record, found by `down` from the cluster's tag) and, with Slurm, its slurmd,
which must register with slurmctld; stopping it ends every process in its namespace and deletes the netns.
Both are idempotent, so a runner or Slurm that repeats them does no harm.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpicloud.cluster import local, local_ns, registry
from mpicloud.cluster.processes import MARKER, alive, matching_processes, stop_processes
from mpicloud.cluster.registry import ClusterRecord, Node
from mpicloud.errors import ClusterError
from mpicloud.protocol.pool import MAX_NODES
from mpicloud.render.templating import render_template


@contextmanager
def _locked(name: str) -> Iterator[ClusterRecord]:
    """The cluster's record, under a lock: node actions run side by side and all edit the same files."""
    with open(registry.cluster_dir(name) / "nodes.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield registry.load(name)


def _index(node: str) -> int:
    if not node.startswith("node") or not node[4:].isdigit() or node[4:] != str(int(node[4:])):
        raise ClusterError(f"{node!r} is not a node name of a local cluster (node1, node2, ...)")
    index = int(node[4:])
    if not 1 <= index <= MAX_NODES:
        raise ClusterError(f"{node}: only node1 to node{MAX_NODES} can be started or stopped (node0 is the head)")
    return index


def _check(record: ClusterRecord) -> None:
    if record.provider != "local":
        raise ClusterError(f"cluster {record.name!r}: nodes are started and stopped one by one on local clusters "
                           "only")


def _namespaced(record: ClusterRecord) -> bool:
    return record.local.get("network") == "namespaces"


def _ensure(record: ClusterRecord, node: str) -> Node:
    """The node's record entry, made with its files when the cluster never had it."""
    known = {n.name: n for n in record.nodes}
    if node in known:
        return known[node]
    head = record.nodes[0]
    host = (local_ns.network_of(record, _index(node)).address(_index(node)) if _namespaced(record)
            else str(ipaddress.IPv4Address(head.host) + _index(node)))
    made = Node(name=node, host=host, port=head.port)
    if not _namespaced(record) and not local._port_free(made.host, made.port):
        raise ClusterError(f"cannot add {node}: port {made.port} on {made.host} is taken by another process")
    line = local.node_files(record, made)
    known_hosts = record.dir / "known_hosts_nodes"
    if line not in known_hosts.read_text(encoding="utf-8").splitlines(keepends=True):  # once, also after a crash
        with open(known_hosts, "a", encoding="utf-8") as hosts:
            hosts.write(line)
    record.nodes = sorted([*record.nodes, made], key=lambda n: _index(n.name) if n.name != head.name else 0)
    ssh_config = Path(record.local["ssh_config"])
    tmp = ssh_config.with_name(f".{ssh_config.name}.tmp")
    tmp.write_text(render_template("local/ssh_config.j2", nodes=record.nodes, user=record.user,
                                   identity=record.key_file, known_hosts=record.dir / "known_hosts_nodes"))
    os.replace(tmp, ssh_config)
    record.save()
    return made


def start_node(name: str, node: str) -> None:
    """Start a compute node of a running local cluster (made first if it never existed); returns once its
    sshd answers."""
    _index(node)
    with _locked(name) as record:
        _check(record)
        made = _ensure(record, node)
        if not node_pids(record, node):
            enter = local_ns.start_node(record, node) if _namespaced(record) else None
            local._spawn_sshd(record, made, record.local["cluster_id"], enter)
            if enter is not None:
                local_ns.start_node_scheduler(record, made, enter)
    local._wait_ready(record, nodes=[made])
    local_ns.wait_node_scheduler(record, made)


def stop_node(name: str, node: str, grace: float = 3.0) -> None:
    """Stop a compute node: its sshd and everything running in its sessions (TERM, then KILL), a namespaced
    node's slurmd, holder and netns too; files kept."""
    _index(node)
    with _locked(name) as record:
        _check(record)
        left = stop_processes(lambda: node_pids(record, node), grace)
        if left:
            raise ClusterError(f"{node}: processes {', '.join(map(str, left))} would not stop")
        if _namespaced(record):
            local_ns.remove_node(record, node)


def node_pids(record: ClusterRecord, node: str) -> list[int]:
    """The node's sshd, everything below it, and its sessions' processes (their environment names the cluster
    and the node); a namespaced node's every process in its namespace."""
    markers = {f"{MARKER}={record.local['cluster_id']}".encode(), f"MPICLOUD_NODE={node}".encode()}
    found = matching_processes(markers, str(record.dir / node / "sshd_config").encode())
    inside = local_ns.node_processes(record, node) if _namespaced(record) else []
    return alive(sorted(set(found) | set(inside)))
