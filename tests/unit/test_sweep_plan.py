"""Sweep CSV and template problems are reported with file and line before anything is submitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpicloud.errors import JobError
from mpicloud.jobs.sweep import plan, script_command


def write(tmp_path: Path, csv_text: str, template: str = "echo {{ a }}\n") -> tuple[Path, Path]:
    runs = tmp_path / "runs.csv"
    runs.write_text(csv_text)
    tpl = tmp_path / "run.sh.j2"
    tpl.write_text(template)
    return runs, tpl


@pytest.mark.parametrize(("csv_text", "template", "message"), [
    ("", "echo\n", "runs.csv: the file is empty"),
    ("a,b\n", "echo\n", "runs.csv: no runs below the header"),
    ("a,a\n1,2\n", "echo\n", "runs.csv:1: duplicate column 'a'"),
    ("a,b\n1,2\n3\n", "echo\n", "runs.csv:3: 1 fields, the header has 2"),
    ("a\n1\n", "echo {{ a }} {{ b }}\n", "run.sh.j2: uses 'b', which"),
    ("a\n1\n", "echo {% if a %}\n", "run.sh.j2:1: template syntax error"),
    ("a,cores\n1,x\n", "echo {{ a }}\n", "runs.csv:2: cores must be a whole number"),
    ("a,s3_input\n1,/tmp/x\n", "echo {{ a }}\n", "runs.csv:2: s3_input: '/tmp/x' is not an object URL"),
    ("a,s3_input\n1,az://acct/runs/x\n", "echo {{ a }}\n", "runs.csv:2: s3_input must be an s3:// URL"),
    ("a,s3_output,output_url\n1,s3://bkt/o/,az://acct/runs/o/\n", "echo {{ a }}\n",
     "runs.csv:2: give s3_output or output_url, not both"),
    ("a b\n1\n", "echo\n", "runs.csv:1: column 'a b' is not a valid variable name"),
])
def test_bad_sweeps_name_file_and_line(tmp_path: Path, csv_text: str, template: str, message: str) -> None:
    runs, tpl = write(tmp_path, csv_text, template)
    with pytest.raises(JobError) as caught:
        plan(runs, tpl)
    assert message in str(caught.value)


def test_plan_renders_each_row(tmp_path: Path) -> None:
    runs, tpl = write(tmp_path, "a,cores,s3_output\nx,2,s3://bkt/output/x/\n\ny,,\n")
    planned = plan(runs, tpl, cores_per_run=3)
    assert [(r.line, r.script, r.cores, r.output_url) for r in planned] == [
        (2, "echo x\n", 2, "s3://bkt/output/x/"), (4, "echo y\n", 3, None)]


def test_any_store_columns_take_blob_urls_in_either_form(tmp_path: Path) -> None:
    runs, tpl = write(tmp_path, "a,input_url,output_url\nx,https://acct.blob.core.windows.net/runs/in/a%20b.dat,"
                                "az://acct/runs/output/x/\n")
    (run,) = plan(runs, tpl)
    assert (run.input_url, run.output_url) == ("az://acct/runs/in/a b.dat", "az://acct/runs/output/x/")


def test_script_interpreter_from_the_template_name(tmp_path: Path) -> None:
    assert script_command(tmp_path / "run.sh.j2") == ("run.sh", ["sh", "run.sh"])
    assert script_command(tmp_path / "go.ps1.j2")[1][0] == "powershell"
    with pytest.raises(JobError, match="interpreter"):
        script_command(tmp_path / "run.j2")
