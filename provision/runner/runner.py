"""mpicloud cluster-side job runner: a durable FIFO queue on the shared storage (stdlib only, any OS).

Layout under ROOT (normally <shared>/.mpicloud):
  runner.json       cluster config (nodes, slots, launcher, idle shutdown, stop command)
  queue/<id>/       submitted jobs (a client renames spool/<id> here atomically)
  jobs/<id>/        accepted jobs: job.json, state.json, stdout.log, stderr.log, post.log, work/, hostfile,
                    result.json (written by the job's own wrapper process), cancel (a cancel request); with
                    Slurm also slurm.out and allocation.json (the wrapper's hosts, from its allocation)
  slurm/            Slurm backend: <token>.list (an array's job ids and launch tokens), array tasks' output
  order.log         accepted job ids in FIFO order, one per line (rebuilt from jobs/ after a crash)
  store/<sha256>    content-addressed inputs;   status.json  heartbeat, slot usage, unreachable nodes
  spool/<id>/       submissions being written by a client (reaped after spool_max_age_seconds)
Commands: serve | supervise | start | exec JOB | list | status | purge JOB

What starts, tracks and stops jobs is a backend (runner.json `scheduler`): BuiltinBackend (slots, a wrapper
process per job) or SlurmBackend (an sbatch allocation per job, a sweep as one array).
Every step is recoverable: the job dir is the source of truth, each launch of a job has a token the wrapper
claims (launch-<token>) before it runs anything, and a job's processes carry MPICLOUD_JOB_ID and
MPICLOUD_LAUNCH in their environment so that they can be found (and stopped) on every node.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import posixpath
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

# an isolated interpreter (-I, or Windows' embeddable Python with its ._pth file) leaves the script's own
# directory off sys.path: the protocol package installed beside this file must still be found
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpicloud.protocol import objects
from mpicloud.protocol.atomic import WINDOWS, write_text
from mpicloud.protocol.jobs import (
    CANCEL_FILE,
    HEARTBEAT_STALE,
    JOB_FILE,
    JOB_VERSION,
    JOBS,
    QUEUE,
    RESULT_FILE,
    ROOT_DIRS,
    SPOOL,
    STATE_FILE,
    STATUS_FILE,
    STORE,
    TERMINAL,
    upgrade_job,
)
from mpicloud.protocol.objects import BLOB_CONFIG
from mpicloud.protocol.paths import UnsafePath, check_name, safe_join

RUNNER_VERSION = 2
LAUNCH_VAR = "MPICLOUD_LAUNCH"
JOB_VARS = ("MPICLOUD_JOB_ID", "MPICLOUD_NP", "MPICLOUD_HOSTFILE", "MPICLOUD_JOB_DIR", "MPICLOUD_WORK_DIR",
            "MPICLOUD_HOSTS", "MPICLOUD_SWEEP_ID", LAUNCH_VAR)
#: test hook: MPICLOUD_RUNNER_CRASH_AT=<point> makes the runner kill itself (SIGKILL) when it reaches <point>
CRASH_VAR = "MPICLOUD_RUNNER_CRASH_AT"
WAKE_CHECK = 0.002  # seconds (see nap)
CRASH_POINTS = ("accept.after_rename", "accept.after_state", "accept.after_order", "start.after_starting",
                "start.after_spawn", "start.after_running", "finish.before_state", "finish.after_state")
#: seconds without a heartbeat after which the runner counts as dead
#: seconds between TERM and KILL when a job is stopped
STOP_GRACE = 5.0
SIGKILL = getattr(signal, "SIGKILL", 9)  # Windows' signal module has none (taskkill /F is used there)
#: the cluster-side object client (S3, Azure Blob) for URL inputs and --output-to, installed beside this file
BUCKETIO = Path(__file__).with_name("bucketio.py")
#: what one log stream of a job may take on the shared disk (runner.json `log_limit_bytes`; a job may ask for
#: less with MPICLOUD_LOG_LIMIT): its first half and its last half are kept
LOG_LIMIT_BYTES = 1 << 30
LOG_CHUNK = 1 << 16


# ---------------------------------------------------------------- small file helpers
def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (temporary file + replace)."""
    write_text(path, json.dumps(data, sort_keys=True, indent=1))


def now() -> float:
    return time.time()


def crash_point(name: str) -> None:
    """The test hook: die here, as `kill -9` would, when CRASH_VAR names this point."""
    if os.environ.get(CRASH_VAR) == name:
        if WINDOWS:
            os._exit(137)
        os.kill(os.getpid(), signal.SIGKILL)


def claim_launch(jobdir: Path, launch: str, text: str) -> bool:
    """Claim one launch of a job atomically: the wrapper claims it to run, a restarted runner to give it up
    (the launch never started); whoever comes first wins, the other backs off."""
    try:
        fd = os.open(jobdir / f"launch-{launch}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


# ---------------------------------------------------------------- processes
def process_start_time(pid: int) -> str | None:
    """A token identifying this incarnation of pid (None when the process is gone)."""
    if WINDOWS:
        return _windows_start_time(pid)
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return "unknown"


def _windows_start_time(pid: int) -> str | None:
    import ctypes
    from ctypes import wintypes

    kernel = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return None
    try:
        code = wintypes.DWORD()
        kernel.GetExitCodeProcess(handle, ctypes.byref(code))
        if code.value != 259:  # STILL_ACTIVE
            return None
        times = [wintypes.FILETIME() for _ in range(4)]
        kernel.GetProcessTimes(handle, *[ctypes.byref(t) for t in times])
        return f"{times[0].dwHighDateTime}:{times[0].dwLowDateTime}"
    finally:
        kernel.CloseHandle(handle)


def alive(pid: int, token: str | None) -> bool:
    """True when pid is running and is the same process we started (not a reused pid)."""
    current = process_start_time(pid)
    return current is not None and (token in (None, "unknown") or current in (token, "unknown"))


def spawn_detached(argv: list[str], cwd: Path, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a process that outlives this one and the SSH session (without the test hook's variable)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if k != CRASH_VAR}
    kwargs: dict[str, Any] = {"cwd": str(cwd), "stdin": subprocess.DEVNULL, "stdout": out, "stderr": out,
                              "close_fds": True, "env": env}
    if WINDOWS:
        kwargs["creationflags"] = 0x00000200 | 0x00000008  # CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(argv, **kwargs)


def spawn_wrapper(args: list[str], cwd: Path, log: Path) -> int | subprocess.Popen[bytes]:
    """`runner.py ARGS` detached as spawn_detached; POSIX: forked (forkwrap.py), a pid."""
    if WINDOWS:
        return spawn_detached([sys.executable, str(Path(__file__).resolve()), *args], cwd, log)
    from forkwrap import fork_wrapper

    return fork_wrapper(main, args, cwd, log, CRASH_VAR)


def signal_marked(job_id: str, launch: str | None, sig: int) -> list[int]:
    """Send sig (0: none) to every process on this machine whose environment carries the job's markers
    (MPICLOUD_JOB_ID, and MPICLOUD_LAUNCH of this launch): the wrapper hands them to the job's command,
    mpirun to every rank, setsid children keep them. Returns their PIDs. Self-contained: the runner sends
    this function's source to the other nodes of a job."""
    import os

    want = {f"MPICLOUD_JOB_ID={job_id}".encode()} | ({f"MPICLOUD_LAUNCH={launch}".encode()} if launch else set())
    found: list[int] = []
    if not os.path.isdir("/proc"):
        return found
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if not want <= set(handle.read().split(b"\0")):
                    continue
            if sig:
                os.kill(int(name), sig)
        except OSError:
            continue
        found.append(int(name))
    return found


def signal_group(pid: int, token: str | None, sig: int) -> None:
    """Signal the process group a wrapper leads (its command and what it started), if the wrapper lives."""
    if not alive(pid, token):
        return
    if WINDOWS:
        if sig:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, sig)


def rsh_argv(config: dict[str, Any], via: Path | None = None) -> list[str]:
    """How this node runs a command on another node: runner.json's `rsh`, else Open MPI's ssh agent (the
    cluster's own ssh config), else plain ssh; never prompting. `via`: the runner's shared connection to that
    node (ssh -S; a plain connection when it is not there)."""
    if config.get("rsh"):
        return [str(a) for a in config["rsh"]]
    agent = os.environ.get("OMPI_MCA_plm_rsh_agent", "ssh")  # noqa: SIM112 - Open MPI's own name
    argv = [*shlex.split(agent.split(":")[0].strip() or "ssh"), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    return argv + (["-o", "ControlMaster=no", "-S", str(via)] if via is not None else [])


def control_socket(root: Path, node: str) -> Path | None:
    """Where the runner keeps its shared ssh connection to a node (local disk: sockets do not work on the
    shared storage); None where the runner does not keep one (Windows, a configured rsh)."""
    if WINDOWS:
        return None
    import hashlib

    folder = Path(tempfile.gettempdir()) / f"mpicloud-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / hashlib.sha256(f"{root.resolve()}\0{node}".encode()).hexdigest()[:16]


def remote_command(work: str, env: dict[str, str], argv: list[str]) -> str:
    """A shell command line that runs argv in work with env on another node."""
    assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    return f"cd {shlex.quote(work)} && exec env {assigns} {shlex.join(argv)}"


# ---------------------------------------------------------------- launchers
def allocate(nodes: list[dict[str, Any]], busy: dict[str, int], cores: int) -> list[tuple[str, int]] | None:
    """Pick slots for `cores`, filling nodes in order; None when they do not fit now."""
    picked: list[tuple[str, int]] = []
    need = cores
    for node in nodes:
        free = int(node["slots"]) - busy.get(node["name"], 0)
        if free > 0 and need > 0:
            take = min(free, need)
            picked.append((node["name"], take))
            need -= take
    return picked if need == 0 else None


def hostfile_text(hosts: list[tuple[str, int]], os_name: str) -> str:
    """Open MPI hostfile (`name slots=n`) or MS-MPI machinefile (`name n`)."""
    if os_name == "windows":
        return "".join(f"{name} {count}\n" for name, count in hosts)
    return "".join(f"{name} slots={count}\n" for name, count in hosts)


def launch_argv(launcher: str, hosts: list[tuple[str, int]], np: int, hostfile: str, workdir: str,
                env: dict[str, str], argv: list[str]) -> list[str]:
    """The MPI launcher command for a job: mpirun (Open MPI) or mpiexec (MS-MPI)."""
    if launcher == "mpiexec":
        out = ["mpiexec", "-hosts", str(len(hosts))]
        for name, count in hosts:
            out += [name, str(count)]
        out += ["-wdir", workdir]
        for key in sorted(env):
            out += ["-env", key, env[key]]
        return out + argv
    out = ["mpirun", "--hostfile", hostfile, "-np", str(np)]
    for key in sorted(env):
        out += ["-x", key]
    return out + argv


def launcher_program(name: str) -> str:
    """The launcher's path: on PATH, or MS-MPI's bin folder (sessions started before its install lack PATH)."""
    found = shutil.which(name)
    if found is None and os.environ.get("MSMPI_BIN"):
        candidate = Path(os.environ["MSMPI_BIN"]) / f"{name}.exe"
        found = str(candidate) if candidate.is_file() else None
    return found or name


# ---------------------------------------------------------------- the job wrapper (one per job)
def unpack(archive: Path, dest: Path) -> None:
    """Unpack .zip, .tar, .tar.gz/.tgz, .tar.zst/.tzst into dest, member by member by the one path rule
    (mpicloud.protocol.paths): regular files, directories, and links that stay inside dest; anything else
    (absolute or `..` names, links leading out, devices, fifos) refuses the whole input."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    _place_link(dest, info.filename, zf.read(info).decode())
                elif info.is_dir():
                    _place_dir(dest, info.filename)
                else:
                    with zf.open(info) as source:
                        _place_file(dest, info.filename, source, mode & 0o777 or 0o644)
        return
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            _untar(tf, dest)
        return
    if name.endswith((".tar.zst", ".tzst")):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise RuntimeError(f"{archive.name}: unpacking .tar.zst needs the 'zstd' program on the cluster")
        proc = subprocess.Popen([zstd, "-dc", str(archive)], stdout=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
                _untar(tf, dest)
        finally:
            if proc.stdout:
                proc.stdout.close()
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"{archive.name}: zstd could not decompress it")
        return
    raise RuntimeError(f"{archive.name}: unknown archive type (use .zip, .tar, .tar.gz or .tar.zst)")


def _untar(tf: tarfile.TarFile, dest: Path) -> None:
    """Every member of a tar archive (works in stream mode too: members are read in order)."""
    for member in tf:
        if member.isdir():
            _place_dir(dest, member.name)
        elif member.isfile():
            source = tf.extractfile(member)
            assert source is not None
            _place_file(dest, member.name, source, member.mode & 0o777, member.mtime)
        elif member.issym():
            _place_link(dest, member.name, member.linkname)
        elif member.islnk():  # a hard link to an earlier member: a copy of that file
            earlier = _target(dest, member.linkname)
            if not earlier.is_file() or earlier.is_symlink():
                raise RuntimeError(f"archive member {member.name!r} links to {member.linkname!r}, which is not "
                                   "a file unpacked before it")
            with open(earlier, "rb") as source:
                _place_file(dest, member.name, source, member.mode & 0o777, member.mtime)
        else:
            raise RuntimeError(f"archive member {member.name!r} is a device or fifo; refusing to unpack it")


def _target(dest: Path, member: str) -> Path:
    """Where an archive member goes (leading `./` and a trailing `/` allowed); RuntimeError when refused."""
    name = member.rstrip("/")
    while name.startswith("./"):
        name = name[2:]
    try:
        return safe_join(dest, name)
    except UnsafePath as exc:
        raise RuntimeError(f"archive member refused: {exc}") from None


def _place_dir(dest: Path, member: str) -> None:
    if member.rstrip("/") in ("", "."):
        return
    _target(dest, member).mkdir(parents=True, exist_ok=True)


def _place_file(dest: Path, member: str, source: Any, mode: int, mtime: float | None = None) -> None:
    target = _target(dest, member)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise RuntimeError(f"archive member {member!r} is a file where a directory already is")
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    os.chmod(target, (mode & 0o777) | 0o600)  # no setuid/setgid/sticky bits; always readable by the job
    if mtime is not None:
        os.utime(target, (mtime, mtime))


def _place_link(dest: Path, member: str, link: str) -> None:
    """A symbolic link whose target is relative and stays inside dest (checked lexically, by the path rule)."""
    target = _target(dest, member)
    relative = posixpath.normpath(posixpath.join(posixpath.dirname(target.relative_to(dest).as_posix()), link))
    try:
        check_name(relative)  # an absolute link, `..` leading out or a backslash is refused here
    except UnsafePath:
        raise RuntimeError(f"archive member {member!r} is a link to {link!r}, outside the work dir") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    os.symlink(link, target)


def _inputs_name(name: str) -> Path:
    """An input's name as a relative path; RuntimeError naming it when it is refused by the path rule."""
    try:
        return Path(*check_name(name).parts)
    except UnsafePath as exc:
        raise RuntimeError(f"input name refused: {exc}") from None


def stage_inputs(root: Path, jobdir: Path, job: dict[str, Any], work: Path, env: dict[str, str]) -> None:
    """Place inputs in the work dir in the order given; archives marked unpack are overlaid in order. A
    directory input arrives as a folder of the same name (its files' names are `DIR/...`)."""
    for item in job["inputs"]:
        source = item.get("source", "store")
        if source == "object":
            path = _object_get(item["url"], jobdir / ".inputs", env)
        elif source == "store":
            path = _named(root / STORE / item["sha256"], item["name"], jobdir / ".inputs")
        else:
            path = jobdir / _inputs_name(item["name"])
        if path.is_dir():
            shutil.copytree(path, work / path.name, dirs_exist_ok=True)
            continue
        if not path.is_file():
            raise RuntimeError(f"input {item['name']} is missing on the cluster ({path})")
        if item.get("unpack"):
            unpack(path, work)
        else:
            target = _target(work, item["name"])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            _keep_mode_and_time(target, item)


def _keep_mode_and_time(target: Path, item: dict[str, Any]) -> None:
    """The uploader's permission bits (never setuid/setgid/sticky; not on Windows) and modification time."""
    if item.get("mode") is not None and not WINDOWS:
        os.chmod(target, int(item["mode"]) & 0o777)
    if item.get("mtime") is not None:
        os.utime(target, ns=(int(item["mtime"]), int(item["mtime"])))


def snapshot(work: Path, manifest: Path) -> None:
    """Record the staged inputs (size, mtime) so only files the job created or changed go to --output-to."""
    files = {p.relative_to(work).as_posix(): [st.st_size, st.st_mtime_ns]
             for p in work.rglob("*") if p.is_file() and (st := p.stat())}
    write_json(manifest, files)


def _named(path: Path, name: str, folder: Path) -> Path:
    """Archives are typed by their file name: link the store object under its original name."""
    link = folder / _inputs_name(name)
    link.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and not link.exists():
        try:
            os.link(path, link)
        except OSError:
            shutil.copyfile(path, link)
    return link


def _object_get(url: str, folder: Path, env: dict[str, str]) -> Path:
    """Download one object or prefix with the node's own credentials (bucketio.py beside this file)."""
    folder.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, str(BUCKETIO), "get", url, str(folder)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or f"download of {url} failed")
    return folder / objects.parse(url).name


def job_env(root: Path, jobdir: Path, job: dict[str, Any], hosts: list[tuple[str, int]],
            config: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in config.get("env", {}).items()})
    env.update({str(k): str(v) for k, v in job.get("env", {}).items()})
    env.update({
        "MPICLOUD_JOB_ID": job["id"], "MPICLOUD_NP": str(job["cores"]),
        "MPICLOUD_HOSTFILE": str(jobdir / "hostfile"), "MPICLOUD_JOB_DIR": str(jobdir),
        "MPICLOUD_WORK_DIR": str(jobdir / "work"), "MPICLOUD_HOSTS": ",".join(f"{h}:{n}" for h, n in hosts),
    })
    if job.get("sweep"):
        env["MPICLOUD_SWEEP_ID"] = job["sweep"]
    aws = root / "aws"
    if (aws / "config").is_file():  # the bucket profile installed by `mpicloud bucket install`
        env.setdefault("AWS_CONFIG_FILE", str(aws / "config"))
        env.setdefault("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
        env.setdefault("AWS_PROFILE", "mpicloud")
    if (root / BLOB_CONFIG).is_file():  # the container SAS installed by `mpicloud bucket install`
        env.setdefault("MPICLOUD_BLOB_CONFIG", str(root / BLOB_CONFIG))
    if config.get("object_libs"):  # the storage SDKs, where the node's Python lacks them (Windows)
        env.setdefault("MPICLOUD_OBJECT_LIBS", str(config["object_libs"]))
    return env


def preflight_problem(config: dict[str, Any], hosts: list[tuple[str, int]]) -> str | None:
    """Why an MPI job must not start: a file the deployment requires is missing (`require_files`: path and
    reason, e.g. MS-MPI's verified saved credentials), or a node does not see the shared storage (its
    `share_marker` file, asked over `share_probe` + HOST + `test -f MARKER`). None when all is well."""
    for required in config.get("require_files") or []:
        if not Path(required["path"]).is_file():
            return f"not ready: {required['reason']}"
    marker, probe = config.get("share_marker"), config.get("share_probe")
    if not (marker and probe):
        return None
    for host in sorted({h for h, _ in hosts}):
        try:
            seen = subprocess.run([*probe, host, "test", "-f", marker], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=60, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            seen = False
        if not seen:
            return f"{host} does not see the shared storage ({marker} is missing there); the job was not started"
    return None


def run_job(root: Path, job_id: str, launch: str) -> int:
    """`exec`: run one launch of a job to completion in its own process group and write result.json; nothing
    when the runner gave this launch up (it restarted before the wrapper started)."""
    jobdir = root / JOBS / job_id
    me = f"{os.getpid()} {process_start_time(os.getpid())}"
    if not claim_launch(jobdir, launch, me):
        return 0
    (jobdir / "wrapper.pid").write_text(me, encoding="utf-8")
    job = upgrade_job(read_json(jobdir / JOB_FILE))
    state = read_json(jobdir / STATE_FILE)
    config = read_json(root / "runner.json")
    hosts = [(h, int(n)) for h, n in state["hosts"]]
    in_slurm = not hosts and "SLURM_JOB_ID" in os.environ
    result: dict[str, Any] = {"exit_code": None, "post_exit_code": None, "reason": None}
    try:
        if in_slurm:
            hosts = record_allocation(jobdir, config["os"])
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        result.update(exit_code=126, reason=f"could not read the Slurm allocation: {exc}")
        return _finish(jobdir, result)
    work = jobdir / "work"
    work.mkdir(exist_ok=True)
    env = job_env(root, jobdir, job, hosts, config)
    env[LAUNCH_VAR] = launch
    try:
        stage_inputs(root, jobdir, job, work, env)
    except (RuntimeError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        result.update(exit_code=126, reason=f"input staging failed: {exc}")
        return _finish(jobdir, result)
    argv = list(job["argv"])
    if job.get("mpi"):
        problem = preflight_problem(config, hosts)
        if problem:
            result.update(exit_code=126, reason=problem)
            return _finish(jobdir, result)
        exported = {k: env[k] for k in env if k in JOB_VARS or k in job.get("env", {})}
        argv = launch_argv(config["launcher"], hosts, int(job["cores"]), str(jobdir / "hostfile"),
                           str(work), exported, argv)
        argv[0] = launcher_program(argv[0])
    elif hosts[0][0] != config["nodes"][0]["name"] and not (WINDOWS or in_slurm):  # a script runs on its first node
        exported = {k: env[k] for k in env if k in JOB_VARS or k in job.get("env", {}) or k in config.get("env", {})}
        via = None if config.get("rsh") else control_socket(root, hosts[0][0])
        argv = [*rsh_argv(config, via), hosts[0][0], remote_command(str(work), exported, argv)]
    out, err, post = jobdir / "stdout.log", jobdir / "stderr.log", jobdir / "post.log"
    snapshot(work, jobdir / "inputs.json")
    limit = log_limit(config, job)
    result["exit_code"], result["reason"] = _run(argv, work, env, out, err, limit)
    if job.get("post") and not (jobdir / CANCEL_FILE).exists():
        result["post_exit_code"], _ = _run(list(job["post"]), work, env, post, post, limit)
    if job.get("output_to") and not (jobdir / CANCEL_FILE).exists():
        problem = push_outputs(work, job["output_to"], jobdir, env)
        if problem and result["exit_code"] == 0:
            result.update(exit_code=1, reason=f"upload to {job['output_to']} failed: {problem} (see post.log)")
    return _finish(jobdir, result)


def push_outputs(work: Path, url: str, jobdir: Path, env: dict[str, str]) -> str | None:
    """Upload the files the job created or changed (bucketio.py put); the failure's last line, or None. Its
    output and errors go to post.log."""
    with open(jobdir / "post.log", "ab") as log:
        done = subprocess.run([sys.executable, str(BUCKETIO), "put", str(work), url, "--skip",
                               str(jobdir / "inputs.json")], env=env, stdout=log, stderr=subprocess.PIPE,
                              check=False)
        log.write(done.stderr)
    if done.returncode == 0:
        return None
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1].removeprefix("bucketio: ") if lines else f"exit code {done.returncode}"


def slurm_hosts(names: list[str], tasks_per_node: str) -> list[tuple[str, int]]:
    """The hosts of a Slurm allocation: its node names with SLURM_TASKS_PER_NODE (`2(x3),1`: 2 tasks on
    each of 3 nodes, then 1)."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        count, _, times = part.partition("(x")
        counts += [int(count)] * int(times.rstrip(")") or 1)
    if len(counts) != len(names):
        raise ValueError(f"{len(names)} nodes ({','.join(names)}) but tasks per node {tasks_per_node!r}")
    return list(zip(names, counts, strict=True))


def record_allocation(jobdir: Path, os_name: str) -> list[tuple[str, int]]:
    """Inside a Slurm allocation: its hosts (`scontrol show hostnames` expands a node list; one node's name is
    the list itself), written as the job's hostfile and as allocation.json (when the job started, on which
    hosts) for the runner."""
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    names = [nodelist] if not set("[,") & set(nodelist) else subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60,
        check=True).stdout.split()
    hosts = slurm_hosts(names, os.environ.get("SLURM_TASKS_PER_NODE", ""))
    (jobdir / "hostfile").write_text(hostfile_text(hosts, os_name), encoding="utf-8")
    write_json(jobdir / "allocation.json", {"hosts": hosts, "started_at": now(),
                                            "slurm_job_id": os.environ["SLURM_JOB_ID"]})
    return hosts


def log_limit(config: dict[str, Any], job: dict[str, Any]) -> int:
    """Bytes one log stream of this job may keep: the cluster's cap, or less when the job asks for less."""
    limit = int(config.get("log_limit_bytes") or LOG_LIMIT_BYTES)
    asked = str(job.get("env", {}).get("MPICLOUD_LOG_LIMIT", "")).strip()
    if asked.isdigit():
        limit = min(limit, int(asked))
    return max(limit, 2)


class CappedLog:
    """A job log that keeps its first and its last limit/2 bytes. The head goes to the log as it arrives (so
    `logs --follow` shows it live); past it a marker line is written and the output goes round a ring file
    (`<log>.tail`) of limit/2 bytes, appended to the log after a second marker when the stream ends."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.log = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        self.head_room = max(0, limit - limit // 2 - self.log.tell())
        self.ring_size = limit // 2
        self.ring: Any = None
        self.ring_pos = 0
        self.tail_bytes = 0
        self.closed = False
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            if self.head_room:
                head = data[:self.head_room]
                self.log.write(head)
                self.head_room -= len(head)
                data = data[len(head):]
            if data:
                self._to_ring(data)

    def _to_ring(self, data: bytes) -> None:
        if self.ring is None:
            self.ring = open(f"{self.path}.tail", "w+b")  # noqa: SIM115 - closed by close()
            self.log.write(f"\n[mpicloud: log limit reached; the last {self.ring_size} bytes of the rest are "
                           "added when the job ends]\n".encode())
        self.tail_bytes += len(data)
        if len(data) > self.ring_size:  # only the last ring_size bytes can survive
            self.ring_pos = (self.ring_pos + len(data) - self.ring_size) % self.ring_size
            data = data[-self.ring_size:]
        while data:
            n = min(len(data), self.ring_size - self.ring_pos)
            self.ring.seek(self.ring_pos)
            self.ring.write(data[:n])
            self.ring_pos = (self.ring_pos + n) % self.ring_size
            data = data[n:]

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.ring is not None:
                kept = min(self.tail_bytes, self.ring_size)
                self.log.write(f"\n[mpicloud: {self.tail_bytes - kept} bytes dropped; the last {kept} bytes "
                               "follow]\n".encode())
                spans = [(self.ring_pos, self.ring_size), (0, self.ring_pos)] if self.tail_bytes > self.ring_size \
                    else [(0, self.ring_pos or kept)]
                for start, end in spans:
                    self.ring.seek(start)
                    left = end - start
                    while left > 0:
                        chunk = self.ring.read(min(left, 1 << 20))
                        self.log.write(chunk)
                        left -= len(chunk)
                self.ring.close()
                os.unlink(f"{self.path}.tail")
            self.log.close()


def _pump(source: Any, sink: CappedLog) -> None:
    while chunk := source.read1(LOG_CHUNK):
        sink.write(chunk)


def _run(argv: list[str], work: Path, env: dict[str, str], out: Path, err: Path,
         limit: int = LOG_LIMIT_BYTES) -> tuple[int, str | None]:
    sinks = {out: CappedLog(out, limit)}
    if err not in sinks:
        sinks[err] = CappedLog(err, limit)
    try:
        try:
            proc = subprocess.Popen(argv, cwd=str(work), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT if err == out else subprocess.PIPE)
        except FileNotFoundError:
            return 127, f"command not found on the cluster: {argv[0]}"
        except PermissionError:
            return 126, f"command is not executable: {argv[0]}"
        # one log for both streams: one pipe, so the lines stay in the order the command wrote them
        pipes = ((proc.stdout, out),) if err == out else ((proc.stdout, out), (proc.stderr, err))
        pumps = [threading.Thread(target=_pump, args=(pipe, sinks[path]), daemon=True) for pipe, path in pipes]
        for pump in pumps:
            pump.start()
        code = proc.wait()
        for pump in pumps:  # a background process the job left behind may hold the pipes: stop listening
            pump.join(timeout=5.0)
    finally:
        for sink in sinks.values():
            sink.close()
    if code < 0:
        return 128 - code, f"killed by signal {-code}"
    return code, None if code == 0 else f"exited with code {code}"


def _finish(jobdir: Path, result: dict[str, Any], patience: float = 600.0) -> int:
    """Record the result; a full disk is waited out (for `patience` seconds) rather than losing the result."""
    result["ended_at"] = now()
    deadline = now() + patience
    while True:
        try:
            write_json(jobdir / RESULT_FILE, result)
            with contextlib.suppress(OSError):
                os.utime(jobdir.parent)  # wakes the runner (see nap)
            return 0
        except OSError:
            if now() > deadline:
                raise
            time.sleep(1.0)


# ---------------------------------------------------------------- the queue (one per cluster)
class Runner:
    """Accepts submitted jobs, starts them in strict FIFO order when their cores fit, tracks them until every
    one of their processes is gone; every step can be cut short by a crash and is finished by recover()."""

    def __init__(self, root: Path, poll: float = 0.05, backend: Any = None) -> None:
        self.root = root
        self.poll = poll
        self.config = read_json(root / "runner.json")
        self.nodes: list[dict[str, Any]] = self.config["nodes"]
        self.head = str(self.nodes[0]["name"])
        self.queue: list[str] = []
        self.cores: dict[str, int] = {}  # queued jobs' cores (for the pool's decisions)
        self.running: dict[str, dict[str, Any]] = {}
        self.stopping: dict[str, dict[str, Any]] = {}  # job id -> why, since when, KILL sent, nodes unchecked
        self.unadmitted: list[str] = []  # renamed into jobs/ but not yet recorded (a write failed)
        self.start_errors: dict[str, int] = {}
        self.unreachable: dict[str, float] = {}  # node -> since
        self.probe_failures: dict[str, int] = {}
        self.probes: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
        self.masters: dict[str, subprocess.Popen[bytes]] = {}
        self.last_probe: dict[str, float] = {}
        self.last_spool_reap = 0.0
        self.last_message = ("", 0.0)
        self.started_at = now()
        self.last_active = now()
        self.last_status = 0.0
        self.last_accepted = 0.0
        self.last_cancel_scan = 0.0
        for name in ROOT_DIRS:
            (root / name).mkdir(exist_ok=True)
        self.backend: Backend = backend(self) if backend else make_backend(self)
        self.pool = make_pool(self)
        self.refresh_nodes()

    # -- state
    def jobdir(self, job_id: str) -> Path:
        return self.root / JOBS / job_id

    def state(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = read_json(self.jobdir(job_id) / STATE_FILE)
        return data

    def set_state(self, job_id: str, **changes: Any) -> dict[str, Any]:
        state = self.state(job_id)
        state.update(changes)
        write_json(self.jobdir(job_id) / STATE_FILE, state)
        return state

    def refresh_nodes(self) -> None:
        """The nodes jobs may use come from the pool (up or draining); a stopped node is nobody's to probe."""
        self.nodes = self.pool.node_list()
        self.total = self.pool.capacity()
        present = {str(n["name"]) for n in self.nodes}
        for name in [n for n in self.unreachable if n not in present]:
            del self.unreachable[name]
            self.probe_failures.pop(name, None)

    def scale(self) -> None:
        """One pass of the elastic pool: start nodes for queued cores, drain and stop what is not needed."""
        if not self.pool.resume:
            return  # no node actions: a fixed size
        self.cores = {j: self.cores.get(j) or int(self.state(j)["cores"]) for j in self.queue}
        self.pool.step(list(self.cores.values()), self.busy())

    def busy(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for state in self.running.values():
            for name, count in state["hosts"]:
                used[name] = used.get(name, 0) + int(count)
        return used

    def log(self, message: str) -> None:
        """One line in runner.log (the same message at most once a minute: a full disk must not fill a log)."""
        if self.last_message[0] == message and now() - self.last_message[1] < 60:
            return
        self.last_message = (message, now())
        with contextlib.suppress(OSError):  # the log may be on the full disk too
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", file=sys.stderr, flush=True)

    # -- accepting: the job dir is the source of truth; state.json and order.log are derived from it
    def initial_state(self, job_id: str) -> dict[str, Any]:
        base = {"id": job_id, "version": JOB_VERSION, "hosts": [], "exit_code": None, "post_exit_code": None,
                "reason": None, "started_at": None, "ended_at": None}
        try:
            job = upgrade_job(read_json(self.jobdir(job_id) / JOB_FILE))
            base.update(state="queued", cores=int(job["cores"]), name=job.get("name"), sweep=job.get("sweep"),
                        submitted_at=job.get("submitted_at", now()))
        except (ValueError, KeyError, TypeError) as exc:
            base.update(state="failed", reason=f"invalid job description: {exc}", ended_at=now())
        return base

    def accept(self) -> None:
        for job_id in list(self.unadmitted):
            self.admit(job_id)
            self.unadmitted.remove(job_id)
        for job_id in sorted(os.listdir(self.root / QUEUE)):
            src = self.root / QUEUE / job_id
            if job_id.startswith(".") or not (src / JOB_FILE).exists():
                continue
            dst = self.jobdir(job_id)
            if dst.exists():  # the same submission again (idempotent submit): keep the first
                shutil.rmtree(src, ignore_errors=True)
                continue
            os.replace(src, dst)
            crash_point("accept.after_rename")
            self.unadmitted.append(job_id)
            self.admit(job_id)
            self.unadmitted.remove(job_id)

    def admit(self, job_id: str) -> None:
        """Record an accepted job dir: state.json, then its line in order.log (recover() finishes either)."""
        state_file = self.jobdir(job_id) / STATE_FILE
        if not state_file.exists():
            write_json(state_file, self.initial_state(job_id))
            crash_point("accept.after_state")
        with open(self.root / "order.log", "a", encoding="utf-8") as log:
            log.write(job_id + "\n")
        crash_point("accept.after_order")
        if self.state(job_id)["state"] == "queued":
            self.queue.append(job_id)
        self.last_active = self.last_accepted = now()

    # -- start-up: rebuild from disk, finish interrupted steps, re-adopt running jobs
    def recover(self) -> None:
        for job_id in self.repair_order():
            try:
                state = self.state(job_id)
            except (OSError, ValueError):
                continue
            if state["state"] == "queued" and not state.get("launch"):
                self.queue.append(job_id)
            elif state["state"] == "starting":
                self.backend.resume(job_id, state)
            elif state["state"] in ("queued", "running"):  # queued with a launch: waiting in the backend's queue
                self.running[job_id] = state

    def repair_order(self) -> list[str]:
        """order.log made whole again: its complete lines naming accepted jobs, then accepted job dirs it
        lacks (a crash between the rename and the append) by submission time; every one with a state.json."""
        path = self.root / "order.log"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        recorded = [i for i in text.split("\n")[:-1] if i]  # a torn last line (no newline) is dropped
        present = {n for n in os.listdir(self.root / JOBS)
                   if not n.startswith(".") and (self.jobdir(n) / JOB_FILE).exists()}
        ids = [i for i in dict.fromkeys(recorded) if i in present]
        for job_id in present:
            if not (self.jobdir(job_id) / STATE_FILE).exists():
                write_json(self.jobdir(job_id) / STATE_FILE, self.initial_state(job_id))
        missing = sorted(present - set(ids), key=lambda i: (float(self.state(i).get("submitted_at") or 0), i))
        if missing or ids != recorded:
            ids += missing
            write_text(path, "".join(f"{i}\n" for i in ids))
        return ids

    def give_up(self, job_id: str, state: dict[str, Any], position: int | None = None) -> bool:
        """Give up a launch whose wrapper never started: the job goes back to the queue (at `position`, else
        last: recover() walks the FIFO order). False when the wrapper claimed the launch first (it runs)."""
        launch = state.get("launch")
        if not (launch and claim_launch(self.jobdir(job_id), launch, "given up by the runner\n")):
            return False
        self.set_state(job_id, state="queued", hosts=[], started_at=None, launch=None, group=None, index=None)
        self.queue.insert(len(self.queue) if position is None else position, job_id)
        return True

    # -- cancel, finish, stop: a job leaves `running` only when all its processes are gone
    def cancel_requests(self) -> None:
        """Cancel requests of queued and running jobs, looked for at most once per job and millisecond (a
        thousand jobs waiting in Slurm: once a second) so that a long queue does not make each pass a storm
        of stat calls."""
        if now() - self.last_cancel_scan < min(1.0, (len(self.queue) + len(self.running)) / 1000):
            return
        self.last_cancel_scan = now()
        for job_id in [j for j in self.queue if (self.jobdir(j) / CANCEL_FILE).exists()]:
            self.queue.remove(job_id)
            self.set_state(job_id, state="cancelled", ended_at=now(), reason="cancelled before it started")
        for job_id, state in list(self.running.items()):
            stop = self.stopping.get(job_id)
            if (self.jobdir(job_id) / CANCEL_FILE).exists() and not (stop and stop["reason"]):
                self.stop(job_id, state, self.cancel_reason(job_id))

    def cancel_reason(self, job_id: str) -> str:
        """What the cancel request says (resize --force names the node), else "cancelled while running"."""
        try:
            text = (self.jobdir(job_id) / CANCEL_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        return text if text.startswith("cancelled") else "cancelled while running"

    def stop(self, job_id: str, state: dict[str, Any], reason: str | None) -> None:
        """Begin stopping a job's processes on every node: TERM now, KILL after STOP_GRACE (see survivors)."""
        self.stopping[job_id] = {"reason": reason, "since": now(), "killed": False, "unchecked": [],
                                 "remote": [], "checked_at": 0.0, "reported": False}
        self.backend.cancel(job_id, state, signal.SIGTERM)
        signal_marked(job_id, state.get("launch"), signal.SIGTERM)
        for node in self.other_nodes(state):
            self.remote_signal(node, job_id, state.get("launch"), signal.SIGTERM)

    def other_nodes(self, state: dict[str, Any]) -> list[str]:
        return [str(h) for h, _ in state["hosts"] if str(h) != self.head and not WINDOWS]

    def remote_signal(self, node: str, job_id: str, launch: str | None, sig: int) -> list[int] | None:
        """signal_marked on another node through its ssh; None when the node cannot be reached."""
        if node in self.unreachable:
            return None
        code = (inspect.getsource(signal_marked) +
                f"print(' '.join(map(str, signal_marked({job_id!r}, {launch!r}, {int(sig)}))))\n")
        try:
            done = subprocess.run([*self.rsh(node), node, shlex.join(["python3", "-c", code])],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        return [int(p) for p in done.stdout.split()]

    def survivors(self, job_id: str, state: dict[str, Any]) -> list[str]:
        """What is left of a job (`node:pid`): its wrapper and marked processes here and, once those are gone
        and the job is being stopped, on its other nodes (asked at most every 2 s); KILL after STOP_GRACE."""
        stop = self.stopping.get(job_id)
        launch = state.get("launch")
        kill = stop is not None and now() - stop["since"] >= STOP_GRACE
        if stop is not None and kill and not stop["killed"]:
            stop["killed"] = True
            self.backend.cancel(job_id, state, SIGKILL)
        left = [f"{self.head}:{p}" for p in signal_marked(job_id, launch, SIGKILL if kill else 0)]
        if self.backend.alive(job_id, state):
            left.append(self.backend.describe(job_id, state))
        if stop is None or left:
            return left
        if now() - stop["checked_at"] >= 2.0:
            stop["checked_at"], stop["unchecked"], stop["remote"] = now(), [], []
            for node in self.other_nodes(state):
                found = self.remote_signal(node, job_id, launch, SIGKILL if kill else 0)
                if found is None:
                    stop["unchecked"].append(node)
                stop["remote"] += [f"{node}:{p}" for p in found or []]
        return list(stop["remote"])

    def reap(self) -> None:
        self.backend.poll()
        for job_id, state in list(self.running.items()):
            try:
                self.reap_one(job_id, state)
            except (OSError, ValueError) as exc:
                self.log(f"job {job_id}: {exc}")

    def reap_one(self, job_id: str, state: dict[str, Any]) -> None:
        if job_id not in self.stopping and self.backend.alive(job_id, state):
            return  # running, or writing its last bytes
        result_file = self.jobdir(job_id) / RESULT_FILE
        result = read_json(result_file) if result_file.exists() else None
        if job_id not in self.stopping and result is None:
            self.stop(job_id, state, f"{self.backend.lost(job_id, state)} without recording a result; its "
                                     "remaining processes were stopped")
        left = self.survivors(job_id, state)
        if left and job_id not in self.stopping:
            self.stop(job_id, state, None)  # the job ended and left processes behind: they go too
            return
        if left:
            stop = self.stopping[job_id]
            if now() - stop["since"] > STOP_GRACE + 30 and not stop["reported"]:
                stop["reported"] = True
                self.set_state(job_id, reason=f"{stop['reason'] or 'ending'}: {len(left)} processes would not "
                                              f"stop ({', '.join(left[:5])}); their slots stay taken")
            return
        self.finish(job_id, result)

    def finish(self, job_id: str, result: dict[str, Any] | None) -> None:
        stop = self.stopping.pop(job_id, None) or {"reason": None, "unchecked": []}
        notes = [f"processes on {', '.join(stop['unchecked'])} could not be checked (unreachable)"] \
            if stop["unchecked"] else []
        if (self.jobdir(job_id) / CANCEL_FILE).exists():
            final, reasons = "cancelled", [stop["reason"] or "cancelled while running"]
        else:
            final = "succeeded" if result is not None and result["exit_code"] == 0 else "failed"
            reasons = [r for r in (stop["reason"], result and result.get("reason")) if r]
        crash_point("finish.before_state")
        self.set_state(job_id, state=final, exit_code=result and result["exit_code"],
                       post_exit_code=result and result["post_exit_code"],
                       ended_at=result["ended_at"] if result else now(), reason="; ".join(reasons + notes) or None)
        crash_point("finish.after_state")
        del self.running[job_id]
        self.last_active = now()

    # -- nodes: probed through the cluster's own ssh; an unreachable node gets no new jobs
    def probe_nodes(self) -> None:
        interval = float(self.config.get("probe_seconds", 10))
        if WINDOWS or interval <= 0:
            return
        for node in self.nodes[1:]:
            name = str(node["name"])
            probe = self.probes.get(name)
            if probe is None:
                if now() - self.last_probe.get(name, 0.0) >= interval:
                    fresh = [] if self.config.get("rsh") else ["-o", "ControlPath=none"]  # never the shared one
                    proc = subprocess.Popen([*rsh_argv(self.config), *fresh, name, "true"], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    self.probes[name] = (proc, now())
                continue
            proc, began = probe
            code = proc.poll()
            if code is None and now() - began < 15:
                continue
            if code is None:
                proc.kill()
                proc.wait()
            del self.probes[name]
            self.last_probe[name] = now()
            self.node_answered(name, code == 0)
            self.keep_connection(name, code == 0)

    def rsh(self, node: str) -> list[str]:
        """rsh_argv through the runner's shared connection to node, when it keeps one."""
        return rsh_argv(self.config, None if self.config.get("rsh") else control_socket(self.root, node))

    def keep_connection(self, node: str, reachable: bool) -> None:
        """Keep one ssh connection per reachable node open (ssh -M) for the scripts and checks that go there:
        a fresh ssh per job would cost a handshake each. Probes never use it (a dead sshd must show). A master
        an earlier runner left running is adopted."""
        socket = None if self.config.get("rsh") else control_socket(self.root, node)
        if socket is None:
            return
        master = self.masters.get(node)
        if master is not None and master.poll() is None:
            if not reachable:
                master.terminate()
            return
        control = [*rsh_argv(self.config), "-S", str(socket), "-O", "check" if reachable else "exit", node]
        if subprocess.run(control, stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                          check=False).returncode == 0 or not reachable:
            return
        socket.unlink(missing_ok=True)
        self.masters[node] = subprocess.Popen(
            [*rsh_argv(self.config), "-M", "-N", "-S", str(socket), "-o", "ControlPersist=no", node],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def node_answered(self, name: str, ok: bool) -> None:
        if ok:
            self.probe_failures[name] = 0
            if self.unreachable.pop(name, None) is not None:
                self.log(f"node {name} is reachable again")
            return
        self.probe_failures[name] = self.probe_failures.get(name, 0) + 1
        if self.probe_failures[name] < 2 or name in self.unreachable:
            return
        self.unreachable[name] = now()
        self.log(f"node {name} is unreachable: no new jobs go there")
        for job_id, state in list(self.running.items()):
            if name in [str(h) for h, _ in state["hosts"]] and not (self.stopping.get(job_id) or {}).get("reason"):
                self.stop(job_id, state, f"node {name} became unreachable")

    # -- starting
    def schedule(self) -> None:
        """Hand the head of the queue to the backend while it takes it (strict FIFO: nothing overtakes)."""
        while self.queue:
            job_id = self.queue[0]
            cores = int(self.state(job_id)["cores"])
            if cores > self.total:
                self.queue.pop(0)
                self.set_state(job_id, state="failed", ended_at=now(),
                               reason=f"needs {cores} cores but the cluster has {self.total}")
                continue
            batch = self.backend.batch(self.queue, cores)
            hosts = self.backend.place(cores) if batch else None
            if hosts is None:
                return
            for member in batch:
                self.queue.remove(member)
            try:
                if not self.start(batch, hosts):
                    return  # the backend could not take them now: they wait at the head of the queue
            except OSError as exc:
                self.start_failed(batch, exc)
                return

    def start_failed(self, batch: list[str], exc: OSError) -> None:
        """A start that failed (e.g. a full disk): the jobs keep their place; after 3 tries a job fails."""
        for position, job_id in enumerate(batch):
            self.start_errors[job_id] = self.start_errors.get(job_id, 0) + 1
            self.log(f"job {job_id}: could not start it: {exc}")
            if self.start_errors[job_id] < 3:
                self.queue.insert(position, job_id)
                continue
            try:
                self.set_state(job_id, state="failed", ended_at=now(), reason=f"could not be started: {exc}")
            except OSError:
                self.queue.insert(position, job_id)

    def start(self, batch: list[str], hosts: list[tuple[str, int]]) -> bool:
        """Launch jobs that start together (one, or a sweep's rows): record each launch (`starting`, with its
        token, its group's token and its index), let the backend launch them, record what it reports. Jobs
        the backend did not launch go back to the head of the queue; False when there were any."""
        launches = {job_id: secrets.token_hex(8) for job_id in batch}
        group = launches[batch[0]]
        for index, job_id in enumerate(batch):
            if hosts:
                (self.jobdir(job_id) / "hostfile").write_text(hostfile_text(hosts, self.config["os"]), encoding="utf-8")
            self.set_state(job_id, state="starting", hosts=hosts, started_at=now() if hosts else None,
                           launch=launches[job_id], group=group, index=index)
        crash_point("start.after_starting")
        launched = self.backend.launch(batch, launches)
        crash_point("start.after_spawn")
        for job_id, fields in launched.items():
            self.running[job_id] = self.set_state(job_id, **fields)
        crash_point("start.after_running")
        for position, job_id in enumerate(j for j in batch if j not in launched):
            if not self.give_up(job_id, self.state(job_id), position):
                self.backend.resume(job_id, self.state(job_id))
        self.last_active = now()
        return len(launched) == len(batch)

    # -- housekeeping
    def reap_spool(self) -> None:
        """Remove spool/<id> dirs of submits that died before their rename, once older than the limit."""
        limit = float(self.config.get("spool_max_age_seconds", 3600))
        if now() - self.last_spool_reap < min(60.0, limit):
            return
        self.last_spool_reap = now()
        for name in os.listdir(self.root / SPOOL):
            path = self.root / SPOOL / name
            try:
                if now() - path.stat().st_mtime > limit:
                    shutil.rmtree(path)
                    self.log(f"removed the abandoned submission spool/{name}")
            except OSError:
                continue

    def write_status(self) -> None:
        idle_for = 0.0 if (self.queue or self.running) else now() - self.last_active
        write_json(self.root / STATUS_FILE, {
            "runner_version": RUNNER_VERSION, "job_version": JOB_VERSION, "pid": os.getpid(),
            "heartbeat": now(), "started_at": self.started_at, "slots_total": self.total,
            "slots_busy": sum(self.busy().values()), "queued": len(self.queue), "running": len(self.running),
            "idle_seconds": idle_for, "last_active": self.last_active, "unreachable": dict(self.unreachable),
            "slots_unreachable": sum(int(n["slots"]) for n in self.nodes if n["name"] in self.unreachable),
            "idle_shutdown_minutes": self.config.get("idle_shutdown_minutes"), **self.pool.status(),
            **self.backend.status()})
        self.last_status = now()

    def idle_expired(self) -> bool:
        minutes = self.config.get("idle_shutdown_minutes")
        if not minutes or self.queue or self.running:
            return False
        if self.backend.busy():
            self.last_active = now()  # idle counts from when the scheduler's own queue empties too
            return False
        return now() - self.last_active >= float(minutes) * 60

    def serve(self) -> str:
        """Run until asked to stop; returns why it stopped. A failing step (a full disk, a broken job dir) is
        logged and retried on the next pass; it never ends the loop."""
        self.recover()
        self.write_status()
        steps = (self.accept, self.cancel_requests, self.reap, self.probe_nodes, self.schedule, self.scale,
                 self.reap_spool)
        while True:
            marks = self.marks()
            for step in steps:
                try:
                    step()
                except Exception as exc:  # the loop outlives any one job's trouble
                    self.log(f"{step.__name__}: {type(exc).__name__}: {exc}")
            if now() - self.last_status >= 1.0:
                try:
                    self.write_status()
                except OSError as exc:
                    self.log(f"status.json: {exc}")
            if (self.root / "stop-runner").exists():
                os.unlink(self.root / "stop-runner")
                return "stop requested"
            if self.idle_expired():
                return self.idle_shutdown()
            self.nap(marks)

    def marks(self) -> tuple[int, ...]:
        """mtimes of queue/ (a submission) and jobs/ (a result)."""
        try:
            return tuple(os.stat(self.root / name).st_mtime_ns for name in (QUEUE, JOBS))
        except OSError:
            return ()

    def nap(self, marks: tuple[int, ...]) -> None:
        """Wait up to `poll` s, less once queue/ or jobs/ changed since the pass began."""
        deadline = time.monotonic() + self.poll
        while time.monotonic() < deadline and self.marks() == marks:
            time.sleep(WAKE_CHECK)

    def idle_shutdown(self) -> str:
        """Record the shutdown; main() runs the stop action once every file of this runner is written."""
        minutes = self.config.get("idle_shutdown_minutes")
        write_json(self.root / "shutdown.json", {"at": now(), "reason": f"idle for {minutes} min",
                                                 "command": self.config.get("stop_command")})
        return "idle shutdown"

    def stop_action(self) -> None:
        """The cluster's stop action, started as this runner's very last step (it may stop this process; on a
        local cluster it waits for the runner lock to be free first)."""
        command = self.config.get("stop_command")
        if command:
            spawn_detached(list(command), self.root, self.root / "shutdown.log")


# ---------------------------------------------------------------- backends: what starts, tracks and stops jobs
class Backend(Protocol):
    """What the queue asks of a scheduler. The queue keeps the FIFO order, the job dirs and every state
    change; a backend places the head of the queue, launches jobs (each runs `runner.py exec JOB --launch
    TOKEN`), says whether a launch still runs, and stops one."""

    def batch(self, queue: list[str], cores: int) -> list[str]:
        """The jobs at the head of the queue that start together ([] : wait)."""

    def place(self, cores: int) -> list[tuple[str, int]] | None:
        """Hosts for `cores` now ([] : the backend places them itself), None when they do not fit now."""

    def launch(self, batch: list[str], launches: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Launch each job with its token; the state fields to record for each one launched."""

    def resume(self, job_id: str, state: dict[str, Any]) -> None:
        """Finish a launch cut short by a crash (state `starting`): back to the queue or adopted."""

    def poll(self) -> None:
        """Refresh the backend's view of its launches (once per pass)."""

    def alive(self, job_id: str, state: dict[str, Any]) -> bool:
        """True while the launch runs (or might: unknown counts as running)."""

    def describe(self, job_id: str, state: dict[str, Any]) -> str:
        """What still runs of a launch, for messages (`node:pid`, `slurm:<id>`)."""

    def lost(self, job_id: str, state: dict[str, Any]) -> str:
        """Why a launch that ended without a result ended (the start of a reason)."""

    def cancel(self, job_id: str, state: dict[str, Any], sig: int) -> None:
        """Signal the launch (TERM, then KILL): the queue also signals its marked processes on every node."""

    def status(self) -> dict[str, Any]:
        """Fields status.json adds or overrides."""

    def busy(self) -> bool:
        """Work the queue does not know of keeps the cluster from idle shutdown (e.g. jobs given to Slurm
        directly with `sbatch`); unknown counts as busy."""


class BuiltinBackend:
    """The built-in slot scheduler: slots from runner.json's nodes, a detached wrapper process per job on the
    head node, liveness by its pid."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.children: list[int | subprocess.Popen[bytes]] = []

    def batch(self, queue: list[str], cores: int) -> list[str]:
        return queue[:1]

    def place(self, cores: int) -> list[tuple[str, int]] | None:
        usable = [n for n in self.runner.nodes
                  if n["name"] not in self.runner.unreachable and self.runner.pool.ready(str(n["name"]))]
        return allocate(usable, self.runner.busy(), cores)

    def launch(self, batch: list[str], launches: dict[str, str]) -> dict[str, dict[str, Any]]:
        out = {}
        for job_id in batch:
            jobdir = self.runner.jobdir(job_id)
            child = spawn_wrapper(["exec", job_id, "--launch", launches[job_id], "--root", str(self.runner.root)],
                                  jobdir, jobdir / "runner-exec.log")
            self.children.append(child)
            pid = child if isinstance(child, int) else child.pid
            out[job_id] = {"state": "running", "pid": pid, "pid_token": process_start_time(pid)}
        return out

    def resume(self, job_id: str, state: dict[str, Any]) -> None:
        """Give the launch up if its wrapper never started, else adopt the wrapper that claimed it."""
        if self.runner.give_up(job_id, state):
            return
        launch = state.get("launch")
        claim = self.runner.jobdir(job_id) / (f"launch-{launch}" if launch else "wrapper.pid")
        fields = claim.read_text(encoding="utf-8").split() if claim.exists() else []
        pid, token = (int(fields[0]), fields[1]) if len(fields) == 2 else (None, None)
        self.runner.running[job_id] = self.runner.set_state(job_id, state="running", pid=pid, pid_token=token)

    def poll(self) -> None:
        from forkwrap import ended

        self.children = [c for c in self.children if not (ended(c) if isinstance(c, int) else c.poll() is not None)]

    def alive(self, job_id: str, state: dict[str, Any]) -> bool:
        return state.get("pid") is not None and alive(int(state["pid"]), state.get("pid_token"))

    def describe(self, job_id: str, state: dict[str, Any]) -> str:
        return f"{self.runner.head}:{state.get('pid')}"

    def lost(self, job_id: str, state: dict[str, Any]) -> str:
        return f"the job's wrapper process (pid {state.get('pid')}) died"

    def cancel(self, job_id: str, state: dict[str, Any], sig: int) -> None:
        if state.get("pid") is not None:
            signal_group(int(state["pid"]), state.get("pid_token"), sig)

    def status(self) -> dict[str, Any]:
        return {"scheduler": "builtin"}

    def busy(self) -> bool:
        return False  # every job on this scheduler is one of the queue's


def make_backend(runner: Runner) -> Backend:
    """The backend runner.json's `scheduler` names (the Slurm one is a Linux-only module beside this file)."""
    if runner.config.get("scheduler") == "slurm":
        import slurm_backend

        return slurm_backend.SlurmBackend(runner, sys.modules[__name__])
    return BuiltinBackend(runner)


def capacity(config: dict[str, Any]) -> int:
    """Cores a runner.json provides at most: `max` nodes of its pool, else every node it lists."""
    pool = config.get("pool")
    return int(pool["max"]) * int(pool["slots_per_node"]) if pool else sum(int(n["slots"]) for n in config["nodes"])


def make_pool(runner: Runner) -> Any:
    """The compute node pool (nodepool.py beside this file, on Linux and Windows alike; slurm_pool.py on an elastic
    Slurm cluster)."""
    if runner.config.get("scheduler") == "slurm" and runner.config.get("pool"):
        import slurm_pool  # Slurm's power saving acts on the nodes; this pool reports and resizes

        return slurm_pool.SlurmPool(runner, sys.modules[__name__])
    import nodepool

    return nodepool.Pool(runner, sys.modules[__name__])


# ---------------------------------------------------------------- reports for clients (one exec each)
def list_jobs(root: Path) -> list[dict[str, Any]]:
    """Every job's state in FIFO order (accepted jobs order.log lacks after a crash at the end, until the
    runner repairs it), then submissions not yet accepted."""
    order = root / "order.log"
    ids = list(dict.fromkeys(order.read_text(encoding="utf-8").split())) if order.exists() else []
    jobs = root / JOBS
    listed = set(ids)
    ids += sorted(n for n in (os.listdir(jobs) if jobs.exists() else []) if n not in listed and n[:1] != ".")
    out = []
    for job_id in ids:
        try:
            out.append(read_json(jobs / job_id / STATE_FILE))
        except (OSError, ValueError):
            if (jobs / job_id / JOB_FILE).exists():  # accepted, its state not written yet
                out.append({"id": job_id, "state": "queued"})
    queue = root / QUEUE
    pending = sorted(n for n in os.listdir(queue) if not n.startswith(".")) if queue.exists() else []
    out += [{"id": n, "state": "submitted"} for n in pending]
    return out


def status(root: Path) -> dict[str, Any]:
    """The runner's status.json plus the heartbeat's age (by this node's clock) and whether it is fresh."""
    try:
        data: dict[str, Any] = read_json(root / STATUS_FILE)
    except (OSError, ValueError):
        data = {}
    age = now() - float(data["heartbeat"]) if "heartbeat" in data else None
    data["heartbeat_age"] = age
    data["alive"] = age is not None and age < HEARTBEAT_STALE and \
        process_start_time(int(data.get("pid", 0) or 0)) is not None
    return data


def answer_requests(root: Path) -> int:
    """`requests`: a JSON answer line per request line (["list"], ...) until stdin ends."""
    for line in sys.stdin:
        try:
            answer = {"ok": REPORTS[json.loads(line)[0]](root)}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    return 0


def submit_batch(root: Path, batch: list[dict[str, Any]]) -> list[str]:
    """`submit`: queue [{"id", "files": {name: base64}}] as single submits do; returns the ids queued."""
    import base64

    queued = []
    for item in batch:
        job_id = str(item["id"])
        if len(check_name(job_id).parts) != 1:
            raise UnsafePath(f"job id {job_id!r} is not one plain name")
        target = root / QUEUE / job_id
        if target.exists() or (root / JOBS / job_id).exists():
            continue
        spool = root / SPOOL / job_id
        spool.mkdir(exist_ok=True)
        for name, data in item["files"].items():
            safe_join(spool, name).write_bytes(base64.b64decode(data))
        try:
            os.rename(spool, target)
        except OSError:
            if not target.exists():  # else: the same id, queued meanwhile
                raise
            continue
        queued.append(job_id)
    return queued


def start(root: Path, wait: float = 15.0) -> dict[str, Any]:
    """`start`: make sure a runner serves this cluster (safe to repeat, from any client): nothing when its
    heartbeat is fresh, else a supervised runner is started. Says what it found and what it did."""
    found = status(root)
    total = int(found.get("slots_total") or capacity(read_json(root / "runner.json")))
    if found["alive"]:
        return {**found, "action": "none", "slots_total": total}
    spawn_detached([sys.executable, str(Path(__file__).resolve()), "supervise", "--root", str(root)],
                   root, root / "runner.log")
    deadline = now() + wait
    while now() < deadline:
        current = status(root)
        if current["alive"] and current.get("pid") != found.get("pid"):
            return {**current, "action": "started", "previous": _previous(found), "slots_total": total}
        time.sleep(0.1)
    current = status(root)
    return {**current, "action": "failed", "previous": _previous(found), "slots_total": total}


def _previous(found: dict[str, Any]) -> dict[str, Any]:
    return {"pid": found.get("pid"), "heartbeat_age": found.get("heartbeat_age")}


def supervise(root: Path) -> int:
    """`supervise`: keep `serve` running, restarting it whenever it dies (killed, crashed); end when it
    stops on purpose (stop request, idle shutdown) or another runner holds the lock."""
    while True:
        code = subprocess.call([sys.executable, str(Path(__file__).resolve()), "serve", "--root", str(root)],
                               env={k: v for k, v in os.environ.items() if k != CRASH_VAR})
        if code == 0:
            return 0
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} runner exited with {code}; restarting it", file=sys.stderr,
              flush=True)
        time.sleep(1.0)


def purge(root: Path, job_ids: list[str], logs: bool = False, listed: list[dict[str, Any]] | None = None) -> int:
    """Delete ended jobs' work dirs (after the client verified a download) and, with logs, their logs; the
    state stays. With `listed` (one job), delete only those work dir entries (what the client verified),
    each only if still unchanged. Jobs still queued or running are named and left alone (exit 2)."""
    code = 0
    for job_id in job_ids:
        jobdir = root / JOBS / job_id
        state = read_json(jobdir / STATE_FILE)
        if state["state"] not in TERMINAL:
            print(f"job {job_id} is {state['state']}; only ended jobs can be purged", file=sys.stderr)
            code = 2
            continue
        if listed is None:
            shutil.rmtree(jobdir / "work", ignore_errors=True)
        else:
            print(json.dumps({"kept": purge_listed(jobdir / "work", listed)}))
        state["purged_at"] = now()
        if logs:
            for log in [*jobdir.glob("*.log"), *jobdir.glob("*.log.tail")]:
                log.unlink(missing_ok=True)
            state["logs_purged_at"] = now()
        write_json(jobdir / STATE_FILE, state)
    return code


def purge_listed(work: Path, listed: list[dict[str, Any]]) -> list[str]:
    """Delete each listed file ({"path", "size", "mtime"} in ns) or link ({"path", "target"}) below work
    that is still exactly that, then the directories left empty; returns the listed paths kept."""
    kept = []
    root = work.resolve()
    for entry in listed:
        rel = str(entry["path"])
        try:
            path = work.joinpath(*check_name(rel).parts)
            parent = path.parent.resolve()
            if parent != root and root not in parent.parents:
                raise OSError("outside the work dir")
            st = path.lstat()
            if "target" in entry:
                unchanged = os.path.islink(path) and os.readlink(path) == entry["target"]
            else:
                unchanged = not os.path.islink(path) and path.is_file() and \
                    [st.st_size, st.st_mtime_ns] == [entry["size"], entry["mtime"]]
            if not unchanged:
                raise OSError("changed since it was downloaded")
            path.unlink()
        except (OSError, ValueError):
            kept.append(rel)
    for folder, _, _ in sorted(os.walk(work), key=lambda item: -len(item[0])):
        with contextlib.suppress(OSError):  # a dir that is not empty holds files that were not downloaded
            Path(folder).rmdir()  # the work dir too, once everything in it was downloaded
    return kept


def lock(root: Path, wait: bool = False) -> Any:
    """Hold the runner lock (one runner per cluster); None when another runner has it (with wait: block
    until it is free, for a service manager's runner that takes over when a client-started one dies)."""
    handle = open(root / "runner.lock", "a+b")  # noqa: SIM115
    try:
        if WINDOWS:
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        handle.close()
        return None
    return handle


REPORTS: dict[str, Callable[[Path], Any]] = {"list": list_jobs, "status": status, "start": start}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="runner.py", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("command", choices=["serve", "supervise", "exec", "list", "status", "start", "purge",
                                            "submit", "requests"])
    parser.add_argument("job", nargs="*")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--listed", action="store_true", help="purge: delete only the entries on stdin (JSON)")
    parser.add_argument("--logs", action="store_true", help="purge: remove the jobs' logs too")
    parser.add_argument("--launch", help="exec: the launch token the runner recorded")
    parser.add_argument("--wait-lock", action="store_true", help="serve: wait for the runner lock")
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.command == "exec":
        return run_job(root, args.job[0], args.launch)
    if args.command == "supervise":
        return supervise(root)
    if args.command == "purge":
        return purge(root, args.job, args.logs, json.load(sys.stdin) if args.listed else None)
    if args.command in REPORTS:
        print(json.dumps(REPORTS[args.command](root)))
        return 0
    if args.command == "requests":
        return answer_requests(root)
    if args.command == "submit":
        print(json.dumps(submit_batch(root, json.load(sys.stdin))))
        return 0
    held = lock(root, args.wait_lock)
    if held is None:
        print("another runner is already serving this cluster", file=sys.stderr)
        return 0
    runner = Runner(root)
    reason = runner.serve()
    with contextlib.suppress(OSError):
        runner.pool.pause()  # stopped on purpose: the cluster stops, its node-hours stop counting
        runner.write_status()
    runner.log(f"runner stopped: {reason}")
    if reason == "idle shutdown":
        runner.stop_action()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
