"""Attaching existing clusters: pinned host keys (fingerprint or TOFU), ~/.ssh/config, jump hosts, rekey."""

from __future__ import annotations

import os
import subprocess
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


def _attach_argv(cluster: Cluster, name: str, *extra: str) -> list[str]:
    r = cluster.record
    return ["attach", name, "--host", r.head.host, "--port", str(r.head.port), "--user", r.user, "--key",
            str(r.key_file), *attach_args(cluster), *extra]


def _attach(cluster: Cluster, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(*_attach_argv(cluster, name, *extra))


def test_down_of_attached_cluster_says_it_still_runs(local_cluster: Cluster, home: Path) -> None:
    assert _attach(local_cluster, "billed").returncode == 0
    down = cli("down", "billed")
    assert down.returncode == 0
    assert "forgotten locally" in down.stdout and "STILL RUNNING" in down.stdout
    assert "pulumi destroy" in down.stdout and "is down" not in down.stdout
    assert not (home / "clusters" / "billed").exists()


def test_rekey_with_wrong_fingerprint_keeps_the_pinned_keys(local_cluster: Cluster, home: Path) -> None:
    assert _attach(local_cluster, "pinned", "--host-key-fingerprint", fingerprint_of(local_cluster)).returncode == 0
    known = home / "clusters" / "pinned" / "known_hosts"
    before = known.read_text()
    refused = _attach(local_cluster, "pinned", "--rekey", "--host-key-fingerprint",
                      "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert refused.returncode == 2 and "not the expected" in refused.stderr
    assert known.read_text() == before
    assert not (home / "clusters" / "pinned" / "known_hosts.new").exists()
    assert cli("jobs", "pinned").returncode == 0  # still usable


def test_rekey_of_a_local_cluster_is_refused(local_cluster: Cluster, cluster_home: Path) -> None:
    env = {"MPICLOUD_HOME": str(cluster_home)}
    record = cluster_home / "clusters" / "itest" / "cluster.json"
    before = record.read_text()
    refused = cli(*_attach_argv(local_cluster, "itest", "--rekey"), env=env)
    assert refused.returncode == 2 and "is a local cluster" in refused.stderr
    assert record.read_text() == before
    assert cli("jobs", "itest", env=env).returncode == 0


def test_down_closes_only_its_own_connections(local_cluster: Cluster, home: Path) -> None:
    assert _attach(local_cluster, "first").returncode == 0
    assert _attach(local_cluster, "second").returncode == 0
    first, second = Cluster.get("first"), Cluster.get("second")
    mine, other = first.queue.transport, second.queue.transport
    first.down()
    assert not mine.alive
    assert other.alive and Cluster.get("second").queue.transport is other
