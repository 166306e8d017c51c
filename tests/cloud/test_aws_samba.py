"""provision/linux/shared-storage.sh for real: a private smbd on 127.0.93.1 serves the share it configured,
and smbclient writes and reads a file there with the credentials the script set up. The client branch runs
too, with stand-in `mount`/`findmnt`/`systemctl` (this container has no cifs kernel module: `mount -t cifs` fails
with "No such device"): its exact fstab line is checked, and the credentials file it writes logs in with smbclient.

What is verified for real about programs on the share: a file a worker creates over SMB3 (smbclient, the same
protocol and server config the cifs client uses) gets mode 0775 on the head node's disk, so it runs there; the
client's `file_mode=0775` (every file shows executable on workers) is checked as text only, because the kernel
cifs client cannot run here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpicloud.assets import provision_dir
from tests.conftest import require

ADDRESS = "127.0.93.1"
SCRIPT = provision_dir() / "linux" / "shared-storage.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((ADDRESS, 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((ADDRESS, port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"smbd did not listen on {ADDRESS}:{port}")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, int, Path]]:
    """Run the script in server mode with a private config; yield (share dir, port, state dir)."""
    require("/usr/sbin/smbd", "samba")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "password").write_text("s3cret-pw")
    conf, share, port = tmp_path / "conf", tmp_path / "share", _free_port()
    conf.mkdir()
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    subprocess.run(["bash", str(SCRIPT), "server", "--kind", "smb", "--path", str(share), "--user", user,
                    "--password-file", str(tmp_path / "password"), "--conf-dir", str(conf), "--port", str(port),
                    "--listen", f"{ADDRESS}/8", "--daemon"], check=True, env=env, timeout=60)
    pidfile = conf / "state" / "pid" / "smbd.pid"
    try:
        _wait_listening(port)
        yield share, port, tmp_path
    finally:
        if pidfile.is_file():
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


def _smbclient(port: int, auth: Path, commands: str) -> subprocess.CompletedProcess[str]:
    program = require("smbclient", "smbclient")
    return subprocess.run([program, f"//{ADDRESS}/shared", "-p", str(port), "-A", str(auth), "-m", "SMB3",
                           "-c", commands], capture_output=True, text=True, timeout=60)


def _auth(path: Path, user: str, password: str) -> Path:
    path.write_text(f"username={user}\npassword={password}\n")
    path.chmod(0o600)
    return path


def test_samba_share_is_writable_and_readable_with_the_scripts_credentials(served: tuple[Path, int, Path]) -> None:
    share, port, tmp = served
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp / "in.txt").write_text("hello from the head node\n")
    done = _smbclient(port, _auth(tmp / "auth", user, "s3cret-pw"),
                      f"put {tmp / 'in.txt'} result.txt; get result.txt {tmp / 'out.txt'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (share / "result.txt").read_text() == "hello from the head node\n"
    assert (tmp / "out.txt").read_text() == "hello from the head node\n"
    conf = (tmp / "conf" / "smb.conf").read_text()
    assert f"smb ports = {port}" in conf and "bind interfaces only = yes" in conf


def test_samba_share_rejects_a_wrong_password(served: tuple[Path, int, Path]) -> None:
    _, port, tmp = served
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    done = _smbclient(port, _auth(tmp / "bad", user, "wrong"), "ls")
    assert done.returncode != 0
    assert "LOGON_FAILURE" in done.stdout + done.stderr


def test_script_refuses_bad_arguments(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "server", "--kind", "smb"], capture_output=True, text=True)
    assert done.returncode == 2 and "--user is required" in done.stderr
    done = subprocess.run(["bash", str(SCRIPT), "server", "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option" in done.stderr


MOUNT = """#!/bin/bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
[ "$(basename "$0")" != findmnt ]
"""


def test_client_branch_writes_fstab_and_credentials_that_log_in(served: tuple[Path, int, Path]) -> None:
    share, port, tmp = served
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    root, bin_dir = tmp / "client", tmp / "bin"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "fstab").write_text("# fstab\n")
    bin_dir.mkdir()
    for name in ("mount", "findmnt", "systemctl"):
        (bin_dir / name).write_text(MOUNT)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MPICLOUD_SYSROOT": str(root),
           "FAKE_LOG": str(tmp / "mount.log")}
    argv = ["bash", str(SCRIPT), "client", "--kind", "smb", "--path", str(tmp / "mnt"), "--user", user,
            "--password-file", str(tmp / "password"), "--server", ADDRESS, "--port", str(port)]
    for _ in range(2):  # a second run (reboot) adds no second fstab line
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
    cred = root / "etc" / "mpicloud" / "smb-credentials"
    fstab = (root / "etc" / "fstab").read_text().splitlines()
    assert fstab[1:] == [f"//{ADDRESS}/shared {tmp / 'mnt'} cifs vers=3.1.1,port={port},credentials={cred},"
                         f"uid={os.getuid()},gid={os.getgid()},file_mode=0775,dir_mode=0775,nobrl,_netdev,nofail,"
                         "x-systemd.automount,x-systemd.mount-timeout=30s,x-systemd.requires=network-online.target 0 0"]
    assert cred.stat().st_mode & 0o777 == 0o600
    log = (tmp / "mount.log").read_text()
    assert f"mount {tmp / 'mnt'}" in log and "systemctl daemon-reload" in log
    # while nothing is mounted, the mount point refuses writes (a job never writes to a bare local directory)
    with pytest.raises(PermissionError):
        (tmp / "mnt" / "lost.txt").write_text("x")
    subprocess.run(["chattr", "-i", str(tmp / "mnt")], check=True)
    (tmp / "from-worker.txt").write_text("written by a worker\n")
    done = _smbclient(port, cred, f"put {tmp / 'from-worker.txt'} w.txt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (share / "w.txt").read_text() == "written by a worker\n"


def test_files_written_over_smb_are_executable_on_the_head_node(served: tuple[Path, int, Path]) -> None:
    share, port, tmp = served
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp / "run.sh").write_text("#!/bin/sh\necho ran\n")
    done = _smbclient(port, _auth(tmp / "auth", user, "s3cret-pw"), f"mkdir sub; put {tmp / 'run.sh'} sub/run.sh")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (share / "sub" / "run.sh").stat().st_mode & 0o777 == 0o775
    assert (share / "sub").stat().st_mode & 0o777 == 0o775
    assert subprocess.run([str(share / "sub" / "run.sh")], capture_output=True, text=True).stdout == "ran\n"
