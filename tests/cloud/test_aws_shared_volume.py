"""provision/linux/shared-volume.sh for real on a loop device: the head node's /shared lives on its own volume,
formatted only when it holds no file system at all, and a second boot (or a replaced head node that gets the
same volume) mounts the data that is there instead of formatting it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpicloud.assets import provision_dir

SCRIPT = provision_dir() / "linux" / "shared-volume.sh"


@pytest.fixture()
def device(tmp_path: Path) -> Iterator[str]:
    """A 64 MiB loop device (needs root and /dev/loop*; skipped with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    image = tmp_path / "volume.img"
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    done = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no loop device here: {done.stderr.strip()}")
    loop = done.stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["umount", str(tmp_path / "shared")], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def _run(root: Path, shared: Path, volume: str, device: str) -> subprocess.CompletedProcess[str]:
    (root / "etc" / "mpicloud").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "mpicloud" / "node.env").write_text(f"MPICLOUD_SHARED_VOLUME={volume}\n")
    return subprocess.run(["bash", str(SCRIPT), str(shared), device], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPICLOUD_SYSROOT": str(root),
                               "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"})


def test_volume_is_formatted_once_and_its_data_survives_a_remount(tmp_path: Path, device: str) -> None:
    root, shared = tmp_path / "root", tmp_path / "shared"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "fstab").write_text("# fstab\n")
    done = _run(root, shared, "vol-0123456789abcdef0", device)
    assert done.returncode == 0, done.stderr
    assert subprocess.run(["findmnt", "-n", "-M", str(shared)], capture_output=True).returncode == 0
    (shared / "result.dat").write_text("a day of compute\n")
    subprocess.run(["umount", str(shared)], check=True)
    done = _run(root, shared, "vol-0123456789abcdef0", device)  # the next boot, or a replaced head node
    assert done.returncode == 0, done.stderr
    assert (shared / "result.dat").read_text() == "a day of compute\n"
    fstab = (root / "etc" / "fstab").read_text().splitlines()
    assert len(fstab) == 2 and fstab[1].startswith("UUID=") and f" {shared} ext4 defaults,nofail," in fstab[1]


def test_a_volume_with_unknown_content_is_never_formatted(tmp_path: Path, device: str) -> None:
    root, shared = tmp_path / "root", tmp_path / "shared"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "fstab").write_text("")
    subprocess.run(["mkswap", device], capture_output=True, check=True)  # a signature that is no ext4
    done = _run(root, shared, "vol-1", device)
    assert done.returncode != 0
    probe = subprocess.run(["blkid", "-p", "-s", "TYPE", "-o", "value", device], capture_output=True, text=True)
    assert probe.stdout.strip() == "swap"  # untouched


def test_nothing_to_do_without_a_volume(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = _run(root, tmp_path / "shared", "", "/dev/null")
    assert done.returncode == 0 and not (tmp_path / "shared").exists()
