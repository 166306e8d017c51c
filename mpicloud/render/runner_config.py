"""The runner's configuration file (`<shared>/.mpicloud/runner.json`), rendered from the spec."""

from __future__ import annotations

import json
import shlex
from typing import Any

from mpicloud.spec.model import ClusterSpec
from mpicloud.spec.targets import WINDOWS

RUNNER_CONFIG_VERSION = 1
#: the Python an elastic head runs its node actions with: Debian/Ubuntu's own (Azure: stdlib only; AWS: with
#: python3-boto3), or the one the Windows bootstrap installs (boto3 from the bootstrap's objlibs on AWS)
NODE_PYTHON = {"linux": "/usr/bin/python3", "windows": WINDOWS.python[0]}
#: in the runner root: written by start-runner.ps1 once saved MS-MPI credentials work without -pwd
SAVECREDS_MARKER = "savecreds.ok"
#: in the runner root: written by the head node; every node must see it before an MPI job starts
SHARE_MARKER = "share-marker"
#: how the runner asks a node whether it sees the share marker (the cluster's own SSH key, no prompts)
SHARE_PROBE = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]


#: an elastic cluster's compute nodes stop after this long without a job, unless the spec says otherwise
SCALE_DOWN_IDLE_MINUTES = 10.0


def node_names(spec: ClusterSpec) -> list[str]:
    """Host names of the nodes a cluster starts with, in order; node 0 is the head node (an elastic cluster
    starts with the head only)."""
    return spec.node_names[:1] if spec.elastic else spec.node_names


def pool_config(spec: ClusterSpec, resume: list[str], suspend: list[str]) -> dict[str, Any]:
    """runner.json's `pool`: how many compute nodes may be up and the node actions (each run with a node name
    appended). A fixed cluster is a pool of min = max = its nodes, the head among them (it runs jobs)."""
    elastic = spec.elastic
    low, high = (elastic.min, elastic.max) if elastic else (spec.node_count, spec.node_count)
    idle = (spec.scale_down_idle_minutes or SCALE_DOWN_IDLE_MINUTES) if elastic else None
    return {"min": low, "max": high, "idle_minutes": idle, "slots_per_node": spec.slots_per_node,
            "head_runs_jobs": elastic is None, "resume_command": resume, "suspend_command": suspend}


def power_wrapper(command: list[str], action: str, nodes: str = '"$@"') -> str:
    """A two-line ResumeProgram/SuspendProgram/PrologSlurmctld of an elastic Slurm cluster: slurm_power.py's
    `command` (up to --root RUNNER_ROOT) with the action and `nodes` (shell words: Slurm's arguments)."""
    return (f"#!/bin/sh\n# slurm_power.py {action} for this cluster's Slurm (generated)\n"
            f"exec {shlex.join([*command, action])} {nodes}\n")


def power_conf(spec: ClusterSpec, programs: dict[str, str], resume_timeout: int, suspend_timeout: int,
               last: str) -> dict[str, object]:
    """slurm.conf's power saving (slurm/power.conf.j2) for an elastic spec: the programs (resume, suspend,
    prolog), the idle limit in whole seconds (Slurm's unit), `min` of node1..node`last` kept from being powered
    down (`last`: the highest compute node index, or a placeholder the node fills in at boot)."""
    assert spec.elastic is not None
    idle = spec.scale_down_idle_minutes or SCALE_DOWN_IDLE_MINUTES
    low = spec.elastic.min
    return {**programs, "suspend_time": max(1, round(idle * 60)), "resume_timeout": resume_timeout,
            "suspend_timeout": suspend_timeout, "keep": f"node[1-{last}]:{low}" if low else ""}


def runner_root(shared_path: str) -> str:
    """Where the runner keeps its queue on the shared storage."""
    separator = "\\" if "\\" in shared_path or shared_path[1:2] == ":" else "/"
    return shared_path.rstrip("/\\") + separator + ".mpicloud"


def runner_config(spec: ClusterSpec, stop_command: list[str] | None = None,
                  env: dict[str, str] | None = None, names: list[str] | None = None,
                  slurm_env: dict[str, str] | None = None, pool: dict[str, Any] | None = None) -> dict[str, Any]:
    """The runner configuration: nodes and slots (an elastic cluster's head has none), launcher, scheduler
    backend (with `slurm_env`, what Slurm's commands need, e.g. SLURM_CONF), idle shutdown, the stop action
    (default: the target's) and the node pool (`pool_config`)."""
    slots = 0 if spec.elastic else spec.slots_per_node
    stop = stop_command if stop_command is not None else list(spec.target.stop_command or ()) or None
    return {
        "version": RUNNER_CONFIG_VERSION,
        "cluster": spec.name,
        "os": spec.os,
        "launcher": spec.target.platform.launcher,
        "scheduler": spec.scheduler,
        **({"slurm_env": dict(slurm_env or {})} if spec.scheduler == "slurm" else {}),
        "nodes": [{"name": n, "slots": slots} for n in (names or node_names(spec))],
        **({"pool": pool} if pool else {}),
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
