"""The client/runner job contract (mpicloud/protocol/jobs.py): states, the upgrade chain, the version gate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mpicloud.protocol import jobs
from mpicloud.protocol.jobs import TERMINAL, JobState, upgrade_job, version_problem

ROOT = Path(__file__).resolve().parents[2]


def test_states_are_their_strings_and_terminal_ones_are_final() -> None:
    assert JobState.SUCCEEDED == "succeeded" and "failed" in TERMINAL and "running" not in TERMINAL
    assert {str(s) for s in TERMINAL} == {"succeeded", "failed", "cancelled"}
    assert JobState("queued") is JobState.QUEUED


def test_every_state_the_runner_writes_is_a_protocol_state() -> None:
    source = (ROOT / "provision" / "runner" / "runner.py").read_text()
    written = set(re.findall(r'state="(\w+)"', source)) | set(re.findall(r'final(?:, \w+)? = "(\w+)"', source))
    assert written and written <= {s.value for s in JobState}


def test_a_v1_description_is_upgraded_step_by_step() -> None:
    v1 = {"version": 1, "id": "j", "argv": ["true"], "cores": 1, "inputs": ["a.dat"]}
    up = upgrade_job(v1)
    assert up["version"] == jobs.JOB_VERSION
    assert up["inputs"] == [{"name": "a.dat", "source": "jobdir", "unpack": False}]
    assert up["post"] is None and up["sweep"] is None and up["output_to"] is None
    assert v1["inputs"] == ["a.dat"]  # the caller's document is left as it was
    assert set(jobs.UPGRADES) == set(range(1, jobs.JOB_VERSION))  # one transform per step, none missing


def test_a_description_newer_than_the_runner_is_refused() -> None:
    with pytest.raises(ValueError, match="newer than this runner understands"):
        upgrade_job({"version": jobs.JOB_VERSION + 1})


def test_the_version_gate_refuses_only_older_runners() -> None:
    assert version_problem(jobs.JOB_VERSION, "c") is None
    assert version_problem(jobs.JOB_VERSION + 1, "c") is None
    problem = version_problem(jobs.JOB_VERSION - 1, "c")
    assert problem is not None and f"reads job format v{jobs.JOB_VERSION - 1}" in problem and "'c'" in problem
