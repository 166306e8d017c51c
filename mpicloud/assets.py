"""Locate the files that run on cluster nodes (`provision/`), in a checkout or an installed wheel."""

from __future__ import annotations

import ast
import functools
import io
import tarfile
from pathlib import Path


def provision_dir() -> Path:
    """The `provision/` directory: `mpicloud/_provision` in a wheel, `provision/` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_provision", here.parent / "provision"):
        if (candidate / "runner" / "runner.py").is_file():
            return candidate
    raise FileNotFoundError("mpicloud installation is incomplete: provision/runner/runner.py not found")


#: the cluster-side scripts in provision/runner, installed side by side on every node that runs jobs
RUNNER_SCRIPTS = ("runner.py", "transfer.py", "bucketio.py", "s3store.py", "blobstore.py", "slurm_backend.py",
                  "autoscale.py", "nodepool.py", "ec2_nodes.py", "azure_nodes.py", "forkwrap.py", "slurm_pool.py")
#: the ones Windows nodes never run (Slurm and forked job wrappers are Linux only), left out of the Windows
#: bootstrap; the pool and the node actions run there too
LINUX_ONLY = ("slurm_backend.py", "forkwrap.py", "slurm_pool.py")
#: the node actions of one cloud: a Windows bundle for a cloud carries only its own (Azure's userData is tight)
CLOUD_ONLY = {"ec2_nodes.py": "aws", "azure_nodes.py": "azure"}
#: Slurm's ResumeProgram/SuspendProgram (provision/slurm), installed beside the runner scripts on Linux nodes
SLURM_SCRIPTS = ("slurm_power.py",)


def protocol_files() -> dict[str, bytes]:
    """The stdlib-only protocol package, by the path it takes beside the runner (`mpicloud/protocol/…`)."""
    package = Path(__file__).resolve().parent
    files = {"mpicloud/__init__.py": (package / "__init__.py").read_bytes()}
    for path in sorted((package / "protocol").glob("*.py")):
        files[f"mpicloud/protocol/{path.name}"] = path.read_bytes()
    return files


def runner_files(os_name: str = "linux", cloud: str | None = None) -> dict[str, bytes]:
    """Every cluster-side file an OS's nodes run, by relative POSIX path, for bootstraps to install; `cloud`: only
    that cloud's node actions."""
    folder = provision_dir() / "runner"
    names = [n for n in RUNNER_SCRIPTS if (os_name == "linux" or n not in LINUX_ONLY)
             and (cloud is None or CLOUD_ONLY.get(n, cloud) == cloud)]
    slurm = [n for n in SLURM_SCRIPTS if os_name == "linux"]
    return {**{name: (folder / name).read_bytes() for name in names},
            **{name: (provision_dir() / "slurm" / name).read_bytes() for name in slurm}, **protocol_files()}


def without_docstrings(source: bytes) -> bytes:
    """Python source without comments and without the docstrings of functions and classes (the module's stays:
    scripts print it as their usage); the code is otherwise the same syntax tree."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return (ast.unparse(tree) + "\n").encode()


@functools.cache
def runner_bundle(os_name: str = "linux", compact: bool = False, cloud: str | None = None) -> bytes:
    """runner_files as one tar (deterministic: sorted, mtime 0, root-owned, mode 755): compressed whole, the files
    share one dictionary. `compact`: Python files without_docstrings, which keeps the Windows bootstrap inside
    Azure's 64 KiB userData. Made once per process: every node's render asks for it (the files do not change)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(runner_files(os_name, cloud).items()):
            body = without_docstrings(data) if compact and name.endswith(".py") else data
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(body), 0o755, 0
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def install_runner(dest: Path) -> Path:
    """Write every cluster-side file below dest (as a bootstrap would); returns the path of runner.py."""
    for rel, data in runner_files().items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (dest / "runner.py").chmod(0o755)
    return dest / "runner.py"
