"""Locate the files that run on cluster nodes (`provision/`), in a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path


def provision_dir() -> Path:
    """The `provision/` directory: `mpicloud/_provision` in a wheel, `provision/` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_provision", here.parent / "provision"):
        if (candidate / "runner" / "runner.py").is_file():
            return candidate
    raise FileNotFoundError("mpicloud installation is incomplete: provision/runner/runner.py not found")


def runner_path() -> Path:
    """The cluster-side job runner, the same file on every OS."""
    return provision_dir() / "runner" / "runner.py"


def runner_source() -> str:
    """The runner's source text, for embedding into bootstrap scripts."""
    return runner_path().read_text(encoding="utf-8")


#: the cluster-side files, installed side by side on every node that runs jobs (the same files on every OS)
RUNNER_FILES = ("runner.py", "transfer.py", "bucketio.py")


def runner_files() -> dict[str, bytes]:
    """Every cluster-side runner file by name, for bootstrap scripts to install."""
    folder = provision_dir() / "runner"
    return {name: (folder / name).read_bytes() for name in RUNNER_FILES}
