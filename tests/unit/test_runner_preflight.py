"""The runner's preflight before an MPI job (issue 11, items 5 and 10): a file the deployment requires (Windows:
saved MS-MPI credentials verified without -pwd) and, on Linux, every node of the job seeing the shared storage's
marker file, asked through the configured probe. Real probe processes: a shell that drops the host name and runs
the `test -f` locally, so a missing marker is a real missing file."""

from __future__ import annotations

from pathlib import Path

from tests.runnerlib import LocalQueue, runner_module

runner = runner_module()
#: stands in for `ssh HOST`: runs the rest of the command here; host "down" fails like an unreachable node
PROBE = ["bash", "-c", 'host=$1; shift; [ "$host" != down ] && exec "$@"', "probe"]


def test_required_file_missing_gives_its_reason(tmp_path: Path) -> None:
    marker = tmp_path / "savecreds.ok"
    config = {"require_files": [{"path": str(marker), "reason": "MS-MPI credentials are not saved yet"}]}
    assert runner.preflight_problem(config, [("N0", 1)]) == "not ready: MS-MPI credentials are not saved yet"
    marker.write_text("ok")
    assert runner.preflight_problem(config, [("N0", 1)]) is None


def test_every_node_must_see_the_share_marker(tmp_path: Path) -> None:
    marker = tmp_path / "share-marker"
    config = {"share_marker": str(marker), "share_probe": PROBE}
    problem = runner.preflight_problem(config, [("node0", 2), ("node1", 2)])
    assert problem is not None and problem.startswith("node0 does not see the shared storage")
    marker.write_text("mpicloud")
    assert runner.preflight_problem(config, [("node0", 2), ("node1", 2)]) is None
    problem = runner.preflight_problem(config, [("node0", 2), ("down", 2)])
    assert problem is not None and problem.startswith("down does not see the shared storage")


def test_no_checks_configured_means_no_problem() -> None:
    assert runner.preflight_problem({}, [("n0", 1)]) is None
    assert runner.preflight_problem({"share_marker": "/x"}, [("n0", 1)]) is None  # no probe: local cluster


def test_the_runner_fails_an_mpi_job_with_the_reason_and_never_starts_it(tmp_path: Path) -> None:
    """End to end through a real runner: the job fails with exit 126 and the reason; its command never ran."""
    saved = tmp_path / "savecreds.ok"
    marker = tmp_path / "share-marker"
    q = LocalQueue(tmp_path / "root", [2], require_files=[{"path": str(saved), "reason": "credentials not saved"}],
                   share_marker=str(marker), share_probe=PROBE)
    q.serve()
    try:
        ran = tmp_path / "ran"
        creds = q.wait(q.submit(["touch", str(ran)], mpi=True))
        saved.write_text("ok")
        share = q.wait(q.submit(["touch", str(ran)], mpi=True))
        plain = q.wait(q.submit(["sh", "-c", "echo not an MPI job"]))
    finally:
        q.stop()
    assert (creds["state"], creds["exit_code"], creds["reason"]) == ("failed", 126, "not ready: credentials not saved")
    assert (share["state"], share["exit_code"]) == ("failed", 126)
    assert share["reason"] == f"n0 does not see the shared storage ({marker} is missing there); the job was not started"
    assert not ran.exists()
    assert plain["state"] == "succeeded"  # only MPI jobs span nodes: a plain script is not held back
