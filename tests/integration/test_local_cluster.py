"""The real local cluster: sshd nodes, Open MPI across nodes, logs, exit codes, outputs, teardown, host keys."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from mpicloud.api import Cluster
from tests.conftest import ROOT, cli


def env_for(home: Path) -> dict[str, str]:
    return {"MPICLOUD_HOME": str(home)}


def test_nodes_have_their_own_name_and_address(local_cluster: Cluster) -> None:
    hosts = {n.name: n.host for n in local_cluster.record.nodes}
    assert hosts == {"node0": "127.0.91.1", "node1": "127.0.91.2"}
    job = local_cluster.submit(["sh", "-c", "echo $MPICLOUD_NODE; ssh -F \"$(echo $OMPI_MCA_plm_rsh_agent | "
                                "cut -d' ' -f3)\" node1 'echo $MPICLOUD_NODE; hostname'"])
    info = job.wait(60)
    assert info.state == "succeeded", job.stderr()
    lines = job.stdout().split()
    assert lines[0] == "node0" and lines[1] == "node1"
    if os.geteuid() == 0:
        assert lines[2] == "node1"  # a distinct host name per node (UTS namespace)


def test_mpi_job_spans_both_nodes_and_outputs_come_home(local_cluster: Cluster, tmp_path: Path) -> None:
    job = local_cluster.submit(["sh", "run.sh"], cores=4, name="allreduce",
                               inputs=[ROOT / "examples/mpi/allreduce.c", ROOT / "examples/mpi/run.sh"])
    info = job.wait(120)
    assert info.state == "succeeded", job.stderr()
    out = job.stdout()
    assert "allreduce sum=10 expected=10" in out
    assert {"MPICLOUD_NODE=node0", "MPICLOUD_NODE=node1"} <= set(out.replace(")", "").replace("(", "").split())
    assert [h for h, _ in info.hosts] == ["node0", "node1"]
    summary = job.get(tmp_path / "all")
    assert {p.name for p in (tmp_path / "all").iterdir()} == {"result.txt", "allreduce", "allreduce.c", "run.sh"}
    assert summary.files == 4
    job.get(tmp_path / "only", only=["result.txt"])
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["result.txt"]
    assert "ranks=4 sum=10 expected=10 OK" in (tmp_path / "only" / "result.txt").read_text()


def test_mpi_flag_wraps_with_mpirun_and_hostfile(local_cluster: Cluster) -> None:
    job = local_cluster.submit(["sh", "-c", "echo $MPICLOUD_NODE $MPICLOUD_NP $OMPI_COMM_WORLD_RANK"],
                               cores=3, mpi=True)
    assert job.wait(60).state == "succeeded", job.stderr()
    rows = sorted(job.stdout().split("\n")[:-1])
    assert rows == ["node0 3 0", "node0 3 1", "node1 3 2"]


def test_cli_submit_logs_wait_and_exit_code(local_cluster: Cluster, cluster_home: Path) -> None:
    env = env_for(cluster_home)
    sub = cli("submit", "itest", "--json", "--", "sh", "-c", "echo out; echo err >&2; exit 7", env=env)
    assert sub.returncode == 0, sub.stderr
    job_id = json.loads(sub.stdout.strip().splitlines()[-1])["id"]
    waited = cli("wait", "itest", job_id, env=env)
    assert waited.returncode == 7 and "failed" in waited.stderr
    logs = cli("logs", "itest", job_id, env=env)
    assert logs.stdout == "out\n" and logs.stderr == "err\n"
    listing = json.loads(cli("jobs", "itest", "--json", env=env).stdout)
    row = next(r for r in listing if r["id"] == job_id)
    assert row["exit_code"] == 7 and row["state"] == "failed" and row["cores"] == 1
    follow = cli("logs", "itest", job_id, "--follow", env=env)
    assert follow.returncode == 7 and follow.stdout == "out\n"  # the job's exit status, like wait


def test_missing_command_and_unreadable_input(local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    env = env_for(cluster_home)
    sub = cli("submit", "itest", "--", "definitely-not-a-program", env=env)
    job_id = sub.stdout.strip().splitlines()[-1]
    waited = cli("wait", "itest", job_id, env=env)
    assert waited.returncode == 127 and "command not found on the cluster: definitely-not-a-program" in waited.stderr
    bad = cli("submit", "itest", "--input", str(tmp_path / "missing.dat"), "--", "true", env=env)
    assert bad.returncode == 2 and "missing.dat: no such readable file" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_unknown_cluster_and_bad_spec_are_one_line_errors(home: Path, tmp_path: Path) -> None:
    result = cli("jobs", "nosuch", env=env_for(home))
    assert result.returncode == 2 and "no cluster named 'nosuch'" in result.stderr and "Traceback" not in result.stderr
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad1\ncloud: local\nnodes: 0\nslots_per_nod: 2\n")
    result = cli("up", str(spec), env=env_for(home))
    assert result.returncode == 2
    assert "nodes: Input should be greater than or equal to 1" in result.stderr
    assert "slots_per_nod: unknown field; did you mean 'slots_per_node'?" in result.stderr
    assert not (home / "clusters" / "bad1").exists()


def test_port_taken_fails_cleanly(home: Path, tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.93.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        spec = tmp_path / "s.yaml"
        spec.write_text(f"name: taken\ncloud: local\nnodes: 2\nlocal: {{address_base: 127.0.93.1, port: {port}}}\n")
        result = cli("up", str(spec), env=env_for(home))
    assert result.returncode == 2 and f"port {port} on 127.0.93.1 is already taken" in result.stderr
    assert not (home / "clusters" / "taken").exists()


def test_down_leaves_no_process_and_changed_host_key_is_refused(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: short\ncloud: local\nnodes: 2\nslots_per_node: 1\nlocal: {address_base: 127.0.94.1}\n")
    assert cli("up", str(spec), env=env_for(home)).returncode == 0
    record = json.loads((home / "clusters" / "short" / "cluster.json").read_text())
    cluster_id = record["local"]["cluster_id"]
    sub = cli("submit", "short", "--cores", "2", "--mpi", "--", "sleep", "300", env=env_for(home))
    assert sub.returncode == 0
    # a changed host key: replace the pinned key with another and expect a hard error
    known = home / "clusters" / "short" / "known_hosts"
    original = known.read_text()
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    assert other.returncode == 0
    fake = (tmp_path / "k.pub").read_text().split()[:2]
    known.write_text("".join(f"{line.split()[0]} {' '.join(fake)}\n" for line in original.splitlines()))
    refused = cli("jobs", "short", env=env_for(home))
    assert refused.returncode == 2 and "differs from the key pinned" in refused.stderr
    assert "--rekey" in refused.stderr
    known.write_text(original)
    down = cli("down", "short", env=env_for(home))
    assert down.returncode == 0, down.stderr
    leftover = subprocess.run(["grep", "-l", f"MPICLOUD_LOCAL_CLUSTER_ID={cluster_id}", "-r", "/proc",
                               "--include=environ", "-s"], capture_output=True, text=True, timeout=60).stdout
    assert leftover.strip() == ""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(home / "clusters" / "short") not in ps
    assert not (home / "clusters" / "short").exists()
