#!/usr/bin/env python3
"""Slurm's ResumeProgram / SuspendProgram / PrologSlurmctld for mpicloud's elastic clusters (stdlib only).

usage: slurm_power.py --root RUNNER_ROOT resume|suspend HOSTLIST
       slurm_power.py --root RUNNER_ROOT prolog      (the job's nodes in SLURM_JOB_NODELIST)

slurmctld runs it (through a two-line wrapper that adds the action and --root) with a hostlist such as
`node[1-3]`. It expands the list (`scontrol show hostnames`) and runs runner.json's `pool.resume_command` or
`pool.suspend_command` with each node name appended, all nodes at once, and logs every step to
RUNNER_ROOT/slurm/power.log. A node whose resume fails is set DOWN with the reason (`sinfo -R` shows it), so Slurm
requeues its job at once instead of waiting for ResumeTimeout, then powered down (POWER_DOWN_FORCE: the
SuspendProgram stops whatever did start, and the node is not left counted as powering up until ResumeTimeout); the
runner's Slurm pool makes it usable again later. Exit status: 0 when every node's action worked.
Installed beside the runner's files (it imports their mpicloud.protocol package).

As PrologSlurmctld it waits until the job's nodes finished powering up (no `#` or `~` flag; at most
PROLOG_WAIT s) and exits 0: Slurm 22.05 ends a job's CONFIGURING state when its slurmctld prolog ends and its
nodes are ready, else only in its 30-second periodic check, so a job would start up to 30 s after its nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mpicloud.protocol.pool import RESUME_FAILED

#: where processes started by slurmctld find the programs when its environment has no PATH
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: the prolog's longest wait for the job's nodes (Slurm's ResumeTimeout sets a node DOWN after its own limit)
PROLOG_WAIT = 600.0


def log(root: Path, message: str) -> None:
    """One timestamped line in slurm/power.log."""
    (root / "slurm").mkdir(parents=True, exist_ok=True)
    with open(root / "slurm" / "power.log", "a", encoding="utf-8") as out:
        out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}\n")


def hostnames(hostlist: str, env: dict[str, str]) -> list[str]:
    """Slurm's hostlist expression expanded by Slurm itself."""
    done = subprocess.run(["scontrol", "show", "hostnames", hostlist], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scontrol show hostnames {hostlist}: {done.stderr.strip() or done.returncode}")
    return done.stdout.split()


def wait_powered_up(root: Path, hostlist: str, env: dict[str, str]) -> int:
    """PrologSlurmctld: return 0 once no node of `hostlist` is powering up or powered down, or once one is DOWN (its
    resume failed: Slurm requeues the job, which it holds until this prolog ends), or after PROLOG_WAIT s."""
    deadline = time.monotonic() + PROLOG_WAIT
    while time.monotonic() < deadline:
        done = subprocess.run(["sinfo", "-h", "-N", "-n", hostlist, "-o", "%t"], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        states = done.stdout.split() if done.returncode == 0 else []
        if states and not set(done.stdout) & set("#~"):
            return 0
        if any(state.startswith("down") for state in states):
            log(root, f"prolog: a node of {hostlist} is down; its job is requeued")
            return 0
        time.sleep(0.1)
    log(root, f"prolog: {hostlist} not powered up after {PROLOG_WAIT:.0f} s")
    return 0


def act(root: Path, action: str, hostlist: str) -> int:
    """Run the pool's command for every node of `hostlist`; mark the nodes whose resume failed DOWN."""
    config = json.loads((root / "runner.json").read_text(encoding="utf-8"))
    env = {**os.environ, **{str(k): str(v) for k, v in (config.get("slurm_env") or {}).items()}}
    env.setdefault("PATH", DEFAULT_PATH)
    if action == "prolog":
        return wait_powered_up(root, hostlist, env)
    command = [str(a) for a in config["pool"][f"{action}_command"]]
    nodes = hostnames(hostlist, env)
    log(root, f"{action} {hostlist}: {' '.join(nodes)}")
    with open(root / "slurm" / "power.log", "ab") as output:
        running = {node: subprocess.Popen([*command, node], env=env, stdin=subprocess.DEVNULL, stdout=output,
                                          stderr=output) for node in nodes}
        codes = {node: proc.wait() for node, proc in running.items()}
    failed = sorted(node for node, code in codes.items() if code != 0)
    for node in nodes:
        log(root, f"{action} {node}: " + ("done" if codes[node] == 0 else f"failed with exit code {codes[node]}"))
    if failed and action == "resume":
        reason = f"{RESUME_FAILED} (exit {codes[failed[0]]}, see {root / 'slurm' / 'power.log'})"
        admin = [str(a) for a in config.get("slurm_admin") or []]  # a cloud head: sudo to SlurmUser
        for state in ("DOWN", "POWER_DOWN_FORCE"):
            done = subprocess.run([*admin, "scontrol", "update", f"NodeName={','.join(failed)}", f"State={state}",
                                   *([f"Reason={reason}"] if state == "DOWN" else [])], env=env, capture_output=True,
                                  text=True, timeout=60, check=False)
            log(root, f"set {','.join(failed)} {state}: " + ("done" if done.returncode == 0 else done.stderr.strip()))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("action", choices=["resume", "suspend", "prolog"])
    parser.add_argument("hostlist", nargs="?", default=os.environ.get("SLURM_JOB_NODELIST", ""))
    args = parser.parse_args(argv)
    if not args.hostlist:
        parser.error("no hostlist (argument, or SLURM_JOB_NODELIST for prolog)")
    try:
        return act(args.root, args.action, args.hostlist)
    except (OSError, ValueError, KeyError, RuntimeError, subprocess.SubprocessError) as exc:
        log(args.root, f"{args.action} {args.hostlist}: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
