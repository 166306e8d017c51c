"""The embedded local cluster: one real OpenSSH sshd per node (own loopback address, or own namespaces), Open MPI."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from mpicloud.assets import install_runner
from mpicloud.cluster import local_ns, registry
from mpicloud.cluster.keys import generate_keypair, load_public
from mpicloud.cluster.processes import MARKER, alive, cluster_processes, stop_cluster_processes, stop_processes
from mpicloud.cluster.registry import ClusterRecord, DownReport, Node
from mpicloud.errors import ClusterError
from mpicloud.protocol.pool import DRAINING, POOL_FILE, STARTING, UP
from mpicloud.render.runner_config import node_names, pool_config, runner_config, runner_config_json
from mpicloud.render.templating import render_template
from mpicloud.spec.model import ClusterSpec
from mpicloud.transport.hostkeys import host_entry, pin_host_key

SSHD = "/usr/sbin/sshd"


def _user() -> str:
    import getpass

    return getpass.getuser()


def require_tools() -> None:
    """Fail with the package to install when sshd or Open MPI is missing."""
    if not Path(SSHD).is_file():
        raise ClusterError("the local cluster needs OpenSSH's sshd: apt-get install openssh-server")
    if shutil.which("mpirun") is None:
        raise ClusterError("the local cluster needs Open MPI: apt-get install openmpi-bin")
    if shutil.which("ssh") is None:
        raise ClusterError("Open MPI launches ranks with ssh: apt-get install openssh-client")


def _addresses(spec: ClusterSpec) -> list[str]:
    base = ipaddress.IPv4Address(spec.local_options.address_base)
    return [str(base + i) for i in range(spec.node_count)]


def _port_free(address: str, port: int) -> bool:
    """True when no process listens on address:port (connections of a stopped sshd in TIME_WAIT do not count:
    sshd binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _pick_port(spec: ClusterSpec, addresses: list[str]) -> int:
    wanted = spec.local_options.port
    if wanted:
        taken = [a for a in addresses if not _port_free(a, wanted)]
        if taken:
            raise ClusterError(f"port {wanted} on {taken[0]} is already taken by another process; "
                               "stop it or set local.port to another port (0 picks a free one)")
        return wanted
    for port in range(22220, 23000):
        if all(_port_free(a, port) for a in addresses):
            return port
    raise ClusterError(f"no free port between 22220 and 23000 on {addresses[0]}; set local.port")


def _node_env(record: ClusterRecord, name: str, cluster_id: str, ssh_config: Path) -> dict[str, str]:
    interfaces = record.local.get("subnet", "lo")
    env = {
        MARKER: cluster_id, "MPICLOUD_NODE": name, "MPICLOUD_CLUSTER": record.name,
        "OMPI_MCA_plm_rsh_agent": f"ssh -F {ssh_config}", "OMPI_MCA_plm_rsh_no_tree_spawn": "1",
        "OMPI_MCA_btl_tcp_if_include": interfaces, "OMPI_MCA_oob_tcp_if_include": interfaces,
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none", "OMPI_MCA_rmaps_base_oversubscribe": "0",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **local_ns.session_env(record),
        # bash sources ~/.bashrc for every command sshd runs, unless SHLVL says it is nested (Debian's build): the
        # user's dotfiles (pyenv, conda) would run in every session, and a session ended mid-way by `stop`
        # could leave their locks behind (pyenv's rehash lock then stalls each later shell 60 s). A node is
        # a clean machine: commands skip ~/.bashrc; an interactive login still reads ~/.profile.
        "SHLVL": "1",
    }
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def up(spec: ClusterSpec) -> tuple[ClusterRecord, str]:
    """Start the cluster's nodes and register it; on any failure stop what was started and remove it.
    A cluster of the same spec that exists is restarted when stopped and left alone when running; the
    second value says which: "created", "started" or "running"."""
    if spec.cloud != "local":
        raise ClusterError(f"`mpicloud up` starts local clusters; {spec.cloud} clusters are deployed with "
                           "`pulumi up` or the generated template, then `mpicloud attach`")
    require_tools()
    local_ns.require(spec)
    directory = registry.cluster_dir(spec.name)
    if (directory / "cluster.json").exists():
        return _up_existing(spec, registry.load(spec.name))
    cluster_id = uuid.uuid4().hex
    try:
        record = _create(spec, directory, cluster_id)
        _wait_ready(record)
        local_ns.start_scheduler(spec, record)
    except BaseException:
        stop_cluster_processes(cluster_id, str(directory))
        local_ns.teardown(cluster_id)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return record, "created"


def _spec_digest(spec: ClusterSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def _up_existing(spec: ClusterSpec, record: ClusterRecord) -> tuple[ClusterRecord, str]:
    if record.provider != "local":
        raise ClusterError(f"{record.name!r} is registered as an attached cluster; `mpicloud up` starts local "
                           "clusters only (pick another name)")
    digest = record.local.get("spec_digest")
    if digest is not None and digest != _spec_digest(spec):
        raise ClusterError(f"cluster {record.name!r} exists, created from a different spec: `mpicloud start "
                           f"{record.name}` runs it as it was; `mpicloud down {record.name}` removes it and "
                           f"every job's data ({job_count(record)} jobs) before an `up` of the new spec")
    if running(record):
        return record, "running"
    return start(record), "started"


def _node_python() -> str:
    """The interpreter the runner and transfer helper use on the nodes: the system's python3 where there is one
    (what Debian cloud nodes run) when it is 3.11 or newer, so the local cluster exercises it; else this one."""
    system = "/usr/bin/python3"
    try:
        new_enough = subprocess.run([system, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
                                    capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        new_enough = False
    return system if new_enough else sys.executable


def _create(spec: ClusterSpec, directory: Path, cluster_id: str) -> ClusterRecord:
    names = node_names(spec)
    user = _user()
    directory.mkdir(parents=True)
    network = local_ns.create_network(spec, cluster_id, names)
    addresses = network.addresses() if network else _addresses(spec)
    port = 22 if network else _pick_port(spec, addresses)
    identity = directory / "id_ed25519"
    (directory / "authorized_keys").write_text(generate_keypair(identity, f"mpicloud-{spec.name}") + "\n")
    nodes = [Node(name=n, host=a, port=port) for n, a in zip(names, addresses[:len(names)], strict=True)]
    ssh_config = directory / "ssh_config"
    ssh_config.write_text(render_template(
        "local/ssh_config.j2", nodes=nodes, user=user, identity=identity,
        known_hosts=directory / "known_hosts_nodes"))
    shared_raw = Path(spec.shared_storage.path)
    shared = shared_raw if shared_raw.is_absolute() else directory / shared_raw
    (shared / ".mpicloud").mkdir(parents=True, exist_ok=True)
    record = ClusterRecord(
        name=spec.name, provider="local", os="linux", user=user, nodes=nodes,
        slots_per_node=spec.slots_per_node, shared_path=str(shared), python=[_node_python()],
        runner=str(directory / "runner" / "runner.py"), key_file=str(identity),
        teardown=f"mpicloud down {spec.name}", idle_shutdown_minutes=spec.idle_shutdown_minutes,
        local={"cluster_id": cluster_id, "ssh_config": str(ssh_config), "spec_digest": _spec_digest(spec),
               **local_ns.record_fields(spec, str(directory), cluster_id, network)})
    install_runner(directory / "runner")
    # local nodes are no cloud VMs: the AWS SDKs must not ask for an instance role (169.254.169.254)
    config = runner_config(spec, _cli(record, "stop", spec.name, "--reason", "idle shutdown"),
                           env={"AWS_EC2_METADATA_DISABLED": "true"}, slurm_env=local_ns.session_env(record),
                           pool=_pool(spec, record))
    (shared / ".mpicloud" / "runner.json").write_text(runner_config_json(config))
    record.save()
    known_nodes: list[str] = []
    prefixes = local_ns.start_nodes(record, network)
    for node, prefix in zip(nodes, prefixes, strict=True):
        known_nodes.append(_start_node(spec, record, node, cluster_id, prefix))
    (directory / "known_hosts_nodes").write_text("".join(known_nodes))
    return record


def _cli(record: ClusterRecord, *args: str) -> list[str]:
    """This mpicloud's command line, run by the runner in the host's namespaces (stop, node actions)."""
    return [*local_ns.host_prefix(record), "env", f"MPICLOUD_HOME={registry.home()}", sys.executable, "-m",
            "mpicloud.cli", *args]


def _pool(spec: ClusterSpec, record: ClusterRecord) -> dict[str, object] | None:
    """The node pool with this cluster's node actions (`mpicloud node start|stop NAME NODE`, run in the host's
    namespaces): the runner runs them with the built-in queue, Slurm's power saving programs with Slurm (elastic
    only: a fixed Slurm cluster's nodes are no CLOUD nodes Slurm could power up)."""
    if spec.scheduler == "slurm" and not spec.elastic:
        return None
    pool = pool_config(spec, _cli(record, "node", "start", spec.name), _cli(record, "node", "stop", spec.name))
    return {**pool, "retry_failed_seconds": local_ns.RETRY_FAILED_SECONDS} if spec.scheduler == "slurm" else pool


def _start_node(spec: ClusterSpec, record: ClusterRecord, node: Node, cluster_id: str,
                enter: list[str] | None) -> str:
    """Write the node's files (node_files), start its sshd; return its known_hosts line."""
    line = node_files(record, node)
    _spawn_sshd(record, node, cluster_id, enter)
    return line


def node_files(record: ClusterRecord, node: Node) -> str:
    """Write a node's sshd config and host key (kept when it has one: a node made again after an interrupted
    start keeps its identity) and pin the key; return its line for the nodes' known_hosts."""
    node_dir = record.dir / node.name
    host_key = node_dir / "ssh_host_ed25519_key"
    kept = host_key.with_name(host_key.name + ".pub")
    public = (kept.read_text(encoding="utf-8") if host_key.exists() and kept.exists()
              else generate_keypair(host_key, f"{node.name}@{record.name}")).split()[:2]
    config = node_dir / "sshd_config"
    config.write_text(render_template(
        "local/sshd_config.j2", node=node.name, address=node.host, port=node.port, host_key=host_key,
        pid_file=node_dir / "sshd.pid", authorized_keys=record.dir / "authorized_keys", user=record.user,
        env=_node_env(record, node.name, record.local["cluster_id"], Path(record.local["ssh_config"]))))
    pin_host_key(record.known_hosts, node.host, node.port, load_public(host_key))
    key_text = " ".join(public)
    return f"{node.name},{host_entry(node.host, node.port)} {key_text}\n"


def _spawn_sshd(record: ClusterRecord, node: Node, cluster_id: str, enter: list[str] | None = None) -> None:
    """Start a node's sshd from its config in the cluster directory (inside `enter`'s namespaces if given)."""
    node_dir = record.dir / node.name
    argv = [SSHD, "-D", "-e", "-f", str(node_dir / "sshd_config")]
    if enter is not None:  # the node's own namespaces
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        argv = [*enter, *argv]
    elif os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if shutil.which("unshare"):  # a distinct host name per node, where the OS allows it
            argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', node.name, *argv]
    log = open(node_dir / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                     env={**os.environ, MARKER: cluster_id})
    log.close()


def _wait_ready(record: ClusterRecord, timeout: float = 15.0, nodes: list[Node] | None = None) -> None:
    for node in record.nodes if nodes is None else nodes:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((node.host, node.port), timeout=1.0) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log = (record.dir / node.name / "sshd.log").read_text(errors="replace").strip()
                raise ClusterError(f"sshd of {node.name} did not start on {node.host}:{node.port}"
                                   + (f": {log.splitlines()[-1]}" if log else ""))
            time.sleep(0.05)


def _processes(record: ClusterRecord) -> list[int]:
    """Every process of the cluster: those `cluster_processes` finds, and every one inside its node namespaces."""
    return alive(sorted({*cluster_processes(record.local["cluster_id"], str(record.dir)), *local_ns.members(record)}))


def _stop_processes(record: ClusterRecord) -> list[int]:
    """TERM, then KILL, every process of the cluster; the PIDs still alive."""
    return stop_processes(lambda: _processes(record))


def running(record: ClusterRecord) -> bool:
    """True while any process of the cluster lives (a stopped cluster, or one whose machine rebooted, has none)."""
    return bool(_processes(record))


def job_count(record: ClusterRecord) -> int:
    """How many jobs the cluster's queue holds on disk (every state)."""
    jobs = Path(record.runner_root) / "jobs"
    return sum(1 for _ in jobs.iterdir()) if jobs.is_dir() else 0


def stop(record: ClusterRecord, reason: str) -> list[int]:
    """Stop every process of the cluster and keep its files (queue, outputs, history, shutdown record): the
    runner is asked to stop and waited for first, so it is never killed mid-write. Returns the PIDs that
    would not stop; with none, the record says stopped."""
    _stop_runner(Path(record.runner_root))
    survivors = _stop_processes(record)
    if not survivors:
        local_ns.teardown(record.local["cluster_id"], strict=True)
        _reload_nodes(record)
        record.stopped_at = time.time()
        record.stop_reason = reason
        record.save()
    return survivors


def _stop_runner(root: Path, grace: float = 10.0) -> None:
    """Ask a serving runner to stop (`stop-runner`) and wait until it let go of its lock."""
    if _runner_serving(root):
        (root / "stop-runner").touch()
        deadline = time.monotonic() + grace
        while _runner_serving(root) and time.monotonic() < deadline:
            time.sleep(0.05)
    (root / "stop-runner").unlink(missing_ok=True)


def _runner_serving(root: Path) -> bool:
    lock = root / "runner.lock"
    if not lock.is_file():
        return False
    with open(lock, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def start(record: ClusterRecord) -> ClusterRecord:
    """Start a stopped cluster's sshds again from its kept files (same addresses, port and host keys); the
    caller starts the runner, which picks up the queue. On failure stop what was started, keep every file."""
    require_tools()
    cluster_id = record.local["cluster_id"]
    if running(record):
        if record.stopped_at is None:
            raise ClusterError(f"cluster {record.name!r} is already running")
        _stop_processes(record)  # leftovers of an interrupted stop
    _reload_nodes(record)
    nodes = _pool_up(record)
    namespaced = record.local.get("network") == "namespaces"
    if namespaced:
        local_ns.teardown(cluster_id, strict=True)  # leftovers of an interrupted stop or start
    for node in [] if namespaced else nodes:  # a namespaced node's address is its own netns's
        if not _port_free(node.host, node.port):
            raise ClusterError(f"cannot start cluster {record.name!r}: port {node.port} on {node.host} ({node.name}) "
                               "is taken by another process; stop it and run `mpicloud start "
                               f"{record.name}` again")
    (Path(record.runner_root) / "stop-runner").unlink(missing_ok=True)
    try:
        enters = local_ns.restart_nodes(record, nodes)
        for node, enter in zip(nodes, enters, strict=True):
            _spawn_sshd(record, node, cluster_id, enter)
        _wait_ready(record, nodes=nodes)
        local_ns.restart_scheduler(record, nodes, enters)
    except BaseException:
        _stop_processes(record)
        local_ns.teardown(cluster_id)
        raise
    record.stopped_at = None
    record.stop_reason = ""
    record.save()
    return record


def _reload_nodes(record: ClusterRecord) -> None:
    """The nodes as the registry has them now: a node action (`mpicloud node start`) may have added one since
    the caller read the record, and saving the caller's copy would forget it."""
    record.nodes = registry.load(record.name).nodes


def _pool_up(record: ClusterRecord) -> list[Node]:
    """The nodes to start again: the head and those the runner's pool had up (all without a pool record)."""
    try:
        states = json.loads((Path(record.runner_root) / POOL_FILE).read_text())["nodes"]
    except (OSError, ValueError, KeyError):
        return list(record.nodes)
    return [n for i, n in enumerate(record.nodes)
            if i == 0 or (states.get(n.name) or {}).get("state") in (UP, DRAINING, STARTING)]


def down(record: ClusterRecord) -> DownReport | list[int]:
    """Stop every process the cluster started (sshds, sessions, runner, jobs, ranks), then remove its files and
    every job's data; the PIDs that would not stop (nothing removed) when some survive."""
    survivors = _stop_processes(record)
    if survivors:
        return survivors
    local_ns.teardown(record.local["cluster_id"], strict=True)
    jobs = job_count(record)
    removed = [str(record.dir)]
    root = Path(record.runner_root)
    if not root.resolve().is_relative_to(record.dir.resolve()):  # shared.path outside: only mpicloud's folder
        shutil.rmtree(root, ignore_errors=True)
        removed.append(str(root))
    registry.forget(record.name)
    return DownReport(name=record.name, provider="local", jobs_removed=jobs, removed=tuple(removed))
