"""mpicloud cluster-side job runner: a durable FIFO queue on the shared storage (stdlib only, any OS).

Layout under ROOT (normally <shared>/.mpicloud):
  runner.json       cluster config (nodes, slots, launcher, idle shutdown, stop command)
  queue/<id>/       submitted jobs (a client renames spool/<id> here atomically)
  jobs/<id>/        accepted jobs: job.json, state.json, stdout.log, stderr.log, post.log, work/, hostfile,
                    result.json (written by the job's own wrapper process), cancel (a cancel request)
  order.log         accepted job ids in FIFO order, one per line
  store/<sha256>    content-addressed inputs;   status.json  heartbeat and slot usage
Commands: serve | exec JOB | list | status | enqueue-check
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

# an isolated interpreter (-I, or Windows' embeddable Python with its ._pth file) leaves the script's own
# directory off sys.path: the protocol package installed beside this file must still be found
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpicloud.protocol.jobs import JOB_VERSION, TERMINAL
from mpicloud.protocol.paths import UnsafePath, check_name, safe_join

RUNNER_VERSION = 2
JOB_VARS = ("MPICLOUD_JOB_ID", "MPICLOUD_NP", "MPICLOUD_HOSTFILE", "MPICLOUD_JOB_DIR", "MPICLOUD_WORK_DIR",
            "MPICLOUD_HOSTS", "MPICLOUD_SWEEP_ID")
WINDOWS = os.name == "nt"
#: the cluster-side S3 client for s3:// inputs and --output-to, installed beside this file
BUCKETIO = Path(__file__).with_name("bucketio.py")
#: what one log stream of a job may take on the shared disk (runner.json `log_limit_bytes`; a job may ask for
#: less with MPICLOUD_LOG_LIMIT): its first half and its last half are kept
LOG_LIMIT_BYTES = 1 << 30
LOG_CHUNK = 1 << 16


# ---------------------------------------------------------------- versioned job descriptions
def _v1_to_v2(job: dict[str, Any]) -> dict[str, Any]:
    """v1 (first cut): inputs were plain file names in the job dir; no post, sweep or output_to."""
    job["inputs"] = [{"name": n, "source": "jobdir", "unpack": False} for n in job.get("inputs", [])]
    job.setdefault("post", None)
    job.setdefault("sweep", None)
    job.setdefault("output_to", None)
    return job


UPGRADES = {1: _v1_to_v2}


def upgrade_job(job: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a job description to JOB_VERSION through the transform chain; ValueError if too new."""
    version = int(job.get("version", 1))
    if version > JOB_VERSION:
        raise ValueError(f"job format v{version} is newer than this runner understands (v{JOB_VERSION}); "
                         "update the runner on the cluster (`mpicloud up` or re-attach)")
    while version < JOB_VERSION:
        job = UPGRADES[version](dict(job))
        version += 1
        job["version"] = version
    return job


# ---------------------------------------------------------------- small file helpers
def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (temporary file + replace)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, sort_keys=True, indent=1)
    os.replace(tmp, path)


def now() -> float:
    return time.time()


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
    """Start a process that outlives this one and the SSH session."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    kwargs: dict[str, Any] = {"cwd": str(cwd), "stdin": subprocess.DEVNULL, "stdout": out, "stderr": out,
                              "close_fds": True}
    if WINDOWS:
        kwargs["creationflags"] = 0x00000200 | 0x00000008  # CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(argv, **kwargs)


def kill_tree(pid: int, token: str | None, grace: float = 5.0) -> None:
    """Stop a job's whole process group (MPI launcher and its ranks): TERM, then KILL after grace."""
    if not alive(pid, token):
        return
    if WINDOWS:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = now() + wait
        while now() < deadline:
            if not alive(pid, token):
                return
            time.sleep(0.05)


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
        if source == "s3":
            path = _s3_get(item["url"], jobdir / ".inputs", env)
        elif source == "store":
            path = _named(root / "store" / item["sha256"], item["name"], jobdir / ".inputs")
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


def _s3_get(url: str, folder: Path, env: dict[str, str]) -> Path:
    """Download one object with the node's own credentials (bucketio.py beside this file)."""
    folder.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, str(BUCKETIO), "get", url, str(folder)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or f"download of {url} failed")
    return folder / url.rstrip("/").rsplit("/", 1)[-1]


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


def run_job(root: Path, job_id: str) -> int:
    """`exec`: run one job to completion in its own process group and write result.json."""
    jobdir = root / "jobs" / job_id
    (jobdir / "wrapper.pid").write_text(f"{os.getpid()} {process_start_time(os.getpid())}", encoding="utf-8")
    job = upgrade_job(read_json(jobdir / "job.json"))
    state = read_json(jobdir / "state.json")
    config = read_json(root / "runner.json")
    hosts = [(h, int(n)) for h, n in state["hosts"]]
    work = jobdir / "work"
    work.mkdir(exist_ok=True)
    env = job_env(root, jobdir, job, hosts, config)
    result: dict[str, Any] = {"exit_code": None, "post_exit_code": None, "reason": None}
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
    out, err, post = jobdir / "stdout.log", jobdir / "stderr.log", jobdir / "post.log"
    snapshot(work, jobdir / "inputs.json")
    limit = log_limit(config, job)
    result["exit_code"], result["reason"] = _run(argv, work, env, out, err, limit)
    if job.get("post") and not (jobdir / "cancel").exists():
        result["post_exit_code"], _ = _run(list(job["post"]), work, env, post, post, limit)
    if job.get("output_to") and not (jobdir / "cancel").exists():
        with open(jobdir / "post.log", "ab") as log:
            code = subprocess.run([sys.executable, str(BUCKETIO), "put", str(work), job["output_to"], "--skip",
                                  str(jobdir / "inputs.json")], env=env,
                                  stdout=log, stderr=log, check=False).returncode
        if code != 0 and result["exit_code"] == 0:
            result.update(exit_code=1, reason=f"upload to {job['output_to']} failed (see post.log)")
    return _finish(jobdir, result)


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
            proc = subprocess.Popen(argv, cwd=str(work), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            return 127, f"command not found on the cluster: {argv[0]}"
        except PermissionError:
            return 126, f"command is not executable: {argv[0]}"
        pumps = [threading.Thread(target=_pump, args=(pipe, sinks[path]), daemon=True)
                 for pipe, path in ((proc.stdout, out), (proc.stderr, err))]
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


def _finish(jobdir: Path, result: dict[str, Any]) -> int:
    result["ended_at"] = now()
    write_json(jobdir / "result.json", result)
    return 0


# ---------------------------------------------------------------- the queue (one per cluster)
class Runner:
    """Accepts submitted jobs, starts them in strict FIFO order when their cores fit, tracks them."""

    def __init__(self, root: Path, poll: float = 0.05) -> None:
        self.root = root
        self.poll = poll
        self.config = read_json(root / "runner.json")
        self.nodes: list[dict[str, Any]] = self.config["nodes"]
        self.total = sum(int(n["slots"]) for n in self.nodes)
        self.queue: list[str] = []
        self.running: dict[str, dict[str, Any]] = {}
        self.started_at = now()
        self.last_active = now()
        self.last_status = 0.0
        self.children: list[subprocess.Popen[bytes]] = []
        for name in ("queue", "jobs", "store", "spool", "sweeps"):
            (root / name).mkdir(exist_ok=True)

    # -- state
    def jobdir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def state(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = read_json(self.jobdir(job_id) / "state.json")
        return data

    def set_state(self, job_id: str, **changes: Any) -> dict[str, Any]:
        state = self.state(job_id)
        state.update(changes)
        write_json(self.jobdir(job_id) / "state.json", state)
        return state

    def busy(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for state in self.running.values():
            for name, count in state["hosts"]:
                used[name] = used.get(name, 0) + int(count)
        return used

    # -- start-up: rebuild from disk, re-adopt running jobs
    def recover(self) -> None:
        order = self.root / "order.log"
        ids = order.read_text(encoding="utf-8").split() if order.exists() else []
        for job_id in dict.fromkeys(ids):
            try:
                state = self.state(job_id)
            except (OSError, ValueError):
                continue
            if state["state"] == "queued":
                self.queue.append(job_id)
            elif state["state"] in ("running", "starting"):
                self.readopt(job_id, state)

    def readopt(self, job_id: str, state: dict[str, Any]) -> None:
        """A job that was running when the runner stopped: adopt it if its wrapper lives or finished."""
        pidfile = self.jobdir(job_id) / "wrapper.pid"
        if state.get("pid") is None and pidfile.exists():
            pid, token = pidfile.read_text(encoding="utf-8").split()
            state = self.set_state(job_id, state="running", pid=int(pid), pid_token=token,
                                   started_at=state.get("started_at") or now())
        finished = (self.jobdir(job_id) / "result.json").exists()
        if finished or (state.get("pid") is not None and alive(int(state["pid"]), state.get("pid_token"))):
            self.running[job_id] = state
        else:
            self.set_state(job_id, state="failed", ended_at=now(),
                           reason="the job's process was gone when the runner restarted")

    # -- one pass of the loop
    def accept(self) -> None:
        incoming = sorted(os.listdir(self.root / "queue"))
        for job_id in incoming:
            src = self.root / "queue" / job_id
            if job_id.startswith(".") or not (src / "job.json").exists():
                continue
            dst = self.jobdir(job_id)
            if dst.exists():  # the same submission again (idempotent submit): keep the first
                shutil.rmtree(src, ignore_errors=True)
                continue
            os.replace(src, dst)
            base = {"id": job_id, "version": JOB_VERSION, "hosts": [], "exit_code": None,
                    "post_exit_code": None, "reason": None, "started_at": None, "ended_at": None}
            try:
                job = upgrade_job(read_json(dst / "job.json"))
                base.update(state="queued", cores=int(job["cores"]), name=job.get("name"),
                            sweep=job.get("sweep"), submitted_at=job.get("submitted_at", now()))
            except (ValueError, KeyError, TypeError) as exc:
                base.update(state="failed", reason=f"invalid job description: {exc}", ended_at=now())
            write_json(dst / "state.json", base)
            with open(self.root / "order.log", "a", encoding="utf-8") as log:
                log.write(job_id + "\n")
            if base["state"] == "queued":
                self.queue.append(job_id)
            self.last_active = now()

    def cancel_requests(self) -> None:
        for job_id in [j for j in self.queue if (self.jobdir(j) / "cancel").exists()]:
            self.queue.remove(job_id)
            self.set_state(job_id, state="cancelled", ended_at=now(), reason="cancelled before it started")
        for job_id, state in list(self.running.items()):
            if (self.jobdir(job_id) / "cancel").exists() and not state.get("cancelling"):
                state["cancelling"] = True
                kill_tree(int(state["pid"]), state.get("pid_token"))

    def reap(self) -> None:
        self.children = [c for c in self.children if c.poll() is None]
        for job_id, state in list(self.running.items()):
            result_file = self.jobdir(job_id) / "result.json"
            if result_file.exists():
                result = read_json(result_file)
                cancelled = (self.jobdir(job_id) / "cancel").exists()
                final = "cancelled" if cancelled else "succeeded" if result["exit_code"] == 0 else "failed"
                self.set_state(job_id, state=final, exit_code=result["exit_code"],
                               ended_at=result["ended_at"], post_exit_code=result["post_exit_code"],
                               reason="cancelled while running" if cancelled else result["reason"])
            elif not alive(int(state["pid"]), state.get("pid_token")):
                cancelled = (self.jobdir(job_id) / "cancel").exists()
                self.set_state(job_id, state="cancelled" if cancelled else "failed", ended_at=now(),
                               reason="cancelled while running" if cancelled
                               else "the job's process died without recording a result")
            else:
                continue
            del self.running[job_id]
            self.last_active = now()

    def schedule(self) -> None:
        while self.queue:
            job_id = self.queue[0]
            cores = int(self.state(job_id)["cores"])
            if cores > self.total:
                self.queue.pop(0)
                self.set_state(job_id, state="failed", ended_at=now(),
                               reason=f"needs {cores} cores but the cluster has {self.total}")
                continue
            hosts = allocate(self.nodes, self.busy(), cores)
            if hosts is None:
                return  # strict FIFO: nothing overtakes the head of the queue
            self.queue.pop(0)
            self.start(job_id, hosts)

    def start(self, job_id: str, hosts: list[tuple[str, int]]) -> None:
        jobdir = self.jobdir(job_id)
        (jobdir / "hostfile").write_text(hostfile_text(hosts, self.config["os"]), encoding="utf-8")
        self.set_state(job_id, state="starting", hosts=hosts, started_at=now())
        child = spawn_detached([sys.executable, str(Path(__file__).resolve()), "exec", job_id,
                                "--root", str(self.root)], jobdir, jobdir / "runner-exec.log")
        self.children.append(child)
        pid = child.pid
        state = self.set_state(job_id, state="running", pid=pid,
                               pid_token=process_start_time(pid))
        self.running[job_id] = state
        self.last_active = now()

    def write_status(self) -> None:
        busy = sum(self.busy().values())
        idle_for = 0.0 if (self.queue or self.running) else now() - self.last_active
        write_json(self.root / "status.json", {
            "runner_version": RUNNER_VERSION, "job_version": JOB_VERSION, "pid": os.getpid(),
            "heartbeat": now(), "started_at": self.started_at, "slots_total": self.total,
            "slots_busy": busy, "queued": len(self.queue), "running": len(self.running),
            "idle_seconds": idle_for, "last_active": self.last_active,
            "idle_shutdown_minutes": self.config.get("idle_shutdown_minutes")})
        self.last_status = now()

    def idle_expired(self) -> bool:
        minutes = self.config.get("idle_shutdown_minutes")
        if not minutes or self.queue or self.running:
            return False
        return now() - self.last_active >= float(minutes) * 60

    def serve(self) -> str:
        """Run until asked to stop; returns why it stopped."""
        self.recover()
        while True:
            self.accept()
            self.cancel_requests()
            self.reap()
            self.schedule()
            if now() - self.last_status >= 1.0:
                self.write_status()
            if (self.root / "stop-runner").exists():
                os.unlink(self.root / "stop-runner")
                return "stop requested"
            if self.idle_expired():
                return self.idle_shutdown()
            time.sleep(self.poll)

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


# ---------------------------------------------------------------- reports for clients (one exec each)
def list_jobs(root: Path) -> list[dict[str, Any]]:
    """Every job's state in FIFO order, then submissions not yet accepted."""
    order = root / "order.log"
    ids = list(dict.fromkeys(order.read_text(encoding="utf-8").split())) if order.exists() else []
    out = []
    for job_id in ids:
        try:
            out.append(read_json(root / "jobs" / job_id / "state.json"))
        except (OSError, ValueError):
            continue
    queue = root / "queue"
    pending = sorted(n for n in os.listdir(queue) if not n.startswith(".")) if queue.exists() else []
    out += [{"id": n, "state": "submitted"} for n in pending]
    return out


def status(root: Path) -> dict[str, Any]:
    """The runner's status.json plus whether its heartbeat is fresh."""
    try:
        data: dict[str, Any] = read_json(root / "status.json")
    except (OSError, ValueError):
        data = {}
    data["alive"] = bool(data) and now() - float(data.get("heartbeat", 0)) < 5.0 and \
        process_start_time(int(data.get("pid", 0) or 0)) is not None
    return data


def purge(root: Path, job_ids: list[str], logs: bool = False) -> int:
    """Delete ended jobs' work dirs (after the client verified a download) and, with logs, their logs; the
    state stays. Jobs still queued or running are named and left alone (exit 2)."""
    code = 0
    for job_id in job_ids:
        jobdir = root / "jobs" / job_id
        state = read_json(jobdir / "state.json")
        if state["state"] not in TERMINAL:
            print(f"job {job_id} is {state['state']}; only ended jobs can be purged", file=sys.stderr)
            code = 2
            continue
        shutil.rmtree(jobdir / "work", ignore_errors=True)
        state["purged_at"] = now()
        if logs:
            for log in [*jobdir.glob("*.log"), *jobdir.glob("*.log.tail")]:
                log.unlink(missing_ok=True)
            state["logs_purged_at"] = now()
        write_json(jobdir / "state.json", state)
    return code


def lock(root: Path) -> Any:
    """Hold the runner lock (one runner per cluster); None when another runner has it."""
    handle = open(root / "runner.lock", "a+b")  # noqa: SIM115
    try:
        if WINDOWS:
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="runner.py", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("command", choices=["serve", "exec", "list", "status", "start", "purge"])
    parser.add_argument("job", nargs="*")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--logs", action="store_true", help="purge: remove the jobs' logs too")
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.command == "exec":
        return run_job(root, args.job[0])
    if args.command == "purge":
        return purge(root, args.job, args.logs)
    if args.command == "list":
        print(json.dumps(list_jobs(root)))
        return 0
    if args.command == "status":
        print(json.dumps(status(root)))
        return 0
    if args.command == "start":  # start `serve` in the background unless a runner is already alive
        if not status(root)["alive"]:
            spawn_detached([sys.executable, str(Path(__file__).resolve()), "serve", "--root", str(root)],
                           root, root / "runner.log")
        return 0
    held = lock(root)
    if held is None:
        print("another runner is already serving this cluster", file=sys.stderr)
        return 0
    runner = Runner(root)
    runner.write_status()
    reason = runner.serve()
    runner.write_status()
    print(f"runner stopped: {reason}", file=sys.stderr)
    if reason == "idle shutdown":
        runner.stop_action()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
