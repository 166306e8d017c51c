"""SSH to the real local cluster through real proxies: squid (Basic, Digest, NTLM) and dante (SOCKS5)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from mpicloud.api import Cluster
from mpicloud.cluster.connect import AttachRequest
from mpicloud.cluster.registry import ProxySettings
from mpicloud.errors import ConnectError
from mpicloud.transport.ssh import close_all
from tests.conftest import cli
from tests.integration.proxies import dante, squid

USER, PASSWORD = "proxyuser", "S3cret-proxy-pw"


def attach_through(cluster: Cluster, name: str, proxy: ProxySettings) -> Cluster:
    r = cluster.record
    attached, _ = Cluster.attach(AttachRequest(
        name=name, host=r.head.host, port=r.head.port, user=r.user, key_file=r.key_file, shared_path=r.shared_path,
        python=r.python, runner=r.runner, proxy=proxy))
    return attached


def run_job(cluster: Cluster) -> str:
    job = cluster.submit(["sh", "-c", "echo through-the-proxy $MPICLOUD_NODE"])
    assert job.wait(60).state == "succeeded"
    return job.stdout()


@pytest.mark.parametrize("scheme", ["basic", "digest", "ntlm"])
def test_http_connect_with_auth(local_cluster: Cluster, home: Path, tmp_path: Path, scheme: str,
                                monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PROXY_PW", PASSWORD)
    caplog.set_level(logging.DEBUG)
    with squid(scheme, USER, PASSWORD) as port:
        cluster = attach_through(local_cluster, f"via-{scheme}",
                                 ProxySettings(f"http://127.0.0.1:{port}", USER, "PROXY_PW"))
        assert run_job(cluster) == "through-the-proxy node0\n"
        close_all()
    assert PASSWORD not in caplog.text


def test_wrong_password_names_the_offered_schemes(local_cluster: Cluster, home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_PW", "not-the-password")
    with squid("basic", USER, PASSWORD) as port:
        with pytest.raises(ConnectError) as caught:
            attach_through(local_cluster, "badpw", ProxySettings(f"http://127.0.0.1:{port}", USER, "PROXY_PW"))
        message = str(caught.value)
        assert "rejected the basic credentials" in message and "offered: basic" in message
        assert "not-the-password" not in message
        monkeypatch.delenv("PROXY_PW")
        result = cli("attach", "nocreds", "--host", local_cluster.record.head.host, "--port",
                     str(local_cluster.record.head.port), "--user", local_cluster.record.user, "--key",
                     str(local_cluster.record.key_file), "--proxy", f"http://127.0.0.1:{port}")
        assert result.returncode == 2 and "asks for authentication (407)" in result.stderr
        assert "offered: basic" in result.stderr and "Traceback" not in result.stderr


def test_socks5_without_and_with_password(local_cluster: Cluster, home: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with dante(tmp_path / "open", "none") as port:
        cluster = attach_through(local_cluster, "socks-open", ProxySettings(f"socks5://127.0.0.1:{port}"))
        assert run_job(cluster) == "through-the-proxy node0\n"
        close_all()
    if os.geteuid() != 0:
        pytest.skip("dante's username method checks system accounts; creating one needs root (CI runs as root)")
    subprocess.run(["useradd", "-M", USER], capture_output=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
    monkeypatch.setenv("PROXY_PW", PASSWORD)
    with dante(tmp_path / "auth", "username") as port:
        cluster = attach_through(local_cluster, "socks-auth", ProxySettings(f"socks5://127.0.0.1:{port}", USER,
                                                                            "PROXY_PW"))
        assert run_job(cluster) == "through-the-proxy node0\n"
        close_all()
        monkeypatch.setenv("PROXY_PW", "wrong")
        with pytest.raises(ConnectError, match=r"SOCKS proxy socks5://127\.0\.0\.1"):
            attach_through(local_cluster, "socks-bad", ProxySettings(f"socks5://127.0.0.1:{port}", USER,
                                                                     "PROXY_PW"))


def test_jump_host_through_an_http_proxy(local_cluster: Cluster, home: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_PW", PASSWORD)
    r = local_cluster.record
    other = r.nodes[1]
    with squid("basic", USER, PASSWORD) as port:
        cluster, notes = Cluster.attach(AttachRequest(
            name="proxy-jump", host=r.head.host, port=r.head.port, user=r.user, key_file=r.key_file,
            shared_path=r.shared_path, python=r.python, runner=r.runner, jump=f"{r.user}@{other.host}:{other.port}",
            proxy=ProxySettings(f"http://127.0.0.1:{port}", USER, "PROXY_PW")))
        assert len(notes) == 2
        assert run_job(cluster) == "through-the-proxy node0\n"
        close_all()
