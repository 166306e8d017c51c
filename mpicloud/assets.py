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


#: the cluster-side scripts in provision/runner, installed side by side on every node that runs jobs
RUNNER_SCRIPTS = ("runner.py", "transfer.py", "bucketio.py", "slurm_backend.py", "forkwrap.py")
#: the ones Windows nodes never run (Slurm; forked job wrappers), left out of the Windows bootstrap
LINUX_ONLY = ("slurm_backend.py", "forkwrap.py")


def protocol_files() -> dict[str, bytes]:
    """The stdlib-only protocol package, by the path it takes beside the runner (`mpicloud/protocol/…`)."""
    package = Path(__file__).resolve().parent
    files = {"mpicloud/__init__.py": (package / "__init__.py").read_bytes()}
    for path in sorted((package / "protocol").glob("*.py")):
        files[f"mpicloud/protocol/{path.name}"] = path.read_bytes()
    return files


def runner_files(os_name: str = "linux") -> dict[str, bytes]:
    """Every cluster-side file an OS's nodes run, by relative POSIX path, for bootstraps to install."""
    folder = provision_dir() / "runner"
    names = [n for n in RUNNER_SCRIPTS if os_name == "linux" or n not in LINUX_ONLY]
    return {**{name: (folder / name).read_bytes() for name in names}, **protocol_files()}


def install_runner(dest: Path) -> Path:
    """Write every cluster-side file below dest (as a bootstrap would); returns the path of runner.py."""
    for rel, data in runner_files().items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (dest / "runner.py").chmod(0o755)
    return dest / "runner.py"
