"""Real proxy servers for the tests: squid (Basic, Digest, NTLM fake) and dante (SOCKS5)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require

SQUID_AUTH = {
    "basic": "auth_param basic program /usr/lib/squid/basic_ncsa_auth {dir}/passwd\nauth_param basic realm mpicloud\n",
    "digest": "auth_param digest program /usr/lib/squid/digest_file_auth {dir}/digest\n"
              "auth_param digest realm mpicloud\n",
    "ntlm": "auth_param ntlm program /usr/lib/squid/ntlm_fake_auth\nauth_param ntlm children 2\n",
}


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server the tests started (by its PID): TERM, then KILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"proxy did not start: {log.read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.1)


@contextmanager
def squid(scheme: str, user: str, password: str) -> Iterator[int]:
    """A squid on 127.0.0.1 that requires `scheme` authentication and allows CONNECT to any port."""
    binary = require("/usr/sbin/squid", "squid")
    workdir = Path(tempfile.mkdtemp(prefix="mpicloud-squid-"))  # squid's helpers run as `proxy`: must read it
    workdir.chmod(0o755)
    hashed = subprocess.run(["openssl", "passwd", "-1", password], capture_output=True, text=True,
                            check=True).stdout.strip()
    (workdir / "passwd").write_text(f"{user}:{hashed}\n")
    (workdir / "digest").write_text(f"{user}:{password}\n")
    port = free_port()
    config = workdir / "squid.conf"
    config.write_text(
        f"http_port 127.0.0.1:{port}\npid_filename {workdir}/squid.pid\ncache deny all\n"
        f"access_log none\ncache_log {workdir}/cache.log\ncoredump_dir {workdir}\nshutdown_lifetime 0 seconds\n"
        f"cache_effective_user {'proxy' if os.geteuid() == 0 else os.environ.get('USER', 'nobody')}\n"
        + SQUID_AUTH[scheme].format(dir=workdir)
        + "acl authed proxy_auth REQUIRED\nhttp_access allow authed\nhttp_access deny all\n")
    if os.geteuid() == 0:
        shutil.chown(workdir, "proxy")
    for path in workdir.iterdir():
        path.chmod(0o644)
    proc = subprocess.Popen([binary, "-N", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, workdir / "cache.log")
        yield port
    finally:
        end_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def dante(workdir: Path, method: str) -> Iterator[int]:
    """A dante SOCKS5 server on 127.0.0.1 (`none`, or `username` checked against the system's accounts)."""
    binary = require("/usr/sbin/danted", "dante-server")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "danted.conf"
    config.write_text(
        f"logoutput: {workdir}/danted.log\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n"
        f"socksmethod: {method}\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
        "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
        "socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 }\n")
    proc = subprocess.Popen([binary, "-f", str(config), "-p", str(workdir / "danted.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    (workdir / "danted.log").touch()
    try:
        wait_port(port, proc, workdir / "danted.log")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
