"""Slurm power saving, offline: slurm.conf as rendered for elastic and fixed local clusters (the clouds' file
unchanged), sinfo's power flags read as pool states, and slurm_power.py's node actions with a recording
`scontrol` (the real daemons run in tests/integration/test_elastic_slurm.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mpicloud.assets import install_runner, runner_files
from mpicloud.cluster import local_ns, slurm_local
from mpicloud.cluster.registry import ClusterRecord, Node
from mpicloud.render.templating import render_template
from mpicloud.spec import parse_spec
from tests.runnerlib import node_module


@pytest.fixture()
def power(tmp_path: Path) -> Path:
    """slurm_power.py installed beside the runner's files, as on a node (it imports their protocol package)."""
    return install_runner(tmp_path / "opt").with_name("slurm_power.py")


def _record(tmp_path: Path) -> ClusterRecord:
    return ClusterRecord(name="burst", provider="local", os="linux", user="root",
                         nodes=[Node("node0", "198.18.0.2", 22)], slots_per_node=2,
                         shared_path=str(tmp_path / "shared"), python=["/usr/bin/python3"],
                         runner=str(tmp_path / "runner" / "runner.py"), local={"cluster_id": "0123abcd" * 4})


def _render(tmp_path: Path, power: dict[str, object] | None) -> str:
    nodes = [Node(f"node{i}", f"198.18.0.{2 + i}", 22) for i in range(1, 5)]
    return render_template("local/slurm.conf.j2", cluster="burst", controller=Node("node0", "198.18.0.2", 22),
                           nodes=nodes, cpus=2, root=tmp_path, run=tmp_path, munge_socket=tmp_path / "m.socket",
                           task_prolog=tmp_path / "prolog", power=power)


@pytest.mark.parametrize(("text", "suspend_time", "keep"), [
    ("nodes: {min: 1, max: 4}\nscale_down_idle_minutes: 0.01\n", 1, "node[1-4]:1"),  # Slurm counts whole seconds
    ("nodes: {min: 0, max: 4}\n", 600, ""),  # the default 10 minutes; nothing kept up
])
def test_elastic_slurm_conf_has_cloud_nodes_and_power_saving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              text: str, suspend_time: int, keep: str) -> None:
    monkeypatch.setenv("MPICLOUD_HOME", str(tmp_path / "home"))
    spec = parse_spec(f"name: burst\ncloud: local\nscheduler: slurm\nslots_per_node: 2\n{text}")
    record = _record(tmp_path)
    layout = slurm_local.SlurmLayout(tmp_path / "slurm", tmp_path / "run")
    power = local_ns.power_config(spec, record, layout)
    assert (power["suspend_time"], power["keep"]) == (suspend_time, keep)
    wrapper = Path(str(power["resume"])).read_text()
    assert wrapper.endswith(f"{tmp_path}/runner/slurm_power.py --root {tmp_path}/shared/.mpicloud resume \"$@\"\n")
    assert Path(str(power["prolog"])).stat().st_mode & stat.S_IXUSR
    conf = _render(tmp_path, power)
    lines = conf.splitlines()
    assert "SlurmctldHost=node0(198.18.0.2)" in lines and not any(x.startswith("NodeName=node0") for x in lines)
    assert "NodeName=node4 NodeAddr=198.18.0.6 CPUs=2 State=CLOUD" in lines
    for expected in (f"ResumeProgram={power['resume']}", f"SuspendProgram={power['suspend']}",
                     f"PrologSlurmctld={power['prolog']}", f"SuspendTime={suspend_time}", "ResumeTimeout=60",
                     "SuspendTimeout=10", "PrivateData=cloud",
                     "SlurmctldParameters=power_save_interval=1,power_save_min_interval=0"):
        assert expected in lines
    assert (f"SuspendExcNodes={keep}" in lines) == bool(keep)


def test_fixed_and_cloud_slurm_conf_have_no_power_saving(tmp_path: Path) -> None:
    fixed = _render(tmp_path, None)
    assert "State=UNKNOWN" in fixed and "State=CLOUD" not in fixed and "Suspend" not in fixed and "Resume" not in fixed
    cloud = render_template("linux/slurm.conf.j2", cluster="c", task_prolog="/p")
    assert "Suspend" not in cloud and "State=CLOUD" not in cloud  # a fixed cloud cluster: no power saving


def test_slurm_power_ships_with_the_linux_runner_files_only() -> None:
    assert "slurm_power.py" in runner_files("linux") and "slurm_pool.py" in runner_files("linux")
    assert "slurm_power.py" not in runner_files("windows") and "slurm_pool.py" not in runner_files("windows")


@pytest.mark.parametrize(("slurm", "state"), [
    ("idle~", "stopped"), ("down~", "stopped"), ("drain~", "stopped"), ("idle#", "starting"), ("alloc#", "starting"),
    ("down#", "stopping"), ("idle%", "stopping"), ("down", "stopping"), ("mix!", "draining"), ("drng", "draining"),
    ("idle", "up"), ("alloc", "up"), ("mix", "up"), ("idle*", "up")])
def test_sinfo_power_flags_are_pool_states(slurm: str, state: str) -> None:
    assert node_module("slurm_pool").pool_state(slurm) == state


def _fake_scontrol(tmp_path: Path) -> Path:
    """An `scontrol` that expands node[1-3] and records every other call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\nif [ "$1 $2" = "show hostnames" ]; then printf "node1\\nnode2\\nnode3\\n"; '
                      f'else echo "$*" >> {tmp_path}/scontrol.log; fi\n')
    script.chmod(0o755)
    return bin_dir


def test_resume_runs_the_pool_command_per_node_sets_a_failed_node_down_and_powers_it_down(
        tmp_path: Path, power: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    action = f'echo "$0" >> {tmp_path}/started; [ "$0" != node2 ]'
    (root / "runner.json").write_text(json.dumps({"pool": {"resume_command": ["sh", "-c", action],
                                                           "suspend_command": ["true"]},
                                                  "slurm_env": {"SLURM_CONF": "/x/slurm.conf"}}))
    env = {**os.environ, "PATH": f"{_fake_scontrol(tmp_path)}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, str(power), "--root", str(root), "resume", "node[1-3]"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert sorted((tmp_path / "started").read_text().split()) == ["node1", "node2", "node3"]
    down, power_down = (tmp_path / "scontrol.log").read_text().splitlines()
    assert down.startswith("update NodeName=node2 State=DOWN Reason=mpicloud resume failed (exit 1, see ")
    assert power_down == "update NodeName=node2 State=POWER_DOWN_FORCE"  # its SuspendProgram stops what started
    log = (root / "slurm" / "power.log").read_text()
    assert "resume node[1-3]: node1 node2 node3" in log and "resume node2: failed with exit code 1" in log
    assert "resume node1: done" in log and "set node2 DOWN: done" in log and "set node2 POWER_DOWN_FORCE: done" in log


def test_suspend_never_sets_nodes_down_and_a_bad_call_is_one_line(tmp_path: Path, power: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "runner.json").write_text(json.dumps({"pool": {"resume_command": ["true"], "suspend_command": ["false"]}}))
    env = {**os.environ, "PATH": f"{_fake_scontrol(tmp_path)}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, str(power), "--root", str(root), "suspend", "node[1-3]"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and not (tmp_path / "scontrol.log").exists()
    bad = subprocess.run([sys.executable, str(power), "--root", str(tmp_path / "nowhere"), "resume", "node1"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "FileNotFoundError" in (tmp_path / "nowhere" / "slurm" / "power.log").read_text()
