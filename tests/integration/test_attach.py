"""Attaching existing clusters: pinned host keys (fingerprint or TOFU), ~/.ssh/config, jump hosts, rekey."""

from __future__ import annotations

import os
from pathlib import Path

from mpicloud.api import Cluster
from tests.conftest import cli


def attach_args(cluster: Cluster) -> list[str]:
    r = cluster.record
    return ["--python", r.python[0], "--runner", r.runner, "--shared", r.shared_path, "--slots", "2"]


def fingerprint_of(cluster: Cluster, node: int = 0) -> str:
    from mpicloud.cluster.keys import load_public
    from mpicloud.transport.hostkeys import fingerprint

    name = cluster.record.nodes[node].name
    return fingerprint(load_public(Path(str(cluster.record.key_file)).parent / name / "ssh_host_ed25519_key"))


def test_attach_with_fingerprint_then_jobs_run(local_cluster: Cluster, home: Path) -> None:
    r = local_cluster.record
    head = r.head
    result = cli("attach", "att", "--host", head.host, "--port", str(head.port), "--user", r.user, "--key",
                 str(r.key_file), "--host-key-fingerprint", fingerprint_of(local_cluster), *attach_args(local_cluster))
    assert result.returncode == 0, result.stderr
    assert "verified against --host-key-fingerprint" in result.stdout
    job = cli("submit", "att", "--", "sh", "-c", "echo $MPICLOUD_NODE")
    assert job.returncode == 0, job.stderr
    waited = cli("wait", "att", job.stdout.split()[-1])
    assert waited.returncode == 0
    again = cli("attach", "att", "--host", head.host, "--port", str(head.port), "--user", r.user, "--key",
                str(r.key_file))
    assert again.returncode == 2 and "already registered" in again.stderr


def test_wrong_fingerprint_registers_nothing(local_cluster: Cluster, home: Path) -> None:
    r = local_cluster.record
    result = cli("attach", "bad", "--host", r.head.host, "--port", str(r.head.port), "--user", r.user, "--key",
                 str(r.key_file), "--host-key-fingerprint", "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert result.returncode == 2 and "not the expected SHA256:AAAA" in result.stderr
    assert not (home / "clusters" / "bad" / "cluster.json").exists()


def test_password_is_never_an_argument(local_cluster: Cluster, home: Path) -> None:
    r = local_cluster.record
    result = cli("attach", "nopw", "--host", r.head.host, "--port", str(r.head.port), "--user", r.user)
    assert result.returncode == 2 and "--password-env VAR" in result.stderr


def test_ssh_config_alias_and_jump_host(local_cluster: Cluster, home: Path, tmp_path: Path) -> None:
    r = local_cluster.record
    head, other = r.nodes[0], r.nodes[1]
    fake_home = tmp_path / "user"
    (fake_home / ".ssh").mkdir(parents=True)
    (fake_home / ".ssh" / "config").write_text(
        f"Host mycluster\n  HostName {head.host}\n  Port {head.port}\n  User {r.user}\n  IdentityFile {r.key_file}\n"
        f"  ProxyJump {r.user}@{other.host}:{other.port}\n")
    env = {"HOME": str(fake_home)}
    result = cli("attach", "viajump", "--host", "mycluster", *attach_args(local_cluster), env=env)
    assert result.returncode == 0, result.stderr
    assert f"pinned {other.host}:{other.port}" in result.stdout and f"pinned {head.host}:{head.port}" in result.stdout
    cluster = Cluster.get("viajump")
    assert cluster.record.jump is not None and cluster.record.jump.host == other.host
    job = cluster.submit(["sh", "-c", "echo via-jump"])
    assert job.wait(60).state == "succeeded" and job.stdout() == "via-jump\n"
    assert os.environ.get("HOME") != str(fake_home)
