"""Password authentication against a real sshd (as Windows clusters use), and a wrong password's error."""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpicloud.cluster.keys import generate_keypair, load_public
from mpicloud.errors import ConnectError
from mpicloud.secret import Secret
from mpicloud.transport.hostkeys import pin_host_key
from mpicloud.transport.ssh import Endpoint, SSHTransport
from tests.conftest import require

USER = "mpicloud-test"
ADDRESS = "127.0.96.1"


@pytest.fixture()
def password_sshd(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    if os.geteuid() != 0:
        pytest.skip("creating a test account with a password needs root (CI runs as root)")
    sshd = require("/usr/sbin/sshd", "openssh-server")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", USER], check=True)
    password = "Pw-" + secrets.token_hex(8)
    subprocess.run(["chpasswd"], input=f"{USER}:{password}\n", text=True, check=True)
    with socket.socket() as probe:
        probe.bind((ADDRESS, 0))
        port = probe.getsockname()[1]
    key = tmp_path / "host_key"
    generate_keypair(key, "pw-test")
    config = tmp_path / "sshd_config"
    config.write_text(f"ListenAddress {ADDRESS}:{port}\nHostKey {key}\nPidFile {tmp_path}/pid\nUsePAM no\n"
                      f"PasswordAuthentication yes\nPubkeyAuthentication no\nAllowUsers {USER}\nLogLevel ERROR\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)])
    known = tmp_path / "known_hosts"
    pin_host_key(known, ADDRESS, port, load_public(key))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((ADDRESS, port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.05)
    try:
        yield port, password, known
    finally:
        proc.terminate()
        proc.wait()


def test_password_login_runs_commands(password_sshd: tuple[int, str, Path]) -> None:
    port, password, known = password_sshd
    endpoint = Endpoint(host=ADDRESS, port=port, user=USER, known_hosts=known, password=Secret(password))
    transport = SSHTransport(endpoint)
    try:
        assert transport.run("id -un").text.strip() == USER
    finally:
        transport.close()
    assert password not in repr(endpoint)


def test_wrong_password_is_one_clear_error(password_sshd: tuple[int, str, Path]) -> None:
    port, password, known = password_sshd
    endpoint = Endpoint(host=ADDRESS, port=port, user=USER, known_hosts=known, password=Secret("wrong-" + password))
    with pytest.raises(ConnectError) as caught:
        SSHTransport(endpoint)
    assert "rejected the login (password)" in str(caught.value)
    assert password not in str(caught.value)
