"""The cluster-side runner: launchers, job format versions, and the queue state machine with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.runnerlib import LocalQueue, runner_module

runner = runner_module()
NODES = [{"name": "n0", "slots": 2}, {"name": "n1", "slots": 2}]


@pytest.mark.parametrize(("busy", "cores", "expected"), [
    ({}, 1, [("n0", 1)]),
    ({}, 4, [("n0", 2), ("n1", 2)]),
    ({"n0": 1}, 2, [("n0", 1), ("n1", 1)]),
    ({"n0": 2, "n1": 1}, 2, None),
    ({}, 5, None),
])
def test_allocate_fills_nodes_in_order(busy: dict[str, int], cores: int, expected: object) -> None:
    assert runner.allocate(NODES, busy, cores) == expected


@pytest.mark.parametrize(("launcher", "expected"), [
    ("mpirun", ["mpirun", "--hostfile", "/j/hostfile", "-np", "3", "-x", "A", "-x", "B", "./app", "x y"]),
    ("mpiexec", ["mpiexec", "-hosts", "2", "N0", "2", "N1", "1", "-wdir", "C:\\shared\\w", "-env", "A", "1",
                 "-env", "B", "two words", "./app", "x y"]),
])
def test_launch_argv(launcher: str, expected: list[str]) -> None:
    argv = runner.launch_argv(launcher, [("N0", 2), ("N1", 1)] if launcher == "mpiexec" else [("n0", 3)], 3,
                              "/j/hostfile", "C:\\shared\\w", {"B": "two words", "A": "1"}, ["./app", "x y"])
    assert argv == expected


def test_hostfile_formats() -> None:
    assert runner.hostfile_text([("n0", 2), ("n1", 1)], "linux") == "n0 slots=2\nn1 slots=1\n"
    assert runner.hostfile_text([("N0", 2)], "windows") == "N0 2\n"


@pytest.fixture()
def queue(tmp_path: Path) -> LocalQueue:
    q = LocalQueue(tmp_path / "root", [2])
    q.serve()
    yield q
    q.stop()


def test_strict_fifo_failed_job_does_not_block(queue: LocalQueue) -> None:
    stamp = queue.root / "stamps"
    first = queue.submit(["sh", "-c", f"sleep 0.5; date +%s.%N > {stamp}.a"], cores=2)
    failing = queue.submit(["sh", "-c", "exit 3"])
    missing = queue.submit(["no-such-program-xyz"])
    last = queue.submit(["sh", "-c", f"date +%s.%N > {stamp}.b"])
    assert queue.wait(first)["state"] == "succeeded"
    failed = queue.wait(failing)
    assert failed["state"] == "failed" and failed["exit_code"] == 3 and "code 3" in failed["reason"]
    gone = queue.wait(missing)
    assert gone["exit_code"] == 127 and "command not found" in gone["reason"]
    assert queue.wait(last)["state"] == "succeeded"
    assert float(Path(f"{stamp}.a").read_text()) <= float(Path(f"{stamp}.b").read_text())
    assert queue.state(failing)["started_at"] >= queue.state(first)["ended_at"] - 0.05


def test_too_many_cores_fails_with_reason(queue: LocalQueue) -> None:
    state = queue.wait(queue.submit(["true"], cores=3))
    assert state["state"] == "failed" and "needs 3 cores but the cluster has 2" in state["reason"]


def test_cancel_queued_and_running(queue: LocalQueue) -> None:
    running = queue.submit(["sleep", "30"], cores=2)
    queued = queue.submit(["true"])
    queue.wait_running(running)
    (queue.root / "jobs" / queued / "cancel").touch()
    (queue.root / "jobs" / running / "cancel").touch()
    assert queue.wait(queued)["state"] == "cancelled"
    state = queue.wait(running, timeout=15)
    assert state["state"] == "cancelled"
    assert runner.process_start_time(int(state["pid"])) is None


def test_invalid_and_duplicate_submissions(queue: LocalQueue) -> None:
    bad = queue.submit(["true"], version=99)
    state = queue.wait(bad)
    assert state["state"] == "failed" and "newer than this runner" in state["reason"]
    ok = queue.submit(["true"])
    queue.wait(ok)
    (queue.root / "queue" / ok).mkdir()
    (queue.root / "queue" / ok / "job.json").write_text(json.dumps({"version": 2, "id": ok}))
    deadline = time.monotonic() + 30
    while (queue.root / "queue" / ok).exists():  # the runner removes the duplicate, accepting nothing
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (queue.root / "order.log").read_text().split().count(ok) == 1


def test_runner_killed_and_restarted_readopts_and_finishes(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1])
    q.serve()
    long = q.submit(["sh", "-c", "sleep 1.5; echo done"])
    after = q.submit(["sh", "-c", "echo next"])
    q.wait_running(long)
    q.kill()
    time.sleep(2.0)  # the job finishes while no runner is alive
    q.serve()
    try:
        assert q.wait(long)["state"] == "succeeded"
        assert q.wait(after)["state"] == "succeeded"
        assert (q.root / "jobs" / long / "stdout.log").read_text() == "done\n"
    finally:
        q.stop()


def test_orphan_without_result_is_failed_on_restart(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1])
    q.serve()
    job = q.submit(["sleep", "30"])
    q.wait_running(job)
    q.kill()
    state = q.state(job)
    os.killpg(int(state["pid"]), signal.SIGKILL)
    q.serve()
    try:
        final = q.wait(job)
        assert final["state"] == "failed" and "wrapper process" in final["reason"]
        assert "died without recording a result" in final["reason"]
    finally:
        q.stop()


def test_idle_shutdown_runs_the_stop_command(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    q = LocalQueue(tmp_path / "root", [1], idle_shutdown_minutes=0.02, stop_command=["touch", str(marker)])
    q.serve()
    assert q.proc is not None
    q.proc.wait(10)
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    assert "idle" in json.loads((q.root / "shutdown.json").read_text())["reason"]


# ---------------------------------------------------------------- crash windows (issue 9, item 2)
def _runs(q: LocalQueue) -> list[str]:
    path = q.root / "runs.txt"
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("point", runner.CRASH_POINTS)
def test_runner_killed_at_each_step_loses_nothing_and_runs_nothing_twice(tmp_path: Path, point: str) -> None:
    """The runner SIGKILLs itself at the named point of accepting, starting or finishing a job; after a restart
    every job is listed, ends succeeded, and ran exactly once (each appends its id to runs.txt)."""
    q = LocalQueue(tmp_path / "root", [1])
    record = ["sh", "-c", f'echo "$MPICLOUD_JOB_ID" >> {q.root / "runs.txt"}']
    jobs = [q.submit(record) for _ in range(3)]
    q.serve(crash_at=point)
    assert q.proc is not None
    assert q.proc.wait(30) == -signal.SIGKILL, f"the runner did not reach {point}"
    time.sleep(0.5)  # a wrapper spawned just before the crash may run meanwhile
    q.serve()
    try:
        finals = [q.wait(j) for j in jobs]
        assert [f["state"] for f in finals] == ["succeeded"] * 3, finals
        assert sorted(_runs(q)) == sorted(jobs)
        listed = [d["id"] for d in runner.list_jobs(q.root)]
        assert listed == jobs  # visible, once each, in FIFO order
        order = (q.root / "order.log").read_text().split()
        assert order == jobs
    finally:
        q.stop()


def test_accepted_job_without_state_or_order_line_is_recovered(tmp_path: Path) -> None:
    """The exact window of the issue: job dir renamed into jobs/, runner gone before state.json/order.log."""
    q = LocalQueue(tmp_path / "root", [1])
    first = q.submit(["true"])
    q.serve()
    q.wait(first)
    q.stop()
    job_id = q.submit(["sh", "-c", "echo ran"])
    (q.root / "queue" / job_id).rename(q.root / "jobs" / job_id)
    with open(q.root / "order.log", "a") as log:
        log.write(job_id[:5])  # a torn append
    assert [d["id"] for d in runner.list_jobs(q.root)] == [first, job_id]
    q.serve()
    try:
        assert q.wait(job_id)["state"] == "succeeded"
        assert (q.root / "jobs" / job_id / "stdout.log").read_text() == "ran\n"
        assert (q.root / "order.log").read_text().split() == [first, job_id]
    finally:
        q.stop()


def test_launch_never_spawned_goes_back_to_the_queue(tmp_path: Path) -> None:
    """`starting` recorded, wrapper never started: requeued in its FIFO place, run once, not failed."""
    q = LocalQueue(tmp_path / "root", [1])
    a, b = (q.submit(["sh", "-c", f"echo {n} >> {q.root}/runs.txt"]) for n in "ab")
    q.serve(crash_at="start.after_starting")
    assert q.proc is not None and q.proc.wait(30) == -signal.SIGKILL
    assert q.state(a)["state"] == "starting"
    q.serve()
    try:
        assert q.wait(a)["state"] == "succeeded" and q.wait(b)["state"] == "succeeded"
        assert _runs(q) == ["a", "b"]
        assert q.state(a)["ended_at"] <= q.state(b)["started_at"]
    finally:
        q.stop()


# ---------------------------------------------------------------- processes (items 4 and 5)
def _pids_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes() and \
                    runner.process_start_time(int(entry.name)) is not None:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_cancel_ends_term_ignoring_and_setsid_processes(queue: LocalQueue) -> None:
    mark = f"3607.{os.getpid() % 1000}1"
    job = queue.submit(["sh", "-c", f"trap '' TERM; setsid sleep {mark}1 & sleep {mark}2; wait"])
    deadline = time.monotonic() + 15
    while len(_pids_with(mark)) < 2:
        assert time.monotonic() < deadline, "the job's processes did not start"
        time.sleep(0.05)
    (queue.root / "jobs" / job / "cancel").touch()
    time.sleep(1.0)
    assert queue.state(job)["state"] == "running"  # not reported cancelled while its processes live
    final = queue.wait(job, timeout=30)
    assert final["state"] == "cancelled"
    assert _pids_with(mark) == []


def test_killed_wrapper_keeps_slots_until_its_processes_are_gone(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1])
    q.serve()
    mark = f"3608.{os.getpid() % 1000}1"
    try:
        job = q.submit(["sh", "-c", f"trap '' TERM; sleep {mark}"])
        nxt = q.submit(["true"])
        deadline = time.monotonic() + 15
        while not _pids_with(mark):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(int(q.state(job)["pid"]), signal.SIGKILL)
        time.sleep(2.0)
        assert _pids_with(mark), "the job's process should still be running (it ignores TERM)"
        assert q.state(job)["state"] == "running" and q.state(nxt)["state"] == "queued"
        final = q.wait(job, timeout=30)
        assert final["state"] == "failed" and "wrapper process" in final["reason"]
        assert _pids_with(mark) == []
        assert q.wait(nxt)["started_at"] >= final["ended_at"]
    finally:
        q.stop()


def test_finished_job_leaves_no_background_process(queue: LocalQueue) -> None:
    mark = f"3609.{os.getpid() % 1000}1"
    job = queue.submit(["sh", "-c", f"setsid sleep {mark} & echo started"])
    assert queue.wait(job, timeout=30)["state"] == "succeeded"
    assert _pids_with(mark) == []


# ---------------------------------------------------------------- placement, spool, full disk
def test_script_runs_on_the_first_node_of_its_allocation(tmp_path: Path) -> None:
    log = tmp_path / "rsh.log"
    rsh = ["sh", "-c", f'echo "$1" >> {log}; exec sh -c "$2"', "rsh"]
    q = LocalQueue(tmp_path / "root", [1, 1], rsh=rsh, probe_seconds=0)
    q.serve()
    try:
        go = tmp_path / "go"  # the blocker holds n0 until the second job has run
        blocker = q.submit(["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done"])
        q.wait_running(blocker)
        second = q.submit(["sh", "-c", 'cat "$MPICLOUD_HOSTFILE"; echo "$MPICLOUD_NP"'])
        assert q.wait(second)["state"] == "succeeded"
        go.touch()
        assert q.wait(blocker)["state"] == "succeeded"
        assert (q.root / "jobs" / second / "stdout.log").read_text() == "n1 slots=1\n1\n"
        assert log.read_text().split() == ["n1"]
    finally:
        q.stop()


def test_stale_spool_dirs_are_reaped(tmp_path: Path) -> None:
    q = LocalQueue(tmp_path / "root", [1], spool_max_age_seconds=2)
    stale, fresh = q.root / "spool" / "stale-1", q.root / "spool" / "fresh-1"
    stale.mkdir()
    (stale / "job.json").write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    q.serve()
    try:
        deadline = time.monotonic() + 10
        while stale.exists():
            assert time.monotonic() < deadline, "stale spool dir was not reaped"
            time.sleep(0.1)
        fresh.mkdir()
        time.sleep(0.5)
        assert fresh.exists()
    finally:
        q.stop()


def test_full_disk_fails_the_job_that_filled_it_not_the_runner(tmp_path: Path) -> None:
    """A real full file system (a 4 MiB tmpfs): the runner keeps serving, the filling job fails."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"this test needs to mount a small tmpfs (root): {mounted.stderr.decode().strip()}")
    try:
        q = LocalQueue(disk / "root", [1], log=tmp_path / "runner.log")
        filler = q.submit(["sh", "-c", "head -c 8M /dev/zero > fill; exit 1"])
        after = q.submit(["sh", "-c", "echo fine"])
        q.serve()
        assert q.proc is not None
        deadline = time.monotonic() + 20
        while not (q.root / "jobs" / filler / "work" / "fill").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(3.0)  # the disk is full: status, results and states cannot be written
        assert q.proc.poll() is None, "the runner died of a full disk"
        (q.root / "jobs" / filler / "work" / "fill").unlink()
        failed = q.wait(filler, timeout=30)
        assert failed["state"] == "failed" and failed["exit_code"] == 1
        assert q.wait(after, timeout=30)["state"] == "succeeded"
        q.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_processes_that_survive_kill_are_named_and_keep_their_slots(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancel says so when it cannot end a job: a process that outlives KILL (e.g. stuck in the kernel) is named
    in the reason and its slots stay taken. The process table is faked (a real unkillable process cannot be
    made on purpose); the runner's stop logic and clock are the real ones, the clock stepped by hand."""
    q = LocalQueue(tmp_path / "root", [2])
    jobdir = q.root / "jobs" / "stuck"
    jobdir.mkdir(parents=True)
    clock = [1000.0]
    signals: list[int] = []
    monkeypatch.setattr(runner, "now", lambda: clock[0])
    monkeypatch.setattr(runner, "signal_marked", lambda job_id, launch, sig: signals.append(sig) or [4242])
    run = runner.Runner(q.root)
    runner.write_json(jobdir / "state.json", {"id": "stuck", "state": "running", "hosts": [["n0", 2]],
                                              "pid": None, "launch": "L1", "cores": 2})
    run.running["stuck"] = run.state("stuck")
    (jobdir / "cancel").touch()
    run.cancel_requests()
    clock[0] += runner.STOP_GRACE
    run.reap()
    assert signals[0] == signal.SIGTERM and runner.SIGKILL in signals
    clock[0] += 31
    run.reap()
    state = run.state("stuck")
    assert state["state"] == "running" and run.busy() == {"n0": 2}
    assert state["reason"] == ("cancelled while running: 1 processes would not stop (n0:4242); their slots stay "
                               "taken")
    monkeypatch.setattr(runner, "signal_marked", lambda job_id, launch, sig: [])  # it finally went
    run.reap()
    assert run.state("stuck")["state"] == "cancelled" and run.busy() == {}


# ---------------------------------------------------------------- bulk submit (runner.py submit)
def _bulk(q: LocalQueue, items: list[dict[str, object]]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([q.python, str(q.runner), "submit", "--root", str(q.root)], capture_output=True,
                          input=json.dumps(items).encode(), timeout=60)


def _item(job_id: str, argv: list[str], **files: bytes) -> dict[str, object]:
    import base64

    job = {"version": 2, "id": job_id, "argv": argv, "cores": 1, "mpi": False, "inputs": [], "post": None,
           "submitted_at": time.time()}
    files = {**files, "job.json": json.dumps(job).encode()}
    return {"id": job_id, "files": {name: base64.b64encode(data).decode() for name, data in files.items()}}


def test_bulk_submit_queues_in_order_once_each(tmp_path: Path) -> None:
    """`runner.py submit` queues a batch through the spool like single submits; a repeated batch (a retry)
    queues nothing again, and every job runs once, in id order, with its extra files in its dir."""
    q = LocalQueue(tmp_path / "root", [1])
    record = f'echo "$MPICLOUD_JOB_ID" >> {q.root / "runs.txt"}; cat ../run.sh'
    ids = [f"bulk-{n}" for n in range(5)]
    items = [_item(i, ["sh", "-c", record], **{"run.sh": f"echo {i}\n".encode()}) for i in ids]
    first = _bulk(q, items)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == ids
    again = _bulk(q, items)
    assert again.returncode == 0 and json.loads(again.stdout) == []
    q.serve()
    try:
        assert [q.wait(i)["state"] for i in ids] == ["succeeded"] * 5
        assert _runs(q) == ids
        assert (q.root / "jobs" / ids[2] / "stdout.log").read_text() == f"echo {ids[2]}\n"
        assert _bulk(q, items[:1]).stdout.strip() == b"[]"  # accepted meanwhile: still not queued again
    finally:
        q.stop()


@pytest.mark.parametrize(("job_id", "name"), [("../escape", "job.json"), ("ok-1", "../../escape"),
                                              ("a/b", "job.json")])
def test_bulk_submit_refuses_names_leading_out(tmp_path: Path, job_id: str, name: str) -> None:
    q = LocalQueue(tmp_path / "root", [1])
    item = _item(job_id, ["true"])
    files = item["files"]
    assert isinstance(files, dict)
    item["files"] = {name: files["job.json"]}
    refused = _bulk(q, [item])
    assert refused.returncode != 0
    assert not list(q.root.parent.glob("escape*")) and not (q.root / "escape").exists()
    assert os.listdir(q.root / "queue") == []


def test_request_helper_answers_reports_until_stdin_ends(tmp_path: Path) -> None:
    """`runner.py requests`: one JSON answer line per request line (a kept-open helper), errors answered."""
    q = LocalQueue(tmp_path / "root", [1])
    job = q.submit(["true"])
    q.serve()
    try:
        q.wait(job)
        lines = [json.dumps(r) for r in (["status"], ["list"], ["nonsense"], ["start"])]
        done = subprocess.run([q.python, str(q.runner), "requests", "--root", str(q.root)], capture_output=True,
                              input="\n".join(lines).encode() + b"\n", timeout=60)
        assert done.returncode == 0, done.stderr
        status, listing, bad, start = (json.loads(line) for line in done.stdout.splitlines())
        assert status["ok"]["alive"] is True
        assert [j["id"] for j in listing["ok"]] == [job] and listing["ok"][0]["state"] == "succeeded"
        assert "KeyError" in bad["error"]
        assert start["ok"]["action"] == "none" and start["ok"]["slots_total"] == 1
    finally:
        q.stop()
