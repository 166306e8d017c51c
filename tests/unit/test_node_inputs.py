"""Node-side input code under the nodes' own interpreter (Debian 12's /usr/bin/python3, 3.11.2): archives
unpacked member by member by the one path rule, and the input store's claim refusing a wrong object."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from mpicloud.assets import install_runner
from tests.runnerlib import NODE_PYTHON

UNPACK = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import runner
try:
    runner.unpack(Path(sys.argv[2]), Path(sys.argv[3]))
except RuntimeError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_runner(tmp_path_factory.mktemp("node") / "runner").parent


def _unpack(node_dir: Path, archive: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    dest.mkdir(exist_ok=True)
    return subprocess.run([NODE_PYTHON, "-c", UNPACK, str(node_dir), str(archive), str(dest)], capture_output=True,
                          text=True, timeout=60)


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, link, mode, len(data)
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


def _tar(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for info, data in members:
            tf.addfile(info, data)
    return path


def test_node_python_is_the_debian_one() -> None:
    version = subprocess.run([NODE_PYTHON, "-c", "import sys; print(sys.version_info[:3])"], capture_output=True,
                             text=True, check=True).stdout
    assert version.strip() == "(3, 11, 2)"


def test_ordinary_tar_unpacks_on_the_node_interpreter(node_dir: Path, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar.gz", [
        _member("./build/", tarfile.DIRTYPE), _member("./build/a.txt", data=b"A"),
        _member("build/run.sh", data=b"#!/bin/sh\n", mode=0o4755), _member("build/copy.txt", tarfile.LNKTYPE,
                                                                            link="build/a.txt"),
        _member("build/latest", tarfile.SYMTYPE, link="a.txt"), _member("link-dir", tarfile.SYMTYPE, link="build"),
        _member("link-dir/through.txt", data=b"T"),
    ])
    dest = tmp_path / "work"
    result = _unpack(node_dir, archive, dest)
    assert result.returncode == 0, result.stderr
    assert (dest / "build" / "a.txt").read_bytes() == b"A" == (dest / "build" / "copy.txt").read_bytes()
    assert stat.S_IMODE((dest / "build" / "run.sh").stat().st_mode) == 0o755  # setuid dropped, x kept
    assert (dest / "build" / "latest").is_symlink() and (dest / "build" / "latest").read_bytes() == b"A"
    assert (dest / "build" / "through.txt").read_bytes() == b"T"


def test_tar_zst_streams_member_by_member(node_dir: Path, tmp_path: Path) -> None:
    zstd = shutil.which("zstd")
    assert zstd, "zstd is missing: install the Debian package zstd (scripts/install-sysdeps.sh)"
    plain = _tar(tmp_path / "x.tar", [_member("d/f.txt", data=b"zst"), _member("d/g", tarfile.LNKTYPE, link="d/f.txt")])
    subprocess.run([zstd, "-q", str(plain), "-o", str(tmp_path / "x.tar.zst")], check=True)
    dest = tmp_path / "work"
    result = _unpack(node_dir, tmp_path / "x.tar.zst", dest)
    assert result.returncode == 0, result.stderr
    assert (dest / "d" / "f.txt").read_bytes() == b"zst" == (dest / "d" / "g").read_bytes()


HOSTILE_TAR = {
    "dotdot": [_member("../escaped", data=b"x")],
    "nested-dotdot": [_member("a/../../escaped", data=b"x")],
    "absolute": [_member("/ESCAPE/escaped", data=b"x")],
    "backslash": [_member("..\\escaped", data=b"x")],
    "drive": [_member("C:/escaped", data=b"x")],
    "symlink-out": [_member("out", tarfile.SYMTYPE, link="/ESCAPE"), _member("out/escaped", data=b"x")],
    "symlink-up": [_member("out", tarfile.SYMTYPE, link="../"), _member("out/escaped", data=b"x")],
    "hardlink-out": [_member("escaped", tarfile.LNKTYPE, link="/etc/passwd")],
    "fifo": [_member("pipe", tarfile.FIFOTYPE)],
    "device": [_member("zero", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TAR))
def test_hostile_tar_members_are_refused_and_nothing_escapes(node_dir: Path, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [(info.replace(name=info.name.replace("/ESCAPE", str(outside)),
                             linkname=info.linkname.replace("/ESCAPE", str(outside))), data)
               for info, data in HOSTILE_TAR[case]]
    archive = _tar(tmp_path / "bad.tar", members)
    dest = outside / "work"
    result = _unpack(node_dir, archive, dest)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "archive member" in result.stderr and "Traceback" not in result.stderr
    assert not list(outside.glob("escaped")) and not (tmp_path / "escaped").exists()
    assert not any(p.name in ("escaped", "pipe", "zero") for p in dest.rglob("*"))


@pytest.mark.parametrize("name", ["../escaped", "/ESCAPE/escaped", "a/../../escaped", "..\\escaped"])
def test_hostile_zip_members_are_refused(node_dir: Path, tmp_path: Path, name: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(name.replace("/ESCAPE", str(tmp_path)), "x")
    result = _unpack(node_dir, archive, tmp_path / "work")
    assert result.returncode == 3 and "archive member" in result.stderr, result.stderr
    assert not (tmp_path / "escaped").exists()


def test_a_zip_symlink_leading_out_is_refused(node_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("passwd")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    result = _unpack(node_dir, archive, tmp_path / "work")
    assert result.returncode == 3 and "outside the work dir" in result.stderr


def _claim(node_dir: Path, store: Path, digest: str, size: int) -> subprocess.Popen[str]:
    return subprocess.Popen([NODE_PYTHON, str(node_dir / "transfer.py"), "claim", str(store), digest,
                             f"--length={size}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_claim_refuses_an_object_whose_bytes_do_not_match(node_dir: Path, tmp_path: Path) -> None:
    data = b"the right bytes"
    digest = hashlib.sha256(data).hexdigest()
    store = tmp_path / "store"
    proc = _claim(node_dir, store, digest, len(data))
    assert proc.stdout is not None and proc.stdin is not None
    part = proc.stdout.readline().split()
    assert part[0] == "part"
    (store / part[1]).write_bytes(b"the wrong bytes")  # same size, other content
    out, _ = proc.communicate("commit\n", timeout=30)
    assert proc.returncode == 3 and out.startswith("refused")
    assert not (store / digest).exists() and not (store / part[1]).exists()
    again = _claim(node_dir, store, digest, len(data))
    assert again.stdout is not None
    name = again.stdout.readline().split()[1]
    (store / name).write_bytes(data)
    out, _ = again.communicate("commit\n", timeout=30)
    assert out == "stored\n" and (store / digest).read_bytes() == data
    assert sorted(p.name for p in store.iterdir()) == [digest]
    have = subprocess.run([NODE_PYTHON, str(node_dir / "transfer.py"), "claim", str(store), digest,
                           f"--length={len(data)}"], input="", capture_output=True, text=True, timeout=30)
    assert have.stdout == "have\n"


def test_claim_refuses_a_name_that_is_not_a_digest(node_dir: Path, tmp_path: Path) -> None:
    bad = subprocess.run([NODE_PYTHON, str(node_dir / "transfer.py"), "claim", str(tmp_path), "../../x",
                          "--length=1"], input="", capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "not a SHA-256" in bad.stderr
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == "[]"
