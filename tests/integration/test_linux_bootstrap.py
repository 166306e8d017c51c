"""The Linux bootstrap's shared-storage script run on the local cluster's nodes through their own sshd:
node0 serves the share with a real smbd, node1 writes and reads it with smbclient (cifs mounts need a kernel
module this container lacks; see tests/cloud/test_aws_samba.py for the mount branch)."""

from __future__ import annotations

import shlex
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpicloud.api import Cluster
from mpicloud.assets import provision_dir
from mpicloud.cluster.connect import endpoint
from mpicloud.transport.ssh import SSHTransport, connect
from tests.conftest import require


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _node(cluster: Cluster, index: int) -> SSHTransport:
    return connect(endpoint(cluster.record, cluster.record.nodes[index]))


def _run(transport: SSHTransport, argv: list[str]) -> str:
    result = transport.run(shlex.join(argv) + " 2>&1", timeout=120)
    output = result.stdout.decode(errors="replace")
    assert result.exit_code == 0, output
    return output


@pytest.fixture()
def share(local_cluster: Cluster, cluster_home: Path) -> Iterator[tuple[Path, int]]:
    """node0 runs provision/linux/shared-storage.sh in server mode; yields (share dir, port)."""
    require("/usr/sbin/smbd", "samba")
    require("smbclient", "smbclient")
    shared = cluster_home / "clusters" / "itest" / "shared"
    work = shared / "bootstrap-test"
    work.mkdir(exist_ok=True)
    script = work / "shared-storage.sh"
    script.write_bytes((provision_dir() / "linux" / "shared-storage.sh").read_bytes())
    (work / "password").write_text("node-smb-pw\n")
    head = local_cluster.record.nodes[0].host
    port = _free_port(head)
    node0 = _node(local_cluster, 0)
    conf = tempfile.mkdtemp(prefix="smb", dir="/tmp")   # smbd's socket paths must stay under 108 characters
    user = _run(node0, ["id", "-un"]).strip()
    serve = shlex.join(["env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "bash", str(script), "server", "--kind", "smb",
                        "--path", str(work / "share"), "--user", user, "--password-file", str(work / "password"),
                        "--conf-dir", conf, "--port", str(port), "--listen", f"{head}/8", "--daemon"])
    _run(node0, ["sh", "-c", f"{serve} || {{ tail -n 20 {conf}/state/log.*; exit 1; }}"])
    try:
        yield work / "share", port
    finally:
        node0.run(f"kill $(cat {conf}/state/pid/smbd.pid); rm -rf {conf}", timeout=30)


def test_head_node_serves_the_share_and_another_node_uses_it(local_cluster: Cluster,
                                                             share: tuple[Path, int]) -> None:
    folder, port = share
    node1 = _node(local_cluster, 1)
    assert _run(node1, ["sh", "-c", "echo $MPICLOUD_NODE"]).strip() == "node1"
    user = _run(node1, ["id", "-un"]).strip()
    scratch = folder.parent
    auth = scratch / "auth"
    auth.write_text(f"username={user}\npassword=node-smb-pw\n")
    auth.chmod(0o600)
    (scratch / "from-node1.txt").write_text("written by node1 over SMB\n")
    head = local_cluster.record.nodes[0].host
    _run(node1, ["smbclient", f"//{head}/shared", "-p", str(port), "-A", str(auth), "-m", "SMB3", "-c",
                 f"put {scratch / 'from-node1.txt'} result.txt; get result.txt {scratch / 'back.txt'}"])
    assert (folder / "result.txt").read_text() == "written by node1 over SMB\n"
    assert (scratch / "back.txt").read_text() == "written by node1 over SMB\n"
