"""Sweep templates render in a sandbox and insert CSV values quoted for the script's language."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from mpicloud.errors import JobError
from mpicloud.jobs.sweep import plan

CELLS = ["$(touch PWNED)", "`touch PWNED`", "'; touch PWNED; '", 'say "hi', "two\nlines; touch PWNED",
         "back\\slash\\", "a & b | c", "%PATH%", "plain"]


def _plan(tmp_path: Path, template_name: str, template: str, cells: list[str]) -> list[str]:
    runs = tmp_path / "runs.csv"
    with open(runs, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["v"])
        writer.writerows([c] for c in cells)
    path = tmp_path / template_name
    path.write_text(template)
    return [run.script for run in plan(runs, path)]


def test_values_are_literal_words_in_sh_scripts(tmp_path: Path) -> None:
    scripts = _plan(tmp_path, "run.sh.j2", "printf '%s' {{ v }}\n", CELLS)
    for cell, script in zip(CELLS, scripts, strict=True):
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
        assert out.stdout == cell
    assert not (tmp_path / "PWNED").exists()


def test_values_are_string_literals_in_python_scripts(tmp_path: Path) -> None:
    scripts = _plan(tmp_path, "run.py.j2", "import sys; sys.stdout.write({{ v }})\n", CELLS)
    for cell, script in zip(CELLS, scripts, strict=True):
        out = subprocess.run(["python3", "-c", script], capture_output=True, text=True, check=True)
        assert out.stdout == cell


def test_plain_values_and_numbers_read_as_before(tmp_path: Path) -> None:
    (script,) = _plan(tmp_path, "run.sh.j2", "echo case={{ v }} next={{ v | int + 1 }}\n", ["41"])
    assert script == "echo case=41 next=42\n"


def test_raw_opts_out(tmp_path: Path) -> None:
    (script,) = _plan(tmp_path, "run.sh.j2", "{{ v | raw }} && {{ v }}\n", ["echo $HOME"])
    assert script == "echo $HOME && 'echo $HOME'\n"


def test_powershell_and_batch(tmp_path: Path) -> None:
    (ps,) = _plan(tmp_path, "run.ps1.j2", "Write-Output {{ v }}\n", ["it's $(calc)"])
    assert ps == "Write-Output 'it''s $(calc)'\n"
    (bat,) = _plan(tmp_path, "run.bat.j2", "echo {{ v }}\n", ["a & b %PATH%"])
    assert bat == 'echo "a & b %%PATH%%"\n'
    with pytest.raises(JobError, match=r"runs.csv:3 failed: .*cannot be quoted safely in a \.bat"):
        _plan(tmp_path, "run.bat.j2", "echo {{ v }}\n", ["fine", 'say "hi'])


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{% set x = [] %}{{ x.append(1) }}",
])
def test_templates_cannot_reach_python(tmp_path: Path, template: str) -> None:
    with pytest.raises(JobError, match="rendering the run on"):
        _plan(tmp_path, "run.sh.j2", template + "{{ v }}\n", ["1"])
    assert not (tmp_path / "PWNED").exists()
