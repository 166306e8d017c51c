"""The files shipped to the nodes run under the nodes' own interpreter and import only the standard library."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import tarfile
from pathlib import Path

from mpicloud.assets import install_runner, runner_bundle, runner_files
from tests.runnerlib import NODE_PYTHON

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
import runner, transfer, bucketio, slurm_backend, autoscale, nodepool, ec2_nodes
import mpicloud.protocol
mods = {name.split(".")[0] for name in set(sys.modules) - before}
print(json.dumps(sorted(m for m in mods if m not in sys.stdlib_module_names)))
"""


def test_node_files_import_only_the_standard_library(tmp_path: Path) -> None:
    install_runner(tmp_path)
    # -S: without site-packages, as on a bare node; -I: no user site, no PYTHON* variables
    done = subprocess.run([NODE_PYTHON, "-I", "-S", "-c", PROBE, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    shipped = {"runner", "transfer", "bucketio", "slurm_backend", "autoscale", "nodepool", "ec2_nodes", "mpicloud"}
    assert set(json.loads(done.stdout)) <= shipped


def test_runner_finds_the_protocol_in_an_isolated_interpreter(tmp_path: Path) -> None:
    """Isolated mode (as Windows' embeddable Python runs with its ._pth file) does not put the script's
    directory on sys.path; the runner must still import the protocol package installed beside it."""
    runner = install_runner(tmp_path / "opt")
    (tmp_path / "root").mkdir()
    done = subprocess.run([NODE_PYTHON, "-I", "-S", str(runner), "list", "--root", str(tmp_path / "root")],
                          capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_protocol_package_is_shipped_whole() -> None:
    files = runner_files()
    package = Path(__file__).resolve().parents[2] / "mpicloud" / "protocol"
    for path in package.glob("*.py"):
        assert files[f"mpicloud/protocol/{path.name}"] == path.read_bytes()
    assert "mpicloud/__init__.py" in files


def test_the_compact_bundle_is_the_same_program_and_runs(tmp_path: Path) -> None:
    """Azure's userData carries the runner without function docstrings: the same syntax tree otherwise, and it
    runs under the nodes' interpreter."""
    with tarfile.open(fileobj=io.BytesIO(runner_bundle("linux", compact=True))) as tar:
        tar.extractall(tmp_path / "opt", filter="data")
    for name, data in runner_files().items():
        if name.endswith(".py"):
            compact = ast.parse((tmp_path / "opt" / name).read_bytes())
            original = ast.parse(data)
            for node in ast.walk(original):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and \
                        ast.get_docstring(node, clean=False) is not None:
                    node.body = node.body[1:] or [ast.Pass()]
            assert ast.dump(compact) == ast.dump(original), name
    (tmp_path / "root").mkdir()
    done = subprocess.run([NODE_PYTHON, "-I", "-S", str(tmp_path / "opt" / "runner.py"), "list", "--root",
                           str(tmp_path / "root")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stderr
