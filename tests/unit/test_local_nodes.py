"""Making a local node is idempotent (a start cut short and repeated keeps the node's identity), and node names
coming from the runner's pool are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpicloud.cluster import local, local_nodes
from mpicloud.cluster.registry import ClusterRecord, Node
from mpicloud.errors import ClusterError


def test_node_files_twice_keep_the_host_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPICLOUD_HOME", str(tmp_path))
    record = ClusterRecord(name="c1", provider="local", os="linux", user="u", nodes=[], slots_per_node=1,
                           shared_path="/x", python=["python3"], runner="/x/runner.py",
                           local={"cluster_id": "abc", "ssh_config": str(tmp_path / "ssh_config")})
    node = Node("node3", "127.0.200.4", 22220)
    first = local.node_files(record, node)
    key = (record.dir / "node3" / "ssh_host_ed25519_key").read_bytes()
    assert local.node_files(record, node) == first
    assert (record.dir / "node3" / "ssh_host_ed25519_key").read_bytes() == key
    assert first.startswith("node3,[127.0.200.4]:22220 ssh-ed25519 ")


@pytest.mark.parametrize(("name", "message"), [
    ("node0", "only node1 to node255"), ("node256", "only node1 to node255"), ("node01", "is not a node name"),
    ("../node1", "is not a node name"), ("n1", "is not a node name"), ("node-1", "is not a node name")])
def test_node_names_are_checked(name: str, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        local_nodes.start_node("c1", name)
