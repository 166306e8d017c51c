"""The node-side transfer helper under the nodes' own interpreter: what it lists, refuses and sends for
hostile work dirs (links out, fifos, non-UTF-8 names, names that look like options, growing files)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from mpicloud.assets import install_runner
from mpicloud.protocol.transfer import CHANGED, FRAME, MANIFEST, MARK_EVERY, SKIPPED
from tests.runnerlib import NODE_PYTHON


@pytest.fixture()
def helper(tmp_path: Path) -> Path:
    return install_runner(tmp_path / "opt").with_name("transfer.py")


def frames(stream: bytes) -> list[tuple[str, bytes]]:
    """Decode an uncompressed pack stream, checking each frame's SHA-256."""
    out, at = [], 0
    while True:
        length, size = struct.unpack_from(FRAME, stream, at)
        at += struct.calcsize(FRAME)
        if length == 0:
            return out
        name = stream[at:at + length].decode()
        data = stream[at + length:at + length + size]
        assert hashlib.sha256(data).digest() == stream[at + length + size:at + length + size + 32]
        out.append((name, data))
        at += length + size + 32


def run(helper: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([NODE_PYTHON, "-I", "-S", str(helper), *args], input=stdin, capture_output=True,
                          timeout=60, check=False)


def test_pack_lists_links_as_links_and_names_what_it_skips(helper: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "d").mkdir(parents=True)
    (work / "d" / "x.txt").write_text("x\n")
    (work / "-big.bin").write_bytes(b"b" * 100)
    os.symlink("d/x.txt", work / "in")
    os.symlink("d", work / "dirlink")
    os.symlink("/etc/passwd", work / "out")
    os.symlink("d/../../elsewhere", work / "escape")
    os.mkfifo(work / "fifo")
    (work / os.fsdecode(b"bad\xff")).write_text("?")
    (work / "a:b").write_text("colon")
    done = run(helper, "pack", "--compress=none", "--exclude=*.skipme", "--", str(work), stdin=b'{"have": {}}')
    assert done.returncode == 0, done.stderr
    got = frames(done.stdout)
    assert got[0][0] == MANIFEST and got[-1] == (SKIPPED, b"[]")
    listing = json.loads(got[0][1])
    assert [f["path"] for f in listing["files"]] == ["-big.bin", "d/x.txt"]
    assert {(link["path"], link["target"]) for link in listing["links"]} == {("in", "d/x.txt"), ("dirlink", "d")}
    assert {s["path"] for s in listing["skipped"]} == {"out", "escape", "fifo", "bad\\xff", "a:b"}
    assert dict(got[1:-1]) == {"-big.bin": b"b" * 100, "d/x.txt": b"x\n"}


def test_send_takes_option_like_names_and_refuses_changed_or_special_files(helper: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "--offset=0").write_bytes(b"0123456789")
    st = (work / "--offset=0").stat()
    sent = run(helper, "send", "--offset=2", "--length=5", f"--size={st.st_size}", f"--mtime={st.st_mtime_ns}",
               "--", str(work), "--offset=0")
    assert sent.returncode == 0 and sent.stdout == b"23456"
    assert sent.stderr.decode().strip() == f"sha256 {hashlib.sha256(b'23456').hexdigest()}"
    stale = run(helper, "send", "--offset=0", "--length=5", f"--size={st.st_size - 1}", f"--mtime={st.st_mtime_ns}",
                "--", str(work), "--offset=0")
    assert stale.returncode == CHANGED and stale.stdout == b""
    os.mkfifo(work / "fifo")
    fifo = run(helper, "send", "--offset=0", "--length=5", "--", str(work), "fifo")  # would block if opened
    assert fifo.returncode == 2 and b"not a regular file" in fifo.stderr


def test_recv_marks_its_progress_and_a_retry_sends_only_the_rest(helper: Path, tmp_path: Path) -> None:
    data = os.urandom(3 * MARK_EVERY + 12345)
    part, mark = tmp_path / "obj.part", tmp_path / "obj.r0"
    cut = run(helper, "recv", str(part), "--offset=0", f"--length={len(data)}", f"--mark={mark}",
              stdin=data[:2 * MARK_EVERY + 999])  # the uploader dies 999 bytes into the third chunk
    assert cut.returncode == 3 and b"bytes missing" in cut.stderr
    assert mark.read_text() == str(2 * MARK_EVERY)
    done = int(mark.read_text())
    rest = run(helper, "recv", str(part), "--offset=0", f"--length={len(data)}", f"--skip={done}",
               f"--mark={mark}", stdin=data[done:])
    assert rest.returncode == 0 and rest.stdout.decode() == f"sha256 {hashlib.sha256(data[done:]).hexdigest()}\n"
    assert part.read_bytes() == data and not mark.exists()
