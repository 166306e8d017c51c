"""The runner's configuration file (`<shared>/.mpicloud/runner.json`), rendered from the spec."""

from __future__ import annotations

import json
from typing import Any

from mpicloud.spec.model import ClusterSpec

RUNNER_CONFIG_VERSION = 1
#: in the runner root: written by start-runner.ps1 once saved MS-MPI credentials work without -pwd
SAVECREDS_MARKER = "savecreds.ok"
#: in the runner root: written by the head node; every node must see it before an MPI job starts
SHARE_MARKER = "share-marker"
#: how the runner asks a node whether it sees the share marker (the cluster's own SSH key, no prompts)
SHARE_PROBE = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]


def runner_root(shared_path: str) -> str:
    """Where the runner keeps its queue on the shared storage."""
    separator = "\\" if "\\" in shared_path or shared_path[1:2] == ":" else "/"
    return shared_path.rstrip("/\\") + separator + ".mpicloud"


def runner_config(spec: ClusterSpec, stop_command: list[str] | None = None,
                  env: dict[str, str] | None = None, names: list[str] | None = None,
                  slurm_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The runner configuration: nodes and slots, launcher, scheduler backend (with `slurm_env`, what Slurm's
    commands need, e.g. SLURM_CONF), idle shutdown and the stop action (default: the target's)."""
    stop = stop_command if stop_command is not None else list(spec.target.stop_command or ()) or None
    return {
        "version": RUNNER_CONFIG_VERSION,
        "cluster": spec.name,
        "os": spec.os,
        "launcher": spec.target.platform.launcher,
        "scheduler": spec.scheduler,
        **({"slurm_env": dict(slurm_env or {})} if spec.scheduler == "slurm" else {}),
        "nodes": [{"name": n, "slots": spec.slots_per_node} for n in (names or spec.node_names)],
        "idle_shutdown_minutes": spec.idle_shutdown_minutes,
        "stop_command": stop,
        "env": dict(env or {}),
    }


def root_file(shared_path: str, name: str) -> str:
    """A file in the runner root on the shared storage."""
    root = runner_root(shared_path)
    return root + ("\\" if "\\" in root else "/") + name


def runner_config_json(config: dict[str, Any]) -> str:
    """Deterministic JSON text of a runner configuration."""
    return json.dumps(config, sort_keys=True, indent=2) + "\n"
