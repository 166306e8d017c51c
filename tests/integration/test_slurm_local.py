"""The local cluster in namespaced mode with real Slurm: munged, slurmctld, a slurmd and an sshd per node.

Root only (network namespaces, a bridge, Slurm's daemons as root); a machine without the packages fails
with the package to install. `down` and failed `up`s are checked against `ip netns`, `ip link` and /proc.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpicloud.api import Cluster
from tests.conftest import ROOT, cli, wait_running
from tests.slurmlib import ours, processes_with, require_slurm

LAB = ipaddress.IPv4Network("198.18.0.0/15")


def slurm_env(cluster: Cluster) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": cluster.record.local["slurm_conf"]}


def test_nodes_have_their_own_address_hostname_and_sshd(slurm_cluster: Cluster) -> None:
    nodes = slurm_cluster.record.nodes
    assert len({n.host for n in nodes}) == 2
    for node in nodes:
        assert ipaddress.IPv4Address(node.host) in LAB and node.port == 22
        with socket.create_connection((node.host, node.port), timeout=5) as sock:  # from the host
            assert sock.recv(4) == b"SSH-"
        ssh = subprocess.run(["ssh", "-F", slurm_cluster.record.local["ssh_config"], node.name,
                              "hostname; ip -4 -o addr show eth0"], capture_output=True, text=True, timeout=60)
        assert ssh.returncode == 0, ssh.stderr
        lines = ssh.stdout.splitlines()
        assert lines[0] == node.name and f"inet {node.host}/" in lines[1]


def test_srun_spans_two_hostnames(slurm_cluster: Cluster) -> None:
    done = subprocess.run(["srun", "-N2", "-n4", "hostname"], capture_output=True, text=True, timeout=120,
                          env=slurm_env(slurm_cluster))
    assert done.returncode == 0, done.stderr
    names = done.stdout.split()
    assert len(names) == 4 and set(names) == {"node0", "node1"}


def test_sbatch_with_mpirun_runs_four_ranks_over_both_nodes(slurm_cluster: Cluster) -> None:
    work = Path(slurm_cluster.record.shared_path) / "mpi-sbatch"
    work.mkdir()
    (work / "allreduce.c").write_bytes((ROOT / "examples/mpi/allreduce.c").read_bytes())
    transport = slurm_cluster.queue.transport  # one SSH session to node0, inside its namespaces
    script = (f"cd {work} && mpicc -O2 -o allreduce allreduce.c && "
              "sbatch --parsable --wait -N2 -n4 -o out.txt --wrap 'mpirun ./allreduce'")
    result = transport.run(script, timeout=180)
    assert result.exit_code == 0, result.stderr.decode()
    out = (work / "out.txt").read_text()
    assert "allreduce sum=10 expected=10" in out
    ranks = [line for line in out.splitlines() if line.startswith("rank ")]
    assert len(ranks) == 4
    assert {line.split(" on ")[1].split()[0] for line in ranks} == {"node0", "node1"}


def test_submitted_job_runs_mpi_over_namespaced_nodes_through_slurm(slurm_cluster: Cluster) -> None:
    job = slurm_cluster.submit(["sh", "run.sh"], cores=4, name="allreduce-ns",
                               inputs=[ROOT / "examples/mpi/allreduce.c", ROOT / "examples/mpi/run.sh"])
    info = job.wait(180)
    assert info.state == "succeeded", job.stderr()
    assert "allreduce sum=10 expected=10" in job.stdout()
    assert [h for h, _ in info.hosts] == ["node0", "node1"]


def spec_file(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """A private MPICLOUD_HOME and a spec file in tmp_path (after checking the packages)."""
    require_slurm()
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return tmp_path / "home", spec


@pytest.mark.parametrize("point", ["network", "holders", "slurm"])
def test_failed_up_leaves_no_daemon_namespace_or_link(point: str, tmp_path: Path) -> None:
    home, spec = spec_file(tmp_path, "name: failing\ncloud: local\nnodes: 2\nscheduler: slurm\n")
    before = ours()
    failed = cli("up", str(spec), env={"MPICLOUD_HOME": str(home), "MPICLOUD_FAIL_AT": point})
    assert failed.returncode != 0 and f"failing at {point!r}" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
    assert ours() <= before
    assert processes_with(str(home)) == []
    assert not (home / "clusters" / "failing").exists()


@pytest.mark.parametrize("point", ["holders", "slurm"])
def test_down_after_up_was_killed_leaves_nothing(point: str, tmp_path: Path) -> None:
    home, spec = spec_file(tmp_path, "name: killed\ncloud: local\nnodes: 2\nscheduler: slurm\n")
    before = ours()
    env = {"MPICLOUD_HOME": str(home)}
    killed = cli("up", str(spec), env={**env, "MPICLOUD_FAIL_AT": f"{point}:kill"})
    assert killed.returncode == -9
    assert ours() > before and processes_with(str(home))  # the crash left the cluster half made
    down = cli("down", "killed", env=env)
    assert down.returncode == 0, down.stderr
    assert ours() <= before
    assert processes_with(str(home)) == []
    assert not (home / "clusters" / "killed").exists()


def test_demo_script_runs_the_slurm_example(tmp_path: Path) -> None:
    require_slurm()
    env = {**os.environ, "MPICLOUD_HOME": str(tmp_path / "home"), "DEMO_OUT": str(tmp_path / "out"),
           "DEMO_SPEC": "examples/local-slurm.yaml", "MPICLOUD": f"{sys.executable} -m mpicloud.cli"}
    before = ours()
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ranks=4 sum=10 expected=10 OK" in done.stdout
    assert "2 node0" in done.stdout and "2 node1" in done.stdout  # srun's hostnames, counted
    assert ours() <= before and processes_with(str(tmp_path / "home")) == []


def test_idle_shutdown_from_node0_stops_the_namespaced_cluster(tmp_path: Path) -> None:
    home, spec = spec_file(tmp_path, "name: idle\ncloud: local\nnodes: 2\nidle_shutdown_minutes: 0.05\n"
                                     "local: {network: namespaces}\n")
    before = ours()
    env = {"MPICLOUD_HOME": str(home)}
    up = cli("up", str(spec), env=env)
    assert up.returncode == 0, up.stderr
    assert "198.18." in up.stdout or "198.19." in up.stdout
    record = home / "clusters" / "idle" / "cluster.json"
    deadline = time.monotonic() + 120  # the runner in node0 runs `stop` in the host's namespaces

    def stopped() -> bool:
        return json.loads(record.read_text()).get("stopped_at") is not None and not processes_with(str(home))

    while not stopped() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stopped()
    assert ours() <= before  # no namespace, veth or bridge kept while stopped
    subnet = ipaddress.IPv4Network(json.loads(record.read_text())["local"]["subnet"])
    subprocess.run(["ip", "link", "add", "mpctaken", "type", "bridge"], check=True)  # another network took it
    try:
        subprocess.run(["ip", "addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", "mpctaken"], check=True)
        refused = cli("start", "idle", env=env)
        assert refused.returncode == 2 and f"subnet {subnet} is now used" in " ".join(refused.stderr.split()), \
            refused.stderr
        assert "Traceback" not in refused.stderr and processes_with(str(home)) == []
    finally:
        subprocess.run(["ip", "link", "del", "mpctaken"], check=True)
    assert ours() <= before  # nothing half-made
    again = cli("start", "idle", env=env)  # the same network again: every node keeps its address and host key
    assert again.returncode == 0, again.stderr
    submitted = cli("submit", "idle", "--cores", "2", "--", "hostname", env=env)
    assert submitted.returncode == 0, submitted.stderr
    waited = cli("wait", "idle", submitted.stdout.split()[-1], "--timeout", "120", env=env, timeout=150)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    deadline = time.monotonic() + 120
    while not stopped() and time.monotonic() < deadline:  # idle again: node0's runner stops it again,
        time.sleep(0.5)                                    # through the host anchor the start made anew
    assert stopped()
    assert ours() <= before
    down = cli("down", "idle", env=env)
    assert down.returncode == 0, down.stderr
    assert not (home / "clusters" / "idle").exists()


def test_a_slurm_cluster_stopped_and_started_keeps_its_queue_and_runs_no_job_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`stop` while one job runs on both nodes and one waits in Slurm: `start` makes the network, munged,
    slurmctld (from its saved state) and the slurmds again; the waiting job runs once, the one that was running
    ends (Slurm counts its nodes rebooted) without running again, the finished job's output is kept."""
    home, spec = spec_file(tmp_path, "name: again\ncloud: local\nnodes: 2\nslots_per_node: 2\nscheduler: slurm\n")
    monkeypatch.setenv("MPICLOUD_HOME", str(home))
    before = ours()
    assert cli("up", str(spec), timeout=180).returncode == 0
    try:
        cluster = Cluster.get("again")
        runs = Path(cluster.record.shared_path) / "runs.txt"
        script = f'echo "$MPICLOUD_JOB_ID" >> {runs}; '
        first = cluster.submit(["sh", "-c", script + "echo kept > out.txt"]).wait(120)
        assert first.state == "succeeded", first.reason
        busy = cluster.submit(["sh", "-c", script + "sleep 300"], cores=4)
        waiting = cluster.submit(["sh", "-c", script + "hostname"])
        wait_running(busy)
        assert waiting.info().state in ("submitted", "queued")
        stop = cli("stop", "again")
        assert stop.returncode == 0, stop.stderr
        assert ours() <= before and processes_with(str(home)) == []
        start = cli("start", "again", timeout=180)
        assert start.returncode == 0, start.stderr
        cluster = Cluster.get("again")
        ended = busy.wait(240)
        assert ended.state == "failed" and " ended CANCELLED" in (ended.reason or ""), ended.reason  # at the start
        assert waiting.wait(120).state == "succeeded"
        assert runs.read_text().split() == [first.id, busy.id, waiting.id]  # each ran once
        assert cluster.job(first.id).stdout() == "" and \
            (Path(cluster.record.runner_root) / "jobs" / first.id / "work" / "out.txt").read_text() == "kept\n"
    finally:
        down = cli("down", "again")
        assert down.returncode == 0, down.stderr
    assert ours() <= before and processes_with(str(home)) == []


def _anchors(value: object) -> set[str]:
    """The PIDs of every `nsenter -t PID` command in a runner.json document."""
    if isinstance(value, list) and value[:2] == ["nsenter", "-t"]:
        return {str(value[2])}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return set().union(*(_anchors(v) for v in items))


@pytest.mark.parametrize("point", ["restart.network", "restart.anchor", "restart.slurm"])
def test_a_failed_or_killed_start_leaves_the_cluster_stopped_and_the_next_start_works(point: str,
                                                                                     tmp_path: Path) -> None:
    home, spec = spec_file(tmp_path, "name: restart\ncloud: local\nnodes: 2\nscheduler: slurm\n"
                                     "idle_shutdown_minutes: 60\n")
    before = ours()
    env = {"MPICLOUD_HOME": str(home)}
    assert cli("up", str(spec), env=env, timeout=180).returncode == 0
    try:
        assert cli("stop", "restart", env=env).returncode == 0
        failed = cli("start", "restart", env={**env, "MPICLOUD_FAIL_AT": point})
        assert failed.returncode == 2 and f"failing at {point!r}" in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        assert ours() <= before and processes_with(str(home)) == []  # a failed start removes what it made
        killed = cli("start", "restart", env={**env, "MPICLOUD_FAIL_AT": f"{point}:kill"})
        assert killed.returncode == -9  # leaves it half made: the next start clears that first
        started = cli("start", "restart", env=env, timeout=180)
        assert started.returncode == 0, started.stderr
        record = json.loads((home / "clusters" / "restart" / "cluster.json").read_text())
        config = json.loads((Path(record["shared_path"]) / ".mpicloud" / "runner.json").read_text())
        assert _anchors(config) == {str(record["local"]["anchor"])}  # idle shutdown enters the live anchor
        os.kill(int(record["local"]["anchor"]), 0)
        job = cli("submit", "restart", "--cores", "2", "--", "hostname", env=env)  # both nodes
        assert job.returncode == 0, job.stderr
        waited = cli("wait", "restart", job.stdout.split()[-1], "--timeout", "120", env=env, timeout=150)
        assert waited.returncode == 0, waited.stdout + waited.stderr
    finally:
        down = cli("down", "restart", env=env)
        assert down.returncode == 0, down.stderr
    assert ours() <= before and processes_with(str(home)) == []
