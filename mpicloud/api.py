"""The Python API: clusters and jobs, the layer the CLI is a thin shell over.

    from mpicloud import Cluster
    cluster = Cluster.up("examples/local.yaml")
    job = cluster.submit(["python3", "-c", "print(42)"], cores=1)
    print(job.wait().state, job.stdout())
    job.get("results/")          # into results/<job id>/
    cluster.down()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpicloud.cluster import registry
from mpicloud.cluster.processes import cluster_processes
from mpicloud.errors import ClusterError
from mpicloud.jobs import query
from mpicloud.jobs.query import JobInfo
from mpicloud.jobs.remote import QueueHandle

if TYPE_CHECKING:  # the heavy layers are imported by the methods that use them: a CLI call pays for its own
    from mpicloud.cluster.connect import AttachRequest
    from mpicloud.cluster.registry import ClusterRecord, DownReport
    from mpicloud.jobs.submit import InputEvent
    from mpicloud.jobs.transfer import Progress, Summary
    from mpicloud.render.awsconfig import AwsFiles
    from mpicloud.secret import Secret
    from mpicloud.spec import ClusterSpec
    from mpicloud.transport.base import Transport


class Cluster:
    """A registered cluster (local or attached)."""

    def __init__(self, record: ClusterRecord, control: bool = False) -> None:
        self.record = record
        self.control = control  # reach the head node through the cluster's control master (see control.py)
        self._queue: QueueHandle | None = None
        self.outcome = ""
        self.runner_found: dict[str, Any] = {}  # what `up` found of the runner (ensure_runner's answer)

    @property
    def name(self) -> str:
        """The cluster's name."""
        return self.record.name

    @classmethod
    def up(cls, spec: ClusterSpec | str | Path) -> Cluster:
        """Start a local cluster from a spec (object or YAML path) and start its runner. A stopped cluster of
        the same spec is started again with its queue and data; a running one is returned as it is
        (`outcome` says which: "created", "started" or "running")."""
        from mpicloud.cluster import local
        from mpicloud.spec import ClusterSpec, load_spec

        spec = spec if isinstance(spec, ClusterSpec) else load_spec(spec)
        record, outcome = local.up(spec)
        cluster = cls(record)
        cluster.outcome = outcome
        try:
            cluster.runner_found = cluster.queue.ensure_runner()
        except BaseException:
            if outcome == "created":
                cluster.down()
            raise
        return cluster

    @classmethod
    def get(cls, name: str, control: bool = False) -> Cluster:
        """A registered cluster by name; with control, connections are shared across processes through a
        per-cluster control master (an SSH connection kept for a few idle minutes), as the CLI does."""
        return cls(registry.load(name), control)

    @classmethod
    def attach(cls, request: AttachRequest) -> tuple[Cluster, list[str]]:
        """Register an existing cluster (pinning its host key); returns notes on what was trusted."""
        from mpicloud.cluster.connect import attach

        record, notes = attach(request)
        return cls(record), notes

    @staticmethod
    def all() -> list[Cluster]:
        """Every registered cluster."""
        return [Cluster(r) for r in registry.all_records()]

    @property
    def stopped(self) -> bool:
        """True for a local cluster whose processes are stopped (by `stop`, idle shutdown or a reboot)."""
        r = self.record
        if r.provider != "local":
            return False
        return r.stopped_at is not None or not cluster_processes(r.local["cluster_id"], str(r.dir))

    @property
    def queue(self) -> QueueHandle:
        """The cluster's job queue (connects on first use); ClusterError for a stopped local cluster."""
        if self._queue is None or not self._queue.transport.alive:
            r = self.record
            if self.stopped:
                why = f" ({r.stop_reason})" if r.stop_reason else ""
                raise ClusterError(f"cluster {r.name!r} is stopped{why}; start it with `mpicloud start {r.name}` "
                                   "(its queue and data are kept)")
            self._queue = QueueHandle(transport=self._transport(), os=r.os, root=r.runner_root,
                                      python=r.python, runner=r.runner, cluster=r.name)
        return self._queue

    def _transport(self) -> Transport:
        """The head node's connection: through the control master when asked for and possible, else direct."""
        from mpicloud.cluster import control

        found = control.control_transport(self.record) if self.control else None
        if found is not None:
            return found
        from mpicloud.cluster.connect import head_transport

        return head_transport(self.record)

    def _disconnect(self, forget: bool = False) -> None:
        """Close this process's connections to the cluster and its control master (forget: for good)."""
        from mpicloud.cluster.control import stop_master
        from mpicloud.transport.ssh import close_cluster

        close_cluster(self.name)
        stop_master(self.record, forget)
        self._queue = None

    def _local_only(self, verb: str) -> None:
        if self.record.provider != "local":
            raise ClusterError(f"cluster {self.name!r} is attached: `mpicloud {verb}` runs local clusters; stop or "
                               "start cloud machines with the cloud's own tools (the cluster's own idle shutdown "
                               "stops it)")

    def stop(self, reason: str = "stopped by `mpicloud stop`") -> None:
        """Stop a local cluster's processes and keep every file (queue, outputs, history); `start` resumes."""
        from mpicloud.cluster import local

        self._local_only("stop")
        self._disconnect()
        survivors = local.stop(self.record, reason)
        if survivors:
            raise ClusterError(f"cluster {self.name!r}: processes {survivors} would not stop")

    def start(self) -> None:
        """Start a stopped local cluster again: its sshds, then its runner, which runs the kept queue."""
        from mpicloud.cluster import local

        self._local_only("start")
        local.start(self.record)
        self.queue.ensure_runner()

    def down(self) -> DownReport:
        """Stop a local cluster and everything it started and remove its data; forget an attached one (its
        machines keep running: the report's teardown deletes them)."""
        from mpicloud.cluster import local

        self._disconnect(forget=True)
        if self.record.provider != "local":
            registry.forget(self.name)
            return registry.DownReport(name=self.name, provider=self.record.provider, still_running=True,
                              teardown=self.record.teardown)
        report = local.down(self.record)
        if isinstance(report, list):
            raise ClusterError(f"cluster {self.name!r}: processes {report} would not stop; nothing was removed")
        return report

    def submit(self, argv: Sequence[str], cores: int = 1, mpi: bool = False, inputs: Sequence[str | Path] = (),
               name: str | None = None, post: Sequence[str] | None = None, output_to: str | None = None,
               on_input: InputEvent | None = None, job_id: str | None = None, **extra: Any) -> Job:
        """Queue a job; inputs are uploaded once (content-addressed) and overlaid in order. With job_id (your
        idempotency key) a retry returns the job an earlier try queued instead of queueing it twice."""
        from mpicloud.jobs.submit import JobRequest, submit

        request = JobRequest(argv=list(argv), cores=cores, mpi=mpi, inputs=inputs, name=name,
                             post=list(post) if post else None, output_to=output_to, **extra)
        return Job(self, submit(self.queue, request, on_input, job_id=job_id))

    def submit_many(self, jobs: Sequence[Sequence[str] | dict[str, Any]], on_input: InputEvent | None = None) \
            -> list[Job]:
        """Queue many jobs in few round trips (up to 1,000 per request to the runner), in this FIFO order. Each
        job is an argv or a dict of `submit`'s keyword arguments (`argv`, `cores`, `mpi`, `inputs`, `name`,
        `post`, `output_to`, `env`, `unpack`, `job_id`); all are checked before any is queued."""
        from mpicloud.jobs.submit import JobRequest, submit_many

        requests: list[JobRequest] = []
        keys: list[str | None] = []
        for job in jobs:
            spec: dict[str, Any] = dict(job) if isinstance(job, dict) else {"argv": list(job)}
            keys.append(spec.pop("job_id", None))
            requests.append(JobRequest(**spec))
        return [Job(self, i) for i in submit_many(self.queue, requests, keys, on_input)]

    def sweep(self, runs_csv: str | Path, template: str | Path, cores_per_run: int = 1,
              inputs: Sequence[str | Path] = (), name: str | None = None,
              on_input: InputEvent | None = None) -> tuple[str, list[Job]]:
        """Queue one job per CSV row (template rendered per row) as one sweep; checked whole first."""
        from mpicloud.jobs import sweep

        sweep_id, ids = sweep.submit_sweep(self.queue, Path(runs_csv), Path(template), cores_per_run, inputs, name,
                                           on_input)
        return sweep_id, [Job(self, i) for i in ids]

    def sweep_status(self, sweep_id: str) -> dict[str, Any]:
        """Aggregated progress of a sweep and its failed runs."""
        from mpicloud.jobs import sweep

        return sweep.sweep_status(self.queue, sweep_id)

    def cancel_sweep(self, sweep_id: str) -> int:
        """Cancel every unfinished run of a sweep."""
        from mpicloud.jobs import sweep

        return sweep.cancel_sweep(self.queue, sweep_id)

    def watch_once(self, dest: str | Path, max_age_days: float | None = None, filters: Sequence[str] = (),
                   delete_after_verify: bool = False, on_fetched: Callable[[str, Summary], None] | None = None,
                   progress: Progress | None = None, exclude: Sequence[str] = ()) -> list[str]:
        """Download every ended job not downloaded before with this selection into dest/<job>/; returns the
        job ids. delete_after_verify deletes on the cluster only the files that arrived verified."""
        from mpicloud.jobs import watch

        return watch.watch_once(self.queue, Path(dest), max_age_days, filters, delete_after_verify, on_fetched,
                                progress, exclude)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job."""
        return Job(self, job_id)

    def purge(self, job_ids: Sequence[str], logs: bool = False) -> None:
        """Delete ended jobs' work dirs on the cluster and, with logs, their logs (their states stay)."""
        query.purge_jobs(self.queue, list(job_ids), logs)

    def jobs(self) -> list[JobInfo]:
        """Every job in FIFO order."""
        return query.list_jobs(self.queue)

    def install_bucket_profile(self, files: AwsFiles) -> list[str]:
        """Deliver the bucket profile (render.awsconfig.aws_files) to the cluster for s3:// inputs and outputs."""
        from mpicloud.jobs import bucket

        return bucket.install_profile(self.queue, files)

    def resize(self, nodes: int | None, force: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """Run `nodes` compute nodes (None: back to the spec's min/max, autoscaling) and wait until they are:
        growing starts nodes that join the shared storage, hostfile and slots; shrinking drains (leaving nodes
        take no new jobs, running ones finish; `force` cancels them, naming the node). Returns the pool report."""
        from mpicloud.jobs import resize

        return resize.resize(self.queue, nodes, force, timeout)

    def install_blob_config(self, config: Secret) -> str:
        """Deliver the Azure Blob access (render.blobaccess.blob_config) to the cluster for az:// URLs."""
        from mpicloud.jobs import bucket

        return bucket.install_blob_config(self.queue, config)

    def status(self) -> dict[str, Any]:
        """Runner status: slots, queue length, idle time, heartbeat; for a stopped local cluster, state
        "stopped" with when and why, without connecting."""
        if self.stopped:
            r = self.record
            return {"state": "stopped", "alive": False, "stopped_at": r.stopped_at,
                    "reason": r.stop_reason or "its processes are gone", "start": f"mpicloud start {r.name}"}
        return {"state": "running", **query.runner_status(self.queue)}


def describe_runner(found: dict[str, Any]) -> str:
    """One phrase for what ensure_runner found and did."""
    if found.get("action") == "started":
        previous = found.get("previous") or {}
        age = previous.get("heartbeat_age")
        seen = f"last heartbeat {age:.0f} s ago" if age is not None else "no heartbeat ever"
        return f"its runner was not running ({seen}): restarted it, pid {found.get('pid')}"
    return f"its runner is running, pid {found.get('pid')}"


class Job:
    """A job on a cluster."""

    def __init__(self, cluster: Cluster, job_id: str) -> None:
        self.cluster = cluster
        self.id = job_id

    def info(self) -> JobInfo:
        """Current state."""
        return query.job_info(self.cluster.queue, self.id)

    def wait(self, timeout: float | None = None) -> JobInfo:
        """Block until the job ends."""
        return query.wait(self.cluster.queue, self.id, timeout)

    def stdout(self) -> str:
        """The job's standard output so far (a log is capped on the cluster: see docs/queue.md)."""
        return self.log("stdout").decode(errors="replace")

    def stderr(self) -> str:
        """The job's standard error so far."""
        return self.log("stderr").decode(errors="replace")

    def log(self, stream: str = "stdout", offset: int = 0, limit: int | None = None) -> bytes:
        """Bytes of a log (stdout, stderr or post) from offset, at most limit; only those are transferred."""
        return query.read_log(self.cluster.queue, self.id, stream, offset, limit)

    def logs(self, emit: Callable[[str, bytes], None], follow: bool = False,
             streams: Sequence[str] = ("stdout", "stderr")) -> JobInfo:
        """Stream logs to emit(stream, bytes) in chunks; with follow, until the job ends."""
        return query.follow_logs(self.cluster.queue, self.id, emit, follow, streams=tuple(streams))

    def purge(self, logs: bool = False) -> None:
        """Delete the ended job's work dir on the cluster and, with logs, its logs (its state stays)."""
        self.cluster.purge([self.id], logs)

    def cancel(self) -> JobInfo:
        """Cancel the job (queued or running, every rank)."""
        return query.cancel(self.cluster.queue, self.id)

    def get(self, dest: str | Path, only: Sequence[str] = (), globs: Sequence[str] = (), filters: Sequence[str] = (),
            compress: str = "auto", streams: int = 4, progress: Progress | None = None, *,
            exclude: Sequence[str] = (), no_inputs: bool = False, partial: bool = False,
            overwrite: bool = False) -> Summary:
        """Download the job's work dir (all, by glob or substring, or only the named files; minus `exclude`
        globs and, with no_inputs, the staged inputs the job left unchanged) into dest/<job id>/ (as the CLI
        does): packed and compressed on the cluster, large files in parallel ranges, SHA-256 verified,
        resumable. A job that has not ended is refused unless partial. Local files changed since they were
        downloaded are kept (listed in Summary.not_downloaded) unless overwrite."""
        from mpicloud.jobs import fetch

        options = fetch.GetOptions(only, globs, filters, exclude, no_inputs, partial, overwrite, compress, streams)
        return fetch.fetch_job(self.cluster.queue, self.id, Path(dest) / self.id, options, progress)
